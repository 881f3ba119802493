"""Config-driven training and evaluation on a device mesh.

``train_and_evaluate(config, workdir)`` trains one model with one optimizer and measures
memorization the way the papers do. The pieces, each a small function:

* :func:`create_train_state`: model variables and optimizer state, replicated on the mesh.
* :func:`make_train_step`: one update, ``jax.jit`` over the mesh with the batch sharded on
  ``'data'``. The gradient each optimizer consumes:

  - ``sgd``, ``rm3``, ``ra3``: ``jax.value_and_grad`` of the mean loss over the batch;
  - ``m3``: the median of ``num_groups`` group-mean gradients over ``num_groups x
    batch_size`` examples, computed by the layout ``config.optimizer.m3_layout`` resolves to
    (``cgh_jax.optim.from_config.resolve_m3_layout``; logged at the start): ``vmap`` /
    ``loop``: ``cgh_jax.optim.grouped_grads`` (column-major groups, BatchNorm statistics per
    group) and the median in the optimizer; ``reduce_scatter`` / ``group_sharded`` (several
    devices, the default there): ``cgh_jax.optim.sharded_median_of_means_grads`` inside the
    step, the same update with fewer collective bytes (BatchNorm statistics per device
    chunk of ``batch_size / devices`` examples, dropout keys per device chunk, as that
    function documents). Running statistics are the mean over groups (chunks);
  - ``winsorize``: ``cgh_jax.optim.per_example_grads`` (models without BatchNorm).

  Dropout keys are ``fold_in(state.rng, state.step)``, so they depend only on the step.
* :func:`make_eval_step` and :func:`evaluate`: exact (masked) sums over the evaluation sets
  ``pristine``, ``corrupt`` (scored against the noisy label: ``corrupt_noisy``, and the true
  label: ``corrupt_true``), ``train_sample`` and ``test``; top-1, top-5 (more than 5
  classes) and loss, before each epoch and after the last.
* :func:`write_per_example_records`: id, correctness and loss of every training example
  after the epochs in ``config.per_example_epochs``.
* the loop: train metrics every ``log_every_steps`` (loss, top-1, gradient / parameter /
  update norms; a non-finite value stops the run with :class:`NonFiniteError` and leaves the
  last good checkpoint in place), checkpoints every ``checkpoint_every_steps``, at the
  end and on SIGTERM (saved at the next step boundary, then the function
  returns with ``preempted=True``).

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

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from cgh_jax import checkpointing, configlib
from cgh_jax import data as data_lib
from cgh_jax import metrics as metrics_lib
from cgh_jax import models as models_lib
from cgh_jax import sharding as sharding_lib
from cgh_jax.optim import (
    coordinate_median,
    grouped_grads,
    per_example_grads,
    sharded_median_of_means_grads,
)
from cgh_jax.optim import from_config as optim_config

EVAL_SETS = ("pristine", "corrupt_noisy", "corrupt_true", "train_sample", "test")


class NonFiniteError(FloatingPointError):
    """A training loss or norm was NaN or infinite; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
    """Everything that determines the rest of a run (all replicated on the mesh).

    Attributes:
      step: number of updates done (int32 scalar); the data position follows from it.
      params: model parameters.
      batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
      opt_state: optax state (e.g. the RM3 ring buffer, momentum).
      rng: base PRNG key; the dropout key of step ``t`` is ``fold_in(rng, t)``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


# ----------------------------------------------------------------------------- model & state


def create_model(config: ml_collections.ConfigDict, num_classes: int):
    """``cgh_jax.models.get_model`` with ``config.model``'s fields as keywords."""
    kwargs = dict(config.model)
    name = kwargs.pop("name")
    kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    return models_lib.get_model(name, num_classes=num_classes, **kwargs)


def _init_fn(model, tx: optax.GradientTransformation, image_shape) -> Callable:
    def init(rng):
        init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
        images = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init({"params": init_rng, "dropout": dropout_rng}, images, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=state_rng,
        )

    return init


def create_train_state(
    model, tx: optax.GradientTransformation, image_shape, rng: jax.Array, mesh
) -> TrainState:
    """Initializes the model and optimizer, replicated over ``mesh``.

    Args:
      model: a Flax linen module taking ``(images, train=...)``.
      tx: the optimizer.
      image_shape: ``(H, W, C)`` of one example.
      rng: PRNG key; split into the init key, the init dropout key and the base key.
      mesh: the device mesh.

    Returns:
      A TrainState at step 0 whose arrays are replicated on ``mesh``.
    """
    replicated = sharding_lib.replicated_sharding(mesh)
    return jax.jit(_init_fn(model, tx, image_shape), out_shardings=replicated)(rng)


def abstract_train_state(model, tx: optax.GradientTransformation, image_shape, mesh) -> TrainState:
    """The shapes, dtypes and (replicated) shardings of :func:`create_train_state`'s result,
    without computing it: the restore target, and a cheap look at the model's collections."""
    replicated = sharding_lib.replicated_sharding(mesh)
    shapes = jax.eval_shape(_init_fn(model, tx, image_shape), jax.random.PRNGKey(0))
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )


# ----------------------------------------------------------------------------- losses


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_loss_fn(model, *, has_state: bool) -> Callable:
    """The training loss in ``grouped_grads``'s convention.

    ``loss_fn(params, batch, batch_stats, rng=None)`` returns ``(loss, (aux, new_state))``
    if ``has_state`` else ``(loss, aux)``; ``loss`` is the mean cross-entropy over the given
    batch, ``aux = {'top1': mean accuracy}``, ``new_state = {'batch_stats': ...}``.
    """

    def loss_fn(params, batch, batch_stats, rng=None):
        rngs = {"dropout": rng} if rng is not None else {}
        if has_state:
            logits, new_state = model.apply(
                {"params": params, "batch_stats": batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs=rngs,
            )
        else:
            logits = model.apply({"params": params}, batch["image"], train=True, rngs=rngs)
        loss = jnp.mean(cross_entropy(logits, batch["label"]))
        aux = {"top1": jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))}
        return (loss, (aux, new_state)) if has_state else (loss, aux)

    return loss_fn


# ----------------------------------------------------------------------------- steps


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    schedule: Callable,
    *,
    mode: str,
    num_groups: int,
    has_state: bool,
    m3_layout: str = "vmap",
    mesh=None,
    vectorize: bool = True,
) -> Callable:
    """The un-jitted train step ``(state, batch) -> (state, TrainMetrics, finite)``.

    Args:
      model: the Flax module.
      tx: the optimizer; for ``mode='grouped'`` it receives gradients with a leading group
        axis (layouts ``vmap``/``loop``) or the median of the group means (layouts
        ``reduce_scatter``/``group_sharded``: ``from_config.create_optimizer`` with the same
        layout); a leading example axis for ``mode='per_example'``.
      schedule: the learning-rate schedule (logged).
      mode: ``'batch'``, ``'grouped'`` or ``'per_example'``.
      num_groups: groups for ``mode='grouped'``.
      has_state: the model has BatchNorm statistics.
      m3_layout: for ``mode='grouped'``, a resolved layout
        (``from_config.resolve_m3_layout``): ``vmap`` / ``loop`` run
        ``grouped_grads(vectorize=...)``; ``reduce_scatter`` / ``group_sharded`` run
        ``sharded_median_of_means_grads`` over ``mesh``.
      mesh: the device mesh (needed by the sharded layouts).
      vectorize: sharded layouts: compute a device's chunks with ``vmap`` (else a loop).

    Returns:
      The step function. ``finite`` is a bool scalar: loss and all norms are finite. The
      logged ``grad_norm`` is the norm of the gradient direction before weight decay: the
      batch gradient, M3's median of the group means, or winsorize's mean per-example
      gradient.

    Raises:
      ValueError: an unknown ``m3_layout``, or a sharded layout without ``mesh``.
    """
    loss_fn = make_loss_fn(model, has_state=has_state)
    if mode == "grouped":
        if m3_layout not in (*optim_config.GROUPED_LAYOUTS, *optim_config.SHARDED_LAYOUTS):
            raise ValueError(
                f"m3_layout={m3_layout!r} is not a resolved layout; resolve 'auto' with "
                "cgh_jax.optim.from_config.resolve_m3_layout."
            )
        if m3_layout in optim_config.SHARDED_LAYOUTS:
            if mesh is None:
                raise ValueError(f"m3_layout={m3_layout!r} needs the device mesh (mesh=...).")
            median_fn = sharded_median_of_means_grads(
                loss_fn,
                num_groups,
                mesh,
                has_aux=True,
                has_state=has_state,
                layout=m3_layout,
                vectorize=vectorize,
            )
        else:
            grouped_fn = grouped_grads(
                loss_fn,
                num_groups,
                has_aux=True,
                has_state=has_state,
                vectorize=m3_layout == "vmap",
            )

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if mode == "batch":
            (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch, state.batch_stats, rng=rng
            )
            aux, new_state = out if has_state else (out, None)
            top1, direction = aux["top1"], grads
        else:
            if mode == "grouped" and m3_layout in optim_config.SHARDED_LAYOUTS:
                g = median_fn(state.params, batch, state.batch_stats, rng=rng)
                direction = g.grads
            elif mode == "grouped":
                g = grouped_fn(state.params, batch, state.batch_stats, rng=rng)
                direction = jax.tree.map(coordinate_median, g.grads)
            else:
                g = per_example_grads(loss_fn, has_aux=True)(
                    state.params, batch, state.batch_stats, rng=rng
                )
                direction = jax.tree.map(lambda x: jnp.mean(x, axis=0), g.grads)
            grads, new_state = g.grads, g.state
            loss, top1 = jnp.mean(g.loss), jnp.mean(g.aux["top1"])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = new_state["batch_stats"] if has_state else state.batch_stats
        new = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        values = {
            "loss": loss,
            "top1": top1,
            "grad_norm": optax.global_norm(direction),
            "param_norm": optax.global_norm(params),
            "update_norm": optax.global_norm(updates),
            "learning_rate": schedule(state.step),
        }
        finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in values.values()]))
        return new, metrics_lib.TrainMetrics.single_from_model_output(**values), finite

    return train_step


def has_convolutions(params: Any) -> bool:
    """True if any parameter has rank >= 3 (a convolution kernel ``[..., C_in, C_out]``)."""
    return any(len(np.shape(leaf)) >= 3 for leaf in jax.tree.leaves(params))


def make_eval_step(model, *, has_state: bool, with_top5: bool) -> Callable:
    """The un-jitted eval step ``(state, batch) -> sums``.

    ``batch`` has ``image``, ``label``, ``true_label`` and ``mask``. The result has, for
    each of ``label`` and ``true_label``, masked sums of the loss, top-1 and top-5 hits,
    plus the number of real examples ``count``; and per-example ``loss`` / ``correct``
    against ``label`` (for the per-example records).
    """

    def eval_step(state: TrainState, batch):
        variables = {"params": state.params}
        if has_state:
            variables["batch_stats"] = state.batch_stats
        logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        top = jnp.argsort(-logits, axis=-1)[:, :5] if with_top5 else None
        out = {"count": jnp.sum(mask)}
        per_example = {}
        for key in ("label", "true_label"):
            labels = batch[key]
            loss = cross_entropy(logits, labels)
            hit1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
            sums = {"loss": jnp.sum(loss * mask), "top1": jnp.sum(hit1 * mask)}
            if with_top5:
                hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
                sums["top5"] = jnp.sum(hit5 * mask)
            out[key] = sums
            if key == "label":
                per_example = {"loss": loss, "correct": hit1 > 0}
        return out, per_example

    return eval_step


# ----------------------------------------------------------------------------- evaluation


def _iterate(source) -> Iterable:
    return source() if callable(source) else source


def _eval_keys(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: batch[k] for k in ("image", "label", "true_label", "mask")}


def evaluate(
    eval_fn: Callable, state: TrainState, datasets: Mapping[str, Any], mesh, *, with_top5: bool
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
        for host_batch in _iterate(source):
            batch = sharding_lib.host_batch_to_global(_eval_keys(host_batch), mesh)
            sums = jax.device_get(eval_fn(state, batch)[0])  # replicated: fetchable anywhere
            for s in scored:
                key = "true_label" if s == "corrupt_true" else "label"
                totals[s].add({**sums[key], "count": sums["count"]})
        for s in scored:
            results.update({f"{s}/{m}": v for m, v in totals[s].result().items()})
    return results


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


def write_per_example_records(
    eval_fn: Callable, state: TrainState, batches: Any, mesh, path: str
) -> int:
    """Writes every training example's id, correctness, loss and labels to ``path`` (.npz).

    ``correct`` and ``loss`` are measured in eval mode against ``label`` (the label trained
    on). All processes take part; process 0 writes. Returns the number of records.
    """
    names = ("id", "correct", "loss", "label", "true_label", "mask")
    columns: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for host_batch in _iterate(batches):
        batch = sharding_lib.host_batch_to_global(_eval_keys(host_batch), mesh)
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
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
        self._flag.set()

    def requested(self, step: int) -> bool:
        if self._multi:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # No preemption sync manager (e.g. not on a cluster).
                return False
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ----------------------------------------------------------------------------- the loop


def _epoch_value(step: int, steps_per_epoch: int) -> int | float:
    epoch = step / steps_per_epoch
    return int(epoch) if step % steps_per_epoch == 0 else round(epoch, 6)


def _check_config(config: ml_collections.ConfigDict) -> None:
    for key in ("batch_size", "num_epochs", "eval_batch_size", "log_every_steps"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config.{key} must be a positive integer, got {config[key]!r}.")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ValueError(
            f"config.max_steps must be -1 (full epochs) or > 0, got {config.max_steps}."
        )
    if config.checkpoint_every_steps < 0:
        raise ValueError(
            "config.checkpoint_every_steps must be >= 0 (0: only at the end and on SIGTERM)."
        )
    optim_config.validate(config.optimizer)


def _check_batch(global_batch: int, mesh, what: str) -> None:
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % devices or global_batch % processes:
        raise ValueError(
            f"The global {what} batch of {global_batch} examples does not split evenly over "
            f"{devices} devices in {processes} processes; choose a multiple of {devices}."
        )


class _Run:
    """State of one call of train_and_evaluate (kept small; the loop is in run())."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self._start = time.monotonic()
        _check_config(config)
        self.config = config
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
        self.writer = metrics_lib.create_writer(self.workdir)
        self._closed = False

    def _setup(self) -> None:
        config = self.config
        # A changed config or damaged checkpoint fails here, before any expensive work.
        self.resume_meta = self.checkpointer.check_config()

        self.mesh = sharding_lib.create_mesh()
        self.info = data_lib.get_dataset_info(config.data)
        opt = config.optimizer
        self.mode = optim_config.gradient_mode(opt)
        self.update_batch = optim_config.examples_per_update(opt, config.batch_size)
        _check_batch(self.update_batch, self.mesh, "training")
        _check_batch(config.eval_batch_size, self.mesh, "evaluation")
        self.steps_per_epoch = data_lib.steps_per_epoch(config.data, self.update_batch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"The training split has {self.info.num_train} examples, fewer than one "
                f"update's {self.update_batch}; lower batch_size."
            )
        self.total_steps = self.steps_per_epoch * config.num_epochs
        if config.max_steps > 0:
            self.total_steps = min(self.total_steps, config.max_steps)

        self.model = create_model(config, self.info.num_classes)
        image_shape = tuple(self.info.image_shape)
        # The model's collections decide the M3 layout, which decides the optimizer chain.
        probe = abstract_train_state(self.model, optax.identity(), image_shape, self.mesh)
        self.has_state = bool(jax.tree.leaves(probe.batch_stats))
        has_conv = has_convolutions(probe.params)
        num_devices = self.mesh.devices.size
        self.m3_layout = None
        if self.mode == "grouped":
            self.m3_layout, reason = optim_config.resolve_m3_layout(
                opt,
                num_devices=num_devices,
                update_batch=self.update_batch,
                has_conv=has_conv,
                has_state=self.has_state,
                platform=jax.default_backend(),
            )
            logging.info("M3 layout %s (%s).", self.m3_layout, reason)
        self.tx, self.schedule = optim_config.create_optimizer(
            opt,
            steps_per_epoch=self.steps_per_epoch,
            num_epochs=config.num_epochs,
            m3_layout=self.m3_layout,
        )
        abstract = abstract_train_state(self.model, self.tx, image_shape, self.mesh)
        if self.mode == "per_example" and self.has_state:
            raise ValueError(
                f"optimizer {opt.name!r} needs per-example gradients, which BatchNorm models "
                f"({config.model.name!r}) do not have; use a model without BatchNorm."
            )
        self.elapsed_before = 0.0  # wall time of earlier segments of an interrupted run
        if self.resume_meta is not None:
            state, meta = self.checkpointer.restore(abstract)
            self.elapsed_before = float(meta.get("wall_time_s", 0.0))
            logging.info("Resumed from %s at step %d.", self.checkpointer.directory, meta["step"])
        else:
            rng = jax.random.PRNGKey(config.seed)
            state = create_train_state(self.model, self.tx, image_shape, rng, self.mesh)
        self.state = state
        self.with_top5 = self.info.num_classes > 5

        replicated = sharding_lib.replicated_sharding(self.mesh)
        batch_sharding = sharding_lib.batch_sharding(self.mesh)
        step_fn = make_train_step(
            self.model,
            self.tx,
            self.schedule,
            mode=self.mode,
            num_groups=int(opt.num_groups),
            has_state=self.has_state,
            m3_layout=self.m3_layout or "vmap",
            mesh=self.mesh,
            vectorize=not (has_conv and jax.default_backend() == "cpu"),
        )
        self.train_step = jax.jit(
            step_fn,
            in_shardings=(replicated, batch_sharding),
            out_shardings=(replicated, replicated, replicated),
            donate_argnums=(0,),
        )
        eval_fn = make_eval_step(self.model, has_state=self.has_state, with_top5=self.with_top5)
        self.eval_step = jax.jit(
            eval_fn,
            in_shardings=(replicated, batch_sharding),
            out_shardings=(replicated, batch_sharding),
        )

    # -- pieces of the loop

    def elapsed(self) -> float:
        """Seconds of wall time of this run so far, over all its restarts (setup,
        compilation, training and evaluation included)."""
        return self.elapsed_before + time.monotonic() - self._start

    def write_config(self) -> None:
        if jax.process_index() == 0:
            text = self.config.to_json_best_effort(indent=2, sort_keys=True)
            metrics_lib.write_file_atomic(os.path.join(self.workdir, "config.json"), text.encode())

    def evaluate(self, step: int, eval_sets) -> dict[str, Any]:
        start = time.monotonic()
        results = evaluate(
            self.eval_step, self.state, eval_sets, self.mesh, with_top5=self.with_top5
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
        return record

    def records(self, epoch: int) -> None:
        path = os.path.join(self.workdir, "per_example", f"epoch_{epoch:03d}.npz")
        batches = data_lib.full_train_eval_batches(
            self.config.data, global_batch_size=self.config.eval_batch_size
        )
        n = write_per_example_records(self.eval_step, self.state, batches, self.mesh, path)
        logging.info("Wrote %d per-example records to %s.", n, path)

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
                    f"{step}); the run stopped without saving that state. The last good "
                    f"checkpoint is "
                    + (
                        f"step {last} in {self.checkpointer.directory}"
                        if last is not None
                        else "none"
                    )
                    + ". Lower the learning rate, or check the data."
                )
        pending.clear()

    def save(self, step: int, pending) -> None:
        self.check_finite(pending)
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
        eval_sets = data_lib.eval_datasets(config.data, global_batch_size=config.eval_batch_size)
        record_epochs = {int(e) for e in config.per_example_epochs}
        progress = metrics_lib.Progress(self.total_steps, step)
        watcher = PreemptionWatcher()
        pending: list[tuple[int, jax.Array]] = []
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
                if start_batch == 0:
                    progress.pause()
                    last_record = self.evaluate(step, eval_sets)
                    if epoch in record_epochs:
                        self.records(epoch)
                    progress.resume()
                batches = data_lib.train_batches(
                    config.data,
                    global_batch_size=self.update_batch,
                    epoch=epoch,
                    start_batch=start_batch,
                )
                num_batches = 0
                for host_batch in batches:
                    num_batches += 1
                    batch = sharding_lib.host_batch_to_global(
                        {"image": host_batch["image"], "label": host_batch["label"]}, self.mesh
                    )
                    self.state, update, finite = self.train_step(self.state, batch)
                    step += 1
                    pending.append((step, finite))
                    accumulated = update if accumulated is None else accumulated.merge(update)
                    at_epoch_end = step % spe == 0
                    if step % config.log_every_steps == 0 or step == self.total_steps:
                        self.check_finite(pending)
                        values = accumulated.compute()
                        accumulated = None
                        report = progress.report(step)
                        values = {k: float(v) for k, v in values.items()}
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
                    if preempted or step == self.total_steps or (every and step % every == 0):
                        self.save(step, pending)
                    if preempted or at_epoch_end or step >= self.total_steps:
                        break
                if num_batches == 0:
                    raise RuntimeError(
                        f"The training data yielded no batch for epoch {epoch} from batch "
                        f"{start_batch}, although {spe} batches per epoch were expected."
                    )
            if not preempted:
                self.check_finite(pending)
                if step % spe == 0 and (step // spe) in record_epochs:
                    self.records(step // spe)
                last_record = self.evaluate(step, eval_sets)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates ``config`` in ``workdir``, resuming from its checkpoint if any.

    Args:
      config: a training config (fields: ``cgh_jax.configlib``).
      workdir: the run directory; created if absent.

    Returns:
      The last evaluation record (``step``, ``epoch``, ``<set>/<metric>``...); with
      ``preempted=True`` if the run stopped on SIGTERM after saving a checkpoint.

    Raises:
      ValueError: for an invalid config, before any training.
      checkpointing.ConfigMismatchError, checkpointing.CheckpointError: the workdir holds a
        checkpoint of another config, or one that cannot be read (nothing is deleted).
      NonFiniteError: a non-finite loss or norm (the last good checkpoint stays).
    """
    return _Run(config, workdir).run()


__all__ = [
    "EVAL_SETS",
    "NonFiniteError",
    "TrainState",
    "abstract_train_state",
    "create_model",
    "create_train_state",
    "evaluate",
    "has_convolutions",
    "make_eval_step",
    "make_loss_fn",
    "make_train_step",
    "train_and_evaluate",
    "write_per_example_records",
]
