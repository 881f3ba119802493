"""Mesh and batch-sharding helpers on 8 fake CPU devices."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cgh_jax import sharding


def test_create_mesh_defaults_to_all_devices_with_auto_axis():
    mesh = sharding.create_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count() == 8
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


def test_create_mesh_subset_and_errors():
    mesh = sharding.create_mesh(4, axis_name="batch")
    assert mesh.devices.shape == (4,) and mesh.axis_names == ("batch",)
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    with pytest.raises(ValueError, match="num_devices"):
        sharding.create_mesh(9)
    with pytest.raises(ValueError, match="num_devices"):
        sharding.create_mesh(0)


def test_shardings():
    mesh = sharding.create_mesh()
    assert sharding.batch_sharding(mesh).spec == P("data")
    assert sharding.replicated_sharding(mesh).spec == P()


def test_host_batch_to_global_shape_sharding_and_values():
    mesh = sharding.create_mesh()
    batch = {
        "image": np.arange(16 * 4 * 4 * 1, dtype=np.float32).reshape(16, 4, 4, 1),
        "label": np.arange(16, dtype=np.int32),
        "mask": np.ones(16, bool),
    }
    out = sharding.host_batch_to_global(batch, mesh)
    assert set(out) == set(batch)
    for key, value in out.items():
        assert isinstance(value, jax.Array)
        assert value.shape == batch[key].shape and value.dtype == batch[key].dtype
        assert value.sharding.is_equivalent_to(sharding.batch_sharding(mesh), value.ndim)
        assert len(value.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(value), batch[key])
    # Each device holds a contiguous 2-row slice of the batch.
    shard_rows = sorted(int(s.data[0]) for s in out["label"].addressable_shards)
    assert shard_rows == list(range(0, 16, 2))
    # Usable under jit with the reshape that grouped gradients need (Auto axis types).
    total = jax.jit(lambda x: jnp.sum(x.reshape(8, 2, -1), axis=(1, 2)))(out["image"])
    assert total.shape == (8,)


def test_host_batch_to_global_bad_input():
    mesh = sharding.create_mesh()
    with pytest.raises(ValueError, match="multiple"):
        sharding.host_batch_to_global({"x": np.zeros((6, 2))}, mesh)
    with pytest.raises(ValueError, match="leading"):
        sharding.host_batch_to_global({"x": np.zeros((8, 2)), "y": np.zeros(16)}, mesh)
    with pytest.raises(ValueError, match="empty"):
        sharding.host_batch_to_global({}, mesh)


def test_sharding_module_does_not_import_tensorflow():
    # Load the module file on its own so that the package __init__ does not interfere.
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('s', {sharding.__file__!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
