"""Test setup: 8 fake CPU devices for sharding tests, TF kept off accelerators.

The XLA flag must be set before jax is imported anywhere, so this runs first.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402

# Bit-exact comparisons (resume, sharded vs single device) need deterministic CPU math.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    try:
        import tensorflow as tf
    except ImportError:  # tensorflow is a dependency, but keep pure-JAX tests usable
        return
    tf.config.set_visible_devices([], "GPU")
