"""IDX directories in the MNIST layout (MNIST, Fashion-MNIST, KMNIST), read into numpy.

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (``.`` instead of the last ``-`` is accepted too), each optionally
gzipped (``.gz``). Splits ``train`` and ``test``; the id of an example is its index in its
file; the number of classes is ``max(train label) + 1``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from cgh_jax.data.errors import DataError, DataNotFoundError
from cgh_jax.spec import data as data_spec

PREFIXES, KINDS = data_spec.IDX_PREFIXES, data_spec.IDX_KINDS


def expected_names() -> list[str]:
    return [f"{p}-{k}-{d}-ubyte[.gz]" for p in PREFIXES.values() for k, d in KINDS.items()]


def files(path: str) -> dict[tuple[str, str], str]:
    """``{(split, kind): file}`` of an IDX directory (:func:`cgh_jax.spec.data.idx_files`:
    its rule names what is missing)."""
    if not os.path.isdir(path):
        raise DataNotFoundError(
            f"IDX directory {path!r} does not exist; set config.data.path to a directory "
            f"holding {', '.join(expected_names())}."
        )
    return data_spec.idx_files(path)


def _read_bytes(path: str, limit: int | None = None) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            f"{path!r} is a truncated or corrupted gzip file ({e}); download it again."
        ) from None


def _header(path: str, head: bytes) -> tuple[tuple[int, ...], int]:
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
        raise DataError(
            f"{path!r} is not an IDX file of unsigned bytes (magic {head[:4]!r}, expected "
            "00 00 08 <ndim>); replace it with the original IDX file."
        )
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path!r} ends inside its IDX header; download it again.")
    shape = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    return tuple(int(d) for d in shape), 4 + 4 * ndim


def read_header(path: str) -> tuple[int, ...]:
    """The array shape stored in an IDX file's header (reads a few bytes only)."""
    return _header(path, _read_bytes(path, 4 + 4 * 255))[0]


def read(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) of unsigned bytes into a uint8 array."""
    raw = _read_bytes(path)
    shape, offset = _header(path, raw[:1024])
    data = np.frombuffer(raw, np.uint8, offset=offset)
    if data.size != int(np.prod(shape)):
        raise DataError(
            f"{path!r}: the header says {shape} ({int(np.prod(shape))} bytes) but the file "
            f"holds {data.size}; it is truncated or corrupted, download it again."
        )
    return data.reshape(shape)


def load(path: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [N, H, W, 1] uint8, labels [N] int64, ids [N] int64)`` of one split."""
    found = files(path)
    images = read(found[(split, "images")])
    labels = read(found[(split, "labels")])
    if images.ndim != 3:
        raise DataError(
            f"{found[(split, 'images')]!r} holds an array of shape {images.shape}; IDX image "
            "files hold [N, H, W]."
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{split}: {len(images)} images but labels of shape {labels.shape} in "
            f"{found[(split, 'labels')]!r}; the two files must belong together."
        )
    return images[..., None], labels.astype(np.int64), np.arange(len(images), dtype=np.int64)


def sizes(path: str) -> dict[str, int]:
    """Examples per split from the image files' headers."""
    found = files(path)
    return {s: read_header(found[(s, "images")])[0] for s in PREFIXES}
