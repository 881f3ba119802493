"""The model fields of an experiment (``config.model``): their rules and :class:`ModelSpec`.

``config.model.name`` is a :func:`cgh_jax.models.get_model` name; ``dtype`` the compute dtype
by name; every other field is a keyword of that model (e.g. ``hidden`` of the MLP,
``features`` of the CNN). Standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cgh_jax import choices
from cgh_jax.spec import fields as F


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The validated model config (:func:`parse`).

    Attributes:
      name: the model's registry name.
      dtype: the compute dtype's name (``float32``, ``bfloat16``, ``float16``).
      options: the model's other keywords (lists as tuples).
    """

    name: str
    dtype: str
    options: Mapping[str, Any]

    @property
    def has_batch_norm(self) -> bool:
        """BatchNorm, known from the name (and ``batch_norm`` of the CNN) without building it."""
        return self.name in choices.BATCHNORM_MODELS or (
            self.name == "cnn" and bool(self.options.get("batch_norm", False))
        )

    def build(self, num_classes: int):
        """The Flax module (:func:`cgh_jax.models.get_model`)."""
        import jax.numpy as jnp

        from cgh_jax import models

        return models.get_model(
            self.name, num_classes=num_classes, dtype=jnp.dtype(self.dtype), **self.options
        )


def parse(model: Any) -> ModelSpec:
    """The rules of ``config.model``: a group of fields, a known name and compute dtype.

    Raises:
      ConfigError: naming the field.
    """
    F.group("model", model, "set config.model = dict(name='mlp', dtype='float32', ...)")
    fields = F.to_dict(model)
    name = F.choice("model.name", fields.pop("name", None), choices.MODELS)
    dtype = F.choice("model.dtype", fields.pop("dtype", "float32"), choices.COMPUTE_DTYPES)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return ModelSpec(name=name, dtype=dtype, options=options)


__all__ = ["ModelSpec", "parse"]
