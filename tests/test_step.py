"""The one step module and the trainer's loop around it: several steps per dispatch,
hooks, and no evaluation of a non-finite state."""

import json
import math

import jax
import numpy as np
import pytest

from cgh_jax import configlib, hooks, sharding, train
from cgh_jax import step as step_lib
from cgh_jax.models import get_model
from cgh_jax.spec import optimizer as spec_lib


def _spec(name, **kw):
    spec = spec_lib.parse(dict(name=name, learning_rate=0.1, **kw), batch_size=8)
    return spec.fix(layout="vmap", steps_per_epoch=4, num_epochs=2)


def _batches(num, size, image_shape=(4, 4, 1), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(size, *image_shape)).astype(np.float32),
            "label": rng.integers(0, classes, size).astype(np.int32),
        }
        for _ in range(num)
    ]


@pytest.mark.parametrize("name", ["sgd", "m3", "rm3"])
def test_steps_per_dispatch_gives_the_parameters_of_single_steps(name):
    mesh = sharding.create_mesh(1)
    model = get_model("mlp", num_classes=10, hidden=(16,))
    spec = _spec(name, schedule="step", decay_epochs=(1,), momentum=0.0)
    facts = step_lib.model_facts(model, (4, 4, 1), mesh)
    steps = step_lib.build_steps(model, spec, mesh, facts=facts, with_top5=True, platform="cpu")
    batches = _batches(6, spec.examples_per_update)

    def init():
        return step_lib.create_train_state(model, steps.tx, (4, 4, 1), jax.random.PRNGKey(0), mesh)

    single, metrics = init(), None
    for b in batches:
        single, m, finite = steps.train(single, sharding.host_batch_to_global(b, mesh))
        assert bool(finite)
        metrics = m if metrics is None else metrics.merge(m)
    many = init()
    many, m1, f1 = steps.train_many(many, sharding.host_batches_to_global(batches[:4], mesh))
    many, m2, f2 = steps.train_many(many, sharding.host_batches_to_global(batches[4:], mesh))
    assert bool(f1) and bool(f2)
    assert int(many.step) == int(single.step) == 6
    for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(single), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = {k: float(v) for k, v in m1.merge(m2).compute().items()}
    want = {k: float(v) for k, v in metrics.compute().items()}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6), k


def _digits_config(tmp_path, **overrides):
    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="sklearn_digits", data_dir=str(tmp_path / "tfds"), noise=0.5, eval_subset_size=64
    )
    cfg.model = dict(name="mlp", hidden=(32,), dtype="float32")
    cfg.optimizer = configlib.optimizer_config(name="rm3", learning_rate=0.1)
    cfg.batch_size = 64
    cfg.num_epochs = 3
    cfg.eval_batch_size = 128
    cfg.log_every_steps = 5
    cfg.checkpoint_every_steps = 7
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _records(path):
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
        for line in path.read_text().splitlines()
    ]


def test_trainer_with_steps_per_dispatch_writes_the_same_metrics(tmp_path):
    one = train.train_and_evaluate(_digits_config(tmp_path), str(tmp_path / "one"))
    many = train.train_and_evaluate(
        _digits_config(tmp_path, steps_per_dispatch=4), str(tmp_path / "many")
    )
    assert one["step"] == many["step"] == 3 * (1442 // 64)  # 1,442 training digits
    assert _records(tmp_path / "one" / "metrics.jsonl") == _records(
        tmp_path / "many" / "metrics.jsonl"
    )


def test_eval_every_epochs_skips_evaluations_but_not_the_training(tmp_path):
    every = train.train_and_evaluate(_digits_config(tmp_path), str(tmp_path / "every"))
    sparse = train.train_and_evaluate(
        _digits_config(tmp_path, eval_every_epochs=2), str(tmp_path / "sparse")
    )
    spe = 1442 // 64
    evals = lambda rs: [r for r in rs if "test/top1" in r]  # noqa: E731
    kept = evals(_records(tmp_path / "sparse" / "metrics.jsonl"))
    assert [r["step"] for r in kept] == [0, 2 * spe, 3 * spe]  # epochs 0, 2 and the end
    everyone = {r["step"]: r for r in evals(_records(tmp_path / "every" / "metrics.jsonl"))}
    assert kept == [everyone[r["step"]] for r in kept]
    assert sparse == pytest.approx({**every, "wall_time_s": sparse["wall_time_s"]})


class _Recorder(hooks.Hook):
    def __init__(self):
        self.steps, self.evals, self.ends, self.runs = [], [], [], []

    def start(self, run):
        self.runs.append(run)

    def on_step(self, step, state):
        assert int(state.step) == step
        self.steps.append(step)

    def on_eval(self, record, state):
        assert int(state.step) == record["step"]
        self.evals.append(record["step"])

    def on_end(self, record, state):
        self.ends.append(record["step"])


def test_hooks_see_every_step_each_evaluation_and_the_end(tmp_path):
    recorder = _Recorder()
    cfg = _digits_config(tmp_path, num_epochs=2)
    result = train.train_and_evaluate(cfg, str(tmp_path / "run"), hooks=[recorder])
    total = result["step"]
    spe = total // 2
    assert recorder.steps == list(range(1, total + 1))
    assert recorder.evals == [0, spe, total]
    assert recorder.ends == [total]
    (run,) = recorder.runs  # what the run is, once: its experiment, model, mesh, workdir
    assert (run.experiment.total_steps, run.experiment.steps_per_epoch) == (total, spe)
    assert run.workdir == str(tmp_path / "run") and run.model is not None
    # A finished run returns at once: no step, no hook call.
    again = _Recorder()
    train.train_and_evaluate(cfg, str(tmp_path / "run"), hooks=[again])
    assert again.steps == again.evals == again.ends == again.runs == []


def test_a_diverging_run_stops_before_it_evaluates_a_non_finite_state(tmp_path):
    cfg = _digits_config(tmp_path, log_every_steps=1000, checkpoint_every_steps=0)
    cfg.optimizer.name = "sgd"
    cfg.optimizer.learning_rate = 1e30  # overflows float32 within a few steps
    with pytest.raises(train.NonFiniteError, match="without evaluating or saving"):
        train.train_and_evaluate(cfg, str(tmp_path / "run"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the evaluation before training; none after the divergence
    record = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))


@pytest.mark.parametrize("name", ["mean_at_median_norm", "median_at_mean_norm"])
def test_norm_matched_optimizers_step_like_their_transform(name):
    # One step of the trainer's step equals the transform applied by hand to the group
    # gradients of the same batch; the logged grad_norm is the update direction's norm.
    import optax

    from cgh_jax.optim import grouped_grads, norm_match

    mesh = sharding.create_mesh(1)
    model = get_model("mlp", num_classes=10, hidden=(16,))
    spec = spec_lib.parse(dict(name=name, learning_rate=0.1, num_groups=5), batch_size=4)
    facts = step_lib.model_facts(model, (4, 4, 1), mesh)
    layout, why = spec.resolve_layout(
        num_devices=8, has_conv=False, has_state=False, platform="cpu"
    )
    assert layout == "vmap" and "no sharded layout" in why
    spec = spec.fix(layout=layout, steps_per_epoch=4, num_epochs=2)
    assert spec.examples_per_update == 20 and not spec.median_in_step
    steps = step_lib.build_steps(model, spec, mesh, facts=facts, with_top5=True, platform="cpu")
    state = step_lib.create_train_state(model, steps.tx, (4, 4, 1), jax.random.PRNGKey(0), mesh)
    params = jax.tree.map(np.asarray, state.params)
    batch = _batches(1, 20)[0]
    new, metrics, finite = steps.train(state, sharding.host_batch_to_global(batch, mesh))
    assert bool(finite)
    loss_fn = step_lib.make_loss_fn(model, has_state=False)
    grouped = grouped_grads(loss_fn, 5, has_aux=True)(params, batch, {}).grads
    tx = getattr(norm_match, name)(5)
    direction, _ = tx.update(grouped, tx.init(params), params)
    want = optax.apply_updates(params, jax.tree.map(lambda d: -0.1 * d, direction))
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert float(metrics.compute()["grad_norm"]) == pytest.approx(
        float(optax.global_norm(direction)), rel=1e-5
    )


def test_norm_matched_optimizers_refuse_sharded_layouts():
    from cgh_jax.spec.fields import ConfigError

    with pytest.raises(ConfigError, match="does not use"):
        spec_lib.parse(dict(name="mean_at_median_norm", m3_layout="group_sharded"), batch_size=8)
