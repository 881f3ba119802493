"""Deterministic label corruption: a pure function of (seed, example id, true label).

Three schemes, with ``p`` the noise fraction and ``C`` the number of classes:

* ``"uniform"`` (Zielinski et al. 2020): with probability ``p`` the label is redrawn
  uniformly over *all* ``C`` classes, so it may stay the same. An example is corrupt iff its
  label changed, so the expected corrupt fraction is :math:`p (1 - 1/C)`.
* ``"uniform_other"``: with probability ``p`` the label is redrawn uniformly over the
  ``C - 1`` *other* classes; the corrupt fraction is ``p``.
* ``"permute"`` (Chatterjee 2020): a Bernoulli(``p``) subset is selected and the labels of
  the subset are permuted among themselves (uniformly random permutation). The class
  histogram is preserved; an example is corrupt iff its label changed. The result depends on
  the *whole set* of ids passed, so call it once on the complete training split. Inside the
  input pipeline it is available wherever the training labels are held in memory
  (``config.data.cache = True``: every offline source and TFDS datasets up to CIFAR/MNIST
  size); the streaming ImageNet path refuses it with a ``ValueError``.

For ``uniform`` and ``uniform_other`` the noisy label of an example depends only on
``(seed, id, true label)``: it is the same regardless of batch order, host count or the
subset it is computed in. All draws use :func:`cgh_jax.data.ids.hash_bits_np` (numpy) and its
bit-identical TensorFlow twin, so :func:`corrupt_labels` and :func:`corrupt_labels_tf` agree
exactly.

References:
  Zielinski, Krishnan & Chatterjee, *Weak and Strong Gradient Directions: Explaining
  Memorization, Generalization, and Hardness of Examples at Scale*, arXiv:2003.07422.
  Chatterjee, *Coherent Gradients: An Approach to Understanding Generalization in Gradient
  Descent-based Optimization*, ICLR 2020.
"""

from __future__ import annotations

import numpy as np

from cgh_jax import choices
from cgh_jax.data import ids as ids_lib
from cgh_jax.spec.data import check_noise

SCHEMES = choices.NOISE_SCHEMES
STREAMING_SCHEMES = choices.STREAMING_NOISE_SCHEMES


def validate_noise(fraction, scheme: str, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` for a noise fraction outside [0, 1] or an unknown scheme (the
    rule of :func:`cgh_jax.spec.data.check_noise`), or fewer than 2 classes."""
    check_noise(float(fraction) if isinstance(fraction, np.floating) else fraction, scheme)
    if num_classes is not None and int(num_classes) < 2:
        raise ValueError(f"label corruption needs at least 2 classes, got {num_classes}.")


def corrupt_labels(
    example_ids,
    labels,
    *,
    num_classes: int,
    fraction: float,
    seed: int,
    scheme: str = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupts labels deterministically from ``(seed, id, label)``.

    Args:
      example_ids: 1-D integer array of stable example ids (unique for ``"permute"``).
      labels: 1-D integer array of true labels in ``[0, num_classes)``, same length.
      num_classes: number of classes ``C >= 2``.
      fraction: noise fraction ``p`` in ``[0, 1]``.
      seed: non-negative int; different seeds give independent corruptions.
      scheme: ``"uniform"``, ``"uniform_other"`` or ``"permute"`` (see the module docstring).

    Returns:
      ``(noisy_labels, is_corrupt)``: int64 labels and a bool mask ``noisy != labels``.

    Example:
      >>> import numpy as np
      >>> from cgh_jax.data import corrupt_labels
      >>> noisy, bad = corrupt_labels(np.arange(6), np.zeros(6, int), num_classes=10,
      ...                             fraction=1.0, seed=0, scheme="uniform_other")
      >>> bool(bad.all()), bool((noisy != 0).all())
      (True, True)
    """
    validate_noise(fraction, scheme, num_classes)
    ids = np.asarray(example_ids)
    labels = np.asarray(labels)
    if ids.ndim != 1 or labels.shape != ids.shape:
        raise ValueError(
            "example_ids and labels must be 1-D arrays of the same length, got shapes "
            f"{ids.shape} and {labels.shape}."
        )
    if ids.dtype.kind not in "iu" or labels.dtype.kind not in "iu":
        raise ValueError(
            f"example_ids and labels must be integer arrays, got {ids.dtype}, {labels.dtype}."
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]."
        )
    seed = int(seed)
    selected = ids_lib.bernoulli_np(
        ids_lib.hash_bits_np(seed, ids, ids_lib.STREAM_CORRUPT), fraction
    )
    if scheme == "permute":
        noisy = _permute_selected(ids, labels, selected, seed)
    else:
        bits = ids_lib.hash_bits_np(seed, ids, ids_lib.STREAM_NEW_LABEL)
        if scheme == "uniform":
            drawn = ids_lib.uniform_below_np(bits, num_classes)
        else:
            r = ids_lib.uniform_below_np(bits, num_classes - 1)
            drawn = r + (r >= labels)
        noisy = np.where(selected, drawn, labels)
    return noisy, noisy != labels


def _permute_selected(ids, labels, selected, seed):
    if np.unique(ids).size != ids.size:
        raise ValueError("scheme='permute' needs unique example ids; got duplicates.")
    noisy = labels.copy()
    chosen = np.flatnonzero(selected)
    chosen = chosen[np.argsort(ids[chosen], kind="stable")]  # canonical order: by id
    keys = ids_lib.hash_bits_np(seed, ids[chosen], ids_lib.STREAM_PERMUTE)
    noisy[chosen] = labels[chosen][np.argsort(keys, kind="stable")]
    return noisy


def corrupt_labels_tf(
    example_ids, labels, *, num_classes: int, fraction: float, seed: int, scheme: str = "uniform"
):
    """TensorFlow version of :func:`corrupt_labels` for use inside ``tf.data`` maps.

    Works on tensors of any shape (elementwise). Only the per-example schemes ``"uniform"``
    and ``"uniform_other"`` exist here; ``"permute"`` needs every label at once.

    Returns:
      ``(noisy_labels, is_corrupt)`` as int64 and bool tensors.
    """
    from cgh_jax.data.tfimport import tensorflow

    tf = tensorflow()
    validate_noise(fraction, scheme, num_classes)
    if scheme not in STREAMING_SCHEMES:
        raise ValueError(
            f"scheme {scheme!r} needs all training labels at once and cannot run inside a "
            "streaming tf.data pipeline; use 'uniform' or 'uniform_other', or hold the labels "
            "in memory (config.data.cache=True) and call corrupt_labels."
        )
    labels = tf.cast(labels, tf.int64)
    seed = int(seed)
    selected = ids_lib.bernoulli_tf(
        ids_lib.hash_bits_tf(seed, example_ids, ids_lib.STREAM_CORRUPT), fraction
    )
    bits = ids_lib.hash_bits_tf(seed, example_ids, ids_lib.STREAM_NEW_LABEL)
    if scheme == "uniform":
        drawn = ids_lib.uniform_below_tf(bits, num_classes)
    else:
        r = ids_lib.uniform_below_tf(bits, num_classes - 1)
        drawn = r + tf.cast(r >= labels, tf.int64)
    noisy = tf.where(selected, drawn, labels)
    return noisy, tf.not_equal(noisy, labels)
