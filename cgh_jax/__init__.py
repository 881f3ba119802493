"""cgh-jax: Coherent Gradients in JAX.

M3, RM3, RA3 and winsorized SGD as optax transforms, grouped/per-example gradients, and
(in subpackages) the label-noise and easy/hard experiments. Importing ``cgh_jax`` loads
only JAX and optax; the data pipeline (TensorFlow Datasets) loads with ``cgh_jax.data``.

Example:
  >>> import optax
  >>> import cgh_jax
  >>> opt = optax.chain(cgh_jax.m3(), optax.sgd(0.1))
"""

from cgh_jax.optim import (
    GroupedGrads,
    grouped_grads,
    m3,
    m3_sgd,
    median_of_means,
    per_example_grads,
    ra3,
    ra3_sgd,
    rm3,
    rm3_sgd,
    winsorize,
    winsorized_sgd,
)

__version__ = "0.1.0"

__all__ = [
    "GroupedGrads",
    "__version__",
    "grouped_grads",
    "m3",
    "m3_sgd",
    "median_of_means",
    "per_example_grads",
    "ra3",
    "ra3_sgd",
    "rm3",
    "rm3_sgd",
    "winsorize",
    "winsorized_sgd",
]
