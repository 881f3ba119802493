"""Label corruption: statistics on 10^6 ids, determinism, numpy/tf.data agreement, errors."""

import math

import numpy as np
import pytest
import tensorflow as tf

from cgh_jax.data import corrupt_labels, corrupt_labels_tf

N = 1_000_000


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z = 3.09 is the 0.999 quantile."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_uniform(values: np.ndarray, num_classes: int) -> float:
    counts = np.bincount(values, minlength=num_classes)
    expected = len(values) / num_classes
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.fixture(scope="module")
def data():
    ids = np.arange(N, dtype=np.int64) * 7919 + 13  # not contiguous: ids are arbitrary
    labels = np.random.default_rng(0).integers(0, 10, N)
    return ids, labels


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_uniform_corrupt_fraction_and_uniform_labels(data, p):
    ids, labels = data
    noisy, bad = corrupt_labels(ids, labels, num_classes=10, fraction=p, seed=1)
    assert noisy.dtype == np.int64 and bad.dtype == bool
    assert abs(bad.mean() - p * (1 - 1 / 10)) < 0.003
    np.testing.assert_array_equal(bad, noisy != labels)
    # Among relabelled-or-kept examples of one true class, the noisy label is uniform over
    # the others (it is the redraw conditioned on a change).
    changed = noisy[bad & (labels == 3)]
    assert not np.any(changed == 3)
    others = np.where(changed > 3, changed - 1, changed)
    assert chi2_uniform(others, 9) < chi2_critical(8)


def test_uniform_p1_labels_are_uniform_over_all_classes(data):
    ids, _ = data
    labels = np.zeros(N, np.int64)  # worst case: every true label the same
    noisy, bad = corrupt_labels(ids, labels, num_classes=10, fraction=1.0, seed=5)
    assert chi2_uniform(noisy, 10) < chi2_critical(9)
    assert abs(bad.mean() - 0.9) < 0.003


def test_uniform_other_fraction_and_uniform_over_other_classes(data):
    ids, labels = data
    noisy, bad = corrupt_labels(
        ids, labels, num_classes=10, fraction=0.4, seed=2, scheme="uniform_other"
    )
    assert abs(bad.mean() - 0.4) < 0.003
    shift = (noisy[bad] - labels[bad]) % 10  # 1..9, uniform when redraws are uniform
    assert shift.min() >= 1
    assert chi2_uniform(shift - 1, 9) < chi2_critical(8)


def test_imagenet_sized_label_space(data):
    ids, _ = data
    labels = np.random.default_rng(1).integers(0, 1000, N)
    noisy, bad = corrupt_labels(ids, labels, num_classes=1000, fraction=1.0, seed=0)
    assert abs(bad.mean() - 0.999) < 0.003
    assert chi2_uniform(noisy, 1000) < chi2_critical(999)


@pytest.mark.parametrize("scheme", ["uniform", "uniform_other"])
def test_same_id_same_label_regardless_of_order_hosts_and_subset(data, scheme):
    ids, labels = data
    ids, labels = ids[:200_000], labels[:200_000]
    kw = dict(num_classes=10, fraction=0.3, seed=11, scheme=scheme)
    noisy, bad = corrupt_labels(ids, labels, **kw)
    perm = np.random.default_rng(3).permutation(len(ids))
    noisy_p, bad_p = corrupt_labels(ids[perm], labels[perm], **kw)
    np.testing.assert_array_equal(noisy_p, noisy[perm])
    np.testing.assert_array_equal(bad_p, bad[perm])
    for hosts in (2, 4):
        parts = [corrupt_labels(ids[h::hosts], labels[h::hosts], **kw)[0] for h in range(hosts)]
        for h, part in enumerate(parts):
            np.testing.assert_array_equal(part, noisy[h::hosts])
    subset = np.flatnonzero(labels == 7)[:1000]
    np.testing.assert_array_equal(
        corrupt_labels(ids[subset], labels[subset], **kw)[0], noisy[subset]
    )


def test_different_seeds_differ(data):
    ids, labels = data
    a = corrupt_labels(ids, labels, num_classes=10, fraction=0.5, seed=0)[1]
    b = corrupt_labels(ids, labels, num_classes=10, fraction=0.5, seed=1)[1]
    # Independent draws: the overlap of two 45% sets is about 0.45^2.
    assert abs((a & b).mean() - 0.45**2) < 0.003


def test_zero_noise_is_identity(data):
    ids, labels = data
    for scheme in ("uniform", "uniform_other", "permute"):
        noisy, bad = corrupt_labels(
            ids[:1000], labels[:1000], num_classes=10, fraction=0.0, seed=0, scheme=scheme
        )
        np.testing.assert_array_equal(noisy, labels[:1000])
        assert not bad.any()


def test_permute_preserves_histogram_and_is_order_free(data):
    ids, labels = data
    ids, labels = ids[:100_000], labels[:100_000]
    kw = dict(num_classes=10, fraction=0.5, seed=4, scheme="permute")
    noisy, bad = corrupt_labels(ids, labels, **kw)
    np.testing.assert_array_equal(
        np.bincount(noisy, minlength=10), np.bincount(labels, minlength=10)
    )
    # About half selected, and a selected label survives a permutation with prob ~1/10.
    assert abs(bad.mean() - 0.5 * 0.9) < 0.01
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(corrupt_labels(ids[perm], labels[perm], **kw)[0], noisy[perm])
    with pytest.raises(ValueError, match="unique"):
        corrupt_labels(np.zeros(4, int), np.arange(4), **kw)


@pytest.mark.parametrize("scheme", ["uniform", "uniform_other"])
@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_numpy_and_tf_data_agree(scheme, num_classes):
    rng = np.random.default_rng(num_classes)
    ids = np.concatenate([np.arange(50_000), rng.integers(0, 2**63 - 1, 50_000)]).astype(np.int64)
    labels = rng.integers(0, num_classes, len(ids))
    kw = dict(num_classes=num_classes, fraction=0.37, seed=123, scheme=scheme)
    want_noisy, want_bad = corrupt_labels(ids, labels, **kw)
    ds = tf.data.Dataset.from_tensor_slices({"id": ids, "label": labels})
    # Per-example map on a slice, vectorised map on the rest: both forms the pipeline uses.
    head = ds.take(2000).map(lambda ex: corrupt_labels_tf(ex["id"], ex["label"], **kw))
    tail = ds.skip(2000).batch(8192).map(lambda ex: corrupt_labels_tf(ex["id"], ex["label"], **kw))
    ds = head.batch(8192).concatenate(tail)
    got = [(n, b) for n, b in ds.as_numpy_iterator()]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), want_noisy)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), want_bad)


def test_bad_arguments_fail_clearly():
    ids, labels = np.arange(5), np.zeros(5, int)
    for fraction in (-0.1, 1.5, float("nan"), "0.2", True):
        with pytest.raises(ValueError, match="fraction"):
            corrupt_labels(ids, labels, num_classes=10, fraction=fraction, seed=0)
    with pytest.raises(ValueError, match="noise_scheme='flip' is not accepted"):
        corrupt_labels(ids, labels, num_classes=10, fraction=0.1, seed=0, scheme="flip")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        corrupt_labels(ids, labels + 10, num_classes=10, fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="same length"):
        corrupt_labels(ids, labels[:3], num_classes=10, fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="2 classes"):
        corrupt_labels(ids, labels, num_classes=1, fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="permute"):
        corrupt_labels_tf(
            tf.constant(ids),
            tf.constant(labels),
            num_classes=10,
            fraction=0.1,
            seed=0,
            scheme="permute",
        )
