"""Dataset sizes for early checks: no image decoded, TensorFlow never imported."""

from __future__ import annotations

import json

import numpy as np

from cgh_jax.data import sources
from cgh_jax.data.sources import tfds_arrays
from cgh_jax.spec import data as data_spec


def _tfds_info_splits(spec) -> dict[str, int] | None:
    """Split sizes from a prepared copy's ``dataset_info.json`` (read as JSON)."""
    name, version = spec.name.partition(":")[::2]
    base = tfds_arrays.as_path(tfds_arrays.data_root(spec)) / name
    if not version:
        if not base.exists():
            return None
        versions = [d for d in base.iterdir() if (d / "dataset_info.json").exists()]
        if len(versions) != 1:
            return None
        info = versions[0] / "dataset_info.json"
    else:
        info = base / version / "dataset_info.json"
        if not info.exists():
            return None
    splits = json.loads(info.read_text()).get("splits", [])
    return {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in splits}


def _split_sizes(spec) -> dict[str, int] | None:
    if spec.source != "tfds":
        return sources.sizes(spec)
    cached = tfds_arrays.cached_version_dir(spec)
    if cached is not None:
        return json.loads((cached / "meta.json").read_text()).get("splits") or None
    return _tfds_info_splits(spec)


def _ids_count(path: str) -> int:
    return len(np.unique(np.load(path, mmap_mode="r")))


def known_sizes(data_config) -> tuple[int | None, int | None]:
    """``(num_train, num_test)`` as far as they are known without reading the data.

    From IDX headers, the file listing of an image folder, the fixed sizes of the packaged
    sources, ``.npy`` headers of an npz source, the array cache or ``dataset_info.json`` of
    a TFDS dataset, and the ``train_ids_file``/``test_ids_file`` lengths. ``None`` where a
    size is not known that way (a TFDS dataset not prepared locally, a sliced split name).

    Raises:
      DataError: the files of an offline source are missing or malformed.
    """
    spec = data_spec.parse(data_config)
    splits = _split_sizes(spec) or {}
    num_train = splits.get(spec.train_split) or None
    num_test = splits.get(spec.test_split) or None
    if spec.train_ids_file:
        num_train = _ids_count(spec.train_ids_file)
    if spec.test_ids_file:
        num_test = _ids_count(spec.test_ids_file)
    return num_train, num_test


__all__ = ["known_sizes"]
