"""Building blocks shared by the model families: initialisers, pooling, input checks.

The initialisers reproduce torchvision's, so that a model built here starts from
the same distribution as the reference PyTorch trainer of the papers:

* ``kaiming_normal_fan_out``: :math:`w \\sim \\mathcal N(0, 2 / \\text{fan\\_out})`,
  torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for the
  convolutions of ResNet and VGG (fan_out = out_channels * kernel area).
* ``torch_linear_kernel_init`` / ``torch_linear_bias_init(fan_in)``: PyTorch's default
  ``nn.Linear`` initialisation, :math:`w, b \\sim \\mathcal U(-1/\\sqrt{\\text{fan\\_in}},
  1/\\sqrt{\\text{fan\\_in}})` (``kaiming_uniform_(a=sqrt(5))`` for the weight).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "adaptive_avg_pool",
    "batch_norm",
    "pooled_classifier",
    "check_images",
    "kaiming_normal_fan_out",
    "torch_linear_bias_init",
    "torch_linear_kernel_init",
]

kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""Kaiming normal initialiser with fan_out scaling (torchvision ResNet/VGG convolutions)."""

torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch's default ``nn.Linear`` weight initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""


def batch_norm(module: nn.Module, train: bool) -> functools.partial:
    """The BatchNorm of every model here, from ``module``'s fields ``bn_momentum``,
    ``bn_epsilon``, ``bn_axis_name``, ``dtype`` and ``param_dtype``: batch statistics (and
    running averages updated) when ``train``, the running averages otherwise. Call the result
    with the layer's ``name``."""
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=module.bn_momentum,
        epsilon=module.bn_epsilon,
        axis_name=module.bn_axis_name,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
    )


def pooled_classifier(module: nn.Module, x: jax.Array, kernel_init) -> jax.Array:
    """Global average pooling over height and width, then the ``fc`` layer to
    ``module.num_classes`` logits (PyTorch's bias initialiser), returned in float32."""
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(
        module.num_classes,
        kernel_init=kernel_init,
        bias_init=torch_linear_bias_init(x.shape[-1]),
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        name="fc",
    )(x)
    return x.astype(jnp.float32)


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default ``nn.Linear`` bias initialiser for a layer with ``fan_in`` inputs.

    Args:
      fan_in: number of input features of the layer.

    Returns:
      An initialiser drawing from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Averaging matrix ``[out_size, in_size]`` of PyTorch's adaptive average pooling.

    Output cell ``i`` averages the input cells ``floor(i * n / m) <= j < ceil((i + 1) * n / m)``
    for ``n = in_size``, ``m = out_size``; when ``m > n`` cells repeat (a 1x1 map
    pooled to 7x7 is replicated 49 times).
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    """Adaptive average pooling of an NHWC batch to a fixed spatial size.

    Matches ``torch.nn.AdaptiveAvgPool2d``: for an input of height :math:`n` and
    output height :math:`m`, output row :math:`i` is the mean of input rows
    :math:`\\lfloor i n / m \\rfloor \\le j < \\lceil (i + 1) n / m \\rceil` (the same
    along the width). It works for any input size, including inputs smaller than
    the output (cells are replicated).

    Args:
      x: array ``[B, H, W, C]``.
      output_size: ``m`` or ``(m_h, m_w)``.

    Returns:
      Array ``[B, m_h, m_w, C]`` with the dtype of ``x``. When the input already has
      the output size it is returned unchanged (no arithmetic).

    Example:
      >>> import jax.numpy as jnp
      >>> adaptive_avg_pool(jnp.ones((2, 1, 1, 3)), 7).shape
      (2, 7, 7, 3)
    """
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool expects NHWC input, got shape {x.shape}.")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, in_h, in_w, _ = x.shape
    if (in_h, in_w) == (out_h, out_w):
        return x
    pool_h = jnp.asarray(_adaptive_pool_matrix(in_h, out_h), x.dtype)
    pool_w = jnp.asarray(_adaptive_pool_matrix(in_w, out_w), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", pool_h, pool_w, x)


def check_images(x: jax.Array, *, model: str, min_size: int = 1) -> None:
    """Raises ``ValueError`` unless ``x`` is an NHWC batch of at least ``min_size`` pixels."""
    if x.ndim != 4:
        raise ValueError(
            f"{model} expects images as a [batch, height, width, channels] array, "
            f"got shape {tuple(x.shape)}. Add a channel axis for grey images."
        )
    if x.shape[1] < min_size or x.shape[2] < min_size:
        raise ValueError(
            f"{model} needs images of at least {min_size}x{min_size} pixels, got "
            f"{x.shape[1]}x{x.shape[2]}. Resize the inputs (data.image_size) or pick a "
            "model made for small images."
        )
