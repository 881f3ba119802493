"""cgh_jax.distributed: when jax.distributed.initialize is called, and how (no real cluster)."""

import logging as std_logging
import re

import jax
import pytest

from cgh_jax import distributed

_CLUSTER_VARS = (
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "TPU_WORKER_ID",
    "MEGASCALE_NUM_SLICES",
    "MEGASCALE_SLICE_ID",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_STEP_NUM_NODES",
    "OMPI_MCA_orte_hnp_uri",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "KUBERNETES_SERVICE_HOST",
)


@pytest.fixture
def calls(monkeypatch):
    """A clean environment; jax.distributed.initialize records its calls instead of running."""
    for name in _CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    recorded = []
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda *args, **kwargs: recorded.append((args, kwargs))
    )
    return recorded


def _slurm(monkeypatch, ntasks):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-4]")
    monkeypatch.setenv("SLURM_NTASKS", str(ntasks))
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")


def _on_tpu_vm(monkeypatch):
    """What JAX's import sets on a machine with TPU chips on its PCI bus."""
    from jax._src.clusters import cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)


def test_single_process_is_left_alone(calls):
    assert distributed.detect_cluster() is None
    assert distributed.initialize() is None
    assert calls == []


def test_explicit_arguments_are_passed_as_given(calls):
    cluster = distributed.initialize("10.0.0.1:1234", 4, 2)
    assert cluster == distributed.Cluster("explicit", 4)
    assert calls == [
        ((), {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2})
    ]


def test_partial_explicit_arguments_without_a_cluster_are_refused(calls):
    with pytest.raises(ValueError, match="missing: num_processes, process_id"):
        distributed.initialize("10.0.0.1:1234")
    assert calls == []


@pytest.mark.parametrize(
    "args,needle",
    [
        (("h:1", 2, 2), "--process_id=2 is out of range for --num_processes=2; give each"),
        (("h:1", 2, -1), "--process_id=-1 is out of range"),
        (("h:1", 0, 0), "--num_processes=0 is not a number of processes"),
    ],
)
def test_out_of_range_ids_say_which_ids_exist(calls, args, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as error:
        distributed.initialize(*args)
    assert "or none" not in str(error.value)
    assert calls == []


def test_job_layout_before_jax(calls, monkeypatch):
    """Explicit flags give the layout without JAX's detectors; one process is no job."""
    assert distributed.job_layout("10.0.0.1:1234", 4, 2) == ("10.0.0.1:1234", 4, 2)
    assert distributed.job_layout("10.0.0.1:1234", 1, 0) is None
    assert distributed.job_layout() is None
    _slurm(monkeypatch, 1)
    assert distributed.job_layout() is None
    assert calls == []


def test_initialize_passes_the_timeouts(calls):
    distributed.initialize("10.0.0.1:1234", 2, 1, init_timeout_s=7, heartbeat_timeout_s=40)
    assert calls[0][1]["initialization_timeout"] == 7
    assert calls[0][1]["heartbeat_timeout_seconds"] == 40


def test_partial_explicit_arguments_on_a_cluster_leave_the_rest_to_jax(calls, monkeypatch):
    _slurm(monkeypatch, 4)
    distributed.initialize(coordinator_address="10.0.0.1:1234")
    assert calls == [
        ((), {"coordinator_address": "10.0.0.1:1234", "num_processes": None, "process_id": None})
    ]


def test_slurm_job_with_several_tasks(calls, monkeypatch):
    _slurm(monkeypatch, 4)
    assert distributed.initialize() == distributed.Cluster("slurm", 4)
    assert calls == [((), {})]  # JAX finds coordinator, count and id itself.


def test_slurm_job_with_one_task_is_a_single_process(calls, monkeypatch):
    _slurm(monkeypatch, 1)
    assert distributed.initialize() is None
    assert calls == []


def test_tpu_pod_slice_from_worker_hostnames(calls, monkeypatch):
    _on_tpu_vm(monkeypatch)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1,w-2,w-3")
    monkeypatch.setenv("TPU_WORKER_ID", "1")
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "1")  # else JAX asks the metadata server
    assert distributed.initialize() == distributed.Cluster("gketpu", 4)
    assert calls == [((), {})]


def test_worker_hostnames_off_a_tpu_vm_are_not_a_cluster(calls, monkeypatch):
    # JAX detects TPU clusters only where its import found TPU chips on the PCI bus.
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1")
    monkeypatch.setenv("TPU_WORKER_ID", "0")
    assert distributed.initialize() is None
    assert calls == []


def test_single_host_tpu_vm_is_a_single_process(calls, monkeypatch):
    _on_tpu_vm(monkeypatch)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    monkeypatch.setenv("TPU_WORKER_ID", "0")
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "1")
    assert distributed.initialize() is None
    assert calls == []


def test_device_files_are_not_consulted(calls, monkeypatch):
    import glob
    import os.path

    def refuse(*args, **kwargs):
        raise AssertionError(f"looked at files: {args}")

    monkeypatch.setattr(glob, "glob", refuse)
    monkeypatch.setattr(os.path, "exists", refuse)
    assert distributed.initialize() is None


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, ("TPU_WORKER_HOSTNAMES", 4)),
        (
            {"TPU_WORKER_HOSTNAMES": "a,b", "MEGASCALE_NUM_SLICES": "2"},
            ("TPU_WORKER_HOSTNAMES", 4),
        ),
        ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}, ("SLURM_NTASKS", 8)),
        (
            {"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"},
            ("OMPI_COMM_WORLD_SIZE", 2),
        ),
        ({}, None),
    ],
)
def test_fallback_without_jax_detectors(calls, monkeypatch, env, expected):
    monkeypatch.setattr(distributed, "_jax_cluster_types", lambda: None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cluster = distributed.detect_cluster()
    assert (tuple(cluster) if cluster else None) == expected
    distributed.initialize()
    assert calls == ([((), {})] if expected else [])


def test_cluster_with_an_unknown_process_count_runs_one_process(calls, monkeypatch, caplog):
    class Unhelpful:  # e.g. Kubernetes without permission to read the job
        name = "k8s"
        opt_in_only_method = False

        @classmethod
        def is_env_present(cls):
            return True

        @classmethod
        def get_process_count(cls):
            raise RuntimeError("403 Forbidden")

    monkeypatch.setattr(distributed, "_jax_cluster_types", lambda: [Unhelpful])
    with caplog.at_level(std_logging.WARNING):
        assert distributed.detect_cluster() == distributed.Cluster("k8s", None)
        assert distributed.initialize() is None
    assert calls == []
    assert "continuing as a single process" in caplog.text


def test_preemption_sync_is_off_in_a_plain_process():
    assert distributed.preemption_sync_enabled() is False


def test_preemption_warning_once_for_several_processes(monkeypatch, caplog):
    monkeypatch.setattr(distributed, "_warned", type(distributed._warned)())
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    with caplog.at_level(std_logging.WARNING):
        assert distributed.warn_if_no_preemption_sync() is True
        assert distributed.warn_if_no_preemption_sync() is True
    messages = [r.getMessage() for r in caplog.records if "preemption sync" in r.getMessage()]
    assert len(messages) == 1
    assert messages[0].startswith("4 processes run without")


def test_no_preemption_warning_with_sync_or_one_process(monkeypatch):
    monkeypatch.setattr(distributed, "_warned", type(distributed._warned)())
    assert distributed.warn_if_no_preemption_sync() is False  # one process
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(distributed, "preemption_sync_enabled", lambda: True)
    assert distributed.warn_if_no_preemption_sync() is False


_TWO_PROCESSES = """
import sys

import jax

from cgh_jax import distributed

port, process_id, service = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
jax.config.update("jax_enable_preemption_service", service)
cluster = distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
print("RESULT", cluster.num_processes, jax.process_count(),
      distributed.preemption_sync_enabled(), distributed.warn_if_no_preemption_sync())
"""


@pytest.mark.parametrize("service", ["on", "off"])
def test_two_real_processes(tmp_path, service):
    """Two local processes join through initialize(); preemption sync as JAX configures it."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS and k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESSES)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(port), str(i), service],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    synced = service == "on"
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        result = [line for line in out.splitlines() if line.startswith("RESULT")]
        assert result == [f"RESULT 2 2 {synced} {not synced}"], out
        assert ("without JAX's preemption sync manager" in out) == (not synced)


def test_initialize_touches_no_device():
    """initialize() and detect_cluster() run before any JAX backend exists, and leave none."""
    import os
    import subprocess
    import sys

    code = (
        "from jax._src import xla_bridge\n"
        "from cgh_jax import distributed\n"
        "distributed.detect_cluster(); distributed.initialize()\n"
        "print('BACKENDS', sorted(xla_bridge._backends))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        check=True,
    ).stdout  # fmt: skip
    assert "BACKENDS []" in out
