"""TFDS datasets held in memory (``source='tfds'``, ``cache=True``) through an array cache.

The first read of a split goes through TFDS and TensorFlow (decode, and the resize that
``image_size``/``resize_size`` ask for, exactly as before), and its arrays are written to

  ``<data_dir>/cgh_arrays/<name>/<version>/<split>-<image_size>x<resize_size>.npz``

(``images`` uint8, ``labels`` int64, ``ids`` int64 sorted; ids are the hashed ``tfds_id``
of :mod:`cgh_jax.data.ids`) next to a ``meta.json`` (classes, channels, split sizes, the
prepared copy it came from). ``<data_dir>`` is ``config.data.data_dir``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``; it may be ``gs://...``. Later reads, on
any host, load these files with numpy and never import TensorFlow: same ids, so the same
label corruption, evaluation subsets and epoch order.

Files are written under a temporary name and renamed, so a reader never sees half a file.
With several processes (``jax.process_count() > 1``) process 0 writes while the others wait
at a barrier of the ``jax.distributed`` coordination service, then every process reads; a
process that still finds no cache (a data dir local to each host) reads through TFDS itself.
The cache is written only for a copy that TFDS prepared in that data dir (not for
``tfds.testing.mock_data`` without a ``data_dir``). A name without a version (``cifar10``)
reads the only cached version; pin one (``cifar10:3.0.2``) when several are cached. Delete
``<data_dir>/cgh_arrays/<name>`` after preparing the dataset again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re

import numpy as np

from cgh_jax.data import reader
from cgh_jax.data import table as table_lib
from cgh_jax.data.errors import DataError
from cgh_jax.data.table import Table, sorted_table
from cgh_jax.spec.data import DataSpec

CACHE_DIR = "cgh_arrays"


def as_path(p: str):
    """A local or remote (gs://) path as an ``etils.epath.Path``."""
    from etils import epath  # a dependency of orbax; handles local paths and gs://

    return epath.Path(p)


def data_root(spec: DataSpec) -> str:
    """The TFDS data dir that ``spec`` reads (without importing TFDS)."""
    default = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return spec.data_dir or os.environ.get("TFDS_DATA_DIR") or default


def _name_and_version(spec: DataSpec) -> tuple[str, str | None]:
    name, _, version = spec.name.partition(":")
    return name, (version or None)


def _file_name(split: str, spec: DataSpec) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
    if safe != split:
        safe += "_" + hashlib.sha1(split.encode()).hexdigest()[:8]
    return f"{safe}-{spec.image_size}x{spec.resize_size}.npz"


def cached_version_dir(spec: DataSpec):
    """The cache directory of ``spec``'s dataset, or None where nothing is cached."""
    name, version = _name_and_version(spec)
    base = as_path(data_root(spec)) / CACHE_DIR / name
    if version is not None:
        d = base / version
        return d if (d / "meta.json").exists() else None
    if not base.exists():
        return None
    found = sorted(d for d in base.iterdir() if (d / "meta.json").exists())
    if len(found) > 1:
        raise DataError(
            f"the array cache {os.fspath(base)!r} holds several versions "
            f"({[d.name for d in found]}); pin one in config.data.name (e.g. "
            f"'{name}:{found[-1].name}') or delete the others."
        )
    return found[0] if found else None


def meta(spec: DataSpec) -> dict:
    """``num_classes``, ``channels``, ``native_shape`` (from the cache, else from TFDS)."""
    cached = cached_version_dir(spec)
    if cached is not None:
        return json.loads((cached / "meta.json").read_text())
    return _builder_meta(reader.get_builder(spec))


def _builder_meta(builder) -> dict:
    splits = {}
    for name, split in builder.info.splits.items():
        splits[name] = int(split.num_examples)
    return {
        "name": builder.name,
        "version": str(builder.version),
        "num_classes": reader.num_classes(builder),
        "channels": reader.channels(builder),
        "native_shape": list(reader.native_shape(builder)),
        "splits": splits,
        "tfds_data_dir": os.fspath(builder.data_dir),
    }


def _read(path) -> Table:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
        return Table(f["images"], f["labels"], f["ids"])


def _write_atomic(path, payload: bytes) -> None:
    """Writes ``path`` under a temporary name, then renames it over any older copy."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.write_bytes(payload)
    try:
        if "://" in os.fspath(path):
            tmp.replace(path)  # object stores: copy + delete, readers see old or new
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _is_local_copy(builder, spec: DataSpec) -> bool:
    """True when TFDS reads a copy prepared under ``spec``'s data dir (never under mocks that
    inject their own data dir)."""
    root = os.path.normpath(os.fspath(data_root(spec)))
    here = os.path.normpath(os.fspath(builder.data_dir))
    return here == root or here.startswith(root.rstrip("/") + "/")


def _write(builder, spec: DataSpec, split: str, table: Table) -> None:
    name, _ = _name_and_version(spec)
    version_dir = as_path(data_root(spec)) / CACHE_DIR / name / str(builder.version)
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, images=table.images, labels=table.labels, ids=table.ids)
        _write_atomic(version_dir / _file_name(split, spec), buf.getvalue())
        meta_path = version_dir / "meta.json"  # written last: marks the cache usable
        info = json.loads(meta_path.read_text()) if meta_path.exists() else _builder_meta(builder)
        if split.isidentifier():  # a whole split (not a slice): its size is now known
            info["splits"][split] = len(table.ids)
        _write_atomic(meta_path, json.dumps(info, indent=1).encode())
    except OSError as e:  # a read-only data dir: keep going without the cache
        import logging

        logging.warning("could not write the array cache in %s (%s).", version_dir, e)


def _cached_file(spec: DataSpec, split: str):
    cached = cached_version_dir(spec)
    if cached is None:
        return None
    f = cached / _file_name(split, spec)
    return f if f.exists() else None


BARRIER_TIMEOUT_S = 4 * 3600  # the first read of a large split may take long
_barriers = 0


def _sync(tag: str) -> None:
    """Waits until every process has reached ``tag`` (:func:`cgh_jax.distributed.barrier`:
    the coordination service, so a long wait while process 0 reads through TFDS runs into
    no collective timeout; orbax waits the same way)."""
    global _barriers
    import jax

    from cgh_jax import distributed

    if jax.process_count() <= 1:
        return
    _barriers += 1  # every process loads the same splits in the same order
    distributed.barrier(f"{tag}:{_barriers}", BARRIER_TIMEOUT_S)


def load_table(spec: DataSpec, split: str) -> Table:
    """``split`` from the array cache, reading it through TFDS (and writing the cache) first
    where it is missing. Every process must call this for the same splits in the same order
    (it holds a barrier when there are several processes)."""
    import jax

    multi = jax.process_count() > 1
    found = _cached_file(spec, split)
    table = None
    if found is None and (not multi or jax.process_index() == 0):
        builder = reader.get_builder(spec)
        table = read_through_tfds(builder, spec, split)
        if _is_local_copy(builder, spec):
            _write(builder, spec, split, table)
    if multi:  # every process, cached or not: the barrier must be matched
        _sync(f"cgh_arrays:{spec.name}:{split}:{spec.image_size}x{spec.resize_size}")
        if table is None and found is None:
            found = _cached_file(spec, split)
            if found is None:  # a data dir of this host only: read it here
                table = read_through_tfds(reader.get_builder(spec), spec, split)
    return table if table is not None else _read(found)


# ----------------------------------------------------------------------------- TFDS read


def _check_fits_in_memory(builder, split, spec, native, channels) -> None:
    """Refuses (before reading) splits whose decoded images exceed ``MAX_IN_MEMORY_BYTES``."""
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        return  # unknown size (e.g. mocked data): nothing to check cheaply
    if spec.image_size > 0:
        height = width = spec.image_size
    elif None in native[:2]:
        return  # variable native sizes are rejected after decoding
    else:
        height, width = native[:2]
    what = f"split {split!r} of {builder.name!r}"
    table_lib.check_fits_in_memory(n, height, width, channels, what)


def read_through_tfds(builder, spec: DataSpec, split: str) -> Table:
    """Reads and decodes one split with TensorFlow (resized with ``eval_resize_tf``)."""
    from cgh_jax.data import preprocess
    from cgh_jax.data.tfimport import tensorflow

    tf = tensorflow()
    channels = reader.channels(builder)
    native = reader.native_shape(builder)
    resize = spec.resize_size > 0 or (
        spec.image_size > 0 and tuple(native[:2]) != (spec.image_size, spec.image_size)
    )
    _check_fits_in_memory(builder, split, spec, native, channels)

    def decode(ex):
        image = preprocess.decode_tf(ex["image"], channels)
        if resize:
            image = preprocess.eval_resize_tf(
                image, image_size=spec.image_size, resize_size=spec.resize_size
            )
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return image, tf.shape(image), ex["label"], ex["id"]

    ds = reader.open_split(builder, split).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    # Stored sizes may vary: pad per batch, then insist that none was needed.
    fixed = resize or None not in native
    ds = ds.batch(4096) if fixed else ds.padded_batch(4096)
    parts = list(ds.prefetch(2).as_numpy_iterator())
    if not parts:
        raise DataError(f"split {split!r} of {builder.name!r} is empty; check the split name.")
    shapes = np.concatenate([p[1] for p in parts])
    if np.any(shapes != shapes[0]):
        raise DataError(
            f"the images of {builder.name!r} vary in size (e.g. {tuple(shapes.min(0))} and "
            f"{tuple(shapes.max(0))}); set config.data.image_size (and resize_size) to hold "
            "them in memory, or stream them with cache=False."
        )
    images = np.concatenate([p[0][:, : shapes[0][0], : shapes[0][1]] for p in parts])
    labels, ids = (np.concatenate([p[i] for p in parts]) for i in (2, 3))
    return sorted_table(images, labels, ids, f"split {split!r} of {builder.name!r}")
