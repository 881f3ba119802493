"""Device mesh and batch sharding helpers (pure JAX/numpy; no TensorFlow import).

Data parallelism over one mesh axis, ``'data'``: batches are sharded along their leading
axis (``P('data')``), parameters and optimizer state are replicated (``P()``), and
``jax.jit`` over the mesh inserts the collectives. In a multi-process run every process
passes its own slice of the global batch to :func:`host_batch_to_global`.

Example:
  >>> import numpy as np
  >>> from cgh_jax import sharding
  >>> mesh = sharding.create_mesh()
  >>> batch = sharding.host_batch_to_global({"x": np.zeros((8, 3), np.float32)}, mesh)
  >>> batch["x"].shape
  (8, 3)
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``num_devices`` devices (default: all devices of all processes).

    The axis type is ``Auto`` (jit chooses the propagation), so reshaping a sharded batch
    inside jit works without explicit output shardings.

    Args:
      num_devices: number of devices; must divide evenly among processes when several
        processes run. None: ``jax.device_count()``.
      axis_name: the mesh axis name.

    Returns:
      A ``jax.sharding.Mesh`` with one axis ``axis_name``.
    """
    total = jax.device_count()
    if num_devices is None:
        num_devices = total
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise ValueError(f"num_devices must be an int or None, got {num_devices!r}.")
    if not 1 <= num_devices <= total:
        raise ValueError(
            f"num_devices must be in [1, {total}] (available devices), got {num_devices}."
        )
    if jax.process_count() > 1 and num_devices != total:
        raise ValueError(
            "in a multi-process run the mesh must span every device "
            f"({total}); got num_devices={num_devices}."
        )
    if num_devices == total:
        return jax.make_mesh((num_devices,), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,))
    return Mesh(np.array(jax.devices()[:num_devices]), (axis_name,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's (first) axis: ``NamedSharding(mesh, P('data'))``."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches stacked on a leading step axis ``[n, B, ...]``: axis 1 split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(None, mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Fully replicated: ``NamedSharding(mesh, P())``."""
    return NamedSharding(mesh, PartitionSpec())


def local_batch_size_divisor(mesh: Mesh) -> int:
    """Devices of ``mesh`` owned by this process: the per-host batch must be a multiple."""
    return sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles per-process numpy batches into global ``jax.Array``s sharded over ``mesh``.

    Every process calls this with its own slice (``b = global / process_count`` rows) of the
    global batch; the result has ``b * process_count`` rows, sharded along axis 0 as
    :func:`batch_sharding`. Uses ``jax.make_array_from_process_local_data``.

    Args:
      batch: dict of arrays with a common leading dimension ``b``, a multiple of this
        process's device count in ``mesh``.
      mesh: the device mesh.

    Returns:
      Dict of global ``jax.Array``s with the same keys.
    """
    if not batch:
        raise ValueError("batch is empty; expected a dict of arrays with a leading batch axis.")
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"all batch arrays need the same leading (batch) axis, got {sizes}.")
    local = next(iter(sizes.values()))
    per_host_devices = local_batch_size_divisor(mesh)
    if per_host_devices == 0 or local % per_host_devices:
        raise ValueError(
            f"the per-host batch size {local} must be a multiple of this process's "
            f"{per_host_devices} device(s) in the mesh."
        )
    sharding = batch_sharding(mesh)
    global_rows = local * jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(
            sharding, np.asarray(v), (global_rows, *np.shape(v)[1:])
        )
        for k, v in batch.items()
    }


def host_batches_to_global(
    batches: list[Mapping[str, np.ndarray]], mesh: Mesh
) -> dict[str, jax.Array]:
    """Several per-process batches stacked on a new leading axis, as one global array each:
    ``[n, b, ...]`` per process -> ``[n, b * process_count, ...]`` sharded as
    :func:`stacked_batch_sharding` (one transfer for ``n`` steps; see
    :func:`host_batch_to_global` for the per-batch rules)."""
    if not batches:
        raise ValueError("batches is empty; expected a list of batch dicts.")
    sharding = stacked_batch_sharding(mesh)
    out = {}
    for k in batches[0]:
        stacked = np.stack([np.asarray(b[k]) for b in batches])
        local = stacked.shape[1]
        per_host_devices = local_batch_size_divisor(mesh)
        if per_host_devices == 0 or local % per_host_devices:
            raise ValueError(
                f"the per-host batch size {local} must be a multiple of this process's "
                f"{per_host_devices} device(s) in the mesh."
            )
        shape = (stacked.shape[0], local * jax.process_count(), *stacked.shape[2:])
        out[k] = jax.make_array_from_process_local_data(sharding, stacked, shape)
    return out
