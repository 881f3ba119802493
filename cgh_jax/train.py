"""Config-driven training and evaluation of one run on a device mesh: ``train_and_evaluate``.

``train_and_evaluate(config, workdir, hooks=())`` trains one model with one optimizer and
measures memorization the way the papers do:

* the config is checked once (:func:`cgh_jax.spec.experiment.parse`; a
  :class:`~cgh_jax.spec.experiment.RunConfig` passes through), then, as early as each can
  run, its batches against the devices (before any data is read) and the training split's
  size; :func:`cgh_jax.assembly.assemble` builds the model's program (the M3 layout for
  this mesh and model, logged; the jitted train and eval steps), and the run's
  :class:`~cgh_jax.spec.experiment.Experiment` is fixed;
* :func:`evaluate`: exact (masked) sums over the evaluation sets ``pristine``, ``corrupt``
  (scored against the noisy label: ``corrupt_noisy``, and the true label:
  ``corrupt_true``), ``train_sample`` and ``test``; top-1, top-5 (more than 5 classes) and
  loss, before every ``eval_every_epochs``-th epoch (and each of ``per_example_epochs``)
  and after the last;
* one loop over the batches (``steps_per_dispatch`` per dispatch, never across an epoch's
  end): train metrics every ``log_every_steps`` (TensorBoard, and the console at
  ``--verbosity=1``); every step's loss and norms are checked for non-finite values at the
  next host synchronization that happens anyway (a log, a checkpoint, an evaluation), so a
  diverging run stops with :class:`NonFiniteError` before it evaluates or saves a
  non-finite state, and the last good checkpoint stays; checkpoints every
  ``checkpoint_every_steps``, at the end and on SIGTERM (saved at the next step boundary,
  then the function returns with ``preempted=True``); hooks (:mod:`cgh_jax.hooks`) after
  each step, each evaluation and at the end;
* the console (:class:`cgh_jax.metrics.Console`): at most one line per evaluation, with
  the progress (rate, ETA) and the main accuracies.

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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

from cgh_jax import assembly as assembly_lib
from cgh_jax import checkpointing, configlib, distributed
from cgh_jax import data as data_lib
from cgh_jax import hooks as hooks_lib
from cgh_jax import metrics as metrics_lib
from cgh_jax import sharding as sharding_lib
from cgh_jax import step as step_lib
from cgh_jax.spec import experiment as experiment_lib

EVAL_SETS = ("pristine", "corrupt_noisy", "corrupt_true", "train_sample", "test")


class NonFiniteError(FloatingPointError):
    """A training loss or norm was NaN or infinite; the last good checkpoint is kept."""


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


def _crossed(before: int, after: int, every: int) -> bool:
    """A multiple of ``every`` lies in ``(before, after]``."""
    return after // every > before // every


class Trainer:
    """One call of :func:`train_and_evaluate`: set-up in ``__init__``, the loop in
    :meth:`run`."""

    def __init__(
        self, run: experiment_lib.RunConfig, workdir: str, hooks: Sequence[hooks_lib.Hook]
    ):
        self._start = time.monotonic()
        self.run_config = run
        settings = run.trainer
        self.hooks = list(hooks)
        if settings.per_example_epochs:
            self.hooks.append(hooks_lib.PerExampleRecords(settings.per_example_epochs))
        # Rules that need the devices, or the dataset size where it is known without reading
        # the data, before anything is written.
        self.mesh = sharding_lib.create_mesh()
        experiment_lib.check_devices(run, self.mesh.devices.size, jax.process_count())
        self.known_size = data_lib.known_sizes(run.data)[0]
        if self.known_size is not None:
            experiment_lib.check_dataset_size(run, self.known_size)
        self.workdir = metrics_lib.resolve_dir(workdir)
        metrics_lib.make_dirs(self.workdir)
        self.checkpointer = checkpointing.Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            config=run.config,
            defaults=configlib.base_config(),
            max_to_keep=settings.keep_checkpoints,
        )
        try:
            self._setup()
        except BaseException:
            self.checkpointer.close()
            raise
        update_batch = self.experiment.optimizer.examples_per_update
        self.jsonl = metrics_lib.JsonlWriter(os.path.join(self.workdir, "metrics.jsonl"))
        self.writer = metrics_lib.create_writer(self.workdir, examples_per_step=update_batch)
        self._closed = False

    def _setup(self) -> None:
        run = self.run_config
        # A changed config or damaged checkpoint fails here, before any expensive work.
        self.resume_meta = self.checkpointer.check_config()
        info = data_lib.get_dataset_info(run.data)
        if self.known_size is None:
            experiment_lib.check_dataset_size(run, info.num_train)
        steps_per_epoch, total_steps = experiment_lib.duration(run, info.num_train)
        self.assembly = assembly_lib.assemble(
            run.model.build(info.num_classes),
            run.optimizer,
            self.mesh,
            info.image_shape,
            steps_per_epoch=steps_per_epoch,
            num_epochs=run.trainer.num_epochs,
            with_top5=info.num_classes > 5,
        )
        self.experiment = experiment_lib.Experiment(
            run=run,
            optimizer=self.assembly.optimizer,
            layout_reason=self.assembly.layout_reason,
            num_devices=self.mesh.devices.size,
            num_processes=jax.process_count(),
            platform=jax.default_backend(),
            num_train=info.num_train,
            num_classes=info.num_classes,
            image_shape=tuple(info.image_shape),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
        self.elapsed_before = 0.0  # wall time of earlier segments of an interrupted run
        if self.resume_meta is not None:
            state, meta = self.checkpointer.restore(self.assembly.abstract_state())
            self.assembly.check_state(state)
            self.elapsed_before = float(meta.get("wall_time_s", 0.0))
            logging.info("Resumed from %s at step %d.", self.checkpointer.directory, meta["step"])
        else:
            state = self.assembly.new_state(jax.random.PRNGKey(run.trainer.seed))
        self.state = state

    # -- pieces of the loop

    def elapsed(self) -> float:
        """Seconds of wall time of this run so far, over all its restarts (setup,
        compilation, training and evaluation included)."""
        return self.elapsed_before + time.monotonic() - self._start

    def write_config(self) -> None:
        if jax.process_index() == 0:
            text = self.run_config.config.to_json_best_effort(indent=2, sort_keys=True)
            metrics_lib.write_file_atomic(os.path.join(self.workdir, "config.json"), text.encode())

    def evaluates_at(self, step: int) -> bool:
        """An evaluation starts epoch ``step / steps_per_epoch`` (every ``eval_every_epochs``-th
        epoch and each of ``per_example_epochs``); the last step's is :meth:`run`'s."""
        epoch, rest = divmod(step, self.experiment.steps_per_epoch)
        settings = self.run_config.trainer
        return (
            rest == 0
            and step < self.experiment.total_steps
            and (epoch % settings.eval_every_epochs == 0 or epoch in settings.per_example_epochs)
        )

    def evaluate(self, step: int, eval_sets, pending, progress) -> dict[str, Any]:
        self.check_finite(pending)  # never evaluate (or record) a non-finite state
        progress.pause()
        results = evaluate(
            self.assembly.steps.eval,
            self.state,
            eval_sets,
            self.mesh,
            with_top5=self.experiment.num_classes > 5,
        )
        record = {
            "step": step,
            "epoch": _epoch_value(step, self.experiment.steps_per_epoch),
            "wall_time_s": round(self.elapsed(), 3),
            **results,
        }
        self.jsonl.write(record)
        self.writer.write_scalars(step, results)
        progress.resume()
        self.console.evaluation(record, progress.overall(step))
        for hook in self.hooks:
            hook.on_eval(record, self.state)
        return record

    def check_finite(self, pending: list[tuple[int, jax.Array]]) -> None:
        """Raises NonFiniteError naming the first step whose loss or norms were not finite."""
        if not pending:
            return
        flags = jax.device_get([f for _, f in pending])
        for (step, _), ok in zip(pending, flags, strict=True):
            if not bool(ok):
                self.checkpointer.wait()
                last = self.checkpointer.latest_step()
                raise NonFiniteError(
                    f"Non-finite training loss or norm at step {step} (the update to step "
                    f"{step}); the run stopped without evaluating or saving that state. The "
                    "last good checkpoint is "
                    + (
                        f"step {last} in {self.checkpointer.directory}"
                        if last is not None
                        else "none"
                    )
                    + ". Lower the learning rate, or check the data."
                )
        pending.clear()

    def dispatches(self, step: int) -> Iterator[list[dict]]:
        """The host batches from ``step`` to the end, in groups of ``steps_per_dispatch``
        that never cross an epoch's end or the run's."""
        spe, total = self.experiment.steps_per_epoch, self.experiment.total_steps
        per_dispatch = self.run_config.trainer.steps_per_dispatch
        while step < total:
            epoch, start_batch = divmod(step, spe)
            batches = iter(
                data_lib.train_batches(
                    self.run_config.data,
                    global_batch_size=self.experiment.optimizer.examples_per_update,
                    epoch=epoch,
                    start_batch=start_batch,
                )
            )
            end = min((epoch + 1) * spe, total)
            while step < end:
                group = list(itertools.islice(batches, min(per_dispatch, end - step)))
                if not group:
                    raise RuntimeError(
                        f"The training data yielded no batch for epoch {epoch} from batch "
                        f"{step - epoch * spe}, although {spe} batches per epoch were expected."
                    )
                step += len(group)
                yield group

    def _dispatch(self, host_batches: list[dict]) -> tuple:
        """One train step, or ``len(host_batches)`` steps in one dispatch."""
        keys, steps = ("image", "label"), self.assembly.steps
        if len(host_batches) == 1:
            batch = {k: host_batches[0][k] for k in keys}
            return steps.train(self.state, sharding_lib.host_batch_to_global(batch, self.mesh))
        group = [{k: b[k] for k in keys} for b in host_batches]
        return steps.train_many(self.state, sharding_lib.host_batches_to_global(group, self.mesh))

    def save(self, step: int, pending) -> None:
        self.check_finite(pending)
        self.checkpointer.save(step, self.state, wall_time_s=self.elapsed())

    def log_train(self, step: int, accumulated, progress) -> None:
        values = {k: float(v) for k, v in accumulated.compute().items()}
        report = progress.report(step)
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
        self.writer.write_scalars(step, report)
        spe = self.experiment.steps_per_epoch
        logging.vlog(
            1, "%s: loss=%.4g, top1=%.4g", progress.describe(step, step / spe, report),
            values["loss"], values["top1"],
        )  # fmt: skip

    # -- the loop

    def run(self) -> dict[str, Any]:
        exp, settings = self.experiment, self.run_config.trainer
        step = int(jax.device_get(self.state.step))
        if step >= exp.total_steps:
            records = [r for r in self.jsonl.read() if r.get("step") == step]
            if records:
                logging.info("%s already finished at step %d.", self.workdir, step)
                self.close()
                return records[-1]
        self.jsonl.truncate(step)
        self.write_config()
        self.writer.write_hparams(metrics_lib.hparams_from_config(self.run_config.config))
        eval_sets = data_lib.eval_datasets(
            self.run_config.data, global_batch_size=settings.eval_batch_size
        )
        progress = metrics_lib.Progress(
            exp.total_steps, step, eval_every_steps=exp.steps_per_epoch * settings.eval_every_epochs
        )
        self.console = metrics_lib.Console(exp)
        info = hooks_lib.RunInfo(
            exp, self.assembly.model, self.mesh, self.workdir, self.assembly.steps.eval
        )
        for hook in self.hooks:
            hook.start(info)
        self.console.start(exp, resumed_at=step)
        watcher = PreemptionWatcher()
        pending: list[tuple[int, jax.Array]] = []
        accumulated, record, preempted = None, {}, False
        try:
            if self.evaluates_at(step):
                record = self.evaluate(step, eval_sets, pending, progress)
            for group in self.dispatches(step):
                self.state, update, finite = self._dispatch(group)
                before, step = step, step + len(group)
                pending.append((step, finite))
                accumulated = update if accumulated is None else accumulated.merge(update)
                for hook in self.hooks:
                    hook.on_step(step, self.state)
                if _crossed(before, step, settings.log_every_steps) or step == exp.total_steps:
                    self.check_finite(pending)
                    self.log_train(step, accumulated, progress)
                    accumulated = None
                preempted = watcher.requested(step)
                every = settings.checkpoint_every_steps
                if (
                    preempted
                    or step == exp.total_steps
                    or (every and _crossed(before, step, every))
                ):
                    self.save(step, pending)
                if preempted:
                    break
                if self.evaluates_at(step):
                    record = self.evaluate(step, eval_sets, pending, progress)
            if not preempted:
                record = self.evaluate(step, eval_sets, pending, progress)
                for hook in self.hooks:
                    hook.on_end(record, self.state)
        finally:
            watcher.close()
            self.close()
        if preempted:
            logging.warning("Preempted: checkpoint saved at step %d; restart to resume.", step)
            return {**record, "step": step, "preempted": True}
        return record

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.checkpointer.close()
            self.writer.close()


def train_and_evaluate(
    config: Any, workdir: str, hooks: Sequence[hooks_lib.Hook] = ()
) -> dict[str, Any]:
    """Trains and evaluates ``config`` in ``workdir``, resuming from its checkpoint if any.

    Args:
      config: a training config (fields: ``cgh_jax.configlib``), or the
        :class:`~cgh_jax.spec.experiment.RunConfig` of one (already checked: the command
        line and the study runner pass it, so no rule runs twice).
      workdir: the run directory; created if absent.
      hooks: :class:`cgh_jax.hooks.Hook` callbacks (before the first step, after each
        step, each evaluation, at the end).

    Returns:
      The last evaluation record (``step``, ``epoch``, ``<set>/<metric>``...); with
      ``preempted=True`` if the run stopped on SIGTERM after saving a checkpoint.

    Raises:
      ConfigError (a ValueError): an invalid config, before any training.
      checkpointing.ConfigMismatchError, checkpointing.CheckpointError: the workdir holds a
        checkpoint of another config, or one that cannot be read (nothing is deleted).
      NonFiniteError: a non-finite loss or norm (the last good checkpoint stays).
    """
    return Trainer(experiment_lib.parse(config), workdir, hooks).run()


__all__ = ["EVAL_SETS", "NonFiniteError", "Trainer", "evaluate", "train_and_evaluate"]
