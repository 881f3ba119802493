"""Optimizers and learning-rate schedules from an experiment config.

The optimizer config (``config.optimizer``) has these fields:

==================  =====================================================================
``name``            ``sgd`` | ``m3`` | ``rm3`` | ``ra3`` | ``winsorize``.
``learning_rate``   peak learning rate.
``momentum``        heavy-ball momentum (0: none). The authors use none with M3/RM3.
``nesterov``        Nesterov momentum.
``weight_decay``    coupled L2: ``weight_decay * params`` is added to the gradient before
                    the median / clipping (the papers' runs use 0).
``num_groups``      M3 (median of means): number of groups, odd. One update consumes
                    ``num_groups`` SGD-sized batches.
``m3_layout``       M3: how the train step computes the median of the group means:
                    ``auto`` (default) | ``vmap`` | ``loop`` | ``reduce_scatter`` |
                    ``group_sharded`` (:func:`resolve_m3_layout`).
``num_clipped``     winsorize: per coordinate, clip to the ``num_clipped``-th smallest and
                    largest per-example values before averaging.
``schedule``        ``constant`` | ``step`` | ``cosine``, all stepped per epoch.
``decay_epochs``    ``step``: multiply by ``decay_factor`` at each of these epochs.
``decay_factor``    ``step``: the factor (0.1, as for ResNet on ImageNet at 30 and 60).
``warmup_epochs``   linear warmup from 0 over this many epochs (per step), then the schedule.
==================  =====================================================================

M3 layouts. ``vmap`` and ``loop`` are the straightforward path: ``grouped_grads`` (with
``vectorize=True`` / ``False``) gives the ``k`` group-mean gradients and the optimizer
(``m3_sgd``) takes their coordinate-wise median. ``reduce_scatter`` and ``group_sharded``
compute the median inside the train step with
:func:`cgh_jax.optim.sharded_median_of_means_grads` (explicit per-device code that moves
fewer bytes than ``k`` all-reduces), and the optimizer is weight decay + SGD without a
median (adding the weight decay after the median is exact). ``group_sharded`` assigns
groups row-major (contiguous blocks of the global batch), the others column-major; both
are uniformly random partitions of a shuffled batch. ``auto`` picks:

* one device, or a batch the sharded layouts cannot split (``num_groups * batch_size`` not
  a multiple of ``devices * num_groups``), or a BatchNorm model whose per-device chunks
  would have fewer than :data:`MIN_BATCHNORM_CHUNK` examples: the straightforward path,
  ``loop`` for a model with convolutions on CPU or on several devices (``vmap`` turns
  their weight gradients into grouped convolutions, slow on XLA:CPU, and under ``jit``
  over a mesh the partitioner may gather the batch), ``vmap`` otherwise;
* otherwise (several devices) :func:`cgh_jax.optim.resolve_layout`'s choice:
  ``group_sharded`` when ``devices >= num_groups``, else ``reduce_scatter``.

Durations are given in epochs and converted to steps only here, in :func:`lr_schedule`,
from ``steps_per_epoch`` (updates per epoch for the chosen optimizer).

The schedules, with :math:`e = \\lfloor t / S \\rfloor` the epoch of step :math:`t`
(:math:`S` steps per epoch, :math:`E` epochs, peak rate :math:`\\eta`):

.. math::

  \\text{constant: } \\eta, \\qquad
  \\text{step: } \\eta \\cdot f^{\\,|\\{b \\in B : b \\le e\\}|}, \\qquad
  \\text{cosine: } \\eta \\cdot \\tfrac12 \\left(1 + \\cos(\\pi e / E)\\right),

the cosine stepped once per epoch as in the authors' trainer (PyTorch's
``CosineAnnealingLR(T_max=E)`` stepped after each epoch). With warmup over :math:`W`
epochs, the rate is multiplied by :math:`\\min(1, t / (W S))`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from cgh_jax.optim import m3_sgd, ra3_sgd, rm3_sgd, winsorized_sgd
from cgh_jax.optim.sharded import resolve_layout

OPTIMIZERS = ("sgd", "m3", "rm3", "ra3", "winsorize")
SCHEDULES = ("constant", "step", "cosine")
M3_LAYOUTS = ("auto", "vmap", "loop", "reduce_scatter", "group_sharded")
GROUPED_LAYOUTS = ("vmap", "loop")  # grouped_grads + the median in the optimizer
SHARDED_LAYOUTS = ("reduce_scatter", "group_sharded")  # the median inside the train step
MIN_BATCHNORM_CHUNK = 16
"""``auto`` keeps the straightforward M3 path for BatchNorm models when a sharded layout
would normalize over fewer examples per device (chunk) than this: per-device BatchNorm
batches this small degrade accuracy (Wu & He, *Group Normalization*, 2018)."""

# How the train step computes the gradient each optimizer consumes.
GRADIENT_MODES = {
    "sgd": "batch",  # one mean gradient over the batch
    "rm3": "batch",
    "ra3": "batch",
    "m3": "grouped",  # num_groups group-mean gradients (leading group axis)
    "winsorize": "per_example",  # one gradient per example (leading example axis)
}


def _get(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    return cfg[key] if key in cfg else default


def validate(cfg: Mapping[str, Any]) -> None:
    """Raises ValueError for an optimizer config that cannot be built."""
    name = _get(cfg, "name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is not one of {', '.join(OPTIMIZERS)}.")
    schedule = _get(cfg, "schedule", "constant")
    if schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={schedule!r} is not one of {', '.join(SCHEDULES)}.")
    lr = _get(cfg, "learning_rate", None)
    if lr is None or not lr > 0:
        raise ValueError(f"optimizer.learning_rate must be > 0, got {lr!r}.")
    if _get(cfg, "momentum", 0.0) < 0:
        raise ValueError(f"optimizer.momentum must be >= 0, got {cfg['momentum']!r}.")
    if _get(cfg, "weight_decay", 0.0) < 0:
        raise ValueError(f"optimizer.weight_decay must be >= 0, got {cfg['weight_decay']!r}.")
    if _get(cfg, "warmup_epochs", 0.0) < 0:
        raise ValueError(f"optimizer.warmup_epochs must be >= 0, got {cfg['warmup_epochs']!r}.")
    if name == "m3":
        k = _get(cfg, "num_groups", 3)
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"optimizer.num_groups must be a positive odd integer, got {k!r}.")
    layout = _get(cfg, "m3_layout", "auto")
    if layout not in M3_LAYOUTS:
        raise ValueError(f"optimizer.m3_layout={layout!r} is not one of {', '.join(M3_LAYOUTS)}.")
    if name == "winsorize" and _get(cfg, "num_clipped", 0) < 0:
        raise ValueError(f"optimizer.num_clipped must be >= 0, got {cfg['num_clipped']!r}.")
    if schedule == "step":
        epochs = tuple(_get(cfg, "decay_epochs", ()))
        if list(epochs) != sorted(epochs) or any(e <= 0 for e in epochs):
            raise ValueError(
                f"optimizer.decay_epochs must be increasing positive epochs, got {epochs!r}."
            )


def gradient_mode(cfg: Mapping[str, Any]) -> str:
    """``'batch'``, ``'grouped'`` or ``'per_example'``: what the optimizer consumes."""
    validate(cfg)
    return GRADIENT_MODES[cfg["name"]]


def examples_per_update(cfg: Mapping[str, Any], batch_size: int) -> int:
    """Global examples consumed by one update: ``num_groups * batch_size`` for M3."""
    if gradient_mode(cfg) == "grouped":
        return int(cfg["num_groups"]) * batch_size
    return batch_size


def resolve_m3_layout(
    cfg: Mapping[str, Any],
    *,
    num_devices: int,
    update_batch: int,
    has_conv: bool,
    has_state: bool,
    platform: str,
) -> tuple[str, str]:
    """The concrete M3 layout of ``cfg.m3_layout`` on this mesh, and why.

    Args:
      cfg: an ``m3`` optimizer config.
      num_devices: devices of the data mesh axis.
      update_batch: global examples per update (``num_groups * batch_size``).
      has_conv: the model has convolutions (parameters of rank >= 3).
      has_state: the model has BatchNorm statistics.
      platform: ``jax.default_backend()`` (``'cpu'``, ``'gpu'``, ``'tpu'``).

    Returns:
      ``(layout, reason)``: one of ``vmap``, ``loop``, ``reduce_scatter``,
      ``group_sharded``, and a sentence for the log.

    Raises:
      ValueError: an explicit sharded layout that cannot run here (batch not a multiple of
        ``devices * num_groups``; ``group_sharded`` with fewer devices than groups).

    Example:
      >>> cfg = dict(name="m3", learning_rate=0.1, num_groups=3, m3_layout="auto")
      >>> resolve_m3_layout(cfg, num_devices=8, update_batch=768, has_conv=True,
      ...                   has_state=True, platform="gpu")[0]
      'group_sharded'
    """
    validate(cfg)
    k = int(_get(cfg, "num_groups", 3))
    layout = _get(cfg, "m3_layout", "auto")
    grouped = "loop" if has_conv and (platform == "cpu" or num_devices > 1) else "vmap"
    if layout in GROUPED_LAYOUTS:
        return layout, f"m3_layout={layout!r} (configured)"
    splits = update_batch % (num_devices * k) == 0
    chunk = update_batch // (num_devices * k)
    if layout in SHARDED_LAYOUTS:
        if not splits:
            raise ValueError(
                f"optimizer.m3_layout={layout!r} needs the {update_batch} examples of an "
                f"update to be a multiple of devices x num_groups = {num_devices} x {k}; "
                "change batch_size or use m3_layout='auto'."
            )
        return resolve_layout(layout, k, num_devices), f"m3_layout={layout!r} (configured)"
    if num_devices == 1:
        why = "one device"
    elif not splits:
        why = (
            f"{update_batch} examples per update are not a multiple of devices x num_groups"
            f" = {num_devices} x {k}"
        )
    elif has_state and chunk < MIN_BATCHNORM_CHUNK:
        why = (
            f"BatchNorm over per-device chunks of {chunk} < {MIN_BATCHNORM_CHUNK} examples "
            "would differ from per-group statistics"
        )
    else:
        resolved = resolve_layout("auto", k, num_devices)
        return resolved, f"auto: {num_devices} devices, {k} groups -> {resolved}"
    kind = "convolutions" if has_conv else "no convolutions"
    return grouped, f"auto: {why}; grouped path, {kind} on {platform} -> {grouped}"


def lr_schedule(cfg: Mapping[str, Any], *, steps_per_epoch: int, num_epochs: int):
    """The learning-rate schedule of ``cfg`` as an optax schedule over update steps.

    Args:
      cfg: the optimizer config.
      steps_per_epoch: updates per epoch (for M3: examples / (num_groups * batch_size)).
      num_epochs: the length of the run in epochs (the cosine period).

    Returns:
      ``schedule(step) -> learning rate``, jit-safe, float32.

    Raises:
      ValueError: for an unknown schedule or ``steps_per_epoch < 1``.
    """
    validate(cfg)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    peak = float(cfg["learning_rate"])
    kind = _get(cfg, "schedule", "constant")
    warmup_steps = int(round(float(_get(cfg, "warmup_epochs", 0.0)) * steps_per_epoch))
    boundaries = jnp.asarray(tuple(_get(cfg, "decay_epochs", ())) or (math.inf,), jnp.float32)
    factor = float(_get(cfg, "decay_factor", 0.1))
    period = float(max(num_epochs, 1))

    def schedule(step):
        step = jnp.asarray(step)
        epoch = (step // steps_per_epoch).astype(jnp.float32)
        if kind == "constant":
            lr = jnp.full((), peak, jnp.float32)
        elif kind == "step":
            passed = jnp.sum(boundaries <= epoch).astype(jnp.float32)
            lr = peak * jnp.power(jnp.float32(factor), passed)
        else:
            lr = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(epoch, period) / period))
        if warmup_steps > 0:
            lr = lr * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)
        return lr.astype(jnp.float32)

    return schedule


def _median_direction_sgd(
    schedule: Any, *, weight_decay: float, momentum: float, nesterov: bool
) -> optax.GradientTransformation:
    """``m3_sgd``'s chain with an identity in place of the median, for gradients that are
    already the median of the group means (same optimizer state structure)."""
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    parts.append(optax.identity())
    parts.append(optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)


def create_optimizer(
    cfg: Mapping[str, Any],
    *,
    steps_per_epoch: int,
    num_epochs: int,
    m3_layout: str | None = None,
) -> tuple[optax.GradientTransformation, Any]:
    """Builds the optax optimizer of ``cfg`` and its learning-rate schedule.

    ``sgd`` is ``optax.sgd`` after optional coupled weight decay; the others are
    ``cgh_jax.optim``'s aliases (``m3_sgd`` with ``num_groups``, ``rm3_sgd``, ``ra3_sgd``,
    ``winsorized_sgd`` with ``num_clipped``), which add the weight decay before the median,
    running buffer or clipping. For ``m3`` with a sharded layout (``reduce_scatter``,
    ``group_sharded``) the train step already computes the median, and the optimizer is
    weight decay + SGD (with an identity where the median would be, so the optimizer state
    has the same structure for every layout).

    Args:
      cfg: the optimizer config.
      steps_per_epoch: updates per epoch.
      num_epochs: epochs of the run.
      m3_layout: the resolved M3 layout (:func:`resolve_m3_layout`); None uses
        ``cfg.m3_layout``, where ``auto`` means the straightforward (grouped) chain.

    Returns:
      ``(optimizer, schedule)``. The optimizer takes the gradients the train step computes
      for this optimizer (:func:`gradient_mode`).

    Example:
      >>> import ml_collections
      >>> cfg = ml_collections.ConfigDict(dict(name='rm3', learning_rate=0.1))
      >>> tx, sched = create_optimizer(cfg, steps_per_epoch=10, num_epochs=2)
    """
    validate(cfg)
    schedule = lr_schedule(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    name = cfg["name"]
    common = dict(
        weight_decay=float(_get(cfg, "weight_decay", 0.0)),
        momentum=float(_get(cfg, "momentum", 0.0)),
        nesterov=bool(_get(cfg, "nesterov", False)),
    )
    if name == "sgd":
        momentum = common["momentum"] or None
        tx = optax.sgd(schedule, momentum=momentum, nesterov=common["nesterov"])
        if common["weight_decay"]:
            tx = optax.chain(optax.add_decayed_weights(common["weight_decay"]), tx)
    elif name == "m3":
        layout = m3_layout or _get(cfg, "m3_layout", "auto")
        if layout not in M3_LAYOUTS:
            raise ValueError(f"m3_layout={layout!r} is not one of {', '.join(M3_LAYOUTS)}.")
        if layout in SHARDED_LAYOUTS:
            tx = _median_direction_sgd(schedule, **common)
        else:
            tx = m3_sgd(schedule, num_groups=int(cfg["num_groups"]), **common)
    elif name == "rm3":
        tx = rm3_sgd(schedule, **common)
    elif name == "ra3":
        tx = ra3_sgd(schedule, **common)
    else:
        tx = winsorized_sgd(schedule, num_clipped=int(cfg["num_clipped"]), **common)
    return tx, schedule
