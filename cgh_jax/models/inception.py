"""Inception-V3 (Szegedy et al., 2016), torchvision layout.

The same network as ``torchvision.models.inception_v3(aux_logits=..., init_weights=True)``:
every convolution is a ``BasicConv2d`` (convolution without bias, BatchNorm with
epsilon 0.001, ReLU); blocks Mixed_5b..5d (A), 6a (B), 6b..6e (C), 7a (D), 7b..7c (E);
global average pooling, Dropout(0.5) and a linear classifier. Parameter count at
1000 classes: 23,834,568 without the auxiliary head (the papers' setting, the
default here) and 27,161,264 with it.

Input size: the stem and the stride-2 blocks need at least 75x75 pixels (the
standard size is 299x299); the auxiliary head needs its 17x17 input map, i.e.
299x299 images.

With ``aux_logits=True`` a training call returns ``(logits, aux_logits)``; an eval
call returns the logits only (torchvision's behaviour).

Initialisation follows torchvision: convolution and linear weights
:math:`\\mathcal N(0, s^2)` truncated at :math:`\\pm 2` (absolute, so effectively
untruncated) with :math:`s = 0.1`, except the auxiliary head's second convolution
(:math:`s = 0.01`) and classifier (:math:`s = 0.001`); BN scale 1 / bias 0; the
classifier biases use PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

``width_multiplier`` scales every channel count (1.0 for the real model; the test
variant ``inception_tiny`` uses 1/16 and runs the same code at 75x75 on a CPU).

References:
  Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, *Rethinking the Inception Architecture
  for Computer Vision*, CVPR 2016.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgh_jax.models.layers import (
    batch_norm,
    check_images,
    pooled_classifier,
    torch_linear_bias_init,
)

__all__ = ["BasicConv", "InceptionV3", "MIN_INPUT_SIZE", "MIN_INPUT_SIZE_AUX"]

MIN_INPUT_SIZE = 75
"""Smallest square input the Inception-V3 layout accepts."""
MIN_INPUT_SIZE_AUX = 299
"""Smallest square input for which the auxiliary head sees a 17x17 map."""


def _trunc_normal(stddev: float) -> nn.initializers.Initializer:
    """torchvision's ``trunc_normal_(std=stddev, a=-2, b=2)``.

    The bounds are absolute values, 20 or more standard deviations for every
    ``stddev <= 0.1`` used here, so the truncation never binds and this is a normal.
    """
    return nn.initializers.normal(stddev)


class BasicConv(nn.Module):
    """Convolution (no bias) + BatchNorm (epsilon 0.001 by default) + ReLU."""

    features: int
    kernel_size: Sequence[int]
    norm: Callable[..., nn.Module]
    strides: int | Sequence[int] = 1
    padding: Any = 0
    stddev: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            tuple(self.kernel_size),
            self.strides,
            padding=self.padding,
            use_bias=False,
            kernel_init=_trunc_normal(self.stddev),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        return nn.relu(self.norm(name="bn")(x))


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    # PyTorch's avg_pool2d(kernel 3, stride 1, padding 1) counts the zero padding.
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionV3(nn.Module):
    """Inception-V3 classifier on NHWC images (torchvision layout).

    Attributes:
      num_classes: number of output logits.
      aux_logits: build the auxiliary classifier on Mixed_6e (off by default, as in
        the papers' runs); in training the call then returns ``(logits, aux)``.
      dropout_rate: dropout before the classifier in training (0.5).
      width_multiplier: scales every channel count (1.0 = the real model).
      bn_momentum: running-average decay, flax convention (torchvision 0.1 == 0.9).
      bn_epsilon: BatchNorm epsilon (0.001, as torchvision's BasicConv2d).
      bn_axis_name: BatchNorm cross-device axis for ``shard_map``/``pmap`` code.
      dtype: compute dtype; logits are returned in float32.
      param_dtype: parameter dtype.
    """

    num_classes: int
    aux_logits: bool = False
    dropout_rate: float = 0.5
    width_multiplier: float = 1.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _ch(self, channels: int) -> int:
        return max(1, int(channels * self.width_multiplier))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_images(x, model="InceptionV3", min_size=MIN_INPUT_SIZE)
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}.")
        norm = batch_norm(self, train)
        conv_base = functools.partial(
            BasicConv, norm=norm, dtype=self.dtype, param_dtype=self.param_dtype
        )
        ch = self._ch

        def conv(name, features, kernel, strides=1, padding=0, stddev=0.1):
            return conv_base(
                ch(features), kernel, strides=strides, padding=padding, stddev=stddev, name=name
            )

        x = jnp.asarray(x, self.dtype)
        x = conv("Conv2d_1a_3x3", 32, (3, 3), strides=2)(x)
        x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)
        x = conv("Conv2d_2b_3x3", 64, (3, 3), padding=1)(x)
        x = _max_pool_3x3_s2(x)
        x = conv("Conv2d_3b_1x1", 80, (1, 1))(x)
        x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)
        x = _max_pool_3x3_s2(x)

        x = _InceptionA(32, conv, name="Mixed_5b")(x)
        x = _InceptionA(64, conv, name="Mixed_5c")(x)
        x = _InceptionA(64, conv, name="Mixed_5d")(x)
        x = _InceptionB(conv, name="Mixed_6a")(x)
        x = _InceptionC(128, conv, name="Mixed_6b")(x)
        x = _InceptionC(160, conv, name="Mixed_6c")(x)
        x = _InceptionC(160, conv, name="Mixed_6d")(x)
        x = _InceptionC(192, conv, name="Mixed_6e")(x)
        aux = None
        if self.aux_logits:
            if x.shape[1] < 17 or x.shape[2] < 17:
                raise ValueError(
                    "InceptionV3 with aux_logits=True needs images of at least "
                    f"{MIN_INPUT_SIZE_AUX}x{MIN_INPUT_SIZE_AUX} (the auxiliary head reads a "
                    f"17x17 map; got {x.shape[1]}x{x.shape[2]}). Use 299x299 inputs or "
                    "aux_logits=False."
                )
            # Built (and its parameters created) in both modes; used only in training.
            aux = _InceptionAux(
                self.num_classes, conv, self.dtype, self.param_dtype, name="AuxLogits"
            )(x)
        x = _InceptionD(conv, name="Mixed_7a")(x)
        x = _InceptionE(conv, name="Mixed_7b")(x)
        x = _InceptionE(conv, name="Mixed_7c")(x)

        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(
            self.num_classes,
            kernel_init=_trunc_normal(0.1),
            bias_init=torch_linear_bias_init(x.shape[-1]),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="fc",
        )(x)
        logits = x.astype(jnp.float32)
        if aux is not None and train:
            return logits, aux
        return logits


class _InceptionA(nn.Module):
    pool_features: int
    conv: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        c = self.conv
        b1 = c("branch1x1", 64, (1, 1))(x)
        b5 = c("branch5x5_1", 48, (1, 1))(x)
        b5 = c("branch5x5_2", 64, (5, 5), padding=2)(b5)
        b3 = c("branch3x3dbl_1", 64, (1, 1))(x)
        b3 = c("branch3x3dbl_2", 96, (3, 3), padding=1)(b3)
        b3 = c("branch3x3dbl_3", 96, (3, 3), padding=1)(b3)
        bp = c("branch_pool", self.pool_features, (1, 1))(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _InceptionB(nn.Module):
    conv: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        c = self.conv
        b3 = c("branch3x3", 384, (3, 3), strides=2)(x)
        bd = c("branch3x3dbl_1", 64, (1, 1))(x)
        bd = c("branch3x3dbl_2", 96, (3, 3), padding=1)(bd)
        bd = c("branch3x3dbl_3", 96, (3, 3), strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class _InceptionC(nn.Module):
    channels_7x7: int
    conv: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        c, c7 = self.conv, self.channels_7x7
        row, col = ((0, 0), (3, 3)), ((3, 3), (0, 0))  # padding of 1x7 and 7x1 kernels
        b1 = c("branch1x1", 192, (1, 1))(x)
        b7 = c("branch7x7_1", c7, (1, 1))(x)
        b7 = c("branch7x7_2", c7, (1, 7), padding=row)(b7)
        b7 = c("branch7x7_3", 192, (7, 1), padding=col)(b7)
        bd = c("branch7x7dbl_1", c7, (1, 1))(x)
        bd = c("branch7x7dbl_2", c7, (7, 1), padding=col)(bd)
        bd = c("branch7x7dbl_3", c7, (1, 7), padding=row)(bd)
        bd = c("branch7x7dbl_4", c7, (7, 1), padding=col)(bd)
        bd = c("branch7x7dbl_5", 192, (1, 7), padding=row)(bd)
        bp = c("branch_pool", 192, (1, 1))(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _InceptionD(nn.Module):
    conv: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        c = self.conv
        b3 = c("branch3x3_1", 192, (1, 1))(x)
        b3 = c("branch3x3_2", 320, (3, 3), strides=2)(b3)
        b7 = c("branch7x7x3_1", 192, (1, 1))(x)
        b7 = c("branch7x7x3_2", 192, (1, 7), padding=((0, 0), (3, 3)))(b7)
        b7 = c("branch7x7x3_3", 192, (7, 1), padding=((3, 3), (0, 0)))(b7)
        b7 = c("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class _InceptionE(nn.Module):
    conv: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        c = self.conv
        row, col = ((0, 0), (1, 1)), ((1, 1), (0, 0))  # padding of 1x3 and 3x1 kernels
        b1 = c("branch1x1", 320, (1, 1))(x)
        b3 = c("branch3x3_1", 384, (1, 1))(x)
        b3 = jnp.concatenate(
            [
                c("branch3x3_2a", 384, (1, 3), padding=row)(b3),
                c("branch3x3_2b", 384, (3, 1), padding=col)(b3),
            ],
            axis=-1,
        )
        bd = c("branch3x3dbl_1", 448, (1, 1))(x)
        bd = c("branch3x3dbl_2", 384, (3, 3), padding=1)(bd)
        bd = jnp.concatenate(
            [
                c("branch3x3dbl_3a", 384, (1, 3), padding=row)(bd),
                c("branch3x3dbl_3b", 384, (3, 1), padding=col)(bd),
            ],
            axis=-1,
        )
        bp = c("branch_pool", 192, (1, 1))(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class _InceptionAux(nn.Module):
    num_classes: int
    conv: Callable[..., nn.Module]
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(x, (5, 5), (3, 3))
        x = self.conv("conv0", 128, (1, 1))(x)
        x = self.conv("conv1", 768, (5, 5), stddev=0.01)(x)
        return pooled_classifier(self, x, _trunc_normal(0.001))
