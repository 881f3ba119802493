"""ResNet-18/34/50/101/152 (He et al., 2016), torchvision layout ("ResNet v1.5").

Layer for layer the same network as ``torchvision.models.resnet*``: convolutions
without bias, each followed by BatchNorm; the stride of a bottleneck block sits on
its 3x3 convolution; projection shortcuts (1x1 conv + BN) only where the shape
changes. At 1000 classes the parameter counts equal torchvision's (ResNet-18:
11,689,512; ResNet-50: 25,557,032).

Stems:
  * ``"imagenet"``: 7x7 conv stride 2 (padding 3), BN, ReLU, 3x3 max pool stride 2.
  * ``"cifar"``: 3x3 conv stride 1 (padding 1), BN, ReLU, no pooling (for 32x32 images).

Initialisation follows torchvision: Kaiming normal (fan_out) convolutions, BN
scale 1 / bias 0, PyTorch-default classifier; ``zero_init_residual=True`` zeroes the
scale of the last BN of every residual branch (Goyal et al., 2017).

References:
  He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016.
  Goyal et al., *Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour*, 2017.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgh_jax.models.layers import (
    batch_norm,
    check_images,
    kaiming_normal_fan_out,
    pooled_classifier,
    torch_linear_kernel_init,
)

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]

ModuleDef = Any


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    zero_init_residual: bool = False

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = self.norm(scale_init=last_scale, name="bn2")(y)
        shortcut = x
        if x.shape != y.shape:
            shortcut = self.conv(self.features, (1, 1), self.strides, name="downsample_conv")(x)
            shortcut = self.norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut (ResNet-50/101/152)."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    zero_init_residual: bool = False

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out_features = self.features * self.expansion
        y = self.conv(self.features, (1, 1), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(out_features, (1, 1), name="conv3")(y)
        y = self.norm(scale_init=last_scale, name="bn3")(y)
        shortcut = x
        if x.shape != y.shape:
            shortcut = self.conv(out_features, (1, 1), self.strides, name="downsample_conv")(x)
            shortcut = self.norm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """A ResNet classifier on NHWC images.

    Attributes:
      stage_sizes: number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: number of output logits.
      width: channels of the stem and the first stage; stage ``i`` has
        ``width * 2**i`` (times the block expansion). 64 for the standard models.
      stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool) or ``"cifar"`` (3x3/1 conv).
      zero_init_residual: zero-initialise the last BN scale of every residual branch.
      bn_momentum: running-average decay in flax's convention (torchvision's
        ``momentum=0.1`` is ``0.9`` here).
      bn_epsilon: BatchNorm epsilon.
      bn_axis_name: axis name over which BatchNorm averages its batch statistics
        (only for explicit per-device code under ``shard_map``/``pmap``; leave None
        under ``jax.jit`` over a mesh, where statistics are already global).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); logits are returned in float32.
      param_dtype: parameter dtype (float32).

    Call ``model.apply(variables, images, train=..., mutable=["batch_stats"])`` in
    training; the result is ``(logits [B, num_classes] float32, new_variables)``.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    width: int = 64
    stem: str = "imagenet"
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x, model="ResNet")
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = batch_norm(self, train)
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), padding=3, name="conv_init")(x)
            x = nn.relu(norm(name="bn_init")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.width, (3, 3), padding=1, name="conv_init")(x)
            x = nn.relu(norm(name="bn_init")(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    features=self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    conv=conv,
                    norm=norm,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x)
        return pooled_classifier(self, x, torch_linear_kernel_init)


RESNET_STAGES: dict[str, tuple[tuple[int, ...], type[nn.Module]]] = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
}
