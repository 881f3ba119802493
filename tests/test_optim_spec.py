"""The optimizer spec: validation, per-epoch learning-rate schedules, optimizers; metric helpers."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import cgh_jax
from cgh_jax import metrics
from cgh_jax.spec import optimizer as spec_lib


def sched_of(cfg, *, steps_per_epoch, num_epochs):
    spec = spec_lib.parse(cfg, batch_size=1)
    return spec.fix(
        layout="vmap", steps_per_epoch=steps_per_epoch, num_epochs=num_epochs
    ).schedule()


def tx_of(cfg, layout="vmap"):
    spec = spec_lib.parse(cfg, batch_size=1)
    return spec.fix(layout=layout, steps_per_epoch=10, num_epochs=1).optimizer()


def opt(**kw):
    base = dict(
        name="sgd",
        learning_rate=0.1,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        num_groups=3,
        num_clipped=0,
        schedule="constant",
        decay_epochs=(30, 60),
        decay_factor=0.1,
        warmup_epochs=0.0,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_step_schedule_by_hand():
    sched = sched_of(opt(schedule="step"), steps_per_epoch=10, num_epochs=90)
    expected = {0: 0.1, 299: 0.1, 300: 0.01, 599: 0.01, 600: 0.001, 899: 0.001}
    for step, lr in expected.items():
        assert float(sched(step)) == pytest.approx(lr, rel=1e-6), step


def test_cosine_is_stepped_per_epoch_like_torch_cosine_annealing():
    sched = sched_of(opt(schedule="cosine"), steps_per_epoch=7, num_epochs=4)
    for step in range(4 * 7):
        epoch = step // 7
        expected = 0.1 * 0.5 * (1 + math.cos(math.pi * epoch / 4))
        assert float(sched(step)) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert float(sched(4 * 7)) == pytest.approx(0.0, abs=1e-9)


def test_warmup_is_linear_per_step_then_the_schedule():
    sched = sched_of(
        opt(schedule="step", decay_epochs=(2,), warmup_epochs=0.5), steps_per_epoch=10, num_epochs=3
    )
    got = np.array([float(sched(s)) for s in range(25)])
    expected = np.array([0.1 * min(1.0, s / 5) * (0.1 if s >= 20 else 1.0) for s in range(25)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_schedule_is_jit_safe():
    sched = sched_of(opt(schedule="cosine"), steps_per_epoch=3, num_epochs=5)
    np.testing.assert_allclose(
        jax.jit(jax.vmap(sched))(jnp.arange(15)), [float(sched(s)) for s in range(15)], rtol=1e-6
    )


def test_gradient_kinds_and_examples_per_update():
    def spec(**kw):
        return spec_lib.parse(opt(**kw), batch_size=100)

    assert spec(name="m3").gradient is spec_lib.Gradient.GROUPED
    assert spec(name="winsorize").gradient is spec_lib.Gradient.PER_EXAMPLE
    assert spec(name="rm3").gradient is spec_lib.Gradient.BATCH
    assert spec(name="m3", num_groups=5).examples_per_update == 500
    assert spec(name="rm3").examples_per_update == 100


def test_spec_is_frozen_and_fixed_once():
    cfg = spec_lib.parse(opt(name="m3", weight_decay=1e-4), batch_size=64)
    with pytest.raises(AttributeError):
        cfg.name = "sgd"
    fixed = cfg.fix(layout="loop", steps_per_epoch=7, num_epochs=3)
    assert isinstance(fixed, spec_lib.OptimizerSpec)
    assert (fixed.m3_layout, fixed.steps_per_epoch, fixed.num_epochs) == ("loop", 7, 3)
    assert cfg.m3_layout == "auto" and not hasattr(cfg, "schedule")  # no placeholder phase
    with pytest.raises(ValueError, match="not a concrete layout"):
        cfg.fix(layout="auto", steps_per_epoch=7, num_epochs=3)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(name="adam"), "optimizer.name"),
        (dict(schedule="linear"), "optimizer.schedule"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(name="m3", num_groups=4), "odd"),
        (dict(schedule="step", decay_epochs=(60, 30)), "increasing"),
        (dict(momentum=-0.1), "momentum"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate=float("inf")), "learning_rate=inf is not a finite number"),
        (dict(weight_decay=float("nan")), "weight_decay"),
        (dict(name="m3", num_groups=3.0), "num_groups"),
        (dict(name="winsorize", num_clipped=-1), "num_clipped"),
    ],
)
def test_invalid_optimizer_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        spec_lib.parse(opt(**bad), batch_size=10)


def test_sgd_matches_optax_with_momentum_and_weight_decay():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = [{"w": jnp.array([0.5, 0.1, -0.3]) * (i + 1)} for i in range(4)]
    tx = tx_of(opt(momentum=0.9, weight_decay=0.01))
    ref = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1, momentum=0.9))
    p1 = p2 = params
    s1, s2 = tx.init(params), ref.init(params)
    for g in grads:
        u1, s1 = tx.update(g, s1, p1)
        u2, s2 = ref.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    np.testing.assert_array_equal(p1["w"], p2["w"])


def test_m3_spec_is_the_median_of_group_means():
    params = {"w": jnp.zeros(3)}
    grouped = {"w": jnp.array([[1.0, 5.0, -1.0], [2.0, 0.0, 7.0], [9.0, 3.0, 2.0]])}
    tx = tx_of(opt(name="m3"))
    updates, _ = tx.update(grouped, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.median(np.asarray(grouped["w"]), axis=0))
    ref = cgh_jax.m3_sgd(0.1)
    expected, _ = ref.update(grouped, ref.init(params), params)
    np.testing.assert_array_equal(updates["w"], expected["w"])


def test_jsonl_truncate_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = metrics.JsonlWriter(str(path), enabled=True)
    for step in (0, 10, 20):
        writer.write({"step": step, "epoch": step // 10, "test/top1": 0.5})
    with open(path, "a") as f:
        f.write('{"step": 30, "ep')  # a kill in the middle of a line
    assert [r["step"] for r in writer.read()] == [0, 10, 20]
    writer.truncate(20)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 10]
    writer.write({"step": 20, "epoch": 2})
    assert [r["step"] for r in writer.read()] == [0, 10, 20]


def test_progress_rate_and_eta():
    now = [100.0]
    progress = metrics.Progress(total_steps=1000, start_step=100, clock=lambda: now[0])
    now[0] += 10.0
    report = progress.report(200)  # 100 steps in 10 s
    assert report["steps_per_sec"] == pytest.approx(10.0)
    assert report["eta_seconds"] == pytest.approx(80.0)
    progress.pause()
    now[0] += 50.0  # an evaluation: not training time
    progress.resume()
    now[0] += 5.0
    assert progress.report(300)["steps_per_sec"] == pytest.approx(20.0)
    assert "ETA 35s" in progress.describe(300, 3.0, progress.report(300) | {"eta_seconds": 35})


def test_eval_totals_are_exact_means():
    totals = metrics.EvalTotals(with_top5=True)
    totals.add({"count": 3.0, "loss": 3.0, "top1": 2.0, "top5": 3.0})
    totals.add({"count": 1.0, "loss": 5.0, "top1": 0.0, "top5": 1.0})
    assert totals.result() == {"top1": 0.5, "top5": 1.0, "loss": 2.0}
    assert metrics.EvalTotals(with_top5=False).result() == {}
