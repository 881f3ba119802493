"""Evaluation records of finished runs: loading ``metrics.jsonl``, final values, curves.

A run directory written by :func:`cgh_jax.train.train_and_evaluate` holds
``metrics.jsonl``: one JSON object per evaluation with the keys ``step``,
``epoch`` and ``<set>/<metric>`` (sets ``pristine``, ``corrupt_noisy``,
``corrupt_true``, ``train_sample``, ``test``; metrics ``top1``, ``top5``,
``loss``), and optionally ``wall_time_s`` (seconds since the run started).
Accuracies are fractions in ``[0, 1]``. A run may also be a list of run directories
(several seeds): :func:`seed_curves` gives the mean curve with its ``± std`` band.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS_FILENAME = "metrics.jsonl"

#: The sets shown by default in tables and figures, in display order.
DEFAULT_SETS = ("pristine", "corrupt_noisy", "corrupt_true", "test")

#: Human-readable names of the evaluation sets.
SET_LABELS = {
    "pristine": "pristine",
    "corrupt_noisy": "corrupt, noisy label (memorization)",
    "corrupt_true": "corrupt, true label",
    "train_sample": "train sample",
    "test": "test",
}

SHORT_SET_LABELS = {
    "pristine": "pristine",
    "corrupt_noisy": "corrupt/noisy",
    "corrupt_true": "corrupt/true",
    "train_sample": "train sample",
    "test": "test",
}

METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "loss": "loss"}

ACCURACY_METRICS = ("top1", "top5")
MISSING = "—"

Records = list[dict[str, Any]]
RunSpec = str | os.PathLike | Sequence[str | os.PathLike]


# --------------------------------------------------------------------------- loading


def metrics_path(run_dir: str | os.PathLike) -> str:
    path = os.fspath(run_dir)
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No metrics file at {path!r}: pass a run directory written by "
            f"cgh_jax.train.train_and_evaluate (it holds {METRICS_FILENAME}) or the "
            "path of a metrics.jsonl file."
        )
    return path


def load_metrics(run_dir: str | os.PathLike) -> Records:
    """Reads the evaluation records of one run.

    Args:
      run_dir: a run directory holding ``metrics.jsonl``, or the path of such a file.

    Returns:
      The records sorted by ``step``. When a step appears more than once (a run
      resumed from a checkpoint evaluates the restored step again), the record
      written last wins.

    Raises:
      FileNotFoundError: if there is no metrics file.
      ValueError: on a line that is not a JSON object with an integer ``step``,
        or on a file without records.
    """
    path = metrics_path(run_dir)
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {record!r}.")
            step = record.get("step")
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(f"{path}:{lineno}: every record needs an integer 'step'.")
            record["step"] = step
            by_step[step] = record
    if not by_step:
        raise ValueError(f"{path} holds no evaluation records.")
    return [by_step[s] for s in sorted(by_step)]


def as_run_list(spec: RunSpec) -> list[str]:
    if isinstance(spec, str | os.PathLike):
        return [os.fspath(spec)]
    runs = [os.fspath(s) for s in spec]
    if not runs:
        raise ValueError("A run entry is an empty list: give at least one run directory.")
    return runs


# --------------------------------------------------------------------------- final values


def final_metrics(records: Records) -> dict[str, Any]:
    """The values at the end of a run.

    Args:
      records: the output of :func:`load_metrics` (sorted by step).

    Returns:
      The last record, plus ``wall_time_s`` from the latest record that has it
      when the last one does not.
    """
    if not records:
        raise ValueError("final_metrics needs at least one record.")
    final = dict(records[-1])
    if "wall_time_s" not in final:
        for record in reversed(records):
            if "wall_time_s" in record:
                final["wall_time_s"] = record["wall_time_s"]
                break
    return final


def run_finals(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The final values (:func:`final_metrics`) of each run directory, in order."""
    return [final_metrics(load_metrics(d)) for d in run_dirs]


def first_epoch_at_least(records: Records, key: str, level: float) -> float:
    """The first evaluated epoch at which ``key`` reaches ``level`` (NaN if never)."""
    for record in records:
        if record.get(key) is not None and record[key] >= level:
            return float(record["epoch"])
    return math.nan


def value_at_epoch(records: Records, key: str, epoch: float) -> float:
    """The value of ``key`` at the evaluation of ``epoch`` (NaN if not evaluated)."""
    for record in records:
        if abs(float(record["epoch"]) - epoch) < 1e-9 and record.get(key) is not None:
            return float(record[key])
    return math.nan


def check_accuracy(key: str, value: Any, where: str) -> float:
    value = float(value)
    if key.rsplit("/", 1)[-1] in ACCURACY_METRICS and not (
        math.isnan(value) or 0.0 <= value <= 1.0
    ):
        raise ValueError(
            f"{where}: {key}={value} is not a fraction in [0, 1]. metrics.jsonl stores "
            "accuracies as fractions; reports convert them to percent."
        )
    return value


# --------------------------------------------------------------------------- curves


def _curve(records: Records, key: str, x_key: str) -> dict[float, float]:
    return {float(r[x_key]): float(r[key]) for r in records if r.get(key) is not None}


def seed_curves(
    records_per_seed: Sequence[Records], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mean and sample std of one metric over seeds, on the x values all seeds share.

    Args:
      records_per_seed: one :func:`load_metrics` output per seed.
      key: ``<set>/<metric>``.

    Returns:
      ``(x, mean, std, x_key)``: ``x_key`` is ``'epoch'``, or ``'step'`` when a
      record lacks ``epoch``; ``std`` is the sample std (``ddof=1``, zeros for
      one seed). Empty arrays when no seed has the key.
    """
    all_records = [r for records in records_per_seed for r in records]
    x_key = "epoch" if all("epoch" in r for r in all_records) else "step"
    curves = [_curve(records, key, x_key) for records in records_per_seed]
    curves = [c for c in curves if c]
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty, x_key
    common = sorted(set.intersection(*(set(c) for c in curves)))
    stacked = np.asarray([[c[x] for x in common] for c in curves], dtype=np.float64)
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
    return np.asarray(common, dtype=np.float64), mean, std, x_key


def as_seed_list(value: Any) -> list[Records]:
    if isinstance(value, str | os.PathLike):
        return [load_metrics(value)]
    value = list(value)
    if not value:
        raise ValueError("Empty run entry: give records, a run directory, or a list of them.")
    if isinstance(value[0], dict):
        return [value]
    return [load_metrics(v) if isinstance(v, str | os.PathLike) else list(v) for v in value]


# --------------------------------------------------------------------------- model
