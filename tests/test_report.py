"""Tests for cgh_jax.analysis.report and .plots: metrics loading, tables, figures, report."""

import json
import math
import os
import re

import numpy as np
import pytest

from cgh_jax import formatting
from cgh_jax.analysis import plots, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, records, *, extra_lines=()):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(run_dir)


def _records(final, *, epochs=3, steps_per_epoch=10, sets=report.DEFAULT_SETS, wall=True):
    """Evaluations at epochs 0..epochs, linear from 0.1 to `final[set]`."""
    out = []
    for e in range(epochs + 1):
        rec = {"step": e * steps_per_epoch, "epoch": e}
        for s in sets:
            rec[f"{s}/top1"] = 0.1 + (final.get(s, 0.5) - 0.1) * e / epochs
            rec[f"{s}/top5"] = min(1.0, rec[f"{s}/top1"] + 0.05)
            rec[f"{s}/loss"] = 2.0 - e * 0.1
        if wall:
            rec["wall_time_s"] = 60.0 * e
        out.append(rec)
    return out


def _table_rows(md):
    """Parses the markdown table in `md` into {row name: [cells]} plus the header."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return header, rows


def _check_png(path):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # Not a blank canvas: something was drawn.
    assert float(np.std(image[..., :3])) > 0.01
    return image


FINAL_SGD = {"pristine": 0.987, "corrupt_noisy": 0.912, "corrupt_true": 0.052, "test": 0.634}
FINAL_M3 = {"pristine": 0.951, "corrupt_noisy": 0.103, "corrupt_true": 0.724, "test": 0.815}


def test_load_metrics_sorts_dedupes_and_skips_blank_lines(tmp_path):
    recs = _records(FINAL_SGD)
    # Out of order, a blank line, and a resumed run that re-evaluated step 10.
    resumed = dict(recs[1], **{"test/top1": 0.5})
    run = _write_run(tmp_path / "run", [recs[2], recs[0], recs[1], recs[3]])
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write("\n" + json.dumps(resumed) + "\n")
    loaded = report.load_metrics(run)
    assert [r["step"] for r in loaded] == [0, 10, 20, 30]
    assert loaded[1]["test/top1"] == 0.5
    # The file path works as well as the directory.
    assert report.load_metrics(os.path.join(run, "metrics.jsonl")) == loaded


def test_load_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        report.load_metrics(tmp_path / "nowhere")
    bad = _write_run(tmp_path / "bad", [], extra_lines=['{"step": 0}', "{not json"])
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        report.load_metrics(bad)
    nostep = _write_run(tmp_path / "nostep", [{"epoch": 0, "test/top1": 0.1}])
    with pytest.raises(ValueError, match="integer 'step'"):
        report.load_metrics(nostep)
    empty = _write_run(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no evaluation records"):
        report.load_metrics(empty)


def test_final_metrics_takes_last_record_and_latest_wall_time():
    recs = [
        {"step": 0, "epoch": 0, "test/top1": 0.1, "wall_time_s": 5.0},
        {"step": 10, "epoch": 1, "test/top1": 0.7},
    ]
    final = report.final_metrics(recs)
    assert final["test/top1"] == 0.7 and final["epoch"] == 1 and final["wall_time_s"] == 5.0


def test_write_report_table_numbers_and_png(tmp_path):
    sgd = _write_run(tmp_path / "sgd", _records(FINAL_SGD, epochs=3))
    m3 = _write_run(tmp_path / "m3", _records(FINAL_M3, epochs=3, wall=False))
    path = report.write_report(tmp_path / "study", {"SGD": sgd, "M3": m3}, title="Noise 50%")
    assert path == os.path.join(str(tmp_path / "study"), "report.md")
    md = open(path).read()
    assert md.startswith("# Noise 50%\n")
    header, rows = _table_rows(md)
    assert header == [
        "run",
        "pristine top-1 (%)",
        "corrupt/noisy top-1 (%)",
        "corrupt/true top-1 (%)",
        "test top-1 (%)",
        "epochs",
        "wall time",
    ]
    assert list(rows) == ["SGD", "M3"]
    cols = header[1:5]
    assert [rows["SGD"][c] for c in cols] == ["98.7", "91.2", "5.2", "63.4"]
    assert [rows["M3"][c] for c in cols] == ["95.1", "10.3", "72.4", "81.5"]
    assert rows["SGD"]["epochs"] == "3" and rows["M3"]["epochs"] == "3"
    assert rows["SGD"]["wall time"] == "3m 00s"
    assert rows["M3"]["wall time"] == "—"
    assert "![" in md and report.FIGURE_FILENAME in md
    _check_png(tmp_path / "study" / report.FIGURE_FILENAME)


def test_report_without_corrupt_sets_at_zero_noise(tmp_path):
    clean = _write_run(
        tmp_path / "clean",
        _records(FINAL_SGD, sets=("pristine", "train_sample", "test"), epochs=2),
    )
    path = report.write_report(tmp_path / "study", {"SGD": clean}, title="Clean")
    header, rows = _table_rows(open(path).read())
    assert rows["SGD"]["corrupt/noisy top-1 (%)"] == "—"
    assert rows["SGD"]["corrupt/true top-1 (%)"] == "—"
    assert rows["SGD"]["test top-1 (%)"] == "63.4"
    assert rows["SGD"]["epochs"] == "2"
    _check_png(tmp_path / "study" / report.FIGURE_FILENAME)


def test_results_table_aggregates_seeds(tmp_path):
    finals = [0.80, 0.84, 0.90]
    runs = []
    for i, f in enumerate(finals):
        final = dict(FINAL_M3, test=f)
        recs = _records(final, epochs=2)
        recs[-1]["wall_time_s"] = 100.0 * (i + 1)
        runs.append(_write_run(tmp_path / f"m3_seed{i}", recs))
    sgd = _write_run(tmp_path / "sgd", _records(FINAL_SGD, epochs=2))
    md = report.results_table({"SGD": sgd, "M3": runs})
    header, rows = _table_rows(md)
    assert header[-1] == "runs"
    assert rows["SGD"]["runs"] == "1" and rows["M3"]["runs"] == "3"
    mean, std = 100 * np.mean(finals), 100 * np.std(finals, ddof=1)
    assert rows["M3"]["test top-1 (%)"] == f"{mean:.1f} ± {std:.1f}"
    # Identical values across seeds: std 0.
    assert rows["M3"]["pristine top-1 (%)"] == "95.1 ± 0.0"
    assert rows["SGD"]["test top-1 (%)"] == "63.4"
    assert rows["M3"]["wall time"] == "3m 20s ± 1m 40s"


def test_results_table_other_metric(tmp_path):
    sgd = _write_run(tmp_path / "sgd", _records(FINAL_SGD, epochs=2))
    _, rows = _table_rows(report.results_table({"SGD": sgd}, metric="loss", sets=("test",)))
    assert rows["SGD"]["test loss"] == "1.800"


def test_accuracy_out_of_range_is_an_error(tmp_path):
    run = _write_run(tmp_path / "pct", [{"step": 0, "epoch": 0, "test/top1": 63.4}])
    with pytest.raises(ValueError, match=r"not a fraction in \[0, 1\]"):
        report.results_table({"SGD": run})


def test_seed_curves_mean_std_on_common_epochs():
    a = [{"step": 0, "epoch": 0, "test/top1": 0.1}, {"step": 5, "epoch": 1, "test/top1": 0.5}]
    b = a[:1] + [{"step": 5, "epoch": 1, "test/top1": 0.7}, {"step": 9, "epoch": 2}]
    x, mean, std, x_key = report.seed_curves([a, b], "test/top1")
    assert x_key == "epoch"
    np.testing.assert_allclose(x, [0.0, 1.0])
    np.testing.assert_allclose(mean, [0.1, 0.6])
    np.testing.assert_allclose(std, [0.0, np.std([0.5, 0.7], ddof=1)])
    x, mean, std, _ = report.seed_curves([a], "corrupt_noisy/top1")
    assert x.size == mean.size == std.size == 0


def test_plot_accuracy_curves_panels_and_lines(tmp_path):
    sgd = _records(FINAL_SGD, epochs=3)
    m3 = [_records(FINAL_M3, epochs=3), _records(dict(FINAL_M3, test=0.9), epochs=3)]
    fig = plots.plot_accuracy_curves(
        {"SGD": sgd, "M3": m3}, path=tmp_path / "curves.png", title="t"
    )
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["SGD", "M3", "corrupt/noisy: all runs"]
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    assert len(axes[0].get_lines()) == 4
    test_line = axes[0].get_lines()[3]
    np.testing.assert_allclose(test_line.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(test_line.get_ydata()[-1], 63.4)
    # Mean of the two M3 seeds on the test set; a std band per set.
    np.testing.assert_allclose(axes[1].get_lines()[3].get_ydata()[-1], 100 * (0.815 + 0.9) / 2)
    assert len(axes[1].collections) == 4
    # The overlay: memorization of every run on one axis.
    overlay = axes[2].get_lines()
    np.testing.assert_allclose([line.get_ydata()[-1] for line in overlay], [91.2, 10.3])
    # One legend, outside the panels: sets and overlaid runs, no legend inside an axes.
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:4] == [report.SET_LABELS[s] for s in report.DEFAULT_SETS]
    assert labels[4:] == ["SGD (overlay)", "M3 (overlay)"]
    _check_png(tmp_path / "curves.png")


def test_plot_at_most_three_panels_a_row(tmp_path):
    names = ["sgd", "m3", "rm3", "ra3", "sgd_3x"]
    runs = {n: _records(dict(FINAL_SGD, corrupt_noisy=0.1 * (i + 1))) for i, n in enumerate(names)}
    fig = plots.plot_accuracy_curves(runs, path=tmp_path / "five.png")
    axes = fig.get_axes()
    assert len(axes) == 6  # five runs and the overlay
    rows = {}
    for ax in axes:
        rows.setdefault(ax.get_subplotspec().rowspan.start, []).append(ax)
    assert [len(r) for r in rows.values()] == [3, 3]
    assert len(axes[5].get_lines()) == 5
    image = _check_png(tmp_path / "five.png")
    assert image.shape[1] < 2.2 * image.shape[0]  # two rows, not one long row
    # Four runs: a row of three and one of two (run + overlay), nothing empty left.
    fig = plots.plot_accuracy_curves({n: runs[n] for n in names[:4]})
    assert len(fig.get_axes()) == 5


def test_no_overlay_without_corrupt_sets_or_a_second_run():
    clean = _records(FINAL_SGD, sets=("pristine", "test"))
    fig = plots.plot_accuracy_curves({"a": clean, "b": clean}, sets=("pristine", "test"))
    assert [ax.get_title() for ax in fig.get_axes()] == ["a", "b"]
    fig = plots.plot_accuracy_curves({"a": _records(FINAL_SGD)})
    assert [ax.get_title() for ax in fig.get_axes()] == ["a"]
    fig = plots.plot_accuracy_curves({"a": clean, "b": clean}, overlay=None)
    assert len(fig.get_axes()) == 2


@pytest.mark.parametrize(
    "model, text",
    [
        ({"name": "mlp", "hidden": [32], "dtype": "float32"}, "MLP 32"),
        ({"name": "mlp", "hidden": [2048, 2048]}, "MLP 2048-2048"),
        ({"name": "resnet18", "dtype": "bfloat16"}, "ResNet-18, bfloat16"),
        ({"name": "vgg13_bn"}, "VGG-13-BN"),
        ({"name": "inception_v3"}, "Inception-V3"),
        ({"name": "resnet_tiny", "width": 8}, "resnet_tiny (width 8)"),
    ],
)
def test_describe_model(model, text):
    assert report.describe_model(model) == text


def test_report_title_names_the_trained_model(tmp_path):
    runs = {}
    for name in ("sgd", "m3"):
        run = _write_run(tmp_path / name, _records(FINAL_SGD))
        with open(os.path.join(run, "config.json"), "w") as f:
            json.dump({"model": {"name": "mlp", "hidden": [32], "dtype": "float32"}}, f)
        runs[name] = run
    md = open(report.write_report(tmp_path / "s", runs, title="MNIST, {model}")).read()
    assert md.startswith("# MNIST, MLP 32\n\nModel: MLP 32.\n")
    bare = {"sgd": _write_run(tmp_path / "bare", _records(FINAL_SGD))}
    md = open(report.write_report(tmp_path / "s2", bare, title="T {model}")).read()
    assert md.startswith("# T model not recorded\n") and "Model:" not in md


def test_plot_accuracy_curves_into_given_axes(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    out = plots.plot_accuracy_curves({"SGD": _records(FINAL_SGD)}, ax=ax, sets=("test",))
    assert out is fig and len(ax.get_lines()) == 1
    with pytest.raises(ValueError, match="one Axes per run"):
        plots.plot_accuracy_curves({"a": _records(FINAL_SGD), "b": _records(FINAL_SGD)}, ax=ax)


def test_study_figures(tmp_path):
    """The figures of the studies: memorization rates, m-coherence."""
    runs = {"noise 0.2": _records(FINAL_SGD), "noise 0.5": _records(FINAL_M3)}
    fig = plots.plot_memorization_rates(runs, tmp_path / "rates.png")
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    points = [{"step": s, "alpha": 1.0 + s, "accuracy": 0.1 * s} for s in (0, 3, 10)]
    fig = plots.plot_coherence_curves({"real": points, "random": points}, tmp_path / "c.png", m=8)
    assert [ln.get_color() for ln in fig.axes[0].get_lines()[:2]] == ["tab:blue", "tab:red"]
    for name in ("rates.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="No runs"):
        report.write_report(tmp_path, {}, title="x")
    with pytest.raises(ValueError, match="empty list"):
        report.results_table({"SGD": []})
    with pytest.raises(FileNotFoundError):
        report.write_report(tmp_path / "s", {"SGD": str(tmp_path / "missing")}, title="x")
    assert not os.path.exists(tmp_path / "s" / "report.md")


def test_report_markdown_lists_runs(tmp_path):
    sgd = _write_run(tmp_path / "sgd", _records(FINAL_SGD))
    md = open(report.write_report(tmp_path / "study", {"SGD": sgd}, title="T")).read()
    assert re.search(r"- SGD: `.*sgd`", md)


# --------------------------------------------------------------------------- results pages


def test_formatting_helpers():
    assert formatting.format_seconds(42) == "42s"
    assert formatting.format_seconds(185) == "3m 05s"
    assert formatting.format_seconds(3720) == "1h 02m"
    assert formatting.format_seconds(math.nan) == "—"
    table = formatting.markdown_table(["a", "b"], [["x|y", 1]])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| x\\|y | 1 |"]


def test_pct_ci_text_and_match():
    assert report.pct(0.5) == "50.0"
    assert report.pct([0.5, 0.7]) == "60.0 ± 14.1"  # sample std of 50, 70
    assert report.pct([0.5, math.nan]) == "50.0"  # NaN: a run that has no value
    assert report.pct([math.nan]) == "—"
    assert report.pct([0.12345], digits=2) == "12.35"
    assert report.ci_text(dict(d=0.012, lo=-0.003, hi=0.027, n=3)) == "+1.2 (-0.3 to +2.7)"
    assert report.ci_text(dict(d=-0.05, lo=math.nan, hi=math.nan, n=1)) == "-5.0 (n = 1)"
    assert report.ci_text(dict(d=math.nan, lo=math.nan, hi=math.nan, n=0)) == "—"
    assert report.match([True, True]) == "yes"
    assert report.match(c for c in (True, False)) == "partly"
    assert report.match([False]) == report.match([]) == "no"


def test_trained_line():
    entries = [dict(wall_s=65.0, machine="b"), dict(wall_s=125.0, machine="a")]
    entries.append(dict(wall_s=10.0, machine="b"))
    assert report.trained_line(iter(entries)) == (
        "- Trained: 3 runs, 3m 20s of wall time in all (the longest 2m 05s), on a; b."
    )


def test_page_header():
    page = report.Page("T", [0, 1], "real data", [], {}, extra={"Model": "MLP"}, runs_wall_s=90)
    facts = dict(command="python -m x", machine="2 CPU cores", generated="now")
    text = report.page_header(page, wall_s=5, **facts)
    lines = text.splitlines()
    assert lines[:2] == ["# T", ""] and "Smoke run" not in text
    assert lines[lines.index("```") + 1] == "python -m x"
    assert "- Machine: 2 CPU cores (shared with other work; wall times are upper bounds)." in lines
    assert lines[-5:] == [
        "- Wall time of this call: 5s; of the training runs, as recorded when each was trained: "
        "1m 30s in all (a rerun of the command reuses finished runs).",
        "- Seeds: 0, 1.",
        "- Data: real data",
        "- Generated: now.",
        "- Model: MLP",
    ]
    page.runs_wall_s = None
    smoke = report.page_header(page, wall_s=5, **facts, smoke_data="a few digits")
    assert "> **Smoke run (`--quick`)**: a few steps on a few digits to check" in smoke
    assert "- Data: a few digits (smoke run)\n" in smoke
    assert "- Wall time of this call: 5s.\n" in smoke
