"""VGG-11/13/16/19 with and without BatchNorm (Simonyan & Zisserman, 2015), torchvision layout.

Features: stages of 3x3 convolutions (padding 1, with bias; with ``batch_norm`` each
is followed by BN), ReLU, and a 2x2 max pool after each stage. Classifier: adaptive
average pooling to 7x7, then ``Linear(512*7*7, 4096)``, ReLU, Dropout(0.5),
``Linear(4096, 4096)``, ReLU, Dropout(0.5), ``Linear(4096, num_classes)``. At 1000
classes the parameter counts equal torchvision's (VGG-13-BN: 133,053,736).

The adaptive pooling makes the classifier independent of the input size: a 32x32
image gives a 1x1 map after the five pools, which is replicated to 7x7 exactly as
``torch.nn.AdaptiveAvgPool2d`` does. At 224x224 the map is already 7x7 and the
pooling is the identity.

Initialisation follows torchvision: Kaiming normal (fan_out) convolutions with zero
bias, BN scale 1 / bias 0, linear layers :math:`\\mathcal N(0, 0.01^2)` with zero bias.

References:
  Simonyan, Zisserman, *Very Deep Convolutional Networks for Large-Scale Image
  Recognition*, ICLR 2015.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgh_jax.models.layers import (
    adaptive_avg_pool,
    batch_norm,
    check_images,
    kaiming_normal_fan_out,
)

__all__ = ["VGG", "VGG_STAGES"]

VGG_STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}
"""Output channels of the convolutions of each stage (torchvision configs A, B, D, E)."""


class VGG(nn.Module):
    """A VGG classifier on NHWC images.

    Attributes:
      stages: output channels of each stage's 3x3 convolutions; every stage ends with
        a 2x2 max pool, so the input must be at least ``2**len(stages)`` pixels.
      num_classes: number of output logits.
      batch_norm: BatchNorm after every convolution (the ``_bn`` models).
      hidden: width of the two hidden classifier layers (4096).
      dropout_rate: dropout before each hidden-to-next layer in training (0.5).
      pool_size: spatial size of the adaptive average pool before the classifier (7).
      bn_momentum: running-average decay, flax convention (torchvision 0.1 == 0.9).
      bn_epsilon: BatchNorm epsilon.
      bn_axis_name: BatchNorm cross-device axis for ``shard_map``/``pmap`` code.
      dtype: compute dtype; logits are returned in float32.
      param_dtype: parameter dtype.

    Training uses the ``'dropout'`` rng: ``model.apply(v, x, train=True,
    rngs={'dropout': key}, mutable=['batch_stats'])``.
    """

    stages: Sequence[Sequence[int]]
    num_classes: int
    batch_norm: bool = False
    hidden: int = 4096
    dropout_rate: float = 0.5
    pool_size: int = 7
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x, model="VGG", min_size=2 ** len(self.stages))
        conv = functools.partial(
            nn.Conv,
            kernel_size=(3, 3),
            padding=1,
            kernel_init=kaiming_normal_fan_out,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        dense = functools.partial(
            nn.Dense,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = jnp.asarray(x, self.dtype)
        for i, stage in enumerate(self.stages):
            for j, features in enumerate(stage):
                x = conv(features, name=f"conv{i + 1}_{j + 1}")(x)
                if self.batch_norm:
                    x = batch_norm(self, train)(name=f"bn{i + 1}_{j + 1}")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = adaptive_avg_pool(x, self.pool_size)
        x = x.reshape(x.shape[0], -1)
        for k in range(2):
            x = nn.relu(dense(self.hidden, name=f"fc{k + 1}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(self.num_classes, name="fc3")(x)
        return x.astype(jnp.float32)
