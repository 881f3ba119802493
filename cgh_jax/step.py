"""The one train step and eval step, built from a model, an :class:`OptimizerSpec` and a mesh.

Every caller that updates parameters goes through :func:`make_train_step` (or
:class:`Steps`): the trainer, the benchmarks and the studies. The gradient each optimizer
consumes (``spec.gradient``):

- ``BATCH`` (``sgd``, ``rm3``, ``ra3``): ``jax.value_and_grad`` of the mean loss over the
  batch;
- ``GROUPED`` (``m3``; its norm-matched controls ``mean_at_median_norm`` and
  ``median_at_mean_norm`` take every layout but the sharded ones): the median of
  ``num_groups`` group-mean gradients over ``num_groups x batch_size`` examples, by the
  layout ``spec.m3_layout`` (concrete, see :meth:`OptimizerConfig.resolve_layout`):
  ``vmap`` / ``loop``: :func:`cgh_jax.optim.grouped_grads` (column-major groups, BatchNorm
  statistics per group) and the median in the optimizer; ``chunked`` (one device): the
  same groups, the aggregate inside the step with dense kernels' group gradients reduced
  in chunks (:func:`cgh_jax.optim.chunked_aggregate_grads`); ``reduce_scatter`` /
  ``group_sharded`` / ``group_aligned`` (several devices):
  :func:`cgh_jax.optim.sharded_median_of_means_grads` inside the step, the same
  update with fewer collective bytes (BatchNorm statistics per device chunk;
  ``group_aligned`` on a model without BatchNorm takes the chunk size with the least
  padding, :func:`cgh_jax.optim.aligned_plan.chunk_size_for`). Running
  statistics move as ``spec.m3_batch_stats`` says: ``sequential`` (one update per group,
  in order, as the authors' three forward passes) or ``mean``;
- ``PER_EXAMPLE`` (``winsorize``): :func:`cgh_jax.optim.per_example_grads` (models without
  BatchNorm).

Dropout keys are ``fold_in(state.rng, state.step)``, so they depend only on the step. The
eval step returns exact masked sums (top-1, top-5, loss) against ``label`` and
``true_label`` and per-example loss and correctness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cgh_jax import metrics as metrics_lib
from cgh_jax import sharding as sharding_lib
from cgh_jax.optim import (
    chunked_aggregate_grads,
    coordinate_median,
    grouped_grads,
    per_example_grads,
    sharded_median_of_means_grads,
)
from cgh_jax.optim.aligned_plan import chunk_size_for as aligned_chunk_size
from cgh_jax.optim.grads import check_state_momentum
from cgh_jax.optim.norm_match import mean_at_median_norm_leaf, median_at_mean_norm_leaf
from cgh_jax.spec.optimizer import CHUNKED_LAYOUT, GROUPED_LAYOUTS, Gradient, OptimizerSpec


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


# ----------------------------------------------------------------------------- state


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
      tx: the optimizer (``spec.optimizer()``).
      image_shape: ``(H, W, C)`` of one example.
      rng: PRNG key; split into the init key, the init dropout key and the base key.
      mesh: the device mesh.
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


class ModelFacts(NamedTuple):
    """What the step and the M3 layout need to know about a model."""

    has_state: bool  # BatchNorm statistics
    has_conv: bool  # a parameter of rank >= 3 (a convolution kernel)


def model_facts(model, image_shape, mesh) -> ModelFacts:
    """Reads :class:`ModelFacts` from the model's abstract variables (no computation)."""
    probe = abstract_train_state(model, optax.identity(), image_shape, mesh)
    has_conv = any(len(np.shape(leaf)) >= 3 for leaf in jax.tree.leaves(probe.params))
    return ModelFacts(has_state=bool(jax.tree.leaves(probe.batch_stats)), has_conv=has_conv)


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


def batch_stats_options(model, spec: OptimizerSpec, *, has_state: bool) -> dict[str, Any]:
    """How M3's group forward passes move BatchNorm running statistics (keywords of
    ``grouped_grads`` / ``sharded_median_of_means_grads``): ``spec.m3_batch_stats`` with
    the model's ``bn_momentum`` (the fold of ``sequential`` outside the ``loop`` layout
    needs it; :func:`cgh_jax.optim.grads.check_state_momentum` checks it)."""
    if not has_state:
        return {}
    return dict(
        batch_stats_update=spec.m3_batch_stats,
        state_argnum=0,
        state_collection="batch_stats",
        state_momentum=getattr(model, "bn_momentum", None),
    )


def check_batch_stats_fold(model, spec: OptimizerSpec, state: TrainState, image_shape) -> None:
    """Before training: M3's ``sequential`` BatchNorm statistics outside the ``loop`` layout
    fold the groups' updates with the model's ``bn_momentum``; checks on one random batch
    that every running statistic is such an average (two forward passes).

    Raises:
      ValueError: the model has no ``bn_momentum``, or a statistic is not a running average
        with that momentum; use ``optimizer.m3_layout='loop'`` or ``m3_batch_stats='mean'``.
    """
    has_state = bool(jax.tree.leaves(state.batch_stats))
    options = batch_stats_options(model, spec, has_state=has_state)
    if (
        spec.gradient is not Gradient.GROUPED
        or options.get("batch_stats_update") != "sequential"
        or spec.m3_layout == "loop"
    ):
        return
    if options["state_momentum"] is None:
        raise ValueError(
            f"optimizer.m3_batch_stats='sequential' with m3_layout={spec.m3_layout!r} needs "
            f"the model's BatchNorm momentum, and {type(model).__name__} has no bn_momentum; "
            "set optimizer.m3_layout='loop' or optimizer.m3_batch_stats='mean'"
        )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, *image_shape)), jnp.float32),
        "label": jnp.zeros((8,), jnp.int32),
    }
    check_state_momentum(
        make_loss_fn(model, has_state=True),
        options["state_momentum"],
        state.params,
        batch,
        state.batch_stats,
        state_argnum=0,
        state_collection="batch_stats",
        has_aux=True,
    )


GROUP_AGGREGATES = {
    "m3": coordinate_median,
    "mean_at_median_norm": mean_at_median_norm_leaf,
    "median_at_mean_norm": median_at_mean_norm_leaf,
}
"""The update direction of each grouped optimizer, per leaf ``[k, *s] -> s`` (the logged
``grad_norm``; the optimizer computes the same inside its chain)."""


def _gradient_fn(model, spec: OptimizerSpec, *, has_state: bool, mesh, vectorize: bool):
    """``fn(state, batch, rng) -> (loss, top1, grads for the optimizer, direction, new
    batch_stats or None)``; ``direction`` is the update direction before weight decay."""
    loss_fn = make_loss_fn(model, has_state=has_state)
    kind = spec.gradient
    stats = batch_stats_options(model, spec, has_state=has_state)
    if kind is Gradient.BATCH:

        def batch_fn(state, batch, rng):
            (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch, state.batch_stats, rng=rng
            )
            aux, new_state = out if has_state else (out, None)
            return loss, aux["top1"], grads, grads, new_state

        return batch_fn
    if kind is Gradient.GROUPED and spec.m3_layout == CHUNKED_LAYOUT:
        median_fn = chunked_aggregate_grads(
            loss_fn,
            spec.num_groups,
            spec.name,
            has_aux=True,
            has_state=has_state,
            vectorize=vectorize,
            decay=spec.decay_in_step,
            **stats,
        )
        reduce = None
    elif kind is Gradient.GROUPED and spec.median_in_step:
        if mesh is None:
            raise ValueError(f"m3_layout={spec.m3_layout!r} needs the device mesh (mesh=...).")
        chunk = None
        if spec.m3_layout == "group_aligned":
            chunk = aligned_chunk_size(
                spec.examples_per_update,
                mesh.shape["data"],
                spec.num_groups,
                independent_examples=vectorize and not has_state,
            )
        median_fn = sharded_median_of_means_grads(
            loss_fn,
            spec.num_groups,
            mesh,
            has_aux=True,
            has_state=has_state,
            layout=spec.m3_layout,
            vectorize=vectorize,
            chunk_size=chunk,
            **stats,
        )
        reduce = None
    elif kind is Gradient.GROUPED:  # an OptimizerSpec's layout is concrete
        median_fn = grouped_grads(
            loss_fn,
            spec.num_groups,
            has_aux=True,
            has_state=has_state,
            vectorize=spec.m3_layout == "vmap",
            **stats,
        )
        reduce = GROUP_AGGREGATES[spec.name]
    else:
        median_fn = per_example_grads(loss_fn, has_aux=True)
        reduce = lambda x: jnp.mean(x, axis=0)  # noqa: E731

    def stacked_fn(state, batch, rng):
        g = median_fn(state.params, batch, state.batch_stats, rng=rng)
        direction = g.grads if reduce is None else jax.tree.map(reduce, g.grads)
        new_state = g.state if has_state else None
        return jnp.mean(g.loss), jnp.mean(g.aux["top1"]), g.grads, direction, new_state

    return stacked_fn


def make_train_step(
    model,
    spec: OptimizerSpec,
    *,
    has_state: bool,
    mesh=None,
    vectorize: bool = True,
    with_norms: bool = True,
) -> Callable:
    """The un-jitted train step ``(state, batch) -> (state, TrainMetrics, finite)``.

    Args:
      model: the Flax module.
      spec: the run's optimizer (an :class:`OptimizerSpec`: a concrete ``m3_layout``, the
        schedule's length).
      has_state: the model has BatchNorm statistics.
      mesh: the device mesh (needed by the sharded M3 layouts).
      vectorize: sharded M3 layouts: compute a device's chunks with ``vmap`` (else a loop).
      with_norms: also compute the global norms of the update direction, the new
        parameters and the update. Each is a pass over a parameter-sized array that the
        update itself does not need: on a CPU the three cost about 40 % of an MLP's SGD
        step. The trainer's step goes without them; it reads them, once per logging
        interval, from :func:`make_norms_step`, a separate program (norms read inside the
        step would change how XLA fuses the update, and with it the update's last bits).

    Returns:
      The step function. ``metrics`` has the loss, top-1 and learning rate, and with
      ``with_norms`` the norms; the logged ``grad_norm`` is the norm of the update
      direction before weight decay: the batch gradient, M3's median of the group means,
      or winsorize's mean per-example gradient. ``finite`` is a bool scalar: the loss and
      the learning rate, and with ``with_norms`` the three norms (without them, for M3 on
      the ``vmap`` / ``loop`` layouts, the median's norm), are finite. Without the
      norms a non-finite update shows at the next step, whose loss is computed from the
      parameters it made (see :class:`cgh_jax.train.Trainer`).
    """
    tx, schedule = spec.optimizer(), spec.schedule()
    gradient_fn = _gradient_fn(model, spec, has_state=has_state, mesh=mesh, vectorize=vectorize)
    # M3 on the straightforward layouts: without the norms the step still checks the
    # median's norm. That keeps the median an array of its own ahead of the update, as in
    # the step that logged its norm: fused into the update, XLA:CPU rounds the update
    # differently (by one unit in the last place in about 2 % of an MLP's parameters), which
    # would move the numbers of every earlier M3 run.
    check_direction = spec.name == "m3" and spec.m3_layout in GROUPED_LAYOUTS

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, top1, grads, direction, new_stats = gradient_fn(state, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = new_stats["batch_stats"] if has_state else state.batch_stats
        new = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        values = {"loss": loss, "top1": top1, "learning_rate": schedule(state.step)}
        if with_norms:
            values |= {
                "grad_norm": optax.global_norm(direction),
                "param_norm": optax.global_norm(params),
                "update_norm": optax.global_norm(updates),
            }
        checked = list(values.values())
        if check_direction and not with_norms:
            checked.append(optax.global_norm(direction))
        finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in checked]))
        return new, metrics_lib.TrainMetrics.single_from_model_output(**values), finite

    return train_step


def make_norms_step(model, spec: OptimizerSpec, **kwargs) -> Callable:
    """``(state, batch) -> (norms, finite)``: the norms the train step on ``batch`` would
    log with ``with_norms=True`` (``grad_norm``, ``param_norm`` of the parameters it would
    make, ``update_norm``), without changing ``state``; ``finite``: the step's loss and
    these norms are finite. ``kwargs`` as for :func:`make_train_step`.

    The trainer runs it (one extra gradient) before the step that ends a logging interval,
    so that its train step itself never computes the norms."""
    full = make_train_step(model, spec, with_norms=True, **kwargs)

    def norms_step(state: TrainState, batch):
        _, metrics, finite = full(state, batch)
        values = metrics.compute()
        return {k: values[k] for k in metrics_lib.TrainMetrics.NORMS}, finite

    return norms_step


def make_state_check() -> Callable:
    """``state -> bool scalar``: every floating-point parameter is finite (one pass over
    the parameters; the trainer runs it before it evaluates or saves a state whose last
    step did not compute the norms)."""

    def params_finite(state: TrainState):
        leaves = [x for x in jax.tree.leaves(state.params) if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))

    return params_finite


def make_eval_step(model, *, has_state: bool, with_top5: bool) -> Callable:
    """The un-jitted eval step ``(state, batch) -> (sums, per_example)``.

    ``batch`` has ``image``, ``label``, ``true_label`` and ``mask``. ``sums`` has, for each
    of ``label`` and ``true_label``, masked sums of the loss, top-1 and top-5 hits, plus the
    number of real examples ``count``; ``per_example`` has ``loss`` / ``correct`` against
    ``label`` (for the per-example records).
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


def make_multi_step(train_step: Callable) -> Callable:
    """Several train steps in one dispatch: ``(state, batches) -> (state, metrics, finite)``.

    ``batches`` has the leaves of ``n`` batches stacked on a leading axis ``[n, B, ...]``
    (already on the devices); ``jax.lax.scan`` applies ``train_step`` to each in order, so
    the result is the state after ``n`` single steps. ``metrics`` are the ``n`` steps'
    metrics merged in order (as the loop merges single steps'); ``finite`` is true iff
    every step's flag was. For small models the time per step on a host is dominated by
    dispatch and transfer: this amortizes both over ``n`` steps.
    """

    def multi_step(state: TrainState, batches):
        def body(state, batch):
            state, metrics, finite = train_step(state, batch)
            return state, (metrics, finite)

        state, (stacked, finite) = jax.lax.scan(body, state, batches)
        merged = jax.tree.map(lambda x: x[0], stacked)
        for i in range(1, finite.shape[0]):
            merged = merged.merge(jax.tree.map(lambda x, i=i: x[i], stacked))
        return state, merged, jnp.all(finite)

    return multi_step


class Steps(NamedTuple):
    """The jitted steps of one model and optimizer on one mesh, and the optimizer."""

    train: Callable  # (state, batch) -> (state, TrainMetrics, finite); donates the state
    train_many: Callable  # (state, [n, B, ...] batches) -> the same after n steps
    norms: Callable  # (state, batch) -> (norms, finite) of that step (make_norms_step)
    eval: Callable  # (state, batch) -> (sums, per_example)
    params_finite: Callable  # state -> bool scalar (make_state_check)
    tx: optax.GradientTransformation


def build_steps(
    model, spec: OptimizerSpec, mesh, *, facts: ModelFacts, with_top5: bool, platform: str
) -> Steps:
    """:func:`make_train_step` (without norms), :func:`make_norms_step` and
    :func:`make_eval_step` under ``jax.jit`` over ``mesh``: state replicated, batch sharded
    on ``'data'``, the train state donated to the train step."""
    replicated = sharding_lib.replicated_sharding(mesh)
    batch_sharding = sharding_lib.batch_sharding(mesh)
    kwargs = dict(
        has_state=facts.has_state, mesh=mesh, vectorize=not (facts.has_conv and platform == "cpu")
    )
    train_fn = make_train_step(model, spec, with_norms=False, **kwargs)
    train = jax.jit(
        train_fn,
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0,),
    )
    train_many = jax.jit(
        make_multi_step(train_fn),
        in_shardings=(replicated, sharding_lib.stacked_batch_sharding(mesh)),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0,),
    )
    norms = jax.jit(
        make_norms_step(model, spec, **kwargs),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
    )
    eval_fn = make_eval_step(model, has_state=facts.has_state, with_top5=with_top5)
    evaluate = jax.jit(
        eval_fn,
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, batch_sharding),
    )
    params_finite = jax.jit(make_state_check(), in_shardings=(replicated,))
    return Steps(
        train=train,
        train_many=train_many,
        norms=norms,
        eval=evaluate,
        params_finite=params_finite,
        tx=spec.optimizer(),
    )


__all__ = [
    "ModelFacts",
    "Steps",
    "TrainState",
    "abstract_train_state",
    "batch_stats_options",
    "build_steps",
    "check_batch_stats_fold",
    "create_train_state",
    "cross_entropy",
    "make_eval_step",
    "make_loss_fn",
    "make_multi_step",
    "make_norms_step",
    "make_state_check",
    "make_train_step",
    "model_facts",
]
