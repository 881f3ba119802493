"""Image folders (the raw ImageNet layout), listed and decoded with Pillow.

Layout: ``<path>/train/<class>/*.jpg`` and ``<path>/<test>/<class>/*.jpg`` where ``<test>``
is the first of ``test``, ``val``, ``validation`` that exists. Classes are the sorted
sub-directory names of ``train`` (label = position); the test split must have exactly the
same class directories. Image files (``.jpg``, ``.jpeg``, ``.png``, any case) are taken in
sorted file-name order within a class, classes in label order; an example's id is its
position in that listing. Files whose name starts with ``.`` are ignored; any other file,
an empty class directory or a file that does not decode is refused with a
:class:`~cgh_jax.data.errors.DataError`.

Decoding: Pillow, converted to RGB (grey images replicated, alpha dropped, palettes
expanded), the conversions ``tf.io.decode_image(channels=3)`` makes. Pillow and TensorFlow
both decode JPEG with libjpeg(-turbo)'s defaults (integer "islow" DCT, fancy upsampling).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cgh_jax.data.errors import DataError, DataNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TEST_DIRS = ("test", "val", "validation")


class Listing(NamedTuple):
    """The files of one split: paths and labels in id order (id = position)."""

    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def split_dir(path: str, split: str) -> str:
    """The directory of ``split`` (``train`` or ``test``; ``test`` may be val/validation)."""
    if not os.path.isdir(path):
        raise DataNotFoundError(
            f"image folder {path!r} does not exist; set config.data.path to a directory with "
            "train/<class>/*.jpg and test/<class>/*.jpg."
        )
    if split == "train":
        candidates = ("train",)
    elif split == "test":
        candidates = TEST_DIRS
    else:
        raise DataError(
            f"image folders have the splits 'train' and 'test', not {split!r}; set "
            "config.data.train_split='train' and test_split='test'."
        )
    for name in candidates:
        if os.path.isdir(os.path.join(path, name)):
            return os.path.join(path, name)
    raise DataNotFoundError(
        f"image folder {path!r} has no {' or '.join(candidates)} directory (it has "
        f"{sorted(os.listdir(path))}); expected <path>/train/<class>/*.jpg and "
        "<path>/test/<class>/*.jpg (or val/, validation/)."
    )


def classes(path: str) -> tuple[str, ...]:
    """The class names (sorted sub-directories of ``train``), checked against the test split."""
    train = _class_dirs(split_dir(path, "train"))
    if not train:
        raise DataError(
            f"{split_dir(path, 'train')!r} has no class sub-directories; put the images of "
            "class c in train/c/."
        )
    test_root = split_dir(path, "test")
    test = _class_dirs(test_root)
    if test != train:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise DataError(
            f"the class directories of train/ and {os.path.basename(test_root)}/ in {path!r} "
            f"differ (only in train: {only_train}; only in {os.path.basename(test_root)}: "
            f"{only_test}; train: {train}); give both splits the same class directories."
        )
    return tuple(train)


def _files(folder: str, name: str) -> list[str]:
    names = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    others = [
        f
        for f in names
        if not f.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(os.path.join(folder, f))
    ]
    if others:
        raise DataError(
            f"class {name!r} holds {len(others)} entries that are not image files (e.g. "
            f"{os.path.join(folder, others[0])!r}); keep only {IMAGE_EXTENSIONS} files in "
            "class directories."
        )
    if not names:
        raise DataError(f"class directory {folder!r} is empty; add its images or remove it.")
    return [os.path.join(folder, f) for f in names]


def listing(path: str, split: str) -> Listing:
    """Lists ``split`` without decoding anything."""
    names = classes(path)
    root = split_dir(path, split)
    paths, labels = [], []
    for label, name in enumerate(names):
        files = _files(os.path.join(root, name), name)
        paths += files
        labels += [label] * len(files)
    return Listing(names, tuple(paths), np.asarray(labels, np.int64))


def count(path: str, split: str) -> int:
    """Image files in ``split`` (a directory listing; nothing is opened)."""
    return len(listing(path, split).paths)


def decode(file: str, class_name: str) -> np.ndarray:
    """One image file -> uint8 ``[H, W, 3]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"file {file!r} of class {class_name!r} is not a readable image ({e}); replace "
            "or remove it."
        ) from None


def header_size(file: str) -> tuple[int, int]:
    """``(height, width)`` from an image file's header (nothing decoded)."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            return image.height, image.width
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"file {file!r} is not a readable image ({e}); replace or remove it."
        ) from None


def load(
    path: str, split: str, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decodes ``split``: ``(images [N, H, W, 3] uint8, labels, ids)``.

    Args:
      transform: applied to every decoded image (e.g. a resize), in parallel threads.

    Raises:
      DataError: unreadable files, or images of different sizes without a ``transform``
        that makes them equal.
    """
    files = listing(path, split)

    def one(i):
        image = decode(files.paths[i], files.classes[files.labels[i]])
        return image if transform is None else transform(image)

    workers = min(32, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(one, range(len(files.paths)), chunksize=256))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        lo, hi = min(shapes), max(shapes)
        raise DataError(
            f"the images of {path!r} vary in size (e.g. {lo} and {hi}); set "
            "config.data.image_size (and resize_size) to hold them in memory, or stream them "
            "with cache=False."
        )
    return np.stack(images), files.labels, np.arange(len(images), dtype=np.int64)
