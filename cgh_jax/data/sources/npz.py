"""Arrays in one ``.npz`` file (``config.data.path``): the quickest way to bring your own data.

Keys:

* ``x_train``, ``x_test``: uint8 images ``[N, H, W]`` (one channel) or ``[N, H, W, C]``.
* ``y_train``, ``y_test``: integer labels ``[N]`` in ``[0, num_classes)``; the number of
  classes is ``max(y_train, y_test) + 1``.
* ``id_train``, ``id_test`` (optional): unique integer example ids ``[N]`` (default: the
  row index). Label noise, evaluation subsets and epoch order are functions of the ids.

Write one with ``np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)``.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from cgh_jax.data.errors import DataError, DataNotFoundError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
SPLITS = ("train", "test")


def _open(path: str):
    if not os.path.isfile(path):
        raise DataNotFoundError(
            f"npz file {path!r} does not exist; set config.data.path to a .npz with "
            f"keys {REQUIRED} (see cgh_jax.data.sources.npz)."
        )
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path!r} is not a readable .npz file ({e}); write it with np.savez."
        ) from None
    missing = [k for k in REQUIRED if k not in arrays.files]
    if missing:
        raise DataError(
            f"npz file {path!r} lacks the keys {missing} (it has {sorted(arrays.files)}); "
            f"it needs {REQUIRED} and may have id_train, id_test."
        )
    return arrays


def _split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(
            f"source='npz' has the splits 'train' and 'test', not {split!r}; set "
            "config.data.train_split / test_split to them."
        )
    return split


def load(path: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [N, H, W, C] uint8, labels, ids)`` of ``split``."""
    split = _split(split)
    with _open(path) as arrays:
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        key = f"id_{split}"
        ids = arrays[key] if key in arrays.files else np.arange(len(images))
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"{path!r}: x_{split} is {images.dtype} of shape {images.shape}; store uint8 "
            "images of shape [N, H, W] or [N, H, W, C]."
        )
    if labels.dtype.kind not in "iu" or ids.dtype.kind not in "iu":
        raise DataError(
            f"{path!r}: y_{split} ({labels.dtype}) and id_{split} ({ids.dtype}) must hold integers."
        )
    return images, labels.astype(np.int64), ids.astype(np.int64)


def num_classes(path: str) -> int:
    with _open(path) as arrays:
        top = max(int(arrays[k].max(initial=0)) for k in ("y_train", "y_test"))
    return top + 1


def sizes(path: str) -> dict[str, int]:
    """Examples per split from the ``.npy`` headers inside the archive (no array is read)."""
    _open(path).close()  # existence and keys
    out = {}
    with zipfile.ZipFile(path) as archive:
        for split in SPLITS:
            with archive.open(f"x_{split}.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(f)
            out[split] = int(shape[0])
    return out
