"""A decoded split held in memory."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cgh_jax.data.errors import DataError

MAX_IN_MEMORY_BYTES = 32 * 2**30  # decoded uint8 images of one split held in memory


def check_fits_in_memory(num: int, height: int, width: int, channels: int, what: str) -> None:
    """Refuses, before decoding, a split whose uint8 images exceed ``MAX_IN_MEMORY_BYTES``."""
    needed = num * height * width * channels
    if needed > MAX_IN_MEMORY_BYTES:
        raise DataError(
            f"{what} needs {needed / 2**30:.1f} GiB as decoded uint8 images (limit "
            f"{MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); stream it with config.data.cache=False."
        )


class Table(NamedTuple):
    """A decoded split: uint8 images [N, H, W, C], int64 labels [N], int64 ids [N]."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


def sorted_table(images, labels, ids, what: str) -> Table:
    """The rows sorted by id (stable); refuses duplicate ids and ragged lengths."""
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).ravel()
    ids = np.asarray(ids).astype(np.int64).ravel()
    if not len(images) == len(labels) == len(ids):
        raise DataError(
            f"{what}: {len(images)} images, {len(labels)} labels and {len(ids)} ids; give "
            "one label and one id per image."
        )
    if images.dtype != np.uint8:
        raise DataError(f"{what}: images are {images.dtype}; store them as uint8 (0..255).")
    order = np.argsort(ids, kind="stable")
    table = Table(images[order], labels[order], ids[order])
    if np.any(table.ids[1:] == table.ids[:-1]):
        dup = table.ids[1:][table.ids[1:] == table.ids[:-1]][:5].tolist()
        raise DataError(f"{what} has duplicate example ids (e.g. {dup}); make the ids unique.")
    return table
