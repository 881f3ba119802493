"""Stable example ids and counter-based hashing, bit-identical in numpy and TensorFlow.

Every random decision of the input pipeline (label corruption, evaluation subsets, epoch
order, flips) is a pure function of ``(seed, example id, stream)``. The draws come from
SplitMix64 (Steele, Lea & Flood 2014), a bijective 64-bit mixer:

.. math::

  z \\leftarrow x + \\gamma,\\quad
  z \\leftarrow (z \\oplus (z \\gg 30)) \\cdot m_1,\\quad
  z \\leftarrow (z \\oplus (z \\gg 27)) \\cdot m_2,\\quad
  \\mathrm{mix}(x) = z \\oplus (z \\gg 31)

with :math:`\\gamma` = 0x9E3779B97F4A7C15, :math:`m_1` = 0xBF58476D1CE4E5B9 and
:math:`m_2` = 0x94D049BB133111EB, all arithmetic modulo :math:`2^{64}`. The 64 random bits of
example ``id`` in ``stream`` under ``seed`` are

.. math::

  \\mathrm{bits}(s, i, t) = \\mathrm{mix}(\\mathrm{mix}(\\mathrm{mix}(s) \\oplus t) + i).

Only additions, multiplications, shifts and xors of ``uint64`` are used, so
:func:`hash_bits_np` and :func:`hash_bits_tf` agree bit for bit on every platform.

Example ids: sources built by :mod:`cgh_jax.data.sources` store the index of the example in
the original file order as an ``id`` feature. Other TFDS datasets get the 63-bit id
``fingerprint64(tfds_id) & (2**63 - 1)`` where ``tfds_id`` is the record's TFDS id
(``"<dataset>-<split>.tfrecord-<shard>-of-<n>__<index>"``) and ``fingerprint64`` is
``tf.fingerprint(..., method="farmhash64")``, whose output TensorFlow documents as stable
across platforms and versions. The TFDS id changes when the dataset is prepared again with a
different shard layout; the ids are stable for one prepared copy.
"""

from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
INT63_MASK = (1 << 63) - 1

# Stream constants: one independent family of draws per purpose.
STREAM_CORRUPT = 1  # Bernoulli(p): is the label redrawn / selected for permutation
STREAM_NEW_LABEL = 2  # the redrawn label
STREAM_PERMUTE = 3  # order of the permutation scheme
STREAM_FILES = 5  # streaming path: per-epoch file order seed (counter = epoch)
STREAM_BUFFER = 6  # streaming path: per-epoch shuffle buffer seed (counter = epoch)
STREAM_SUBSET = 16  # + k: evaluation subsets (k = 0, 1, 2)
STREAM_EPOCH = 1 << 32  # + epoch: epoch order of the in-memory path
STREAM_AUGMENT = 1 << 48  # + epoch: per-example augmentation seeds


def _u64(x) -> np.ndarray:
    return np.asarray(x).astype(np.uint64)


def splitmix64_np(x) -> np.ndarray:
    """SplitMix64 mixer on a ``uint64`` numpy array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = _u64(x) + np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))


def _seed_key_np(seed: int, stream: int) -> np.uint64:
    if seed < 0 or stream < 0:
        raise ValueError(f"seed and stream must be non-negative integers, got {seed}, {stream}.")
    return splitmix64_np(splitmix64_np(np.uint64(seed)) ^ np.uint64(stream))


def hash_bits_np(seed: int, ids, stream: int) -> np.ndarray:
    """64 random bits per id: ``mix(mix(mix(seed) ^ stream) + id)`` as ``uint64``.

    Args:
      seed: non-negative Python int.
      ids: integer array of example ids (int64 ids are reinterpreted as uint64).
      stream: non-negative int naming the purpose of the draw (the ``STREAM_*`` constants).

    Returns:
      ``uint64`` array with the shape of ``ids``.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be an integer array, got dtype {ids.dtype}.")
    key = _seed_key_np(int(seed), int(stream))
    with np.errstate(over="ignore"):
        return splitmix64_np(ids.astype(np.int64).view(np.uint64) + key)


def uniform_below_np(bits: np.ndarray, n) -> np.ndarray:
    """Map 64 random bits to an integer in ``[0, n)``: ``((bits >> 32) * n) >> 32``.

    The bias is below ``n / 2**32`` (at most 2.4e-7 for 1,000 classes).
    """
    return (((bits >> np.uint64(32)) * _u64(n)) >> np.uint64(32)).astype(np.int64)


def bernoulli_np(bits: np.ndarray, p: float) -> np.ndarray:
    """``True`` with probability ``p``: the top 53 bits compared with ``round(p * 2**53)``."""
    return (bits >> np.uint64(11)) < np.uint64(probability_threshold(p))


def probability_threshold(p: float) -> int:
    """Integer threshold in ``[0, 2**53]`` shared by the numpy and TensorFlow Bernoulli draws."""
    return int(round(float(p) * (1 << 53)))


# ----------------------------------------------------------------------------- TensorFlow


def _tf():
    from cgh_jax.data.tfimport import tensorflow

    return tensorflow()


def splitmix64_tf(x):
    """SplitMix64 mixer on a ``tf.uint64`` tensor; bit-identical to :func:`splitmix64_np`."""
    tf = _tf()
    c = lambda v: tf.constant(v, tf.uint64)
    z = x + c(GAMMA)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, c(30))) * c(MIX1)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, c(27))) * c(MIX2)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, c(31)))


def hash_bits_tf(seed: int, ids, stream: int):
    """TensorFlow twin of :func:`hash_bits_np`; ``ids`` is an int64 (or uint64) tensor.

    ``seed`` and ``stream`` are Python ints; ``stream`` may also be a ``tf.uint64`` scalar.
    """
    tf = _tf()
    ids = tf.convert_to_tensor(ids)
    if ids.dtype != tf.uint64:
        ids = tf.bitcast(tf.cast(ids, tf.int64), tf.uint64)
    seed_key = splitmix64_tf(tf.constant(int(_u64(seed)), tf.uint64))
    if isinstance(stream, int):
        stream = tf.constant(stream, tf.uint64)
    key = splitmix64_tf(tf.bitwise.bitwise_xor(seed_key, tf.cast(stream, tf.uint64)))
    return splitmix64_tf(ids + key)


def uniform_below_tf(bits, n: int):
    """TensorFlow twin of :func:`uniform_below_np`; returns int64."""
    tf = _tf()
    hi = tf.bitwise.right_shift(bits, tf.constant(32, tf.uint64))
    r = tf.bitwise.right_shift(hi * tf.constant(int(n), tf.uint64), tf.constant(32, tf.uint64))
    return tf.cast(r, tf.int64)


def bernoulli_tf(bits, p: float):
    """TensorFlow twin of :func:`bernoulli_np`."""
    tf = _tf()
    top = tf.bitwise.right_shift(bits, tf.constant(11, tf.uint64))
    return top < tf.constant(probability_threshold(p), tf.uint64)


def tfds_id_to_int_tf(tfds_id):
    """Stable int64 id in ``[0, 2**63)`` of TFDS record ids (a ``tf.string`` tensor)."""
    tf = _tf()
    flat = tf.reshape(tfds_id, [-1])
    fp = tf.bitcast(tf.fingerprint(flat, method="farmhash64"), tf.uint64)
    fp = tf.bitwise.bitwise_and(fp, tf.constant(INT63_MASK, tf.uint64))
    return tf.reshape(tf.cast(fp, tf.int64), tf.shape(tfds_id))


def tfds_id_to_int(tfds_ids) -> np.ndarray:
    """Numpy convenience wrapper of :func:`tfds_id_to_int_tf` for str/bytes ids."""
    tf = _tf()
    return tfds_id_to_int_tf(tf.constant(np.asarray(tfds_ids, dtype=object))).numpy()
