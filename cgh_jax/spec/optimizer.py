"""The optimizer of an experiment: its field rules, and the frozen :class:`OptimizerSpec`.

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
                    ``auto`` (default) | ``vmap`` | ``loop`` | ``chunked`` |
                    ``reduce_scatter`` | ``group_sharded`` | ``group_aligned``
                    (:meth:`OptimizerConfig.resolve_layout`).
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

:func:`parse` applies every rule of these fields, once, and returns an
:class:`OptimizerConfig`; :meth:`OptimizerConfig.fix` turns it into the
:class:`OptimizerSpec` of a run, with the concrete M3 layout for its mesh and model
(:meth:`OptimizerConfig.resolve_layout`) and the schedule's length (steps per epoch,
epochs) fixed. :func:`cgh_jax.spec.experiment.resolve` does both for the trainer and the
benchmarks; the step builder (:mod:`cgh_jax.step`) takes the spec, never strings of the
config. This module imports JAX and optax only inside :meth:`OptimizerSpec.schedule` and
:meth:`OptimizerSpec.optimizer`, so the command line checks the fields before any heavy
import.

M3 layouts. ``vmap`` and ``loop`` are the straightforward path: ``grouped_grads`` (with
``vectorize=True`` / ``False``) gives the ``k`` group-mean gradients and the optimizer
(``m3_sgd``) takes their coordinate-wise median. ``reduce_scatter``, ``group_sharded`` and
``group_aligned`` compute the median inside the train step with
:func:`cgh_jax.optim.sharded_median_of_means_grads` (explicit per-device code that moves
fewer bytes than ``k`` all-reduces), and the optimizer is weight decay + SGD without a
median (adding the weight decay after the median is exact). ``chunked`` (one device; M3
and its norm-matched controls) computes the aggregate inside the step too, with
:func:`cgh_jax.optim.chunked_aggregate_grads`: the same groups as ``vmap``, but the group
gradients of dense kernels are formed and reduced a block of rows at a time, so the ``k``
full kernel gradients are never written; other parameters take the ``vmap`` path.
``group_sharded`` assigns groups row-major (contiguous blocks of the global batch),
``group_aligned`` in whole devices (:mod:`cgh_jax.optim.aligned_plan`), the others
column-major; all are uniformly random partitions of a shuffled batch. ``auto`` picks:

* one device, or a batch the sharded layouts cannot split (``num_groups * batch_size`` not
  a multiple of ``devices * num_groups``), or a BatchNorm model whose per-device chunks
  would have fewer than :data:`MIN_BATCHNORM_CHUNK` examples: the straightforward path,
  ``loop`` for a model with convolutions on CPU or on several devices (``vmap`` turns
  their weight gradients into grouped convolutions, slow on XLA:CPU, and under ``jit``
  over a mesh the partitioner may gather the batch), ``vmap`` otherwise. ``auto`` never
  picks ``chunked``: its updates may differ from ``vmap``'s by float32 round-off (the
  median reaches the parameter update through memory instead of inside one fused loop;
  the norm-matched controls' mean is summed in another order), which would move the
  published runs' numbers; set ``m3_layout='chunked'`` for the speed;
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

from cgh_jax import choices, configlib
from cgh_jax.spec import fields as F

OPTIMIZERS = choices.OPTIMIZERS
SCHEDULES = choices.SCHEDULES
M3_LAYOUTS = choices.M3_LAYOUTS
SHARDED_LAYOUTS = choices.SHARDED_M3_LAYOUTS
"""M3 layouts that compute the median inside the train step (:mod:`cgh_jax.optim.sharded`)."""
CHUNKED_LAYOUT = "chunked"
"""The layout that forms dense kernels' group gradients in chunks
(:mod:`cgh_jax.optim.chunked`), the aggregate inside the step; one device."""
GROUPED_LAYOUTS = tuple(
    x for x in M3_LAYOUTS if x not in ("auto", CHUNKED_LAYOUT) and x not in SHARDED_LAYOUTS
)
"""M3 layouts of the straightforward path: ``grouped_grads``, the median in the optimizer."""
CONCRETE_LAYOUTS = (*GROUPED_LAYOUTS, CHUNKED_LAYOUT, *SHARDED_LAYOUTS)
"""Every M3 layout but ``auto``."""
MIN_BATCHNORM_CHUNK = 16
"""``auto`` keeps the straightforward M3 path for BatchNorm models when a sharded layout
would normalize over fewer examples per device (chunk) than this: per-device BatchNorm
batches this small degrade accuracy (Wu & He, *Group Normalization*, 2018)."""


class Gradient(enum.Enum):
    """The gradient the train step computes for an optimizer."""

    BATCH = "batch"  # one mean gradient over the batch (sgd, rm3, ra3)
    GROUPED = "grouped"  # num_groups group-mean gradients, leading group axis (m3 and controls)
    PER_EXAMPLE = "per_example"  # one gradient per example, leading example axis (winsorize)


GRADIENTS = {
    "sgd": Gradient.BATCH,
    "rm3": Gradient.BATCH,
    "ra3": Gradient.BATCH,
    "m3": Gradient.GROUPED,
    "mean_at_median_norm": Gradient.GROUPED,
    "median_at_mean_norm": Gradient.GROUPED,
    "winsorize": Gradient.PER_EXAMPLE,
}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The validated optimizer fields of a config (:func:`parse`), before a run fixes its
    layout and duration.

    Attributes:
      name: ``sgd`` | ``m3`` | ``rm3`` | ``ra3`` | ``winsorize`` | ``mean_at_median_norm``
        | ``median_at_mean_norm``.
      learning_rate: peak rate.
      batch_size: examples per group (M3 and its controls) or per update (the others).
      momentum, nesterov, weight_decay: as in the config (coupled L2 weight decay).
      num_groups: the groups of M3 and its controls (1 for the other optimizers).
      num_clipped: winsorize's clipped values per side (0 otherwise).
      m3_layout: the configured layout (``auto`` or a concrete one).
      m3_batch_stats: ``sequential`` | ``mean`` (M3's BatchNorm running statistics).
      schedule_kind, decay_epochs, decay_factor, warmup_epochs: the schedule, in epochs.
    """

    name: str
    learning_rate: float
    batch_size: int
    momentum: float
    nesterov: bool
    weight_decay: float
    num_groups: int
    num_clipped: int
    m3_layout: str
    m3_batch_stats: str
    schedule_kind: str
    decay_epochs: tuple[float, ...]
    decay_factor: float
    warmup_epochs: float

    @property
    def gradient(self) -> Gradient:
        """What the train step computes for this optimizer."""
        return GRADIENTS[self.name]

    @property
    def examples_per_update(self) -> int:
        """Global examples one update consumes: ``num_groups * batch_size`` for M3."""
        return self.num_groups * self.batch_size

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
          ``(layout, reason)``: one of ``vmap``, ``loop``, ``chunked``,
          ``reduce_scatter``, ``group_sharded``, ``group_aligned``, and a sentence for the
          log.

        An explicit sharded layout is taken as configured: :meth:`check_layout` says
        whether it can run on the mesh (the trainer checks it with the devices, before any
        data is read).

        Example:
          >>> cfg = parse(dict(name="m3", learning_rate=0.1), batch_size=256)
          >>> cfg.resolve_layout(num_devices=8, has_conv=True, has_state=True,
          ...                    platform="gpu")[0]
          'group_sharded'
        """
        from cgh_jax.optim import sharded  # JAX: only once a mesh exists
        from cgh_jax.optim.aligned_plan import aligned_plan
        from cgh_jax.optim.aligned_plan import chunk_size_for as aligned_chunk_size

        k, update_batch, layout = self.num_groups, self.examples_per_update, self.m3_layout
        grouped = "loop" if has_conv and (platform == "cpu" or num_devices > 1) else "vmap"
        if layout in (*GROUPED_LAYOUTS, CHUNKED_LAYOUT):
            return layout, f"m3_layout={layout!r} (configured)"
        splits = update_batch % (num_devices * k) == 0
        chunk = update_batch // (num_devices * k)
        if layout in SHARDED_LAYOUTS:  # checked by check_layout when the devices were known
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

    def check_layout(self, num_devices: int) -> None:
        """An explicit M3 layout can run on ``num_devices`` devices: ``chunked`` on one; for a
        sharded layout the update splits into ``devices x num_groups`` chunks, and
        ``group_sharded`` and ``group_aligned`` have a device per group (the rule of
        :func:`cgh_jax.optim.sharded.resolve_layout`).

        Raises:
          ConfigError: naming the layout and what to change.
        """
        from cgh_jax.optim import sharded

        k, update_batch, layout = self.num_groups, self.examples_per_update, self.m3_layout
        if layout == CHUNKED_LAYOUT and num_devices > 1:
            raise F.ConfigError(
                f"config.optimizer.m3_layout={layout!r} runs on one device, not {num_devices}",
                "use m3_layout='auto'",
            )
        if layout not in SHARDED_LAYOUTS:
            return
        if update_batch % (num_devices * k):
            raise F.ConfigError(
                f"config.optimizer.m3_layout={layout!r} needs the {update_batch} examples of an "
                f"update to be a multiple of devices x num_groups = {num_devices} x {k}",
                "change config.batch_size or use m3_layout='auto'",
            )
        try:
            sharded.resolve_layout(layout, k, num_devices)
        except ValueError as e:
            what = str(e).split(". ")[0]
            raise F.ConfigError(f"config.optimizer.m3_{what}", "use m3_layout='auto'") from e

    def fix(self, *, layout: str, steps_per_epoch: int, num_epochs: int) -> OptimizerSpec:
        """The :class:`OptimizerSpec` of a run: a concrete M3 layout (from
        :meth:`resolve_layout`; any concrete one for optimizers without groups) and the
        schedule's length."""
        if layout not in CONCRETE_LAYOUTS:
            raise ValueError(
                f"m3_layout={layout!r} is not a concrete layout; expected one of "
                f"{', '.join(CONCRETE_LAYOUTS)}."
            )
        if steps_per_epoch < 1 or num_epochs < 1:
            raise ValueError(
                f"steps_per_epoch and num_epochs must be >= 1, got {steps_per_epoch} and "
                f"{num_epochs}."
            )
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(OptimizerConfig)}
        fields["m3_layout"] = layout
        return OptimizerSpec(**fields, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec(OptimizerConfig):
    """The optimizer of one run: :class:`OptimizerConfig` with a concrete ``m3_layout`` and
    the schedule's length (``steps_per_epoch`` updates per epoch, ``num_epochs``). Built by
    :meth:`OptimizerConfig.fix`."""

    steps_per_epoch: int
    num_epochs: int

    @property
    def median_in_step(self) -> bool:
        """M3 with a sharded layout: the step computes the median, the optimizer is SGD."""
        return self.name == "m3" and self.m3_layout in SHARDED_LAYOUTS

    @property
    def aggregate_in_step(self) -> bool:
        """The step computes the aggregate over groups (a sharded layout, or ``chunked``)
        and the optimizer is (weight decay +) SGD."""
        return self.median_in_step or (
            self.gradient is Gradient.GROUPED and self.m3_layout == CHUNKED_LAYOUT
        )

    @property
    def decay_in_step(self) -> float:
        """The weight decay the step adds to the group gradients before the aggregate: the
        norm-matched controls' with ``chunked`` (their aggregate does not commute with
        it); 0 otherwise (M3's median does, so its optimizer adds the decay after)."""
        if self.aggregate_in_step and self.name != "m3":
            return self.weight_decay
        return 0.0

    def schedule(self) -> Callable[[Any], Any]:
        """The learning-rate schedule over update steps (jit-safe, float32)."""
        import jax.numpy as jnp

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

    def optimizer(self):
        """The optax optimizer, taking the gradient :attr:`gradient` names.

        ``sgd`` is ``optax.sgd`` after optional coupled weight decay; the others are
        ``cgh_jax.optim``'s aliases (``m3_sgd``, ``rm3_sgd``, ``ra3_sgd``,
        ``winsorized_sgd``, ``mean_at_median_norm_sgd``, ``median_at_mean_norm_sgd``), which
        add the weight decay before the median, running buffer or clipping. For M3 with a
        sharded layout or ``chunked`` the train step already computes the aggregate, and the
        optimizer is weight decay + SGD with an identity where the aggregate would be (the
        same optimizer state structure for every layout; the norm-matched controls'
        decay is added in the step, before their aggregate, with an identity in its place).
        """
        import optax

        from cgh_jax.optim import alias

        schedule = self.schedule()
        common = dict(
            weight_decay=self.weight_decay, momentum=self.momentum, nesterov=self.nesterov
        )
        sgd = optax.sgd(schedule, momentum=self.momentum or None, nesterov=self.nesterov)
        if self.name == "sgd":
            if self.weight_decay:
                return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd)
            return sgd
        if self.aggregate_in_step:
            parts = []
            if self.weight_decay:
                decay_after = not self.decay_in_step
                parts = [optax.add_decayed_weights(self.weight_decay)] if decay_after else []
                parts = parts or [optax.identity()]
            return optax.chain(*parts, optax.identity(), sgd)
        grouped = {
            "m3": alias.m3_sgd,
            "mean_at_median_norm": alias.mean_at_median_norm_sgd,
            "median_at_mean_norm": alias.median_at_mean_norm_sgd,
        }
        if self.name in grouped:
            return grouped[self.name](schedule, num_groups=self.num_groups, **common)
        if self.name == "rm3":
            return alias.rm3_sgd(schedule, **common)
        if self.name == "ra3":
            return alias.ra3_sgd(schedule, **common)
        return alias.winsorized_sgd(schedule, num_clipped=self.num_clipped, **common)


def parse(cfg: Mapping[str, Any], *, batch_size: int, prefix: str = "optimizer") -> OptimizerConfig:
    """Every rule of the optimizer fields (``config.optimizer``), once; the validated fields.

    Known fields only; ``name`` one of :data:`cgh_jax.choices.OPTIMIZERS`; a finite
    ``learning_rate > 0``; ``0 <= momentum < 1``; ``nesterov`` only with momentum; finite
    ``weight_decay >= 0``; ``num_groups`` a positive odd integer; ``m3_layout`` and
    ``schedule`` from their lists, a sharded layout only for ``m3``; ``num_clipped`` an
    integer >= 0; ``decay_epochs`` increasing finite positive epochs; a finite
    ``decay_factor > 0``; finite ``warmup_epochs >= 0``. Fields absent from ``cfg`` take
    the defaults of :func:`cgh_jax.configlib.optimizer_config`.

    Args:
      cfg: the optimizer config (a mapping or ConfigDict).
      batch_size: the config's ``batch_size`` (examples per group for M3).
      prefix: the fields' path in messages.

    Raises:
      ConfigError: naming the first field that breaks a rule.

    Example:
      >>> cfg = parse(dict(name="m3", learning_rate=0.1, num_groups=5), batch_size=100)
      >>> cfg.examples_per_update, cfg.gradient.value
      (500, 'grouped')
    """
    p = f"{prefix}."
    defaults = configlib.optimizer_config()
    F.group(prefix, cfg, "set config.optimizer = configlib.optimizer_config(...)")
    F.known_fields(p, cfg, defaults.keys())

    def get(key):
        return F.get(cfg, key, defaults[key])

    name = F.choice(p + "name", get("name"), OPTIMIZERS)
    learning_rate = F.number(p + "learning_rate", get("learning_rate"), low=0.0, low_open=True)
    momentum = F.number(p + "momentum", get("momentum"), low=0.0, high=1.0)
    nesterov = F.boolean(p + "nesterov", get("nesterov"))
    if nesterov and momentum == 0:
        raise F.ConfigError(
            f"config.{p}nesterov=True has no effect with momentum 0",
            f"set config.{p}momentum > 0 or nesterov=False",
        )
    weight_decay = F.number(p + "weight_decay", get("weight_decay"), low=0.0)
    groups = get("num_groups")
    if not F.is_int(groups) or groups < 1 or groups % 2 == 0:
        raise F.ConfigError(
            f"config.{p}num_groups={groups!r} is not a positive odd integer (the median of an "
            "even number of group means is not one of them)",
            "use an odd number of groups such as 3 or 5",
        )
    layout = F.choice(p + "m3_layout", get("m3_layout"), M3_LAYOUTS)
    if name in choices.GROUPED_OPTIMIZERS[1:] and layout in SHARDED_LAYOUTS:
        raise F.ConfigError(
            f"config.{p}m3_layout={layout!r} computes M3's median inside the step, which "
            f"{name!r} does not use",
            f"set config.{p}m3_layout to 'auto', 'vmap', 'loop' or 'chunked'",
        )
    batch_stats = F.choice(p + "m3_batch_stats", get("m3_batch_stats"), choices.M3_BATCH_STATS)
    clipped = F.integer(p + "num_clipped", get("num_clipped"), low=0)
    kind = F.choice(p + "schedule", get("schedule"), SCHEDULES)
    epochs = get("decay_epochs")
    if (
        not isinstance(epochs, list | tuple)
        or not all(F.is_number(e) and math.isfinite(e) and e > 0 for e in epochs)
        or any(b <= a for a, b in zip(epochs[:-1], epochs[1:], strict=True))
    ):
        raise F.ConfigError(
            f"config.{p}decay_epochs={epochs!r} is not a tuple of increasing positive epochs",
            f"give e.g. config.{p}decay_epochs='(30, 60)'",
        )
    factor = F.number(p + "decay_factor", get("decay_factor"), low=0.0, low_open=True)
    warmup = F.number(p + "warmup_epochs", get("warmup_epochs"), low=0.0)
    if not F.is_int(batch_size) or batch_size < 1:
        raise F.ConfigError(
            f"config.batch_size={batch_size!r} is not a positive integer",
            "set a positive batch_size",
        )
    grouped = GRADIENTS[name] is Gradient.GROUPED
    return OptimizerConfig(
        name=name,
        learning_rate=learning_rate,
        batch_size=int(batch_size),
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        num_groups=int(groups) if grouped else 1,
        num_clipped=clipped if name == "winsorize" else 0,
        m3_layout=layout,
        m3_batch_stats=batch_stats,
        schedule_kind=kind,
        decay_epochs=tuple(epochs),
        decay_factor=factor,
        warmup_epochs=warmup,
    )


__all__ = [
    "CHUNKED_LAYOUT",
    "CONCRETE_LAYOUTS",
    "GRADIENTS",
    "GROUPED_LAYOUTS",
    "Gradient",
    "M3_LAYOUTS",
    "MIN_BATCHNORM_CHUNK",
    "OPTIMIZERS",
    "OptimizerConfig",
    "OptimizerSpec",
    "SCHEDULES",
    "SHARDED_LAYOUTS",
    "parse",
]
