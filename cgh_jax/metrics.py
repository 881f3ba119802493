"""Training and evaluation metrics, their writers, and progress reporting.

* :class:`TrainMetrics`: means (and last values) of the per-step training values (loss,
  top-1, gradient / parameter / update global norms, learning rate), built inside the jitted
  train step, merged on device across steps and computed at each logging step. Pure JAX.
* :class:`EvalTotals`: exact evaluation sums (loss, top-1, top-5 hits and example counts,
  masked), accumulated on the host in float64.
* :class:`JsonlWriter`: ``workdir/metrics.jsonl``, one JSON object per evaluation, written by
  process 0 only; on resume, lines at or after the restored step are dropped so that an
  interrupted-and-resumed run writes exactly the lines of an uninterrupted one.
* :func:`create_writer`: TensorBoard events (through CLU, when CLU, TensorFlow and
  TensorBoard are installed) plus console lines on process 0, console lines only elsewhere.
  Without CLU the run keeps its ``metrics.jsonl`` and console lines and says once that it
  writes no TensorBoard events. Every scalar is also written under ``by_examples/<tag>``
  against the number of training examples seen, so that runs with different batch sizes
  (or M3's 3 x batch per update) line up; :func:`hparams_from_config` flattens a config for
  ``writer.write_hparams``.
* :class:`Progress`: steps/s and an ETA that includes the remaining evaluations.
* :class:`Console`: the few lines a person reads at the default verbosity.
"""

import dataclasses
import importlib.util
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from cgh_jax.formatting import format_seconds


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """Per-step training values, averaged (or, for some, last) over the steps between logs.

    Built inside the jitted step with :meth:`single_from_model_output`, combined with
    :meth:`merge` (order matters only for the last values: ``a.merge(b)`` keeps ``b``'s),
    read with :meth:`compute`. A pytree of scalars, so it can leave a jitted function.
    """

    AVERAGED: ClassVar[tuple[str, ...]] = ("loss", "top1", "grad_norm", "update_norm")
    LAST: ClassVar[tuple[str, ...]] = ("param_norm", "learning_rate")
    ORDER: ClassVar[tuple[str, ...]] = (
        "loss", "top1", "grad_norm", "param_norm", "update_norm", "learning_rate",
    )  # fmt: skip

    sums: dict[str, jax.Array]
    count: jax.Array
    last: dict[str, jax.Array]

    @classmethod
    def single_from_model_output(cls, **values) -> "TrainMetrics":
        """The metrics of one step; ``values`` must name exactly the fields in ORDER."""
        missing = set(cls.ORDER) - set(values)
        unknown = set(values) - set(cls.ORDER)
        if missing or unknown:
            raise ValueError(
                f"TrainMetrics needs exactly {list(cls.ORDER)}; missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}."
            )
        as_float = {k: jnp.asarray(v, jnp.float32).reshape(()) for k, v in values.items()}
        return cls(
            sums={k: as_float[k] for k in cls.AVERAGED},
            count=jnp.ones((), jnp.float32),
            last={k: as_float[k] for k in cls.LAST},
        )

    def merge(self, other: "TrainMetrics") -> "TrainMetrics":
        return TrainMetrics(
            sums={k: self.sums[k] + other.sums[k] for k in self.AVERAGED},
            count=self.count + other.count,
            last=dict(other.last),
        )

    def compute(self) -> dict[str, jax.Array]:
        """``{name: mean or last value}`` in the order of ORDER."""
        means = {k: self.sums[k] / self.count for k in self.AVERAGED}
        return {k: means[k] if k in means else self.last[k] for k in self.ORDER}


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
        """Appends one record as strict JSON: a NaN or infinite number is written as
        ``null`` and its key listed under ``"nonfinite"``."""
        if not self.enabled:
            return
        record = dict(record)
        bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            record.update({k: None for k in bad}, nonfinite=bad)
        line = json.dumps(record, allow_nan=False) + "\n"
        if is_remote(self.path):
            previous = "".join(f"{x}\n" for x in self._lines())
            write_file_atomic(self.path, (previous + line).encode())
            return
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class LoggingWriter:
    """Scalars as console lines at ``--verbosity=1`` (absl ``vlog(1)``): every value that
    goes to TensorBoard, for a reader who wants all of them."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if logging.vlog_is_on(1):
            text = ", ".join(f"{k}={_scalar_text(v)}" for k, v in scalars.items())
            logging.vlog(1, "[%d] %s", step, text)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams  # Not echoed to the console: the workdir's config.json holds them.

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _scalar_text(value) -> str:
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return str(value)


class MetricWriter:
    """Console lines plus, where available, TensorBoard events with a ``by_examples`` copy.

    Args:
      console: the console writer (:class:`LoggingWriter`).
      summary: a TensorBoard writer with ``write_scalars``/``write_hparams``/``flush``/
        ``close`` (CLU's ``SummaryWriter``), or None.
      examples_per_step: training examples per step (per update); when given, every scalar
        written at step ``s`` is also written to the summary as ``by_examples/<tag>`` at
        ``s * examples_per_step``.
    """

    def __init__(self, console, summary=None, *, examples_per_step: int | None = None):
        self.console = console
        self.summary = summary
        self.examples_per_step = examples_per_step

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self.console.write_scalars(step, scalars)
        if self.summary is None:
            return
        self.summary.write_scalars(step, scalars)
        if self.examples_per_step:
            self.summary.write_scalars(
                step * self.examples_per_step, {f"by_examples/{k}": v for k, v in scalars.items()}
            )

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.console.write_hparams(hparams)
        if self.summary is not None:
            self.summary.write_hparams(dict(hparams))

    def flush(self) -> None:
        if self.summary is not None:
            self.summary.flush()

    def close(self) -> None:
        if self.summary is not None:
            self.summary.close()
            self.summary = None


_warned_no_tensorboard = False


def tensorboard_summary_writer(logdir: str):
    """CLU's TensorBoard writer for ``logdir``, or None (with one warning) if CLU, or the
    TensorFlow and TensorBoard it needs, are not installed."""
    global _warned_no_tensorboard
    try:
        if importlib.util.find_spec("tensorflow") is None:  # CLU's writer would import it
            raise ImportError("tensorflow is not installed")
        from clu import metric_writers
    except ImportError as e:
        if not _warned_no_tensorboard:
            _warned_no_tensorboard = True
            logging.warning(
                "No TensorBoard events (%s); metrics.jsonl and the console lines are "
                "written as usual. Install clu, tensorboard and tensorflow for events.",
                e,
            )
        return None
    return metric_writers.SummaryWriter(logdir)


def create_writer(workdir: str, *, examples_per_step: int | None = None) -> MetricWriter:
    """TensorBoard (if available) + console writer on process 0; console only elsewhere.

    Args:
      workdir: where the TensorBoard events go.
      examples_per_step: training examples per step, for the ``by_examples/`` copies.
    """
    summary = None
    if jax.process_index() == 0:
        summary = tensorboard_summary_writer(os.fspath(workdir))
    return MetricWriter(LoggingWriter(), summary, examples_per_step=examples_per_step)


def hparams_from_config(config) -> dict[str, bool | int | float | str]:
    """A config (``ml_collections.ConfigDict`` or mapping) as flat TensorBoard hparams.

    Nested fields are joined with ``.`` (``optimizer.name``); values that are not a bool,
    int, float or str (lists, None) are written as their ``repr``.
    """
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    flat: dict[str, bool | int | float | str] = {}

    def visit(prefix: str, value) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value):
                visit(f"{prefix}{key}.", value[key])
            return
        key = prefix[:-1]
        flat[key] = value if isinstance(value, bool | int | float | str) else repr(value)

    visit("", tree)
    return flat


class Progress:
    """Steps per second and an ETA that counts the evaluations still to come.

    The time between :meth:`pause` and :meth:`resume` is one evaluation: it is left out of
    the step rate, and its mean duration, times the number of evaluations left, is added to
    the ETA. Evaluations run before every epoch and after the last step; give
    ``eval_every_steps`` (the steps per epoch) to count them. Without it, evaluations are
    still left out of the rate but not counted in the ETA.

    Args:
      total_steps: the step at which training ends.
      start_step: the step training (re)starts from.
      clock: a ``time.monotonic``-like function (injectable for tests).
      eval_every_steps: steps between evaluations, or None.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        clock=time.monotonic,
        *,
        eval_every_steps: int | None = None,
    ):
        if eval_every_steps is not None and eval_every_steps < 1:
            raise ValueError(f"eval_every_steps must be >= 1, got {eval_every_steps}.")
        self.total_steps = total_steps
        self.eval_every_steps = eval_every_steps
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()
        self._paused = 0.0
        self._pause_start: float | None = None
        self._eval_seconds = 0.0
        self._evals = 0
        self._done_before, self._seconds_before = 0, 0.0  # of the reports so far

    def pause(self) -> None:
        """Starts an evaluation: what follows is not training time, until resume()."""
        self._pause_start = self._clock()

    def resume(self) -> None:
        if self._pause_start is not None:
            seconds = self._clock() - self._pause_start
            self._paused += seconds
            self._eval_seconds += seconds
            self._evals += 1
            self._pause_start = None

    def evaluations_left(self, step: int) -> int:
        """Evaluations still to run after ``step``'s report: one at every multiple of
        ``eval_every_steps`` in ``[step, total_steps)`` (the loop evaluates at an epoch's
        start, after that step's report) and the final one; 0 without ``eval_every_steps``."""
        if self.eval_every_steps is None:
            return 0
        every = self.eval_every_steps
        first = -(-step // every) * every  # the first multiple >= step
        at_boundaries = max(0, -(-(self.total_steps - first) // every))
        return at_boundaries + 1

    def _rate_and_eta(self, step: int, done: int, elapsed: float) -> dict[str, float]:
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        train = (self.total_steps - step) / rate if rate == rate and rate > 0 else float("inf")
        mean_eval = self._eval_seconds / self._evals if self._evals else 0.0
        return {
            "steps_per_sec": rate,
            "eta_seconds": train + mean_eval * self.evaluations_left(step),
        }

    def report(self, step: int) -> dict[str, float]:
        """``{'steps_per_sec', 'eta_seconds'}`` since the previous report."""
        now = self._clock()
        elapsed = now - self._last_time - self._paused
        done = step - self._last_step
        self._done_before += done
        self._seconds_before += elapsed
        self._last_step, self._last_time, self._paused = step, now, 0.0
        return self._rate_and_eta(step, done, elapsed)

    def overall(self, step: int) -> dict[str, float]:
        """``{'steps_per_sec', 'eta_seconds'}`` over all the training since the start (the
        evaluations left out), without starting a new report interval."""
        elapsed = self._clock() - self._last_time - self._paused
        done = self._done_before + step - self._last_step
        return self._rate_and_eta(step, done, self._seconds_before + elapsed)

    def describe(self, step: int, epoch: float, report: Mapping[str, float]) -> str:
        return (
            f"step {step}/{self.total_steps} (epoch {epoch:.2f}) "
            f"{report['steps_per_sec']:.2f} steps/s, ETA {format_seconds(report['eta_seconds'])}"
        )


CONSOLE_EVERY_S = 10.0
"""The console's evaluation lines come at most this often (the first and last always)."""
CONSOLE_SETS = (("pristine", "pristine"), ("corrupt_noisy", "memorized"), ("test", "test"))


class Console:
    """The lines a person reads at the default verbosity (process 0 only).

    One line when a run starts (model, optimizer, steps, devices), and, of its evaluations,
    the first, the last and at most one every :data:`CONSOLE_EVERY_S` seconds in between:
    the step and epoch, the rate and ETA (:class:`Progress`), and the top-1 accuracy of
    ``pristine``, ``corrupt_noisy`` (memorization) and ``test`` (``train_sample`` when the
    data has no noise). The others, and every metric of every evaluation, go to
    ``metrics.jsonl``, TensorBoard and the console at ``--verbosity=1``.

    Args:
      experiment: the run's :class:`cgh_jax.spec.experiment.Experiment`.
      every_s: the least time between two evaluation lines.
      clock: a ``time.monotonic``-like function.
    """

    def __init__(self, experiment, *, every_s: float = CONSOLE_EVERY_S, clock=time.monotonic):
        self.experiment = experiment
        self.every_s = every_s
        self._clock = clock
        self._last: float | None = None

    def start(self, experiment, resumed_at: int = 0) -> None:
        e = experiment
        self.info(
            f"Training {e.run.model.name} with {e.optimizer.name}: {e.total_steps} steps "
            f"({e.steps_per_epoch} per epoch, {e.optimizer.examples_per_update} examples per "
            f"update) on {e.num_devices} devices in {e.num_processes} processes"
            + (f"; resumed at step {resumed_at}." if resumed_at else ".")
        )

    def evaluation(self, record: Mapping[str, Any], report: Mapping[str, float]) -> str:
        """Logs (or, between lines, keeps to ``--verbosity=1``) one evaluation; returns
        the line: ``step t/T (epoch e) R steps/s, ETA h:mm: pristine 91.2%, ...``."""
        total, step = self.experiment.total_steps, int(record["step"])
        now = self._clock()
        shown = self._last is None or step >= total or now - self._last >= self.every_s
        line = f"step {step}/{total} (epoch {step / self.experiment.steps_per_epoch:.2f})"
        rate = report.get("steps_per_sec", math.nan)
        if step and math.isfinite(rate):
            eta = format_seconds(report["eta_seconds"]) if step < total else "done"
            line += f" {rate:.2f} steps/s, ETA {eta}"
        sets = [(k, name) for k, name in CONSOLE_SETS if f"{k}/top1" in record]
        if not any(k == "pristine" for k, _ in sets) and "train_sample/top1" in record:
            sets.insert(0, ("train_sample", "train"))
        line += ": " + ", ".join(f"{name} {100 * record[f'{k}/top1']:.1f}%" for k, name in sets)
        if shown:
            self._last = now
            self.info(line)
        else:
            logging.vlog(1, "%s", line)
        return line

    @staticmethod
    def info(line: str) -> None:
        if jax.process_index() == 0:
            logging.info("%s", line)


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
