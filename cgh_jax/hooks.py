"""Callbacks of the training loop: what a study measures, without a loop of its own.

``train_and_evaluate(config, workdir, hooks=[...])`` calls, on every process, as CLU's
periodic actions are called, with only what each moment has:

* ``start(run)`` once, before the first step: ``run`` is the :class:`RunInfo` (the
  resolved :class:`~cgh_jax.spec.experiment.Experiment`, the model, the mesh, the work
  directory and the jitted eval step), fixed for the whole run;
* ``on_step(step, state)`` after update ``step`` (``state.step == step``);
* ``on_eval(record, state)`` after each evaluation (``record`` is the line written to
  ``metrics.jsonl``);
* ``on_end(record, state)`` once, when the run finished (not when it was preempted).

``state`` is the :class:`cgh_jax.step.TrainState`. A hook reads it and must not keep
references to it past the call: the next update donates its buffers. Hooks run in the order
given; a hook that raises stops the run (the last checkpoint stays).

:class:`PerExampleRecords` (the trainer adds it for ``config.per_example_epochs``) and
:class:`cgh_jax.analysis.coherence.CoherenceHook` are hooks.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from cgh_jax import metrics as metrics_lib
from cgh_jax import sharding as sharding_lib


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a hook may know about its run, fixed before the first step.

    Attributes:
      experiment: the :class:`cgh_jax.spec.experiment.Experiment` (config sections, the
        optimizer spec, ``steps_per_epoch``, ``total_steps``).
      model: the Flax module.
      mesh: the device mesh.
      workdir: the run directory.
      eval_step: the jitted eval step ``(state, batch) -> (sums, per_example)``.
    """

    experiment: Any
    model: Any
    mesh: Any
    workdir: str
    eval_step: Callable


class Hook:
    """A training-loop callback; override the calls you need (all default to nothing)."""

    def start(self, run: RunInfo) -> None:
        del run

    def on_step(self, step: int, state: Any) -> None:
        del step, state

    def on_eval(self, record: dict[str, Any], state: Any) -> None:
        del record, state

    def on_end(self, record: dict[str, Any], state: Any) -> None:
        del record, state


def iterate(source) -> Iterable:
    """Batches of a source that is an iterable or a function returning one."""
    return source() if callable(source) else source


def eval_keys(batch) -> dict[str, np.ndarray]:
    return {k: batch[k] for k in ("image", "label", "true_label", "mask")}


def _allgather_rows(array: np.ndarray) -> np.ndarray:
    """Concatenates a host-local numpy array over processes (process order)."""
    if jax.process_count() == 1:
        return array
    if array.dtype == np.int64:  # JAX without x64 would truncate: move as int32 pairs.
        pairs = _allgather_rows(np.ascontiguousarray(array).view(np.int32).reshape(-1, 2))
        return np.ascontiguousarray(pairs).view(np.int64).reshape(-1)
    if array.dtype == bool:
        return _allgather_rows(array.astype(np.uint8)).astype(bool)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _host_local(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in host-batch order."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    local = multihost_utils.global_array_to_host_local_array(
        x, mesh, jax.sharding.PartitionSpec("data")
    )
    return np.asarray(local)


def write_per_example_records(eval_fn, state, batches: Any, mesh, path: str) -> int:
    """Writes every training example's id, correctness, loss and labels to ``path`` (.npz).

    ``correct`` and ``loss`` are measured in eval mode against ``label`` (the label trained
    on). All processes take part; process 0 writes. Returns the number of records.
    """
    names = ("id", "correct", "loss", "label", "true_label", "mask")
    columns: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for host_batch in iterate(batches):
        batch = sharding_lib.host_batch_to_global(eval_keys(host_batch), mesh)
        _, per_example = eval_fn(state, batch)
        columns["correct"].append(_host_local(per_example["correct"], mesh))
        columns["loss"].append(_host_local(per_example["loss"], mesh))
        for k in ("id", "label", "true_label", "mask"):
            columns[k].append(np.asarray(host_batch[k]))
    dtypes = {"id": np.int64, "correct": bool, "loss": np.float32, "mask": bool}
    arrays = {
        k: _allgather_rows(
            np.concatenate(v).astype(dtypes.get(k, np.int32))
            if v
            else np.zeros((0,), dtypes.get(k, np.int32))
        )
        for k, v in columns.items()
    }
    keep = arrays.pop("mask")
    arrays = {k: v[keep] for k, v in arrays.items()}
    if jax.process_index() == 0:
        metrics_lib.make_dirs(os.path.dirname(path))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        metrics_lib.write_file_atomic(path, buffer.getvalue())
    return int(arrays["id"].shape[0])


class PerExampleRecords(Hook):
    """Writes ``per_example/epoch_XXX.npz`` (id, correct, loss, label, true_label of every
    training example, eval mode) at the start of each epoch in ``epochs`` (epoch ``E`` =
    after ``E`` epochs of training)."""

    def __init__(self, epochs: Iterable[int]):
        self.epochs = {int(e) for e in epochs}
        self.run: RunInfo | None = None

    def start(self, run: RunInfo) -> None:
        self.run = run

    def on_eval(self, record: dict[str, Any], state: Any) -> None:
        run = self.run
        epoch, rest = divmod(int(record["step"]), run.experiment.steps_per_epoch)
        if rest or epoch not in self.epochs:
            return
        from cgh_jax import data as data_lib

        path = os.path.join(run.workdir, "per_example", f"epoch_{epoch:03d}.npz")
        batches = data_lib.full_train_eval_batches(
            run.experiment.run.data,
            global_batch_size=run.experiment.trainer.eval_batch_size,
        )
        n = write_per_example_records(run.eval_step, state, batches, run.mesh, path)
        logging.info("Wrote %d per-example records to %s.", n, path)


__all__ = ["Hook", "PerExampleRecords", "RunInfo", "iterate", "write_per_example_records"]
