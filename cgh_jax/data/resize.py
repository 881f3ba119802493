"""Deterministic resize and central crop in numpy: TensorFlow's antialiased bilinear, TF-free.

:func:`resize_bilinear` reproduces ``tf.image.resize(image, size, "bilinear",
antialias=True)`` (TensorFlow's ``ScaleAndTranslate`` with the triangle kernel): for output
pixel ``x`` of a dimension scaled by ``s = out / in`` the sample point is ``(x + 0.5) / s``,
the kernel is ``max(0, 1 - |d| / k)`` with ``k = max(1 / s, 1)`` over the input pixels whose
centres ``j + 0.5`` lie within ``k`` of it, and the weights are normalised to sum to 1.
Weights and sums are float32, rows are resampled before columns, each output the
sequential sum over its span: the same operations in the same order as TensorFlow's
kernel (see ``tests/test_data_resize.py`` for the measured agreement).
"""

from __future__ import annotations

import numpy as np

_F = np.float32


def _spans(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Start index [out] and float32 weights [out, span] of one dimension."""
    scale = _F(out_size) / _F(in_size)
    inv_scale = _F(1.0) / scale
    kernel_scale = max(inv_scale, _F(1.0))
    span = min(2 * int(np.ceil(kernel_scale)) + 1, in_size)
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span), _F)
    inv_kernel_scale = _F(1.0) / kernel_scale
    for x in range(out_size):
        sample = (_F(x) + _F(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        lo = int(np.ceil(sample - kernel_scale - _F(0.5)))
        hi = int(np.floor(sample + kernel_scale - _F(0.5)))
        lo = min(max(lo, 0), in_size - 1)
        hi = min(max(hi, 0), in_size - 1) + 1
        w = np.zeros(hi - lo, _F)
        total = _F(0.0)
        for i, j in enumerate(range(lo, hi)):
            d = abs((_F(j) + _F(0.5) - sample) * inv_kernel_scale)
            w[i] = max(_F(0.0), _F(1.0) - d)
            total = _F(total + w[i])
        if abs(total) >= 1000 * np.finfo(_F).tiny:
            w = w * (_F(1.0) / total)
        starts[x] = lo
        weights[x, : hi - lo] = w
    return starts, weights, span


def _resample(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    in_size = image.shape[axis]
    starts, weights, span = _spans(out_size, in_size)
    x = np.moveaxis(image, axis, 0)
    out = np.zeros((out_size, *x.shape[1:]), _F)
    extra = (None,) * (x.ndim - 1)
    for i in range(span):
        index = np.minimum(starts + i, in_size - 1)
        w = weights[:, i][(slice(None), *extra)]
        out += w * x[index]  # zero weight beyond a span's real end
    return np.moveaxis(out, 0, axis)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W, C]`` -> float32 ``[height, width, C]`` (values in the input's range)."""
    x = np.asarray(image, _F)
    x = _resample(x, 0, height)
    return _resample(x, 1, width)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The size with the shorter side ``size``: ``round(side * size / min(h, w))`` in float32,
    at least ``size`` (``resize_shorter_tf``)."""
    scale = _F(size) / _F(min(height, width))
    h, w = (int(np.round(_F(d) * scale)) for d in (height, width))
    return max(h, size), max(w, size)


def eval_resize(image: np.ndarray, *, image_size: int, resize_size: int) -> np.ndarray:
    """numpy twin of :func:`cgh_jax.data.preprocess.eval_resize_tf` for one uint8 image,
    rounded back to uint8 (half to even, clipped to 0..255)."""
    if resize_size > 0:
        h, w = shorter_side_size(image.shape[0], image.shape[1], resize_size)
        x = resize_bilinear(image, h, w)
        if image_size > 0:
            top, left = (h - image_size) // 2, (w - image_size) // 2
            x = x[top : top + image_size, left : left + image_size]
    elif image_size > 0:
        x = resize_bilinear(image, image_size, image_size)
    else:
        return image
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
