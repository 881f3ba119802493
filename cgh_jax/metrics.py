"""Training and evaluation metrics, their writers, and progress reporting.

* :class:`TrainMetrics`: a CLU collection built inside the jitted train step (loss, top-1,
  gradient / parameter / update global norms, learning rate), merged on device across steps
  and computed at each logging step.
* :class:`EvalTotals`: exact evaluation sums (loss, top-1, top-5 hits and example counts,
  masked), accumulated on the host in float64.
* :class:`JsonlWriter`: ``workdir/metrics.jsonl``, one JSON object per evaluation, written by
  process 0 only; on resume, lines at or after the restored step are dropped so that an
  interrupted-and-resumed run writes exactly the lines of an uninterrupted one.
* :func:`create_writer`: CLU writers (TensorBoard + console) on process 0, console-only
  (logging) elsewhere.
* :class:`Progress`: steps/s and ETA.
"""

# No `from __future__ import annotations`: CLU reads the metric types from the annotations.
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np
from absl import logging
from clu import metric_writers
from clu import metrics as clu_metrics
from etils import epath


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    """Per-step training metrics, averaged over the steps between two logs."""

    loss: clu_metrics.Average.from_output("loss")
    top1: clu_metrics.Average.from_output("top1")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    param_norm: clu_metrics.LastValue.from_output("param_norm")
    update_norm: clu_metrics.Average.from_output("update_norm")
    learning_rate: clu_metrics.LastValue.from_output("learning_rate")


class EvalTotals:
    """Exact evaluation sums for one set, accumulated on the host in float64.

    Each batch contributes ``loss``, ``top1`` and ``top5`` sums over its real (mask = 1)
    examples and their ``count``; :meth:`result` divides by the total count, so padding never
    counts and no example is dropped.
    """

    def __init__(self, with_top5: bool):
        self.with_top5 = with_top5
        self.sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
        self.count = 0

    def add(self, batch_sums: Mapping[str, Any]) -> None:
        self.count += int(np.round(np.asarray(batch_sums["count"], np.float64)))
        for key in self.sums:
            if key in batch_sums:
                self.sums[key] += float(np.asarray(batch_sums[key], np.float64))

    def result(self) -> dict[str, float]:
        """``{'top1', 'top5' (if with_top5), 'loss'}``; empty if the set had no examples."""
        if self.count == 0:
            return {}
        out = {"top1": self.sums["top1"] / self.count}
        if self.with_top5:
            out["top5"] = self.sums["top5"] / self.count
        out["loss"] = self.sums["loss"] / self.count
        return out


def is_remote(path) -> bool:
    """True for URLs such as ``gs://bucket/dir`` (handled through ``etils.epath``)."""
    return "://" in os.fspath(path)


def resolve_dir(path) -> str:
    """An absolute local path, or the URL unchanged."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(os.fspath(path))


def make_dirs(path) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def write_file_atomic(path: str, content: bytes) -> None:
    """Writes ``content`` so that readers see the old or the new file, never a torn one.

    Local files go through a temporary file and ``os.replace``; object stores (GCS) write
    whole objects atomically anyway.
    """
    if is_remote(path):
        epath.Path(path).write_bytes(content)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JsonlWriter:
    """One JSON object per line in ``path``; a no-op on processes other than 0.

    Local files are appended to (and synced) line by line; on object stores, which cannot
    append, each write replaces the whole (small) file.
    """

    def __init__(self, path: str, *, enabled: bool | None = None):
        self.path = os.fspath(path)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled

    def _lines(self) -> list[str]:
        path = epath.Path(self.path)
        if not path.exists():
            return []
        return path.read_text().splitlines()

    def read(self) -> list[dict[str, Any]]:
        """All complete records written so far (empty if the file does not exist)."""
        records = []
        for line in self._lines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # A line cut by a kill: the end of what was written.
        return records

    def truncate(self, step: int) -> None:
        """Keeps only records with ``record['step'] < step`` (and drops a torn last line)."""
        if not self.enabled or not epath.Path(self.path).exists():
            return
        kept = [json.dumps(r) + "\n" for r in self.read() if r.get("step", math.inf) < step]
        write_file_atomic(self.path, "".join(kept).encode())

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(dict(record)) + "\n"
        if is_remote(self.path):
            previous = "".join(f"{x}\n" for x in self._lines())
            write_file_atomic(self.path, (previous + line).encode())
            return
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + logging writer on process 0; logging only on the others."""
    return metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Steps per second and ETA between reports.

    Args:
      total_steps: the step at which training ends.
      start_step: the step training (re)starts from.
      clock: a ``time.monotonic``-like function (injectable for tests).
    """

    def __init__(self, total_steps: int, start_step: int = 0, clock=time.monotonic):
        self.total_steps = total_steps
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()
        self._paused = 0.0
        self._pause_start: float | None = None

    def pause(self) -> None:
        """Excludes what follows (e.g. an evaluation) from the step rate until resume()."""
        self._pause_start = self._clock()

    def resume(self) -> None:
        if self._pause_start is not None:
            self._paused += self._clock() - self._pause_start
            self._pause_start = None

    def report(self, step: int) -> dict[str, float]:
        """``{'steps_per_sec', 'eta_seconds'}`` since the previous report."""
        now = self._clock()
        elapsed = now - self._last_time - self._paused
        done = step - self._last_step
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        eta = (self.total_steps - step) / rate if rate == rate and rate > 0 else float("inf")
        self._last_step, self._last_time, self._paused = step, now, 0.0
        return {"steps_per_sec": rate, "eta_seconds": eta}

    def describe(self, step: int, epoch: float, report: Mapping[str, float]) -> str:
        return (
            f"step {step}/{self.total_steps} (epoch {epoch:.2f}) "
            f"{report['steps_per_sec']:.2f} steps/s, ETA {_format_duration(report['eta_seconds'])}"
        )


def log_line(prefix: str, values: Mapping[str, float]) -> None:
    """One console line ``prefix: k=v, ...`` through absl logging (process 0 only)."""
    if jax.process_index() != 0:
        return
    text = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("%s: %s", prefix, text)


class _QuietLibraries:
    """A logging filter dropping INFO/DEBUG records emitted from the named packages."""

    def __init__(self, packages):
        self._markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record) -> bool:
        if record.levelno > 20:  # WARNING and above always pass.
            return True
        return not any(m in record.pathname for m in self._markers)


def quiet_library_logs(packages=("orbax", "jax", "flax", "clu", "tensorflow_datasets")) -> None:
    """Hides the INFO chatter of the given packages from absl logging (warnings stay).

    Orbax logs several INFO lines per checkpoint; the entry point installs this so that the
    console shows the run's own progress and metrics.
    """
    logging.get_absl_handler().addFilter(_QuietLibraries(packages))
    logging.get_absl_logger().addFilter(_QuietLibraries(packages))
