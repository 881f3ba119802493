"""End-to-end training per optimizer on tfds mock ImageNet with tiny models.

Each run trains a few steps on 8 fake CPU devices (batch sharded over the mesh), evaluates,
checkpoints, and writes metrics.jsonl, config.json, TensorBoard events and per-example
records; the checks read those files back.
"""

import glob
import json
import math
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cgh_jax import configlib, data, train

NUM = 64  # examples per mocked split
SETS = ("pristine", "corrupt_noisy", "corrupt_true", "train_sample", "test")


@pytest.fixture
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=NUM):
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


def imagenet_config(opt: str, model: dict, **overrides):
    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="tfds",
        name="imagenet2012",
        test_split="validation",
        image_size=32,
        resize_size=36,
        normalize="imagenet",
        noise=0.5,
        eval_subset_size=-1,
        shuffle_buffer=64,
    )
    cfg.model = dict(dtype="float32", **model)
    cfg.optimizer = configlib.optimizer_config(name=opt, learning_rate=0.05, num_clipped=1)
    cfg.batch_size = 8
    cfg.num_epochs = 2
    cfg.max_steps = 3
    cfg.eval_batch_size = 32
    cfg.log_every_steps = 1
    cfg.checkpoint_every_steps = 2
    cfg.per_example_epochs = (0,)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


CASES = {
    "sgd": {"name": "mlp", "hidden": (16,), "dropout_rate": 0.1},  # dropout rng per step
    "m3": {"name": "resnet_tiny"},  # grouped gradients with per-group BatchNorm statistics
    "rm3": {"name": "cnn", "features": (4, 8), "hidden": 16, "batch_norm": True},
    "ra3": {"name": "mlp", "hidden": (16,)},
    "winsorize": {"name": "cnn", "features": (4, 8), "hidden": 16},  # per-example grads
}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("opt", sorted(CASES))
def test_end_to_end(mock_imagenet, fast_compile, tmp_path, opt):
    assert jax.device_count() == 8
    cfg = imagenet_config(opt, CASES[opt])
    workdir = str(tmp_path / opt)
    result = train.train_and_evaluate(cfg, workdir)

    # metrics.jsonl: an evaluation before training and after the last step, every key.
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    spe = NUM // (3 * 8 if opt == "m3" else 8)  # M3: 3 x 8 examples per update
    assert [r["step"] for r in records] == ([0, 2, 3] if opt == "m3" else [0, 3])
    assert result == records[-1]
    assert records[-1]["epoch"] == pytest.approx(3 / spe, abs=1e-6)
    for record in records:
        for s in SETS:
            for m in ("top1", "top5", "loss"):
                value = record[f"{s}/{m}"]
                assert math.isfinite(value)
                if m != "loss":
                    assert 0.0 <= value <= 1.0
            assert record[f"{s}/top1"] <= record[f"{s}/top5"]
    # Mock labels are random over 1000 classes: pristine/test have true = training label.
    assert records[0]["corrupt_noisy/loss"] > 0

    # Checkpoints at the periodic step and the end; the last one restores step 3.
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))
    assert steps == [2, 3]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["optimizer"]["name"] == opt
    assert glob.glob(f"{workdir}/events.out.tfevents.*")

    # Per-example records before training: every training example once.
    with np.load(os.path.join(workdir, "per_example", "epoch_000.npz")) as rec:
        assert sorted(rec.files) == ["correct", "id", "label", "loss", "true_label"]
        assert rec["id"].dtype == np.int64 and len(np.unique(rec["id"])) == NUM
        assert rec["correct"].dtype == bool and rec["loss"].dtype == np.float32
        assert np.all(np.isfinite(rec["loss"]))

    # Running again is a no-op that returns the final record from the checkpoint.
    again = train.train_and_evaluate(cfg, workdir)
    assert again == result
    assert read_jsonl(os.path.join(workdir, "metrics.jsonl")) == records


def test_winsorize_rejects_batchnorm(mock_imagenet, tmp_path):
    cfg = imagenet_config("winsorize", CASES["rm3"])
    with pytest.raises(ValueError, match="per-example gradients"):
        train.train_and_evaluate(cfg, str(tmp_path))


def test_batch_must_split_over_devices(mock_imagenet, tmp_path):
    cfg = imagenet_config("sgd", {"name": "mlp", "hidden": (8,)}, batch_size=12)
    with pytest.raises(ValueError, match="do not split evenly over 8 devices"):
        train.train_and_evaluate(cfg, str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")
