"""One run's config, checked once (:func:`parse`: no JAX, no data), and its :class:`Experiment`.

A training config (fields: :mod:`cgh_jax.configlib`) has four sections, and each field's
rule lives with its section's spec: :mod:`cgh_jax.spec.data` (``config.data``),
:mod:`cgh_jax.spec.model` (``config.model``), :mod:`cgh_jax.spec.optimizer`
(``config.optimizer``) and :class:`TrainerSettings` here (the top-level fields). The rules
that span sections live here and only here:

* before anything heavy (:func:`parse`): a warmup no longer than the run, winsorize's
  clipping against the batch, per-example optimizers only with models without BatchNorm;
* once the devices are known (:func:`check_devices`): every update and evaluation batch
  splits over the devices and processes;
* once the training split's size is known (:func:`check_dataset_size`): one update fits in
  it.

The trainer runs each once per run, as early as it can.

:func:`parse` gives a :class:`RunConfig` (the validated sections); the trainer completes it,
with the mesh, the dataset's size (:func:`duration`) and the model
(:func:`cgh_jax.assembly.assemble` fixes the optimizer's M3 layout and schedule length),
into the frozen :class:`Experiment` its hooks see. Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cgh_jax import choices, configlib
from cgh_jax.spec import data as data_spec
from cgh_jax.spec import fields as F
from cgh_jax.spec import model as model_spec
from cgh_jax.spec import optimizer as optimizer_spec


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """The top-level fields of a training config (meanings: :mod:`cgh_jax.configlib`)."""

    seed: int
    batch_size: int
    num_epochs: int
    max_steps: int
    eval_batch_size: int
    eval_every_epochs: int
    log_every_steps: int
    steps_per_dispatch: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    per_example_epochs: tuple[int, ...]
    init_timeout_s: int  # multi-process jobs: seconds for every process to join
    heartbeat_timeout_s: int  # and of silence before a process counts as lost


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training config with every field checked (:func:`parse`).

    Attributes:
      config: the config itself (a locked copy): written as ``config.json``, fingerprinted
        by checkpoints.
      data, model, optimizer, trainer: the validated sections.
    """

    config: Any
    data: data_spec.DataSpec
    model: model_spec.ModelSpec
    optimizer: optimizer_spec.OptimizerConfig
    trainer: TrainerSettings

    @property
    def examples_per_update(self) -> int:
        return self.optimizer.examples_per_update


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything about one run that is known before its first step.

    Attributes:
      run: the validated config.
      optimizer: the optimizer with its M3 layout and schedule length fixed.
      layout_reason: why that layout (for the log).
      num_devices, num_processes, platform: the mesh.
      num_train, num_classes, image_shape: the dataset.
      steps_per_epoch: updates per epoch (full updates; a partial last batch is dropped).
      total_steps: the run's last step (``num_epochs`` epochs, or ``max_steps`` if fewer).
    """

    run: RunConfig
    optimizer: optimizer_spec.OptimizerSpec
    layout_reason: str
    num_devices: int
    num_processes: int
    platform: str
    num_train: int
    num_classes: int
    image_shape: tuple[int, ...]
    steps_per_epoch: int
    total_steps: int

    @property
    def trainer(self) -> TrainerSettings:
        return self.run.trainer

    @property
    def config(self) -> Any:
        return self.run.config


TRAINER_FIELDS = tuple(f.name for f in dataclasses.fields(TrainerSettings))
SECTIONS = ("data", "model", "optimizer")


def _trainer_settings(config: Any) -> TrainerSettings:
    F.integer("seed", config["seed"], low=0)
    for key in ("batch_size", "num_epochs", "eval_batch_size", "log_every_steps"):
        F.integer(key, config[key], low=1)
    F.integer("steps_per_dispatch", config["steps_per_dispatch"], low=1)
    F.integer("eval_every_epochs", config["eval_every_epochs"], low=1)
    F.integer("max_steps", config["max_steps"], low=1, extra=(-1,))
    F.integer("checkpoint_every_steps", config["checkpoint_every_steps"], low=0)
    F.integer("keep_checkpoints", config["keep_checkpoints"], low=1)
    for key in ("init_timeout_s", "heartbeat_timeout_s"):
        F.integer(key, config[key], low=1)
    epochs = config["per_example_epochs"]
    if not isinstance(epochs, list | tuple) or not all(
        F.is_int(e) and 0 <= e <= config["num_epochs"] for e in epochs
    ):
        raise F.ConfigError(
            f"config.per_example_epochs={epochs!r} is not a tuple of epochs in "
            f"[0, num_epochs={config['num_epochs']}]",
            "give finished-epoch numbers, e.g. '(0, 2)'",
        )
    values = {k: config[k] for k in TRAINER_FIELDS}
    return TrainerSettings(**(values | {"per_example_epochs": tuple(epochs)}))


def parse(config: Any) -> RunConfig:
    """Every rule of a training config, each once: the sections' own rules, then the
    cross-section rules that need no devices or data. Nothing is read but directory
    listings and the existence of the files the config names.

    Args:
      config: a training config (an ``ml_collections.ConfigDict`` or a nested mapping), or
        a :class:`RunConfig` (returned as it is).

    Raises:
      ConfigError: naming the first field that breaks a rule.
    """
    if isinstance(config, RunConfig):
        return config
    F.group("", config, "pass an ml_collections.ConfigDict (configlib.base_config())")
    top = configlib.base_config()
    F.known_fields("", config, top.keys())
    if missing := sorted(set(top.keys()) - set(config.keys())):
        raise F.ConfigError(
            f"the config lacks the field(s) {F.one_of(missing)}",
            "build it on configlib.base_config()",
        )
    trainer = _trainer_settings(config)
    optimizer = optimizer_spec.parse(config["optimizer"], batch_size=trainer.batch_size)
    if optimizer.warmup_epochs > trainer.num_epochs:
        raise F.ConfigError(
            f"config.optimizer.warmup_epochs={optimizer.warmup_epochs!r} is longer than the "
            f"run (num_epochs={trainer.num_epochs})",
            "shorten the warmup or train for more epochs",
        )
    model = model_spec.parse(config["model"])
    if optimizer.gradient is optimizer_spec.Gradient.PER_EXAMPLE and model.has_batch_norm:
        raise F.ConfigError(
            f"config.optimizer.name={optimizer.name!r} needs per-example gradients, which "
            f"the BatchNorm model {model.name!r} does not have",
            "use a model without BatchNorm (mlp, cnn, vgg11..vgg19) or another optimizer",
        )
    data = data_spec.parse(config["data"])
    if optimizer.name == "winsorize" and 2 * optimizer.num_clipped >= trainer.batch_size:
        raise F.ConfigError(
            f"config.optimizer.num_clipped={optimizer.num_clipped} clips every value of a "
            f"batch of {trainer.batch_size} (winsorize needs 2 * num_clipped < batch_size)",
            f"use num_clipped <= {(trainer.batch_size - 1) // 2} or a larger batch_size",
        )
    frozen = _frozen_copy(config)
    return RunConfig(config=frozen, data=data, model=model, optimizer=optimizer, trainer=trainer)


def _frozen_copy(config: Any):
    import ml_collections

    copy = ml_collections.ConfigDict(F.to_dict(config))
    copy.lock()
    return copy


def check_devices(run: RunConfig, num_devices: int, num_processes: int = 1) -> None:
    """Refuses batch sizes that do not split over ``num_devices`` devices (and processes).

    The update batch (``num_groups * batch_size`` for M3 and its controls) and
    ``eval_batch_size`` must be multiples of the device count, and an explicit sharded M3
    layout must be able to run on them (:meth:`OptimizerConfig.check_layout`).

    Raises:
      ConfigError: naming the field to change and the multiple to use.
    """
    groups = run.optimizer.num_groups
    batches = (
        ("one update", run.examples_per_update, "batch_size", groups),
        ("one evaluation batch", run.trainer.eval_batch_size, "eval_batch_size", 1),
    )
    for what, size, field, per_example in batches:
        for count, kind in ((num_devices, "devices"), (num_processes, "processes")):
            if size % count:
                step = count // math.gcd(count, per_example)
                detail = f" (num_groups {groups} x batch_size)" if per_example > 1 else ""
                raise F.ConfigError(
                    f"the {size} examples of {what}{detail} do not split evenly over {count} "
                    f"{kind}",
                    f"make config.{field} a multiple of {step}",
                )
    run.optimizer.check_layout(num_devices)


def check_dataset_size(run: RunConfig, num_train: int | None) -> None:
    """Refuses an update batch larger than the training split (``None``: size unknown).

    Raises:
      ConfigError: naming the largest batch_size that fits.
    """
    need = run.examples_per_update
    if num_train is None or need <= num_train:
        return
    grouped = run.optimizer.name in choices.GROUPED_OPTIMIZERS
    detail = f" (num_groups x batch_size = {need})" if grouped else ""
    raise F.ConfigError(
        f"one update needs {need} examples{detail}, more than the {num_train} of the "
        "training split",
        f"lower config.batch_size to at most {num_train // run.optimizer.num_groups}",
    )


def duration(run: RunConfig, num_train: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``: full updates per epoch (a partial last batch is
    dropped) and the run's last step (``num_epochs`` epochs, or ``max_steps`` if fewer)."""
    steps_per_epoch = num_train // run.examples_per_update
    total = steps_per_epoch * run.trainer.num_epochs
    if run.trainer.max_steps > 0:
        total = min(total, run.trainer.max_steps)
    return steps_per_epoch, total


__all__ = [
    "Experiment",
    "RunConfig",
    "TRAINER_FIELDS",
    "TrainerSettings",
    "check_dataset_size",
    "check_devices",
    "duration",
    "parse",
]
