"""Connecting the processes of a multi-host job, before any device is touched.

:func:`initialize` is the one place that decides whether to call
``jax.distributed.initialize``:

* explicit ``coordinator_address`` / ``num_processes`` / ``process_id`` (command-line flags)
  are passed to it as given;
* otherwise the cluster is found the way ``jax.distributed.initialize()`` itself finds it
  (Cloud TPU VMs and pod slices through the TPU metadata, GKE TPU through
  ``TPU_WORKER_HOSTNAMES``, SLURM, Open MPI, Kubernetes), and the call is made only when
  that cluster says it has more than one process. A single process (a laptop, one GPU host, a
  single-host TPU VM such as v4-8) is left alone.

:func:`job_layout` says, before JAX starts, whether this process belongs to a job of several
and where it meets the others (:mod:`cgh_jax.supervisor` uses it); :func:`barrier` and
:func:`is_writer` are the rule for files outside ``checkpoints/``: process 0 writes them,
after a barrier where it reads what the others produced.

JAX is imported on first use: with explicit arguments, :func:`job_layout` runs without it.

Nothing here looks at device files (``/dev/accel*``, ``/dev/vfio``): a TPU VM's device
files say nothing about how many hosts share the slice, and containers may hide them.

:func:`preemption_sync_enabled` and :func:`warn_if_no_preemption_sync` tell whether a
multi-process run can agree on a step to save at when a host is preempted.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

from absl import logging

from cgh_jax.spec.fields import ConfigError


class Cluster(NamedTuple):
    """A cluster environment found in this process's environment.

    Attributes:
      name: JAX's name for it (``'gcetpu'``, ``'gketpu'``, ``'slurm'``, ``'ompi'``,
        ``'k8s'``) or, from the fallback, the environment variable that revealed it.
      num_processes: the number of processes of the job, or ``None`` if the environment is
        recognised but could not say (``initialize`` then runs a single process and says so).
    """

    name: str
    num_processes: int | None


def _jax_cluster_types():
    """JAX's own cluster detectors (``jax._src.clusters``), or ``None`` if that moved."""
    try:
        from jax._src import clusters
    except ImportError:
        return None
    types = getattr(clusters.ClusterEnv, "_cluster_types", None)
    return list(types) if types is not None else None


def _from_jax(types) -> Cluster | None:
    # The detectors jax.distributed.initialize() tries, in its order; opt-in-only ones
    # (mpi4py: present wherever the package is installed) are skipped as JAX skips them.
    for env in types:
        if getattr(env, "opt_in_only_method", False):
            continue
        if not env.is_env_present():
            continue
        try:
            count = int(env.get_process_count())
        except Exception as e:  # noqa: BLE001 - a metadata server or variable that fails
            logging.info("Cluster %s: its process count is unknown (%s).", env.__name__, e)
            count = None
        return Cluster(getattr(env, "name", "") or env.__name__, count)
    return None


def _count(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _from_environment_variables() -> Cluster | None:
    """The same clusters read from their environment variables (used if JAX's detectors
    cannot be imported)."""
    env = os.environ
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    if hosts:
        per_slice = len([h for h in hosts.split(",") if h.strip()])
        slices = _count(env.get("MEGASCALE_NUM_SLICES")) or 1
        return Cluster("TPU_WORKER_HOSTNAMES", per_slice * slices)
    if "SLURM_JOB_ID" in env and "SLURM_NTASKS" in env:
        return Cluster("SLURM_NTASKS", _count(env["SLURM_NTASKS"]))
    if "OMPI_MCA_orte_hnp_uri" in env:
        return Cluster("OMPI_COMM_WORLD_SIZE", _count(env.get("OMPI_COMM_WORLD_SIZE")))
    return None


def detect_cluster() -> Cluster | None:
    """The cluster environment this process runs in, or ``None`` (a plain process).

    Asks JAX's own detectors, as ``jax.distributed.initialize()`` would; falls back to the
    clusters' environment variables if those detectors are not importable. Touches no device.
    """
    types = _jax_cluster_types()
    if types is None:
        return _from_environment_variables()
    return _from_jax(types)


def _explicit(coordinator_address, num_processes, process_id) -> bool:
    """True if any explicit argument is given; ConfigError if some are missing and no
    cluster environment can supply them, or if the process id is out of range."""
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        return False
    if any(v is None for v in explicit) and detect_cluster() is None:
        missing = [
            name
            for name, v in zip(
                ("coordinator_address", "num_processes", "process_id"), explicit, strict=True
            )
            if v is None
        ]
        raise ConfigError(
            "multi-host start: all of --coordinator_address, --num_processes and "
            f"--process_id are needed (missing: {', '.join(missing)})",
            "pass all three, or none of them on a cluster that JAX detects (Cloud TPU, "
            "SLURM, Open MPI, Kubernetes)",
        )
    if num_processes is not None and num_processes < 1:
        raise ConfigError(
            f"--num_processes={num_processes} is not a number of processes",
            "give the number of processes started (1 or more)",
        )
    if num_processes is not None and process_id is not None:
        if not 0 <= process_id < num_processes:
            raise ConfigError(
                f"--process_id={process_id} is out of range for --num_processes={num_processes}",
                f"give each process its own id from 0 to {num_processes - 1}",
            )
    return True


def job_layout(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: float = 60,
) -> tuple[str, int, int] | None:
    """``(coordinator address, number of processes, this process's id)`` of a job of several
    processes, or None for a single process or a cluster that does not say all three.

    Explicit arguments win; the rest comes from JAX's cluster detection (as
    ``jax.distributed.initialize`` would find it).

    Raises:
      cgh_jax.spec.fields.ConfigError: as :func:`initialize`.
    """
    explicit = _explicit(coordinator_address, num_processes, process_id)
    if explicit and None not in (coordinator_address, num_processes, process_id):
        return (coordinator_address, num_processes, process_id) if num_processes > 1 else None
    cluster = detect_cluster()
    if cluster is None or cluster.num_processes in (None, 1):
        return None
    try:
        from jax._src import clusters

        address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            coordinator_address, num_processes, process_id, None, None, int(timeout_s)
        )
    except Exception as e:  # noqa: BLE001 - a detector that moved or a metadata server down
        logging.info("Cluster %s: coordinator unknown before JAX starts (%s).", cluster.name, e)
        return None
    if None in (address, count, index) or int(count) <= 1:
        return None
    return str(address), int(count), int(index)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    init_timeout_s: int | None = None,
    heartbeat_timeout_s: int | None = None,
) -> Cluster | None:
    """Connects this process to the others of its job, if there are others.

    Call it once, before anything touches a JAX device.

    Args:
      coordinator_address: ``HOST:PORT`` of process 0.
      num_processes: the number of processes.
      process_id: this process's index.
      init_timeout_s: how long JAX waits for all processes (its ``initialization_timeout``;
        JAX's default when None).
      heartbeat_timeout_s: after how long without a heartbeat JAX declares a process dead
        (JAX's default when None).

    Returns:
      The cluster joined (``Cluster('explicit', n)`` for explicit arguments), or ``None`` if
      this is a single process and nothing was initialized.

    Raises:
      cgh_jax.spec.fields.ConfigError (a ValueError): if only some of the explicit
        arguments are given and no cluster environment can supply the others, or the
        process id is out of range.
    """
    import jax

    timeouts = {}
    if init_timeout_s is not None:
        timeouts["initialization_timeout"] = int(init_timeout_s)
    if heartbeat_timeout_s is not None:
        timeouts["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
    if _explicit(coordinator_address, num_processes, process_id):
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            **timeouts,
        )
        return Cluster("explicit", num_processes)
    cluster = detect_cluster()
    if cluster is None or cluster.num_processes == 1:
        return None
    if cluster.num_processes is None:
        logging.warning(
            "Cluster %s detected, but not how many processes it runs: continuing as a single "
            "process. For a multi-process job pass --coordinator_address, --num_processes "
            "and --process_id.",
            cluster.name,
        )
        return None
    logging.info(
        "Cluster %s with %d processes: calling jax.distributed.initialize().",
        cluster.name,
        cluster.num_processes,
    )
    jax.distributed.initialize(**timeouts)
    return cluster


def barrier(tag: str, timeout_s: float) -> None:
    """Waits until every process has reached ``tag`` (a no-op for one process).

    Uses the ``jax.distributed`` coordination service (no device collective, so a long wait
    does not hold a device or time out in a collective), else
    ``multihost_utils.sync_global_devices``.
    """
    import jax
    from jax._src import distributed as jax_distributed

    if jax.process_count() <= 1:
        return
    client = jax_distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(tag, timeout_in_ms=int(timeout_s * 1000))
    else:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


def is_writer() -> bool:
    """True in the one process that writes files outside ``checkpoints/`` (process 0)."""
    import jax

    return jax.process_index() == 0


def preemption_sync_enabled() -> bool:
    """True if JAX's preemption sync manager runs in this process.

    It exists after ``jax.distributed.initialize`` when the preemption service is on (the
    default, ``jax_enable_preemption_service``); without it
    ``multihost_utils.reached_preemption_sync_point`` raises and processes of a preempted
    job cannot agree on a step to save at.
    """
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return False
    state = getattr(jax_distributed, "global_state", None)
    return getattr(state, "preemption_sync_manager", None) is not None


_warned = threading.Event()


def warn_if_no_preemption_sync() -> bool:
    """Logs one warning per process if several processes run without preemption sync.

    Returns True if it warned (this call or an earlier one).
    """
    import jax

    if _warned.is_set():
        return True
    if jax.process_count() <= 1 or preemption_sync_enabled():
        return False
    _warned.set()
    logging.warning(
        "%d processes run without JAX's preemption sync manager: on SIGTERM (a spot or "
        "preemptible host being reclaimed) the processes cannot agree on a step, so no "
        "checkpoint is saved at preemption; the run resumes from its last periodic "
        "checkpoint (checkpoint_every_steps). Start the processes through "
        "jax.distributed.initialize with jax_enable_preemption_service left on.",
        jax.process_count(),
    )
    return True
