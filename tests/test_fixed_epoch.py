"""Fixed-epoch comparisons of memorization (:mod:`cgh_jax.analysis.fixed_epoch`) on rows
whose means and seed spreads are worked out by hand."""

import json

import pytest

from cgh_jax.analysis import fixed_epoch as F


def row(name, mem, test=(0.9, 0.9), key=None, runs=2):
    """A row with ``mem`` (corrupt, noisy label) per seed; the other sets at 0.5."""
    other = [0.5] * len(mem)
    return dict(
        name=name,
        key=key or name.lower(),
        runs=runs,
        diverged=0,
        wall_s=[10.0] * len(mem),
        corrupt_noisy=list(mem),
        corrupt_true=other,
        pristine=other,
        test=list(test),
        epochs=[60] * len(mem),
        steps=[1200] * len(mem),
    )


def test_compare_against_twice_the_seed_spread():
    # M3: mean 0.20, sample std 0.02 * sqrt(2) (0.18, 0.22); SGD the same at 0.60: floor 0.057
    rows = [row("SGD", [0.58, 0.62]), row("M3", [0.18, 0.22], test=(0.92, 0.94))]
    assert F.less(rows, "M3", "SGD") is True and F.less(rows, "SGD", "M3") is False
    assert F.same(rows, "M3", "SGD") is False
    assert F.compare(rows, "M3", "SGD") == (
        "M3 memorizes less than SGD: corrupt-noisy accuracy 20.0% vs 60.0% (-40.0 points; "
        "seed spread ±2.8); test 93.0% vs 90.0%."
    )
    # 0.59 vs 0.60 lies within the floor: the same, in both directions
    rows.append(row("RA3", [0.57, 0.61]))
    assert F.same(rows, "RA3", "SGD") is True
    assert F.compare(rows, "RA3", "SGD").startswith("RA3 memorizes about the same as SGD")
    # a row without finished runs compares to nothing
    rows.append(row("RM3", [], test=(), runs=0))
    assert F.compare(rows, "RM3", "SGD") is None and F.less(rows, "RM3", "SGD") is None


@pytest.mark.parametrize(
    "b300, control",
    [
        ([0.18, 0.22], "explained by its fewer updates, not by the median"),
        ([0.58, 0.62], "the median itself suppresses memorization here"),
    ],
)
def test_the_equal_updates_control_decides_what_m3s_lower_memorization_means(b300, control):
    rows = [row("SGD", [0.58, 0.62]), row("M3", [0.18, 0.22]), row(F.B300, b300, key="b300")]
    text = "\n".join(F.interpretation(rows))
    assert control in text
    assert "SGD ends with 60.0% of the corrupt labels memorized: the runs stop well before" in text


def test_setting_row_reads_the_finals_of_its_runs(tmp_path):
    dirs = []
    for seed, mem in enumerate((0.25, 0.35)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        record = {"step": 100, "epoch": 5, "corrupt_noisy/top1": mem, "test/top1": 0.8}
        (d / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        dirs.append(d)
    got = F.setting_row("M3", "m3", dirs, planned=3, wall_s=[1.0, 2.0])
    assert got["corrupt_noisy"] == [0.25, 0.35] and got["test"] == [0.8, 0.8]
    assert got["runs"] == 2 and got["diverged"] == 1 and got["epochs"] == [5, 5]
    cells = F.table_row(got)
    assert cells[0] == "M3" and cells[1] == "30.0 ± 7.1" and cells[-1] == "2 (1 diverged)"
