"""The optimizer of an experiment config, resolved once into a frozen :class:`OptimizerSpec`.

The optimizer config (``config.optimizer``) has these fields:

==================  =====================================================================
``name``            ``sgd`` | ``m3`` | ``rm3`` | ``ra3`` | ``winsorize`` |
                    ``mean_at_median_norm`` | ``median_at_mean_norm`` (M3's norm-matched
                    controls: the mean of the group means at the median's per-tensor
                    norm, and the median at the mean's; :mod:`cgh_jax.optim.norm_match`).
``learning_rate``   peak learning rate.
``momentum``        heavy-ball momentum (0: none). The authors use none with M3/RM3.
``nesterov``        Nesterov momentum.
``weight_decay``    coupled L2: ``weight_decay * params`` is added to the gradient before
                    the median / clipping (the papers' runs use 0).
``num_groups``      M3 (median of means) and its controls: number of groups, odd. One
                    update consumes ``num_groups`` SGD-sized batches.
``m3_layout``       M3: how the train step computes the median of the group means:
                    ``auto`` (default) | ``vmap`` | ``loop`` | ``reduce_scatter`` |
                    ``group_sharded`` | ``group_aligned``
                    (:meth:`OptimizerSpec.resolve_layout`).
``m3_batch_stats``  M3 with BatchNorm: ``sequential`` (default, the authors': one
                    running-statistics update per group, in order, as ``num_groups``
                    train-mode forward passes make) or ``mean`` (one update with the mean
                    of the groups' statistics).
``num_clipped``     winsorize: per coordinate, clip to the ``num_clipped``-th smallest and
                    largest per-example values before averaging.
``schedule``        ``constant`` | ``step`` | ``cosine``, all stepped per epoch.
``decay_epochs``    ``step``: multiply by ``decay_factor`` at each of these epochs.
``decay_factor``    ``step``: the factor (0.1, as for ResNet on ImageNet at 30 and 60).
``warmup_epochs``   linear warmup from 0 over this many epochs (per step), then the schedule.
==================  =====================================================================

:func:`resolve` validates the config once and returns an :class:`OptimizerSpec`; the
trainer then fixes the M3 layout for its mesh and model (:meth:`OptimizerSpec.with_layout`)
and the schedule's length (:meth:`OptimizerSpec.with_duration`). The step builder
(:mod:`cgh_jax.step`) and the benchmarks take the spec, never strings of the config.

M3 layouts. ``vmap`` and ``loop`` are the straightforward path: ``grouped_grads`` (with
``vectorize=True`` / ``False``) gives the ``k`` group-mean gradients and the optimizer
(``m3_sgd``) takes their coordinate-wise median. ``reduce_scatter``, ``group_sharded`` and
``group_aligned`` compute the median inside the train step with
:func:`cgh_jax.optim.sharded_median_of_means_grads` (explicit per-device code that moves
fewer bytes than ``k`` all-reduces), and the optimizer is weight decay + SGD without a
median (adding the weight decay after the median is exact). ``group_sharded`` assigns
groups row-major (contiguous blocks of the global batch), ``group_aligned`` in whole
devices (:mod:`cgh_jax.optim.aligned_plan`), the others column-major; all are uniformly
random partitions of a shuffled batch. ``auto`` picks:

* one device, or a batch the sharded layouts cannot split (``num_groups * batch_size`` not
  a multiple of ``devices * num_groups``), or a BatchNorm model whose per-device chunks
  would have fewer than :data:`MIN_BATCHNORM_CHUNK` examples: the straightforward path,
  ``loop`` for a model with convolutions on CPU or on several devices (``vmap`` turns
  their weight gradients into grouped convolutions, slow on XLA:CPU, and under ``jit``
  over a mesh the partitioner may gather the batch), ``vmap`` otherwise;
* otherwise (several devices) :func:`cgh_jax.optim.resolve_layout`'s choice for the
  update batch: ``reduce_scatter`` when ``devices < num_groups``; ``group_sharded`` when
  ``num_groups`` divides the device count; ``group_aligned`` when its devices evaluate at
  most ``sharded.MAX_ALIGNED_COMPUTE_RATIO`` times the examples of an even split (with
  slots of :func:`cgh_jax.optim.aligned_plan.chunk_size_for`: the BatchNorm chunk for
  BatchNorm models and unrolled convolutions, the least padding otherwise); else
  ``group_sharded``.

Durations are given in epochs and converted to steps only here, in
:meth:`OptimizerSpec.schedule`, from ``steps_per_epoch`` (updates per epoch for the chosen
optimizer). With :math:`e = \\lfloor t / S \\rfloor` the epoch of step :math:`t`
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

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

from cgh_jax import choices, config_checks, configlib
from cgh_jax.optim import sharded
from cgh_jax.optim.alias import (
    m3_sgd,
    mean_at_median_norm_sgd,
    median_at_mean_norm_sgd,
    ra3_sgd,
    rm3_sgd,
    winsorized_sgd,
)
from cgh_jax.optim.aligned_plan import aligned_plan
from cgh_jax.optim.aligned_plan import chunk_size_for as aligned_chunk_size

OPTIMIZERS = choices.OPTIMIZERS
SCHEDULES = choices.SCHEDULES
M3_LAYOUTS = choices.M3_LAYOUTS
SHARDED_LAYOUTS = choices.SHARDED_M3_LAYOUTS
"""M3 layouts that compute the median inside the train step (:mod:`cgh_jax.optim.sharded`)."""
GROUPED_LAYOUTS = tuple(x for x in M3_LAYOUTS if x != "auto" and x not in SHARDED_LAYOUTS)
"""M3 layouts of the straightforward path: ``grouped_grads``, the median in the optimizer."""
assert set(SHARDED_LAYOUTS) == set(sharded.LAYOUTS) - {"auto"}
MIN_BATCHNORM_CHUNK = 16
"""``auto`` keeps the straightforward M3 path for BatchNorm models when a sharded layout
would normalize over fewer examples per device (chunk) than this: per-device BatchNorm
batches this small degrade accuracy (Wu & He, *Group Normalization*, 2018)."""


class Gradient(enum.Enum):
    """The gradient the train step computes for an optimizer."""

    BATCH = "batch"  # one mean gradient over the batch (sgd, rm3, ra3)
    GROUPED = "grouped"  # num_groups group-mean gradients, leading group axis (m3)
    PER_EXAMPLE = "per_example"  # one gradient per example, leading example axis (winsorize)


_GRADIENTS = {
    "sgd": Gradient.BATCH,
    "rm3": Gradient.BATCH,
    "ra3": Gradient.BATCH,
    "m3": Gradient.GROUPED,
    "mean_at_median_norm": Gradient.GROUPED,
    "median_at_mean_norm": Gradient.GROUPED,
    "winsorize": Gradient.PER_EXAMPLE,
}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A validated optimizer: everything the step builder and the trainer need.

    Attributes:
      name: ``sgd`` | ``m3`` | ``rm3`` | ``ra3`` | ``winsorize``.
      learning_rate: peak rate.
      momentum, nesterov, weight_decay: as in the config (coupled L2 weight decay).
      num_groups: M3's groups (1 for the other optimizers).
      num_clipped: winsorize's clipped values per side (0 otherwise).
      batch_size: examples per group (M3) or per update (the others).
      m3_layout: the configured layout until :meth:`with_layout` fixes a concrete one.
      m3_batch_stats: ``sequential`` | ``mean`` (M3's BatchNorm running statistics).
      schedule_kind, decay_epochs, decay_factor, warmup_epochs: the schedule, in epochs.
      steps_per_epoch, num_epochs: the schedule's length (:meth:`with_duration`); 1 / 1
        until then.
    """

    name: str
    learning_rate: float
    batch_size: int
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    num_groups: int = 1
    num_clipped: int = 0
    m3_layout: str = "auto"
    m3_batch_stats: str = "sequential"
    schedule_kind: str = "constant"
    decay_epochs: tuple[float, ...] = ()
    decay_factor: float = 0.1
    warmup_epochs: float = 0.0
    steps_per_epoch: int = 1
    num_epochs: int = 1

    @property
    def gradient(self) -> Gradient:
        """What the train step computes for this optimizer."""
        return _GRADIENTS[self.name]

    @property
    def examples_per_update(self) -> int:
        """Global examples one update consumes: ``num_groups * batch_size`` for M3."""
        return self.num_groups * self.batch_size

    @property
    def median_in_step(self) -> bool:
        """M3 with a sharded layout: the step computes the median, the optimizer is SGD."""
        return self.name == "m3" and self.m3_layout in SHARDED_LAYOUTS

    def with_duration(self, *, steps_per_epoch: int, num_epochs: int) -> OptimizerSpec:
        """The spec with the schedule's length fixed (updates per epoch, epochs)."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        return dataclasses.replace(self, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)

    def resolve_layout(
        self, *, num_devices: int, has_conv: bool, has_state: bool, platform: str
    ) -> tuple[str, str]:
        """The concrete M3 layout of ``m3_layout`` on this mesh, and why.

        Args:
          num_devices: devices of the data mesh axis.
          has_conv: the model has convolutions (parameters of rank >= 3).
          has_state: the model has BatchNorm statistics.
          platform: ``jax.default_backend()`` (``'cpu'``, ``'gpu'``, ``'tpu'``).

        Returns:
          ``(layout, reason)``: one of ``vmap``, ``loop``, ``reduce_scatter``,
          ``group_sharded``, ``group_aligned``, and a sentence for the log.

        Raises:
          ValueError: an explicit sharded layout that cannot run here (batch not a multiple
            of ``devices * num_groups``; ``group_sharded`` or ``group_aligned`` with fewer
            devices than groups).

        Example:
          >>> spec = resolve(dict(name="m3", learning_rate=0.1), batch_size=256)
          >>> spec.resolve_layout(num_devices=8, has_conv=True, has_state=True,
          ...                     platform="gpu")[0]
          'group_sharded'
        """
        k, update_batch, layout = self.num_groups, self.examples_per_update, self.m3_layout
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
            resolved = sharded.resolve_layout(layout, k, num_devices)
            return resolved, f"m3_layout={layout!r} (configured)"
        if self.name != "m3":
            why = f"{self.name} has no sharded layout"
        elif num_devices == 1:
            why = "one device"
        elif not splits:
            why = (
                f"{update_batch} examples per update are not a multiple of devices x "
                f"num_groups = {num_devices} x {k}"
            )
        elif has_state and chunk < MIN_BATCHNORM_CHUNK:
            why = (
                f"BatchNorm over per-device chunks of {chunk} < {MIN_BATCHNORM_CHUNK} "
                "examples would differ from per-group statistics"
            )
        else:
            straddles = num_devices > k and num_devices % k
            chunk = None
            if straddles:
                vectorized = not (has_conv and platform == "cpu")  # as step.build_steps
                chunk = aligned_chunk_size(
                    update_batch, num_devices, k, independent_examples=vectorized and not has_state
                )
            resolved = sharded.resolve_layout(
                "auto", k, num_devices, batch_size=update_batch, chunk_size=chunk
            )
            reason = f"auto: {num_devices} devices, {k} groups -> {resolved}"
            if straddles:
                ratio = aligned_plan(update_batch, num_devices, k, chunk).compute_ratio
                reason += (
                    f" (group_aligned would evaluate {ratio:.3f}x the examples per device, "
                    f"the limit is {sharded.MAX_ALIGNED_COMPUTE_RATIO})"
                )
            return resolved, reason
        kind = "convolutions" if has_conv else "no convolutions"
        return grouped, f"auto: {why}; grouped path, {kind} on {platform} -> {grouped}"

    def with_layout(self, layout: str) -> OptimizerSpec:
        """The spec with a concrete M3 layout (from :meth:`resolve_layout`)."""
        if layout not in (*GROUPED_LAYOUTS, *SHARDED_LAYOUTS):
            raise ValueError(
                f"m3_layout={layout!r} is not a concrete layout; expected one of "
                f"{', '.join((*GROUPED_LAYOUTS, *SHARDED_LAYOUTS))}."
            )
        return dataclasses.replace(self, m3_layout=layout)

    def schedule(self) -> Callable[[Any], jnp.ndarray]:
        """The learning-rate schedule over update steps (jit-safe, float32)."""
        spe, peak, kind = self.steps_per_epoch, float(self.learning_rate), self.schedule_kind
        warmup_steps = int(round(float(self.warmup_epochs) * spe))
        boundaries = jnp.asarray(tuple(self.decay_epochs) or (math.inf,), jnp.float32)
        factor = float(self.decay_factor)
        period = float(max(self.num_epochs, 1))

        def schedule(step):
            step = jnp.asarray(step)
            epoch = (step // spe).astype(jnp.float32)
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

    def optimizer(self) -> optax.GradientTransformation:
        """The optax optimizer, taking the gradient :attr:`gradient` names.

        ``sgd`` is ``optax.sgd`` after optional coupled weight decay; the others are
        ``cgh_jax.optim``'s aliases (``m3_sgd``, ``rm3_sgd``, ``ra3_sgd``,
        ``winsorized_sgd``), which add the weight decay before the median, running buffer
        or clipping. For M3 with a sharded layout the train step already computes the
        median, and the optimizer is weight decay + SGD with an identity where the median
        would be (the same optimizer state structure for every layout).
        """
        schedule = self.schedule()
        common = dict(
            weight_decay=self.weight_decay, momentum=self.momentum, nesterov=self.nesterov
        )
        sgd = optax.sgd(schedule, momentum=self.momentum or None, nesterov=self.nesterov)
        if self.name == "sgd":
            if self.weight_decay:
                return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd)
            return sgd
        if self.median_in_step:
            parts = [optax.add_decayed_weights(self.weight_decay)] if self.weight_decay else []
            return optax.chain(*parts, optax.identity(), sgd)
        if self.name == "m3":
            return m3_sgd(schedule, num_groups=self.num_groups, **common)
        if self.name == "mean_at_median_norm":
            return mean_at_median_norm_sgd(schedule, num_groups=self.num_groups, **common)
        if self.name == "median_at_mean_norm":
            return median_at_mean_norm_sgd(schedule, num_groups=self.num_groups, **common)
        if self.name == "rm3":
            return rm3_sgd(schedule, **common)
        if self.name == "ra3":
            return ra3_sgd(schedule, **common)
        return winsorized_sgd(schedule, num_clipped=self.num_clipped, **common)


def resolve(cfg: Mapping[str, Any], *, batch_size: int) -> OptimizerSpec:
    """Validates an optimizer config once and returns its :class:`OptimizerSpec`.

    Args:
      cfg: the optimizer config (a mapping; missing fields take the defaults of
        ``cgh_jax.configlib.optimizer_config``).
      batch_size: the config's ``batch_size`` (examples per group for M3).

    Raises:
      cgh_jax.config_checks.ConfigError (a ValueError): naming the field, the value and
        what is accepted (:func:`cgh_jax.config_checks.check_optimizer`).

    Example:
      >>> spec = resolve(dict(name="m3", learning_rate=0.1, num_groups=5), batch_size=100)
      >>> spec.examples_per_update, spec.gradient.value
      (500, 'grouped')
    """
    config_checks.check_optimizer(cfg)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise config_checks.ConfigError(
            f"batch_size={batch_size!r} is not a positive integer", "set a positive batch_size"
        )
    defaults = configlib.optimizer_config()

    def get(key: str) -> Any:
        return cfg[key] if key in cfg else defaults[key]

    name = get("name")
    return OptimizerSpec(
        name=name,
        learning_rate=float(get("learning_rate")),
        batch_size=batch_size,
        momentum=float(get("momentum")),
        nesterov=bool(get("nesterov")),
        weight_decay=float(get("weight_decay")),
        num_groups=int(get("num_groups")) if _GRADIENTS[name] is Gradient.GROUPED else 1,
        num_clipped=int(get("num_clipped")) if name == "winsorize" else 0,
        m3_layout=get("m3_layout"),
        m3_batch_stats=get("m3_batch_stats"),
        schedule_kind=get("schedule"),
        decay_epochs=tuple(get("decay_epochs") or ()),
        decay_factor=float(get("decay_factor")),
        warmup_epochs=float(get("warmup_epochs")),
    )


__all__ = [
    "GROUPED_LAYOUTS",
    "Gradient",
    "M3_LAYOUTS",
    "MIN_BATCHNORM_CHUNK",
    "OPTIMIZERS",
    "OptimizerSpec",
    "SCHEDULES",
    "SHARDED_LAYOUTS",
    "resolve",
]
