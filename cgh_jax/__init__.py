"""cgh-jax: Coherent Gradients in JAX.

M3, RM3, RA3 and winsorized SGD as optax transforms, grouped/per-example gradients, and
(in subpackages) the label-noise and easy/hard experiments. ``import cgh_jax`` loads
nothing heavy: the transforms below (and JAX and optax with them) load on first use
(PEP 562), so the command line and the config files (``cgh_jax.configlib``) start fast.

Example:
  >>> import optax
  >>> import cgh_jax
  >>> opt = optax.chain(cgh_jax.m3(), optax.sgd(0.1))
"""

import importlib

__version__ = "0.1.0"

_FROM_OPTIM = (
    "GroupedGrads",
    "grouped_grads",
    "m3",
    "m3_sgd",
    "mean_at_median_norm",
    "median_at_mean_norm",
    "median_of_means",
    "per_example_grads",
    "ra3",
    "ra3_sgd",
    "rm3",
    "rm3_sgd",
    "winsorize",
    "winsorized_sgd",
)

__all__ = ["__version__", *_FROM_OPTIM]


def __getattr__(name: str):
    if name in _FROM_OPTIM:
        value = getattr(importlib.import_module("cgh_jax.optim"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'cgh_jax' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_FROM_OPTIM})
