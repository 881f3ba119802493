"""Model registry: ``get_model(name, *, num_classes, dtype, **kwargs)``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from cgh_jax.models.inception import InceptionV3
from cgh_jax.models.resnet import RESNET_STAGES, BasicBlock, ResNet
from cgh_jax.models.small import CNN, MLP
from cgh_jax.models.vgg import VGG, VGG_STAGES

__all__ = ["MODELS", "get_model", "list_models"]


def _entries() -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
    entries: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {}
    for name, (stages, block) in RESNET_STAGES.items():
        entries[name] = (ResNet, {"stage_sizes": stages, "block_cls": block})
    for name, stages in VGG_STAGES.items():
        entries[name] = (VGG, {"stages": stages, "batch_norm": False})
        entries[f"{name}_bn"] = (VGG, {"stages": stages, "batch_norm": True})
    entries["inception_v3"] = (InceptionV3, {})
    entries["mlp"] = (MLP, {})
    entries["cnn"] = (CNN, {})
    # Test variants: the same code paths with tiny widths, fast on a CPU
    # (resnet_tiny / vgg_tiny at 32x32, inception_tiny at its minimum 75x75).
    entries["resnet_tiny"] = (
        ResNet,
        {"stage_sizes": (1, 1, 1, 1), "block_cls": BasicBlock, "width": 8},
    )
    entries["vgg_tiny"] = (
        VGG,
        {"stages": ((8,), (16,), (16, 16), (32, 32), (32, 32)), "batch_norm": True, "hidden": 64},
    )
    entries["inception_tiny"] = (InceptionV3, {"width_multiplier": 1 / 16})
    return entries


MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = _entries()
"""name -> (module class, default constructor arguments)."""


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(MODELS)


def _fields(cls: type[nn.Module]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def get_model(name: str, *, num_classes: int, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    """Builds a Flax linen classifier by name.

    Args:
      name: one of :func:`list_models` (``resnet18``..``resnet152``, ``vgg11``..``vgg19``
        and their ``_bn`` variants, ``inception_v3``, ``mlp``, ``cnn``, and the test
        variants ``resnet_tiny``, ``vgg_tiny``, ``inception_tiny``).
      num_classes: number of output logits (>= 1).
      dtype: compute dtype, e.g. ``jnp.bfloat16`` (or ``"bfloat16"``) on accelerators;
        parameters stay float32 and logits are returned in float32.
      **kwargs: any other attribute of the model class, overriding the registry's
        defaults (e.g. ``stem="cifar"``, ``bn_momentum=0.99``, ``hidden=(256,) * 3``,
        ``aux_logits=True``).

    Returns:
      An unbound ``flax.linen.Module``; call it as
      ``model.apply(variables, images, train=..., mutable=[...], rngs={'dropout': key})``.

    Raises:
      ValueError: unknown name (the message lists the valid ones), bad
        ``num_classes`` or ``dtype``, or an argument the model does not have.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = get_model("resnet_tiny", num_classes=10)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> sorted(variables)
      ['batch_stats', 'params']
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid names: {', '.join(list_models())}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    cls, defaults = MODELS[name]
    fields = _fields(cls)
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"Model {name!r} ({cls.__name__}) has no argument(s) {unknown}. "
            f"Valid arguments: {', '.join(f for f in fields if f not in ('num_classes', 'dtype'))}."
        )
    try:
        compute_dtype = jnp.dtype(dtype)
    except (TypeError, ValueError):
        compute_dtype = None
    if compute_dtype is None or not jnp.issubdtype(compute_dtype, jnp.floating):
        raise ValueError(
            "dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16 (or its name), "
            f"got {dtype!r}."
        )
    return cls(num_classes=num_classes, dtype=compute_dtype, **{**defaults, **kwargs})
