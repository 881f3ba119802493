"""Counter-based hashing and stable example ids: numpy and TensorFlow agree bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

from cgh_jax.data import ids as ids_lib


def test_splitmix64_reference_values():
    # SplitMix64 seeded with 0 (Steele et al.; Vigna's splitmix64.c): first two outputs.
    assert int(ids_lib.splitmix64_np(np.uint64(0))) == 0xE220A8397B1DCDAF
    assert int(ids_lib.splitmix64_np(np.uint64(ids_lib.GAMMA))) == 0x6E789E6AA1B965F4


def test_hash_bits_numpy_matches_tensorflow():
    rng = np.random.default_rng(0)
    ids = np.concatenate(
        [np.arange(1000), rng.integers(0, 2**63 - 1, 10_000, dtype=np.int64), [2**63 - 1]]
    ).astype(np.int64)
    for seed, stream in [
        (0, 0),
        (1, ids_lib.STREAM_CORRUPT),
        (2**40 + 3, ids_lib.STREAM_EPOCH + 7),
    ]:
        want = ids_lib.hash_bits_np(seed, ids, stream)
        got = ids_lib.hash_bits_tf(seed, tf.constant(ids), stream).numpy()
        np.testing.assert_array_equal(got, want)
        for n in (2, 10, 1000):
            np.testing.assert_array_equal(
                ids_lib.uniform_below_tf(tf.constant(want), n).numpy(),
                ids_lib.uniform_below_np(want, n),
            )
        for p in (0.0, 0.3, 1.0):
            np.testing.assert_array_equal(
                ids_lib.bernoulli_tf(tf.constant(want), p).numpy(), ids_lib.bernoulli_np(want, p)
            )


def test_hash_bits_regression_values():
    # Fixed forever: changing them changes every corruption and subset of past experiments.
    got = ids_lib.hash_bits_np(42, np.array([0, 1, 2**62]), 7).tolist()
    assert got == [6178525862795807727, 4052448592440306160, 16527332787831968490]


def test_uniform_below_and_bernoulli_ranges():
    bits = ids_lib.hash_bits_np(3, np.arange(200_000), 1)
    for n in (1, 2, 7, 1000):
        r = ids_lib.uniform_below_np(bits, n)
        assert r.min() == 0 and r.max() == n - 1
    assert not ids_lib.bernoulli_np(bits, 0.0).any()
    assert ids_lib.bernoulli_np(bits, 1.0).all()
    assert abs(ids_lib.bernoulli_np(bits, 0.25).mean() - 0.25) < 0.005


def test_hash_bits_rejects_bad_input():
    with pytest.raises(ValueError, match="integer"):
        ids_lib.hash_bits_np(0, np.array([0.5]), 0)
    with pytest.raises(ValueError, match="non-negative"):
        ids_lib.hash_bits_np(-1, np.array([0]), 0)


def test_tfds_id_hash_is_stable_and_63_bit():
    names = [
        "mnist-train.tfrecord-00000-of-00001__0",
        "imagenet2012-train.tfrecord-00123-of-01024__4567",
    ]
    # farmhash64 fingerprints, documented by TensorFlow as stable across platforms/versions.
    assert ids_lib.tfds_id_to_int(names).tolist() == [8323390722102200308, 8443955282593620226]
    many = [f"cifar10-train.tfrecord-0000{i % 4}-of-00004__{i}" for i in range(20_000)]
    values = ids_lib.tfds_id_to_int(many)
    assert values.dtype == np.int64 and values.min() >= 0
    assert len(np.unique(values)) == len(many)
