"""Config-driven training and evaluation on a device mesh: ``train_and_evaluate``.

``train_and_evaluate(config, workdir, hooks=())`` trains one model with one optimizer and
measures memorization the way the papers do:

* the optimizer config is resolved once into an :class:`cgh_jax.optim.spec.OptimizerSpec`
  (with the M3 layout for this mesh and model, logged at the start);
* :func:`cgh_jax.step.build_steps` gives the one jitted train step and eval step;
* :func:`evaluate`: exact (masked) sums over the evaluation sets ``pristine``, ``corrupt``
  (scored against the noisy label: ``corrupt_noisy``, and the true label:
  ``corrupt_true``), ``train_sample`` and ``test``; top-1, top-5 (more than 5 classes) and
  loss, before every ``eval_every_epochs``-th epoch (and each of ``per_example_epochs``)
  and after the last;
* hooks (:mod:`cgh_jax.hooks`) after each step, each evaluation and at the end; the
  per-example records of ``config.per_example_epochs`` are one;
* the loop: train metrics every ``log_every_steps``: loss and top-1 averaged over the
  interval, and the gradient / parameter / update norms of one step, the first of the
  dispatch that ends the interval (its last step when ``steps_per_dispatch`` is 1),
  computed by a separate program before that step (:func:`cgh_jax.step.make_norms_step`;
  inside the train step they would cost about a third of a small model's step). Every
  step's loss, and at those steps the norms, are checked for non-finite values at the
  next host synchronization that happens anyway (a log line, a checkpoint, an
  evaluation), and the parameters themselves before an evaluation or a checkpoint, so a
  diverging run stops with :class:`NonFiniteError` before it evaluates or saves a
  non-finite state, and the last good checkpoint stays. The error names the first step
  whose loss (or norms) was not finite: an update that makes the parameters non-finite
  shows at the next step, whose loss is computed from them, or at that step itself when
  its norms were computed (if the loss stays finite, at the next evaluation or
  checkpoint, as non-finite parameters); checkpoints every
  ``checkpoint_every_steps``, at the end and on SIGTERM (saved at the next step boundary,
  then the function returns with ``preempted=True``).

Restarting with the same workdir resumes exactly: the data position (epoch, batch) follows
from the step, the dropout keys from the step and the saved key, and the optimizer state
(e.g. the RM3 buffer) is in the checkpoint. On CPU the resumed run's parameters and
``metrics.jsonl`` lines are bit-identical to an uninterrupted run's (except
``wall_time_s``).

Files in ``workdir``: ``config.json``, ``metrics.jsonl`` (one JSON object per evaluation:
``step``, ``epoch``, ``wall_time_s`` and ``<set>/<metric>``), TensorBoard events,
``checkpoints/<step>/``, ``per_example/epoch_XXX.npz``.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from cgh_jax import checkpointing, config_checks, configlib, distributed
from cgh_jax import data as data_lib
from cgh_jax import hooks as hooks_lib
from cgh_jax import metrics as metrics_lib
from cgh_jax import models as models_lib
from cgh_jax import sharding as sharding_lib
from cgh_jax import step as step_lib
from cgh_jax.optim import spec as spec_lib

EVAL_SETS = ("pristine", "corrupt_noisy", "corrupt_true", "train_sample", "test")


class NonFiniteError(FloatingPointError):
    """A training loss or norm was NaN or infinite; the last good checkpoint is kept."""


def create_model(config: ml_collections.ConfigDict, num_classes: int):
    """``cgh_jax.models.get_model`` with ``config.model``'s fields as keywords."""
    kwargs = dict(config.model)
    name = kwargs.pop("name")
    kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    return models_lib.get_model(name, num_classes=num_classes, **kwargs)


def evaluate(
    eval_fn, state: step_lib.TrainState, datasets: Mapping[str, Any], mesh, *, with_top5: bool
) -> dict[str, float]:
    """Exact metrics of ``state`` on each evaluation set.

    Args:
      eval_fn: the jitted eval step.
      state: the train state.
      datasets: ``cgh_jax.data.eval_datasets`` output (name -> per-host padded batches).
      mesh: the device mesh.
      with_top5: also report top-5.

    Returns:
      ``{'<set>/<metric>': value}`` for the sets in :data:`EVAL_SETS` that have examples.
    """
    results: dict[str, float] = {}
    for name, source in datasets.items():
        scored = {"corrupt": ("corrupt_noisy", "corrupt_true")}.get(name, (name,))
        totals = {s: metrics_lib.EvalTotals(with_top5) for s in scored}
        for host_batch in hooks_lib.iterate(source):
            batch = sharding_lib.host_batch_to_global(hooks_lib.eval_keys(host_batch), mesh)
            sums = jax.device_get(eval_fn(state, batch)[0])  # replicated: fetchable anywhere
            for s in scored:
                key = "true_label" if s == "corrupt_true" else "label"
                totals[s].add({**sums[key], "count": sums["count"]})
        for s in scored:
            results.update({f"{s}/{m}": v for m, v in totals[s].result().items()})
    return results


# ----------------------------------------------------------------------------- preemption


class PreemptionWatcher:
    """Notices SIGTERM; the loop polls :meth:`requested` at every step boundary.

    Single process: a SIGTERM handler sets a flag. Several processes: JAX's distributed
    preemption sync point, so that all processes stop and save at the same step.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multi = jax.process_count() > 1
        self._synced = self._multi and distributed.preemption_sync_enabled()
        if self._multi:
            distributed.warn_if_no_preemption_sync()  # once per process, at the start
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
        self._flag.set()

    def requested(self, step: int) -> bool:
        if self._multi:
            return self._synced and multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ----------------------------------------------------------------------------- the loop


def _epoch_value(step: int, steps_per_epoch: int) -> int | float:
    epoch = step / steps_per_epoch
    return int(epoch) if step % steps_per_epoch == 0 else round(epoch, 6)


_merge = jax.jit(metrics_lib.TrainMetrics.merge)  # one dispatch per step, not one per field


def _crossed(before: int, after: int, every: int) -> bool:
    """A multiple of ``every`` lies in ``(before, after]``."""
    return after // every > before // every


class Run:
    """One call of :func:`train_and_evaluate`: set-up in ``__init__``, the loop in
    :meth:`run`. Hooks see it (attributes in :mod:`cgh_jax.hooks`)."""

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[hooks_lib.Hook]
    ):
        self._start = time.monotonic()
        config_checks.check_config(config)  # the whole config, before anything expensive
        self.config = config
        # Validated once here; the layout and the schedule's length are fixed in _setup.
        self.spec = spec_lib.resolve(config.optimizer, batch_size=config.batch_size)
        self.hooks = list(hooks)
        if config.per_example_epochs:
            self.hooks.append(hooks_lib.PerExampleRecords(config.per_example_epochs))
        self.workdir = metrics_lib.resolve_dir(workdir)
        metrics_lib.make_dirs(self.workdir)
        self.checkpointer = checkpointing.Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            config=config,
            defaults=configlib.base_config(),
            max_to_keep=config.keep_checkpoints,
        )
        try:
            self._setup()
        except BaseException:
            self.checkpointer.close()
            raise
        self.jsonl = metrics_lib.JsonlWriter(os.path.join(self.workdir, "metrics.jsonl"))
        self.writer = metrics_lib.create_writer(self.workdir, examples_per_step=self.update_batch)
        self._closed = False

    def _setup(self) -> None:
        config, spec = self.config, self.spec
        # A changed config or damaged checkpoint fails here, before any expensive work.
        self.resume_meta = self.checkpointer.check_config()

        self.mesh = sharding_lib.create_mesh()
        self.info = data_lib.get_dataset_info(config.data)
        self.update_batch = spec.examples_per_update
        config_checks.check_devices(config, self.mesh.devices.size, jax.process_count())
        config_checks.check_dataset_size(config, self.info.num_train)
        self.steps_per_epoch = data_lib.steps_per_epoch(config.data, self.update_batch)
        self.total_steps = self.steps_per_epoch * config.num_epochs
        if config.max_steps > 0:
            self.total_steps = min(self.total_steps, config.max_steps)

        self.model = create_model(config, self.info.num_classes)
        image_shape = tuple(self.info.image_shape)
        # The model's collections decide the M3 layout, which decides the optimizer chain.
        facts = step_lib.model_facts(self.model, image_shape, self.mesh)
        if spec.gradient is spec_lib.Gradient.PER_EXAMPLE and facts.has_state:
            raise ValueError(
                f"optimizer {spec.name!r} needs per-example gradients, which BatchNorm models "
                f"({config.model.name!r}) do not have; use a model without BatchNorm."
            )
        spec = step_lib.fix_layout(spec, facts, self.mesh, jax.default_backend())
        self.spec = spec = spec.with_duration(
            steps_per_epoch=self.steps_per_epoch, num_epochs=config.num_epochs
        )
        self.facts = facts
        self.with_top5 = self.info.num_classes > 5
        self.steps = step_lib.build_steps(
            self.model,
            spec,
            self.mesh,
            facts=facts,
            with_top5=self.with_top5,
            platform=jax.default_backend(),
        )
        abstract = step_lib.abstract_train_state(self.model, self.steps.tx, image_shape, self.mesh)
        self.elapsed_before = 0.0  # wall time of earlier segments of an interrupted run
        if self.resume_meta is not None:
            state, meta = self.checkpointer.restore(abstract)
            self.elapsed_before = float(meta.get("wall_time_s", 0.0))
            logging.info("Resumed from %s at step %d.", self.checkpointer.directory, meta["step"])
        else:
            rng = jax.random.PRNGKey(config.seed)
            state = step_lib.create_train_state(
                self.model, self.steps.tx, image_shape, rng, self.mesh
            )
        step_lib.check_batch_stats_fold(self.model, spec, state, image_shape)
        self.state = state

    # -- pieces of the loop

    def elapsed(self) -> float:
        """Seconds of wall time of this run so far, over all its restarts (setup,
        compilation, training and evaluation included)."""
        return self.elapsed_before + time.monotonic() - self._start

    def write_config(self) -> None:
        if jax.process_index() == 0:
            text = self.config.to_json_best_effort(indent=2, sort_keys=True)
            metrics_lib.write_file_atomic(os.path.join(self.workdir, "config.json"), text.encode())

    def evaluate(self, step: int, eval_sets, pending) -> dict[str, Any]:
        self.check_finite(pending, state=True)  # never evaluate or record a non-finite state
        start = time.monotonic()
        results = evaluate(
            self.steps.eval, self.state, eval_sets, self.mesh, with_top5=self.with_top5
        )
        record = {
            "step": step,
            "epoch": _epoch_value(step, self.steps_per_epoch),
            "wall_time_s": round(self.elapsed(), 3),
            **results,
        }
        self.jsonl.write(record)
        self.writer.write_scalars(step, results)
        metrics_lib.log_line(
            f"eval step {step} epoch {record['epoch']} ({time.monotonic() - start:.1f}s)",
            {k: v for k, v in results.items() if not k.endswith("/loss")},
        )
        for hook in self.hooks:
            hook.on_eval(self, record)
        return record

    def check_finite(self, pending: list[tuple[int, jax.Array, bool]], *, state: bool) -> None:
        """Raises NonFiniteError naming the first step whose flag failed (its loss, and for
        a step whose norms were computed, the norms too); with ``state``, also if the
        current parameters are not all finite (before an evaluation or a checkpoint)."""
        flags = jax.device_get([f for _, f, _ in pending])
        failed = next(
            ((s, norms) for (s, _, norms), ok in zip(pending, flags, strict=True) if not ok),
            None,
        )
        if failed is None and state and not bool(self.steps.params_finite(self.state)):
            failed = (int(jax.device_get(self.state.step)), None)
        pending.clear()
        if failed is None:
            return
        step, norms = failed
        if norms:
            what = f"Non-finite training loss or norm at step {step} (the update to step {step})"
        elif norms is None:
            what = (
                f"Non-finite parameters at step {step}, although every training loss was "
                "finite (the norms are computed once per log_every_steps steps; the update "
                "that made them is after the last logged step)"
            )
        else:
            what = (
                f"Non-finite training loss at step {step} (computed from the parameters of "
                f"step {step - 1}: the update to step {step - 1}, or one since the last "
                "logged step, made them non-finite, or this batch overflowed the loss)"
            )
        self.checkpointer.wait()
        last = self.checkpointer.latest_step()
        raise NonFiniteError(
            f"{what}; the run stopped without evaluating or saving that state. The last good "
            "checkpoint is "
            + (f"step {last} in {self.checkpointer.directory}" if last is not None else "none")
            + ". Lower the learning rate, or check the data."
        )

    def _global(self, host_batch: dict) -> dict:
        batch = {k: host_batch[k] for k in ("image", "label")}
        return sharding_lib.host_batch_to_global(batch, self.mesh)

    def _dispatch(self, host_batches: list[dict], with_norms: bool) -> tuple:
        """One train step, or ``len(host_batches)`` steps in one dispatch. With
        ``with_norms``, first the norms of the first of these steps (:attr:`Steps.norms`,
        the state unchanged). Returns ``(metrics, finite, norms or None)``."""
        norms = None
        if with_norms:
            norms = self.steps.norms(self.state, self._global(host_batches[0]))
        if len(host_batches) == 1:
            self.state, metrics, finite = self.steps.train(
                self.state, self._global(host_batches[0])
            )
        else:
            group = [{k: b[k] for k in ("image", "label")} for b in host_batches]
            batches = sharding_lib.host_batches_to_global(group, self.mesh)
            self.state, metrics, finite = self.steps.train_many(self.state, batches)
        if norms is not None:
            finite = jnp.logical_and(finite, norms[1])
        return metrics, finite, norms

    def save(self, step: int, pending) -> None:
        self.check_finite(pending, state=True)
        self.checkpointer.save(step, self.state, wall_time_s=self.elapsed())

    # -- the loop

    def run(self) -> dict[str, Any]:
        config, spe = self.config, self.steps_per_epoch
        step = int(jax.device_get(self.state.step))
        if step >= self.total_steps:
            records = [r for r in self.jsonl.read() if r.get("step") == step]
            if records:
                logging.info("%s already finished at step %d.", self.workdir, step)
                self.close()
                return records[-1]
        self.jsonl.truncate(step)
        self.write_config()
        self.writer.write_hparams(metrics_lib.hparams_from_config(config))
        eval_sets = data_lib.eval_datasets(config.data, global_batch_size=config.eval_batch_size)
        eval_every = config.eval_every_epochs
        progress = metrics_lib.Progress(self.total_steps, step, eval_every_steps=spe * eval_every)
        per_dispatch = config.steps_per_dispatch
        watcher = PreemptionWatcher()
        pending: list[tuple[int, jax.Array, bool]] = []
        accumulated = None
        last_record: dict[str, Any] = {}
        preempted = False
        logging.info(
            "Training %s with %s: %d steps (%d per epoch, %d examples per update) on %d "
            "devices in %d processes.",
            config.model.name,
            config.optimizer.name,
            self.total_steps,
            spe,
            self.update_batch,
            self.mesh.devices.size,
            jax.process_count(),
        )
        try:
            while step < self.total_steps and not preempted:
                epoch, start_batch = divmod(step, spe)
                if start_batch == 0 and (
                    epoch % eval_every == 0 or epoch in config.per_example_epochs
                ):
                    progress.pause()
                    last_record = self.evaluate(step, eval_sets, pending)
                    progress.resume()
                batches = iter(
                    data_lib.train_batches(
                        config.data,
                        global_batch_size=self.update_batch,
                        epoch=epoch,
                        start_batch=start_batch,
                    )
                )
                num_batches = 0
                while True:
                    # Up to steps_per_dispatch batches, never past the epoch or the run.
                    size = min(per_dispatch, spe - step % spe, self.total_steps - step)
                    group = list(itertools.islice(batches, size))
                    if not group:
                        break
                    num_batches += len(group)
                    before, step = step, step + len(group)
                    logs = _crossed(before, step, config.log_every_steps) or (
                        step == self.total_steps
                    )
                    update, finite, norms = self._dispatch(group, with_norms=logs)
                    pending.append((step, finite, logs))
                    accumulated = update if accumulated is None else _merge(accumulated, update)
                    for hook in self.hooks:
                        hook.on_step(self, step)
                    if logs:
                        self.check_finite(pending, state=False)
                        values = {**accumulated.compute(), **norms[0]}
                        values = {k: float(values[k]) for k in metrics_lib.TrainMetrics.ORDER}
                        accumulated = None
                        report = progress.report(step)
                        self.writer.write_scalars(
                            step, {f"train/{k}": v for k, v in values.items()}
                        )
                        self.writer.write_scalars(step, report)
                        metrics_lib.log_line(
                            progress.describe(step, step / spe, report),
                            {"loss": values["loss"], "top1": values["top1"]},
                        )
                    if watcher.requested(step):
                        preempted = True
                    every = config.checkpoint_every_steps
                    if (
                        preempted
                        or step == self.total_steps
                        or (every and _crossed(before, step, every))
                    ):
                        self.save(step, pending)
                    if preempted or step % spe == 0 or step >= self.total_steps:
                        break
                if num_batches == 0:
                    raise RuntimeError(
                        f"The training data yielded no batch for epoch {epoch} from batch "
                        f"{start_batch}, although {spe} batches per epoch were expected."
                    )
            if not preempted:
                last_record = self.evaluate(step, eval_sets, pending)
                for hook in self.hooks:
                    hook.on_end(self, last_record)
        finally:
            watcher.close()
            self.close()
        if preempted:
            logging.warning("Preempted: checkpoint saved at step %d; restart to resume.", step)
            return {**last_record, "step": step, "preempted": True}
        return last_record

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.checkpointer.close()
            self.writer.close()


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[hooks_lib.Hook] = ()
) -> dict[str, Any]:
    """Trains and evaluates ``config`` in ``workdir``, resuming from its checkpoint if any.

    Args:
      config: a training config (fields: ``cgh_jax.configlib``).
      workdir: the run directory; created if absent.
      hooks: :class:`cgh_jax.hooks.Hook` callbacks (after each step, each evaluation, at
        the end).

    Returns:
      The last evaluation record (``step``, ``epoch``, ``<set>/<metric>``...); with
      ``preempted=True`` if the run stopped on SIGTERM after saving a checkpoint.

    Raises:
      ValueError: for an invalid config, before any training.
      checkpointing.ConfigMismatchError, checkpointing.CheckpointError: the workdir holds a
        checkpoint of another config, or one that cannot be read (nothing is deleted).
      NonFiniteError: a non-finite loss or norm (the last good checkpoint stays).
    """
    return Run(config, workdir, hooks).run()


__all__ = ["EVAL_SETS", "NonFiniteError", "Run", "create_model", "evaluate", "train_and_evaluate"]
