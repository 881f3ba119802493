"""The one place that builds a run's program: model facts, M3 layout, steps and state.

:func:`assemble` takes a model, the validated optimizer fields, the mesh and the
schedule's length, and returns an :class:`Assembly`: the optimizer spec with its concrete
M3 layout (:meth:`cgh_jax.spec.optimizer.OptimizerConfig.resolve_layout`, logged with the
reason), the jitted train and eval steps (:func:`cgh_jax.step.build_steps`) and the ways to
make or restore the train state, which also check M3's BatchNorm statistics fold. The
trainer (:mod:`cgh_jax.train`) and every benchmark build through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from absl import logging

from cgh_jax import step as step_lib
from cgh_jax.spec.optimizer import OptimizerConfig, OptimizerSpec


@dataclasses.dataclass(frozen=True)
class Assembly:
    """A model, its optimizer and its jitted steps on a mesh.

    Attributes:
      model: the Flax module.
      mesh: the device mesh.
      image_shape: one example's shape.
      facts: :class:`cgh_jax.step.ModelFacts` (BatchNorm state, convolutions).
      optimizer: the :class:`OptimizerSpec` (concrete M3 layout, schedule length).
      layout_reason: why that layout.
      steps: :class:`cgh_jax.step.Steps` (``train``, ``train_many``, ``eval``, ``tx``).
    """

    model: Any
    mesh: Any
    image_shape: tuple[int, ...]
    facts: step_lib.ModelFacts
    optimizer: OptimizerSpec
    layout_reason: str
    steps: step_lib.Steps

    def abstract_state(self) -> step_lib.TrainState:
        """Shapes, dtypes and shardings of the train state (a restore target)."""
        return step_lib.abstract_train_state(self.model, self.steps.tx, self.image_shape, self.mesh)

    def new_state(self, rng: jax.Array) -> step_lib.TrainState:
        """A freshly initialized train state, checked by :meth:`check_state`."""
        state = step_lib.create_train_state(
            self.model, self.steps.tx, self.image_shape, rng, self.mesh
        )
        self.check_state(state)
        return state

    def check_state(self, state: step_lib.TrainState) -> None:
        """M3's ``sequential`` BatchNorm statistics outside the ``loop`` layout need the
        model's running averages (:func:`cgh_jax.step.check_batch_stats_fold`)."""
        step_lib.check_batch_stats_fold(self.model, self.optimizer, state, self.image_shape)


def assemble(
    model,
    optimizer: OptimizerConfig,
    mesh,
    image_shape: Sequence[int],
    *,
    steps_per_epoch: int,
    num_epochs: int,
    with_top5: bool,
    platform: str | None = None,
) -> Assembly:
    """Builds the program of a run.

    Args:
      model: the Flax module.
      optimizer: the validated optimizer fields (:func:`cgh_jax.spec.optimizer.parse`).
      mesh: the device mesh.
      image_shape: one example's shape.
      steps_per_epoch, num_epochs: the schedule's length.
      with_top5: evaluation also counts top-5 hits.
      platform: ``jax.default_backend()`` unless given.

    Raises:
      ConfigError: an explicit M3 layout that cannot run on this mesh.
    """
    platform = platform or jax.default_backend()
    image_shape = tuple(image_shape)
    facts = step_lib.model_facts(model, image_shape, mesh)
    layout, reason = optimizer.resolve_layout(
        num_devices=mesh.devices.size,
        has_conv=facts.has_conv,
        has_state=facts.has_state,
        platform=platform,
    )
    spec = optimizer.fix(layout=layout, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    if spec.gradient.value == "grouped":
        logging.info("M3 layout %s (%s).", layout, reason)
    steps = step_lib.build_steps(
        model, spec, mesh, facts=facts, with_top5=with_top5, platform=platform
    )
    return Assembly(model, mesh, image_shape, facts, spec, reason, steps)


__all__ = ["Assembly", "assemble"]
