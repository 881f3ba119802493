"""The training examples exactly as the trainer sees them, and seeded subsets of them.

* :func:`train_examples` -- chosen fields of every training example, in the data layer's
  order (after ``train_ids_file`` filtering).
* :func:`training_labels` -- ids, noisy and true labels of every training example, in id
  order; :func:`noise_counts` -- how many are pristine and corrupt.
* :func:`write_subsets` -- one seeded permutation of the training ids cut into disjoint
  parts, written as ``train_ids_file``/``test_ids_file`` id files.
* :func:`sample_examples` -- a seeded random sample of training examples (e.g. the fixed
  sample of an m-coherence measurement).

The data package (TensorFlow for some sources) is imported only when data is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np


def train_examples(data_config, keys: Sequence[str], batch_size: int = 2000) -> dict[str, Any]:
    """The given fields of every training example, in the data layer's order (after
    ``train_ids_file`` filtering), exactly as the trainer sees them."""
    from cgh_jax import data

    parts = {k: [] for k in keys}
    for batch in data.full_train_eval_batches(data_config, global_batch_size=batch_size):
        keep = np.asarray(batch["mask"], bool)
        for k in keys:
            parts[k].append(np.asarray(batch[k])[keep])
    return {k: np.concatenate(v) for k, v in parts.items()}


@cache
def _labels(fingerprint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = ml_collections.ConfigDict(json.loads(fingerprint))
    got = train_examples(cfg, ("id", "label", "true_label"))
    order = np.argsort(got["id"], kind="stable")
    return got["id"][order], got["label"][order], got["true_label"][order]


def training_labels(data_config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, noisy_labels, true_labels)`` of every training example, in id order."""
    return _labels(json.dumps(data_config.to_dict(), sort_keys=True))


def write_subsets(data_config, sizes: Mapping[str, int], seed: int, directory) -> dict[str, Path]:
    """Cuts one seeded permutation of the training ids (``default_rng(seed)``, the config's
    own ``train_ids_file`` ignored) into consecutive parts of the given sizes, e.g.
    ``{"train": 2000, "heldout": 2000}``; writes ``<name>_<size>_seed<seed>.npy`` (sorted
    int64 ids) into ``directory`` and returns name -> path."""
    cfg = ml_collections.ConfigDict(data_config.to_dict())
    cfg.train_ids_file = cfg.test_ids_file = None
    cfg.noise = 0.0
    ids, _, _ = training_labels(cfg)
    if min(sizes.values()) < 1 or sum(sizes.values()) > ids.size:
        raise ValueError(
            f"Subset sizes {dict(sizes)} must be positive and sum to at most {ids.size}."
        )
    perm = np.random.default_rng(seed).permutation(ids)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, size in sizes.items():
        part = np.sort(perm[start : start + size]).astype(np.int64)
        start += size
        path = paths[name] = directory / f"{name}_{size}_seed{seed}.npy"
        if not (path.exists() and np.array_equal(np.load(path), part)):
            np.save(path, part)
    return paths


def noise_counts(data_config) -> tuple[int, int]:
    """``(num_pristine, num_corrupt)`` training examples under the config's label noise."""
    _, labels, true = training_labels(data_config)
    corrupt = int(np.sum(labels != true))
    return int(labels.size - corrupt), corrupt


def sample_examples(data_config, size: int, seed: int) -> dict[str, np.ndarray]:
    """A seeded random sample (``default_rng(seed)``) of ``size`` training examples: their
    ``image``, and the ``label`` trained on and ``true_label`` as int32."""
    got = train_examples(data_config, ("image", "label", "true_label"), batch_size=500)
    if got["label"].size < size:
        raise ValueError(f"The training set has {got['label'].size} examples, fewer than {size}.")
    pick = np.sort(np.random.default_rng(seed).choice(got["label"].size, size, replace=False))
    return {k: v[pick] if k == "image" else v[pick].astype(np.int32) for k, v in got.items()}


def fit_eval_subset(data_config, cap: int) -> int:
    """Sets ``eval_subset_size`` to the largest size <= ``cap`` that the pristine and corrupt
    sets allow (the data layer draws that many from each; few are pristine at high noise)."""
    pristine, corrupt = noise_counts(data_config)
    sizes = [cap, pristine + corrupt, pristine] + ([corrupt] if data_config.noise > 0 else [])
    data_config.eval_subset_size = int(min(s for s in sizes if s > 0))
    return data_config.eval_subset_size


__all__ = [
    "fit_eval_subset",
    "noise_counts",
    "sample_examples",
    "train_examples",
    "training_labels",
    "write_subsets",
]
