"""Image preprocessing: decode, resize, crop, augment and normalize.

Evaluation (and, by default, training) preprocessing follows the authors' ImageNet code:
resize the shorter side to ``resize_size`` (256; 342 for Inception-V3) with antialiased
bilinear interpolation, then take the central ``image_size`` square (224; 299). The optional
``inception_crop`` training augmentation is the standard Inception random-resized-crop
(area in [8%, 100%] of the image, aspect ratio in [3/4, 4/3], 10 attempts, falling back to
the whole image) followed by a resize to ``image_size`` and a random horizontal flip.
``flip`` is a random horizontal flip alone. All randomness is stateless and seeded per
example from ``(shuffle_seed, epoch, id)``, so augmented batches are reproducible and resume
exactly.

Normalisation (``normalize``):

* ``"imagenet"``: :math:`(x / 255 - \\mu) / \\sigma` per channel with the ImageNet mean
  :math:`\\mu = (0.485, 0.456, 0.406)` and std :math:`\\sigma = (0.229, 0.224, 0.225)`;
  RGB images only.
* ``"unit"``: :math:`x / 255`, values in ``[0, 1]`` (what ``torchvision``'s ``ToTensor``
  gives, the authors' MNIST input).

Functions ending in ``_tf`` run inside ``tf.data``; the ``_np`` ones serve the in-memory path.
"""

from __future__ import annotations

import numpy as np

from cgh_jax import choices

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NORMALIZATIONS = choices.NORMALIZATIONS
AUGMENTATIONS = choices.AUGMENTATIONS


def _tf():
    from cgh_jax.data.tfimport import tensorflow

    return tensorflow()


def check_normalization(normalize: str, channels: int) -> None:
    """Raises ``ValueError`` for an unknown mode or ImageNet statistics on non-RGB images."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {NORMALIZATIONS}.")
    if normalize == "imagenet" and channels != 3:
        raise ValueError(
            f"normalize='imagenet' needs RGB images, these have {channels} channel(s); "
            "use normalize='unit'."
        )


# ----------------------------------------------------------------------------- numpy


def normalize_np(images: np.ndarray, normalize: str) -> np.ndarray:
    """uint8 (or 0..255 float) ``[..., C]`` images -> normalised float32."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if normalize == "imagenet":
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    elif normalize != "unit":
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {NORMALIZATIONS}.")
    return x


def flip_np(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Mirrors ``images[i]`` (``[B, H, W, C]``) left-right where ``flip[i]`` is true."""
    return np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


# ----------------------------------------------------------------------------- TensorFlow


def decode_tf(image, channels: int):
    """Encoded JPEG/PNG bytes -> uint8 ``[H, W, channels]``; uint8 tensors pass through."""
    tf = _tf()
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
    return image


def resize_shorter_tf(image, size: int):
    """Resizes so that the shorter side is ``size`` (antialiased bilinear), float32 out."""
    tf = _tf()
    shape = tf.shape(image)
    h, w = tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.minimum(h, w)
    new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    new = tf.maximum(new, size)
    return tf.image.resize(image, new, method="bilinear", antialias=True)


def center_crop_tf(image, size: int):
    """Central ``size`` x ``size`` crop of an image at least that large."""
    tf = _tf()
    shape = tf.shape(image)
    top = (shape[-3] - size) // 2
    left = (shape[-2] - size) // 2
    return image[..., top : top + size, left : left + size, :]


def eval_resize_tf(image, *, image_size: int, resize_size: int):
    """Deterministic resize/crop of a decoded image (or batch): float32 in 0..255.

    ``resize_size > 0``: resize the shorter side to it, then center-crop ``image_size``
    (``image_size = 0`` keeps the resized image). ``resize_size = 0`` and
    ``image_size > 0``: resize straight to ``image_size`` x ``image_size`` (a no-op for
    images of that size). Both 0: unchanged.
    """
    tf = _tf()
    image = tf.cast(image, tf.float32)
    if resize_size > 0:
        image = resize_shorter_tf(image, resize_size)
        if image_size > 0:
            image = center_crop_tf(image, image_size)
    elif image_size > 0:
        image = tf.image.resize(image, [image_size, image_size], "bilinear", antialias=True)
    return image


def inception_crop_tf(image, *, image_size: int, seed, channels: int = 3):
    """Inception random-resized-crop + random flip, seeded statelessly by ``seed`` ([2] int).

    ``image`` is encoded bytes (JPEGs are cropped before full decoding) or a uint8 tensor.
    Returns float32 ``[image_size, image_size, channels]`` in 0..255.
    """
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 2)
    encoded = image.dtype == tf.string
    if encoded:
        is_jpeg = tf.io.is_jpeg(image)
        decode = lambda: decode_tf(image, channels)
        shape = tf.cond(
            is_jpeg,
            lambda: tf.io.extract_jpeg_shape(image),
            lambda: tf.shape(decode(), out_type=tf.int32),
        )
    else:
        shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seeds[0],
        min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    if encoded:  # JPEG: decode only the crop window
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        crop = tf.cond(
            is_jpeg,
            lambda: tf.io.decode_and_crop_jpeg(image, window, channels=channels),
            lambda: tf.slice(decode(), begin, size),
        )
    else:
        crop = tf.slice(image, begin, size)
    crop = tf.image.resize(
        tf.cast(crop, tf.float32), [image_size, image_size], "bilinear", antialias=True
    )
    return tf.image.stateless_random_flip_left_right(crop, seeds[1])


def flip_tf(image, seed):
    """Random horizontal flip, seeded statelessly by ``seed`` ([2] int)."""
    return _tf().image.stateless_random_flip_left_right(image, seed)


def normalize_tf(image, normalize: str):
    """float32 0..255 images -> normalised float32 (see the module docstring)."""
    tf = _tf()
    x = tf.cast(image, tf.float32) * (1.0 / 255.0)
    if normalize == "imagenet":
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    elif normalize != "unit":
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {NORMALIZATIONS}.")
    return x
