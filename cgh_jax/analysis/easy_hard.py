"""Easy/hard example splits (Zielinski, Krishnan & Chatterjee 2020, section 4).

Train briefly with SGD on clean data (the paper: 2 epochs on ImageNet), record
for every training example whether the model classifies it correctly in
evaluation mode (``workdir/per_example/epoch_XXX.npz``, written by
:mod:`cgh_jax.train`), and call an example *easy* if it is correct, *hard*
otherwise. ``correct`` is measured against the label trained on, so the
records should come from a run on clean data (the summary counts noisy labels).
Each side is then cut, at random but reproducibly, into disjoint train and test
parts of equal sizes on both sides (ImageNet: 500K train and 100K test per
side). Training on ``easy_train`` and testing on ``easy_test``
(and likewise for hard) shows that easy examples generalize better among
themselves than hard ones; :func:`verdict` says whether they did, against twice the
seed spread.

The id files plug into the data config: ``train_ids_file`` restricts training
to those ids and ``test_ids_file`` evaluates on those ids of the *train* split
with their true labels::

  config.data.train_ids_file = f"{out_dir}/easy_train.npy"
  config.data.test_ids_file = f"{out_dir}/easy_test.npy"
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cgh_jax.analysis import stats

SPLIT_NAMES = ("easy_train", "easy_test", "hard_train", "hard_test")
SUMMARY_FILENAME = "easy_hard_summary.json"
_REQUIRED_KEYS = ("id", "correct")


def load_records(records_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a per-example records file and checks it.

    Args:
      records_path: an ``epoch_XXX.npz`` with at least ``id`` (int) and
        ``correct`` (bool) of equal length; ``loss``, ``label`` and
        ``true_label`` are kept when present.

    Returns:
      A dict of numpy arrays.

    Raises:
      FileNotFoundError: if the file is missing.
      ValueError: on missing keys, mismatched lengths or duplicate ids.
    """
    path = os.fspath(records_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No per-example records at {path!r}: they are written by cgh_jax.train as "
            "workdir/per_example/epoch_XXX.npz when per-example records are enabled."
        )
    with np.load(path) as data:
        records = {k: np.asarray(data[k]) for k in data.files}
    missing = [k for k in _REQUIRED_KEYS if k not in records]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing}; it has {sorted(records)}.")
    n = records["id"].shape[0]
    for key, value in records.items():
        if value.ndim != 1 or value.shape[0] != n:
            raise ValueError(
                f"{path}: every array must be 1-D with {n} entries (like 'id'); "
                f"{key!r} has shape {value.shape}."
            )
    if not np.issubdtype(records["id"].dtype, np.integer):
        raise ValueError(f"{path}: 'id' must hold integers, got {records['id'].dtype}.")
    if np.unique(records["id"]).size != n:
        raise ValueError(f"{path}: 'id' has duplicates; each example must appear once.")
    records["correct"] = records["correct"].astype(bool)
    records["id"] = records["id"].astype(np.int64)
    return records


def _resolve_size(size: int | float, available: int, name: str) -> int:
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}.")
    if isinstance(size, int | np.integer):
        if size < 0:
            raise ValueError(f"{name} must be >= 0, got {size}.")
        return int(size)
    if isinstance(size, float | np.floating):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"{name} as a fraction must lie in [0, 1], got {size}.")
        # Floor, forgiving binary round-off (0.29 * 100 == 28.999...).
        return int(np.floor(size * available + 1e-9))
    raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}.")


def split_easy_hard(
    ids: np.ndarray,
    correct: np.ndarray,
    *,
    train_size: int | float,
    test_size: int | float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Splits ids into easy/hard, then each side into disjoint train/test parts.

    Both sides get the same sizes. An int is a count of examples per side; a
    float is a fraction of the *smaller* side (so ``train_size=0.8,
    test_size=0.2`` uses all of the smaller side and as many of the larger).
    Each side is permuted by its own generator derived from ``seed``; the
    result depends only on the set of ``(id, correct)`` pairs, not on their
    order.

    Args:
      ids: int ids, ``[n]``, unique.
      correct: bool, ``[n]``: the example is easy iff correct.
      train_size: examples per side in the train part (int) or fraction.
      test_size: examples per side in the test part (int) or fraction.
      seed: random seed.

    Returns:
      ``{'easy_train', 'easy_test', 'hard_train', 'hard_test'}`` -> sorted
      int64 id arrays.

    Raises:
      ValueError: if a side has fewer than ``train_size + test_size`` examples.

    Example:
      >>> import numpy as np
      >>> s = split_easy_hard(np.arange(10), np.arange(10) % 2 == 0,
      ...                     train_size=3, test_size=2, seed=0)
      >>> [len(s[k]) for k in ("easy_train", "easy_test", "hard_train", "hard_test")]
      [3, 2, 3, 2]
    """
    ids = np.asarray(ids)
    correct = np.asarray(correct).astype(bool)
    if ids.ndim != 1 or ids.shape != correct.shape:
        raise ValueError(
            f"ids and correct must be 1-D of equal length, got {ids.shape} and {correct.shape}."
        )
    if np.unique(ids).size != ids.size:
        raise ValueError("ids has duplicates; each example must appear once.")
    sides = {"easy": np.sort(ids[correct]), "hard": np.sort(ids[~correct])}
    smaller = min(side.size for side in sides.values())
    n_train = _resolve_size(train_size, smaller, "train_size")
    n_test = _resolve_size(test_size, smaller, "test_size")
    for name, side in sides.items():
        if side.size < n_train + n_test:
            raise ValueError(
                f"The {name} side has {side.size} examples (easy: {sides['easy'].size}, hard: "
                f"{sides['hard'].size}), fewer than train_size + test_size = "
                f"{n_train} + {n_test}. Ask for smaller sizes, or fractions of the smaller side "
                f"(e.g. train_size=0.8, test_size=0.2)."
            )
    easy_seq, hard_seq = np.random.SeedSequence(seed).spawn(2)
    out = {}
    for (name, side), seq in zip(sides.items(), (easy_seq, hard_seq), strict=True):
        perm = np.random.default_rng(seq).permutation(side)
        out[f"{name}_train"] = np.sort(perm[:n_train]).astype(np.int64)
        out[f"{name}_test"] = np.sort(perm[n_train : n_train + n_test]).astype(np.int64)
    return out


def _class_counts(records: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, int] | None:
    if "true_label" not in records:
        return None
    labels = records["true_label"][np.isin(records["id"], ids)]
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def make_easy_hard_splits(
    records_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    train_size: int | float,
    test_size: int | float,
    seed: int,
) -> dict[str, Any]:
    """Writes the easy/hard train/test id files from a per-example records file.

    Writes ``easy_train.npy``, ``easy_test.npy``, ``hard_train.npy``,
    ``hard_test.npy`` (sorted int64 ids) and ``easy_hard_summary.json`` (sizes,
    accuracy of the records, seed, number of noisy labels and per-class counts of
    the true labels when the records have labels) into ``out_dir``.

    Args:
      records_path: ``workdir/per_example/epoch_XXX.npz`` (see :func:`load_records`).
      out_dir: output directory (created if missing).
      train_size: per-side train size: int count (ImageNet: 500_000) or float
        fraction of the smaller side.
      test_size: per-side test size: int count (ImageNet: 100_000) or fraction.
      seed: random seed of the split.

    Returns:
      The summary dict (also written as JSON), with the file paths under ``files``.

    Raises:
      ValueError: if a side is too small for the requested sizes (before
        anything is written).
    """
    records = load_records(records_path)
    splits = split_easy_hard(
        records["id"], records["correct"], train_size=train_size, test_size=test_size, seed=seed
    )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for name in SPLIT_NAMES:
        files[name] = os.path.join(out_dir, f"{name}.npy")
        np.save(files[name], splits[name])
    num_easy = int(records["correct"].sum())
    summary: dict[str, Any] = {
        "records_path": os.fspath(records_path),
        "seed": int(seed),
        "num_examples": int(records["id"].size),
        "num_easy": num_easy,
        "num_hard": int(records["id"].size) - num_easy,
        "accuracy": num_easy / int(records["id"].size),
        "sizes": {name: int(splits[name].size) for name in SPLIT_NAMES},
        "files": files,
    }
    if "label" in records and "true_label" in records:
        # W&S measure easiness on clean data; noisy labels here mean "correct" is against them.
        summary["num_noisy_labels"] = int(np.sum(records["label"] != records["true_label"]))
    class_counts = {name: _class_counts(records, splits[name]) for name in SPLIT_NAMES}
    if all(v is not None for v in class_counts.values()):
        summary["class_counts"] = class_counts
    with open(os.path.join(out_dir, SUMMARY_FILENAME), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def compare_sides(rows: list[dict]):
    """Easy row, hard row, test difference (fraction) and the larger seed spread."""
    by = {r["side"]: r for r in rows}
    easy, hard = by["easy"], by["hard"]
    spread = max(stats.std(easy["test"]), stats.std(hard["test"]))
    return easy, hard, stats.mean(easy["test"]) - stats.mean(hard["test"]), spread


def verdict(rows: list[dict]) -> list[str]:
    easy, hard, diff, spread = compare_sides(rows)
    e, h = 100 * stats.mean(easy["test"]), 100 * stats.mean(hard["test"])
    tail = f"({100 * diff:+.1f} points; largest seed std {100 * spread:.1f})."
    first = (
        "- **The W&S finding holds here**: trained and tested within its side, the easy side "
        f"reaches {e:.1f}% test accuracy and the hard side {h:.1f}% {tail}"
        if 100 * diff > 2 * 100 * spread
        else f"- **The W&S finding does not hold here**: easy → easy test accuracy {e:.1f}% vs "
        f"hard → hard {h:.1f}% {tail}"
    )
    gap_e, gap_h = 100 * stats.mean(easy["gap"]), 100 * stats.mean(hard["gap"])
    fit_e, fit_h = 100 * stats.mean(easy["train"]), 100 * stats.mean(hard["train"])
    second = (
        "- Generalization gap (final training accuracy minus test accuracy): easy "
        f"{gap_e:.1f} points, hard {gap_h:.1f} points"
    )
    if min(stats.mean(easy["train"]), stats.mean(hard["train"])) > 0.9:
        second += f". Both sides fit their training part ({fit_e:.1f}% and {fit_h:.1f}%), so "
        second += "the difference is in generalization, not in fitting."
    else:
        second += f"; training accuracy {fit_e:.1f}% (easy) and {fit_h:.1f}% (hard): a side "
        second += "that is not fitted yet understates its gap."
    return [first, second]
