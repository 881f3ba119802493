"""Small networks for MNIST/CIFAR-size experiments: a fully connected MLP and a CNN.

The MLP is the network family of *Coherent Gradients* (Chatterjee, 2020): images
flattened, ``len(hidden)`` ReLU layers, a linear classifier. The paper's nets are
``hidden=(2048,)`` (the default) and ``hidden=(256, 256, 256)``.

The CNN is a small LeNet-style convnet for 28x28 (MNIST) or 32x32 (CIFAR) inputs:
``[conv 3x3 -> (BN) -> ReLU -> 2x2 max pool]`` per entry of ``features``, then a
hidden ReLU layer and a linear classifier.

Linear layers use PyTorch's default initialisation (weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in))), as the papers' PyTorch code did; convolutions
use Kaiming normal (fan_out) with zero bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgh_jax.models.layers import (
    batch_norm,
    check_images,
    kaiming_normal_fan_out,
    torch_linear_bias_init,
    torch_linear_kernel_init,
)

__all__ = ["CNN", "MLP"]


def _torch_dense(features: int, fan_in: int, dtype: Any, param_dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=torch_linear_kernel_init,
        bias_init=torch_linear_bias_init(fan_in),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Attributes:
      num_classes: number of output logits.
      hidden: width of each hidden layer; ``()`` gives a linear (softmax-regression) model.
      dropout_rate: dropout after each hidden layer in training (0 = none, the papers').
      dtype: compute dtype; logits are returned in float32.
      param_dtype: parameter dtype.

    Inputs ``[B, ...]`` are flattened to ``[B, prod(...)]``.
    """

    num_classes: int
    hidden: Sequence[int] = (2048,)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim < 2:
            raise ValueError(f"MLP expects a batch [B, ...], got shape {tuple(x.shape)}.")
        x = jnp.asarray(x, self.dtype).reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = _torch_dense(width, x.shape[-1], self.dtype, self.param_dtype, f"hidden{i + 1}")(x)
            x = nn.relu(x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = _torch_dense(self.num_classes, x.shape[-1], self.dtype, self.param_dtype, "logits")(x)
        return x.astype(jnp.float32)


class CNN(nn.Module):
    """Small convnet for 28x28 / 32x32 images.

    Attributes:
      num_classes: number of output logits.
      features: output channels of each conv stage (each stage halves the size).
      hidden: width of the hidden dense layer.
      batch_norm: BatchNorm after each convolution.
      dropout_rate: dropout before the classifier in training.
      bn_momentum: running-average decay, flax convention (torchvision 0.1 == 0.9).
      bn_epsilon: BatchNorm epsilon.
      bn_axis_name: BatchNorm cross-device axis for ``shard_map``/``pmap`` code.
      dtype: compute dtype; logits are returned in float32.
      param_dtype: parameter dtype.
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    hidden: int = 128
    batch_norm: bool = False
    dropout_rate: float = 0.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x, model="CNN", min_size=2 ** len(self.features))
        x = jnp.asarray(x, self.dtype)
        for i, channels in enumerate(self.features):
            x = nn.Conv(
                channels,
                (3, 3),
                padding=1,
                use_bias=not self.batch_norm,
                kernel_init=kaiming_normal_fan_out,
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv{i + 1}",
            )(x)
            if self.batch_norm:
                x = batch_norm(self, train)(name=f"bn{i + 1}")(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(_torch_dense(self.hidden, x.shape[-1], self.dtype, self.param_dtype, "fc1")(x))
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = _torch_dense(self.num_classes, x.shape[-1], self.dtype, self.param_dtype, "fc2")(x)
        return x.astype(jnp.float32)
