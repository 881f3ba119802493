"""TFDS datasets in memory: read once through TFDS, then from the array cache without TF."""

import json
import os

import jax
import ml_collections
import no_tf
import numpy as np
import pytest

from cgh_jax import data
from cgh_jax.data import ids as ids_lib
from cgh_jax.data.sources import tfds_arrays

tfds = pytest.importorskip("tensorflow_datasets")

NUM = 40

# Runs here and, unchanged, in a process where TensorFlow cannot be imported.
SUMMARY = """
import json, ml_collections, numpy as np
from cgh_jax import data

def summarize(c):
    c = ml_collections.ConfigDict(c)
    out = {"info": list(data.get_dataset_info(c)), "sizes": list(data.known_sizes(c))}
    for b in data.train_batches(c, global_batch_size=8, epoch=1):
        for k in ("id", "label", "true_label", "is_corrupt"):
            out.setdefault("train_" + k, []).extend(b[k].tolist())
        out.setdefault("train_pixels", []).append(float(b["image"].sum()))
    for name, s in data.eval_datasets(c, global_batch_size=8).items():
        for b in s:
            m = b["mask"]
            out.setdefault(name + "_id", []).extend(b["id"][m].tolist())
            out.setdefault(name + "_label", []).extend(b["label"][m].tolist())
    return json.loads(json.dumps(out))
"""


def prepared_mnist_dir(root):
    """A data dir holding MNIST's dataset_info.json, for mock_data(policy=USE_FILES)."""
    builder = tfds.builder("mnist", data_dir=str(root))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return str(root)


def test_array_cache_is_written_once_and_read_without_tensorflow(tmp_path):
    data_dir = prepared_mnist_dir(tmp_path / "tfds")
    c = dict(
        source="tfds",
        name="mnist",
        data_dir=data_dir,
        noise=0.4,
        noise_seed=3,
        eval_subset_size=5,
    )
    scope = {}
    exec(SUMMARY, scope)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=NUM, policy=policy, data_dir=data_dir):
        data.clear_caches()
        first = scope["summarize"](c)
        # The cached ids are the hashed tfds_ids, as on every TFDS read.
        tfds_ids = [f"mnist-train.tfrecord-00000-of-00001__{i}" for i in range(NUM)]
        expected_ids = np.sort(ids_lib.tfds_id_to_int(tfds_ids))
    data.clear_caches()
    cache = tmp_path / "tfds" / "cgh_arrays" / "mnist" / "3.0.1"
    assert sorted(os.listdir(cache)) == ["meta.json", "test-0x0.npz", "train-0x0.npz"]
    with np.load(cache / "train-0x0.npz") as f:
        np.testing.assert_array_equal(f["ids"], expected_ids)
        assert f["images"].dtype == np.uint8 and f["images"].shape == (NUM, 28, 28, 1)
    assert json.loads((cache / "meta.json").read_text())["num_classes"] == 10
    assert first["info"] == [10, NUM, NUM, [28, 28, 1]]
    assert len(first["corrupt_id"]) == 5 and sorted(first["train_id"]) == list(expected_ids)

    # No mock, no TensorFlow: the same numbers from the cache.
    log = tmp_path / "tf_imports.log"
    code = SUMMARY + f"\nprint(json.dumps(summarize({c!r})))\n"
    proc = no_tf.run(code, log=str(log), env={"PYTHONPATH": _pythonpath()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(proc.stdout.strip().splitlines()[-1])
    first["sizes"] = [NUM, NUM]  # known only once the cache holds the split sizes
    assert second == first
    assert not log.exists(), log.read_text()


def _pythonpath():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])


def test_no_cache_for_a_mock_outside_the_data_dir(tmp_path):
    c = ml_collections.ConfigDict(dict(source="tfds", name="mnist", data_dir=str(tmp_path)))
    with tfds.testing.mock_data(num_examples=8):
        data.clear_caches()
        assert data.get_dataset_info(c).num_train == 8
    data.clear_caches()
    assert not (tmp_path / "cgh_arrays").exists()


def test_process_zero_writes_while_the_others_wait(tmp_path, monkeypatch):
    """With several processes the cache is written by process 0 before the barrier; the
    others read through TFDS only if the cache is still missing after it."""
    data_dir = prepared_mnist_dir(tmp_path / "tfds")
    spec = data.resolve(
        ml_collections.ConfigDict(dict(source="tfds", name="mnist", data_dir=data_dir))
    )
    events = []
    real_read = tfds_arrays.read_through_tfds
    monkeypatch.setattr(tfds_arrays, "_sync", lambda tag: events.append("barrier"))
    monkeypatch.setattr(
        tfds_arrays,
        "read_through_tfds",
        lambda *a: events.append("tfds") or real_read(*a),
    )
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=16, policy=policy, data_dir=data_dir):
        monkeypatch.setattr(jax, "process_index", lambda: 1)  # nothing cached yet
        lonely = tfds_arrays.load_table(spec, "train")
        assert events == ["barrier", "tfds"]  # waited first, then read it itself
        events.clear()
        monkeypatch.setattr(jax, "process_index", lambda: 0)
        written = tfds_arrays.load_table(spec, "train")
        assert events == ["tfds", "barrier"]  # wrote before the barrier
        events.clear()
        monkeypatch.setattr(jax, "process_index", lambda: 1)
        cached = tfds_arrays.load_table(spec, "train")
        assert events == ["barrier"]  # read the cache
    for t in (lonely, cached):
        np.testing.assert_array_equal(t.ids, written.ids)
    data.clear_caches()


CHILD = """
import json, sys
import jax

coordinator, process_id, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator, num_processes=2, process_id=process_id,
                           initialization_timeout=60)
import ml_collections
import tensorflow_datasets as tfds
from cgh_jax import data
from cgh_jax.data.sources import tfds_arrays

reads = []
real = tfds_arrays.read_through_tfds
tfds_arrays.read_through_tfds = lambda *a: reads.append(a[2]) or real(*a)
spec = data.resolve(ml_collections.ConfigDict(
    dict(source="tfds", name="mnist", data_dir=data_dir)))
with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_FILES,
                            data_dir=data_dir):
    table = tfds_arrays.load_table(spec, "train")
print("RESULT " + json.dumps({"reads": reads, "ids": table.ids.tolist()}), flush=True)
"""


def test_two_processes_share_one_cache(tmp_path):
    """Real processes (jax.distributed on the CPU): process 0 reads through TFDS and writes
    the cache; process 1 waits at the barrier and reads the cache."""
    import socket
    import subprocess
    import sys

    data_dir = prepared_mnist_dir(tmp_path / "tfds")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, coordinator, str(i), data_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
            results.append(json.loads(line[len("RESULT ") :]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert results[0]["reads"] == ["train"] and results[1]["reads"] == []
    assert results[0]["ids"] == results[1]["ids"] and len(results[0]["ids"]) == 24
