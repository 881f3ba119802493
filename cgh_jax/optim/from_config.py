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
``num_clipped``     winsorize: per coordinate, clip to the ``num_clipped``-th smallest and
                    largest per-example values before averaging.
``schedule``        ``constant`` | ``step`` | ``cosine``, all stepped per epoch.
``decay_epochs``    ``step``: multiply by ``decay_factor`` at each of these epochs.
``decay_factor``    ``step``: the factor (0.1, as for ResNet on ImageNet at 30 and 60).
``warmup_epochs``   linear warmup from 0 over this many epochs (per step), then the schedule.
==================  =====================================================================

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

OPTIMIZERS = ("sgd", "m3", "rm3", "ra3", "winsorize")
SCHEDULES = ("constant", "step", "cosine")

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


def create_optimizer(
    cfg: Mapping[str, Any], *, steps_per_epoch: int, num_epochs: int
) -> tuple[optax.GradientTransformation, Any]:
    """Builds the optax optimizer of ``cfg`` and its learning-rate schedule.

    ``sgd`` is ``optax.sgd`` after optional coupled weight decay; the others are
    ``cgh_jax.optim``'s aliases (``m3_sgd`` with ``num_groups``, ``rm3_sgd``, ``ra3_sgd``,
    ``winsorized_sgd`` with ``num_clipped``), which add the weight decay before the median,
    running buffer or clipping.

    Args:
      cfg: the optimizer config.
      steps_per_epoch: updates per epoch.
      num_epochs: epochs of the run.

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
        tx = m3_sgd(schedule, num_groups=int(cfg["num_groups"]), **common)
    elif name == "rm3":
        tx = rm3_sgd(schedule, **common)
    elif name == "ra3":
        tx = ra3_sgd(schedule, **common)
    else:
        tx = winsorized_sgd(schedule, num_clipped=int(cfg["num_clipped"]), **common)
    return tx, schedule
