"""cgh_jax.metrics: the pure-JAX train metrics, the optional TensorBoard writer, the ETA."""

import builtins
import importlib.util
import json
import logging as std_logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cgh_jax import metrics


def _default_config(arg=None):
    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py"
    spec = importlib.util.spec_from_file_location("default_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


VALUES = dict(
    loss=2.0, top1=0.5, grad_norm=1.0, param_norm=10.0, update_norm=0.1, learning_rate=0.1
)


def test_train_metrics_means_and_last_values_under_jit():
    @jax.jit
    def step(scale):
        values = {k: jnp.float32(v) * scale for k, v in VALUES.items()}
        return metrics.TrainMetrics.single_from_model_output(**values)

    merged = step(1.0).merge(step(2.0)).merge(step(3.0))
    out = {k: float(v) for k, v in merged.compute().items()}
    assert list(out) == list(metrics.TrainMetrics.ORDER)
    assert out["loss"] == pytest.approx(4.0)  # mean of 2, 4, 6
    assert out["top1"] == pytest.approx(1.0)
    assert out["param_norm"] == pytest.approx(30.0)  # the last step's
    assert out["learning_rate"] == pytest.approx(0.3)
    assert jax.tree.structure(merged) == jax.tree.structure(step(1.0))


def test_train_metrics_names_must_match():
    with pytest.raises(ValueError, match="missing \\['top1'\\]"):
        metrics.TrainMetrics.single_from_model_output(
            **{k: v for k, v in VALUES.items() if k != "top1"}
        )


class _Recorder:
    def __init__(self):
        self.scalars, self.hparams, self.closed = [], [], False

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def write_hparams(self, hparams):
        self.hparams.append(dict(hparams))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_scalars_also_against_examples_seen():
    summary = _Recorder()
    writer = metrics.MetricWriter(metrics.LoggingWriter(), summary, examples_per_step=300)
    writer.write_scalars(10, {"test/top1": 0.9})
    assert summary.scalars == [(10, {"test/top1": 0.9}), (3000, {"by_examples/test/top1": 0.9})]
    writer.write_hparams({"batch_size": 100})
    assert summary.hparams == [{"batch_size": 100}]
    writer.close()
    assert summary.closed


@pytest.fixture
def without_clu(monkeypatch):
    """``import clu`` fails, as where CLU is not installed; the warning not yet given."""
    real_import = builtins.__import__

    def no_clu(name, *args, **kwargs):
        if name == "clu" or name.startswith("clu."):
            raise ImportError("No module named 'clu'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_clu)
    monkeypatch.setattr(metrics, "_warned_no_tensorboard", False)


def test_without_clu_the_writer_logs_and_warns_once(without_clu, tmp_path, caplog):
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    try:
        with caplog.at_level(std_logging.INFO):
            first = metrics.create_writer(str(tmp_path), examples_per_step=100)
            second = metrics.create_writer(str(tmp_path))
            first.write_scalars(4, {"train/loss": 2.5})  # default verbosity: no console line
        with caplog.at_level(std_logging.DEBUG):
            absl_logging.set_verbosity(absl_logging.DEBUG)  # --verbosity=1
            first.write_scalars(5, {"train/loss": 1.5})
            first.write_hparams({"lr": 0.1})
            first.close()
            second.close()
    finally:
        absl_logging.set_verbosity(verbosity)
    assert first.summary is None and second.summary is None
    text = caplog.text
    assert text.count("No TensorBoard events") == 1
    assert "[5] train/loss=1.5" in text and "[4]" not in text
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_events_with_clu(tmp_path):
    pytest.importorskip("clu.metric_writers")
    writer = metrics.create_writer(str(tmp_path), examples_per_step=32)
    writer.write_hparams(metrics.hparams_from_config(_default_config()))
    writer.write_scalars(3, {"train/loss": 1.0})
    writer.close()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_hparams_from_config_are_flat_scalars():
    config = ml_collections.ConfigDict(
        {"batch_size": 100, "optimizer": {"name": "m3", "lr": 0.1}, "epochs": [1, 2], "x": None}
    )
    assert metrics.hparams_from_config(config) == {
        "batch_size": 100,
        "epochs": "[1, 2]",
        "optimizer.lr": 0.1,
        "optimizer.name": "m3",
        "x": "None",
    }


def test_eta_counts_the_evaluations_left():
    now = [0.0]
    progress = metrics.Progress(100, 0, clock=lambda: now[0], eval_every_steps=10)
    progress.pause()
    now[0] += 4.0  # the evaluation before epoch 0
    progress.resume()
    now[0] += 10.0
    report = progress.report(20)  # 20 steps in 10 s of training
    assert report["steps_per_sec"] == pytest.approx(2.0)
    # 80 steps at 2/s, then evaluations at steps 20, 30, ..., 90 and the final one: 9 x 4 s.
    assert progress.evaluations_left(20) == 9
    assert report["eta_seconds"] == pytest.approx(40.0 + 36.0)


@pytest.mark.parametrize(
    "step, expected", [(0, 11), (5, 10), (10, 10), (95, 1), (100, 1)]
)  # fmt: skip
def test_evaluations_left(step, expected):
    assert metrics.Progress(100, eval_every_steps=10).evaluations_left(step) == expected


def test_eta_without_an_evaluation_schedule_is_training_time():
    now = [0.0]
    progress = metrics.Progress(100, 0, clock=lambda: now[0])
    progress.pause()
    now[0] += 50.0
    progress.resume()
    now[0] += 10.0
    assert progress.report(50)["eta_seconds"] == pytest.approx(10.0)
    assert np.isinf(metrics.Progress(10, 0, clock=lambda: 0.0).report(0)["eta_seconds"])


def test_a_run_without_clu_keeps_its_metrics(without_clu, tmp_path):
    """The trainer with CLU (and so TensorBoard events) unavailable: same metrics.jsonl."""
    from cgh_jax import study, train

    config = study.run_config(_default_config("runlocal"), "sgd")

    result = train.train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] == result["step"] > 0
    assert "test/top1" in lines[-1]
    assert not list(tmp_path.glob("events.out.tfevents*"))


def test_jsonl_records_are_strict_json_with_non_finite_values_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = metrics.JsonlWriter(str(path), enabled=True)
    writer.write({"step": 3, "test/loss": float("nan"), "test/top1": 0.5, "x": float("inf")})
    line = path.read_text().strip()
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert record == {
        "step": 3,
        "test/loss": None,
        "test/top1": 0.5,
        "x": None,
        "nonfinite": ["test/loss", "x"],
    }


def test_progress_overall_rate_spans_reports_and_leaves_out_evaluations():
    now = [0.0]
    progress = metrics.Progress(100, 0, clock=lambda: now[0])
    now[0] += 10.0
    assert progress.report(20)["steps_per_sec"] == pytest.approx(2.0)
    progress.pause()
    now[0] += 100.0  # an evaluation
    progress.resume()
    now[0] += 5.0
    assert progress.overall(40)["steps_per_sec"] == pytest.approx(40 / 15)
    assert progress.report(40)["steps_per_sec"] == pytest.approx(4.0)  # since the last report
    assert progress.overall(40)["steps_per_sec"] == pytest.approx(40 / 15)  # unchanged


def test_console_shows_the_first_and_last_evaluation_and_one_every_ten_seconds():
    import types

    now = [0.0]
    experiment = types.SimpleNamespace(total_steps=100, steps_per_epoch=10)
    console = metrics.Console(experiment, every_s=10.0, clock=lambda: now[0])
    printed = []
    console.info = printed.append  # the lines shown at the default verbosity
    shown = []
    for step in range(0, 101, 10):
        now[0] += 4.0
        record = {"step": step, "pristine/top1": 0.9, "corrupt_noisy/top1": 0.1, "test/top1": 0.8}
        line = console.evaluation(record, {"steps_per_sec": 5.0, "eta_seconds": 12.0})
        if printed and printed[-1] == line:
            shown.append(step)
    assert shown == [0, 30, 60, 90, 100]  # at most one every 10 s (4 s apart), and the last
    assert line == (
        "step 100/100 (epoch 10.00) 5.00 steps/s, ETA done: pristine 90.0%, memorized 10.0%, "
        "test 80.0%"
    )
