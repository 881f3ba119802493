"""Memorization at matched fit (cgh_jax.analysis.matched) on hand-made paths."""

import math

import pytest

from cgh_jax.analysis.matched import first_reached, frontier, value_at_level


def test_interpolates_between_the_evaluations_around_the_level():
    x, y = [0.1, 0.5, 0.9, 1.0], [0.0, 0.1, 0.5, 0.9]
    assert value_at_level(x, y, 0.7) == pytest.approx(0.3)  # halfway from 0.5 to 0.9
    assert value_at_level(x, y, 0.9) == pytest.approx(0.5)  # exactly at an evaluation
    assert value_at_level(x, y, 0.95) == pytest.approx(0.7)
    assert value_at_level(x, y, 0.05) == 0.0  # the path starts beyond the level
    assert first_reached(x, 0.7) == 2


def test_a_path_that_never_reaches_the_level_has_no_value():
    assert math.isnan(value_at_level([0.1, 0.5, 0.8], [0.0, 0.2, 0.4], 0.81))
    assert math.isnan(value_at_level([], [], 0.5))
    assert first_reached([0.1, 0.5], 0.9) is None


def test_a_non_monotone_path_is_read_at_its_first_crossing():
    # Up to 0.9, back to 0.6, up again to 0.95: the level 0.8 is first reached between
    # the 2nd and 3rd evaluations, not on the second climb.
    x, y = [0.2, 0.6, 0.9, 0.6, 0.95], [0.0, 0.2, 0.5, 0.6, 0.9]
    assert value_at_level(x, y, 0.8) == pytest.approx(0.4)
    # A plateau exactly at the level counts as reached.
    assert value_at_level([0.2, 0.8, 0.8], [0.0, 0.3, 0.9], 0.8) == pytest.approx(0.3)


def test_falling_measure_such_as_a_loss():
    loss, mem = [2.3, 1.0, 0.5, 0.7, 0.2], [0.0, 0.1, 0.3, 0.35, 0.8]
    assert value_at_level(loss, mem, 0.75, falling=True) == pytest.approx(0.2)
    assert value_at_level(loss, mem, 3.0, falling=True) == 0.0
    assert math.isnan(value_at_level(loss, mem, 0.1, falling=True))
    assert first_reached(loss, 0.5, falling=True) == 2


def test_frontier_is_the_least_value_of_the_runs_that_reach_the_level():
    assert frontier([0.4, math.nan, 0.2, 0.3]) == 0.2
    assert math.isnan(frontier([math.nan, math.nan]))
    assert math.isnan(frontier([]))


def test_mismatched_paths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        value_at_level([0.1, 0.2], [0.0], 0.15)


def test_smooth_is_a_centered_moving_average_with_shrunk_ends():
    import numpy as np

    from cgh_jax.analysis.matched import smooth

    got = smooth([1.0, 2.0, 6.0, 3.0, 0.0])
    np.testing.assert_allclose(got, [1.5, 3.0, 11 / 3, 3.0, 1.5])
    np.testing.assert_array_equal(smooth([4.0, 5.0], width=1), [4.0, 5.0])
    with pytest.raises(ValueError, match="odd"):
        smooth([1.0], width=2)


def _run(pristine, mem, loss=None):
    loss = loss if loss is not None else [1 - p for p in pristine]
    curve = {"pristine/top1": pristine, "corrupt_noisy/top1": mem, "pristine/loss": loss}
    return {"curve": curve}


def test_a_comparison_is_matched_at_the_best_fit_arm_and_base_reach_on_every_seed():
    from cgh_jax.analysis import matched

    arm = [_run([0.5, 0.9, 0.96], [0, 0.1, 0.3]), _run([0.5, 0.9, 0.97], [0, 0.1, 0.2])]
    fast = [_run([0.6, 0.99, 1.0], [0, 0.4, 0.9]), _run([0.6, 0.98, 1.0], [0, 0.4, 0.8])]
    slow = [_run([0.5, 0.8, 0.9], [0, 0.0, 0.05]), _run([0.5, 0.8, 0.95], [0, 0.0, 0.1])]
    settings = {"arm": arm, "fast": fast, "slow": slow}
    c = matched.Comparison("arm", ("fast", "slow"))
    reaches = c.reaches(settings, by="pristine/top1", width=1)
    assert reaches == [0.96, 1.0, 0.97, 1.0]  # per seed: the arm's, the family's best run's
    level = matched.common_level(reaches, by="pristine/top1", step=0.005, digits=3)
    assert level == pytest.approx(0.96)

    def mem(run):
        return matched.at_fit(run, "corrupt_noisy/top1", level, by="pristine/top1", width=1)

    result = matched.compare(settings, c, mem, 0.95)
    # The arm reaches 0.96 at an evaluation (seed 0) and 6/7 of the way from 0.9 to 0.97
    # (seed 1); the frontier is the fast run's value (the slow run never reaches 0.96).
    assert result["arm"] == pytest.approx([0.3, 0.1 + 0.1 * 6 / 7])
    assert result["base"] == pytest.approx([0.4 * 0.36 / 0.39, 0.4 * 0.36 / 0.38])
    assert result["n"] == 2
    loss_level = matched.common_level([0.2, 0.05], by="pristine/loss", step=0.005, digits=3)
    assert loss_level == 0.2  # the largest of the lowest losses
    assert matched.common_level([0.1234], by="pristine/loss", step=0.005, digits=2) == 0.13
    assert math.isnan(matched.common_level([], by="pristine/top1", step=0.005, digits=3))


def test_compare_at_fit_reads_both_measures_at_the_comparisons_own_level():
    from cgh_jax.analysis import matched

    arm = [_run([0.5, 0.9, 0.96], [0, 0.1, 0.3]), _run([0.5, 0.9, 0.97], [0, 0.1, 0.2])]
    fast = [_run([0.6, 0.99, 1.0], [0, 0.4, 0.9]), _run([0.6, 0.98, 1.0], [0, 0.4, 0.8])]
    slow = [_run([0.5, 0.8, 0.9], [0, 0.0, 0.05]), _run([0.5, 0.8, 0.95], [0, 0.0, 0.1])]
    settings = {"arm": arm, "fast": fast, "slow": slow}
    c = matched.Comparison("arm", ("fast", "slow"))
    fit = dict(by="pristine/top1", width=1, step=0.005, digits=3, confidence=0.95)
    got = matched.compare_at_fit(settings, c, y="corrupt_noisy/top1", also="pristine/top1", **fit)
    assert got["level"] == pytest.approx(0.96)
    assert got["arm"] == pytest.approx([0.3, 0.1 + 0.1 * 6 / 7])  # the frontier: see above
    assert got["base"] == pytest.approx([0.4 * 0.36 / 0.39, 0.4 * 0.36 / 0.38])
    # Read at the level itself, the matched measure is the level for every run that reaches
    # it; a family's second measure is its best (the slow runs never reach 0.96: NaN).
    assert got["arm_also"] == pytest.approx([0.96, 0.96])
    assert got["base_also"] == pytest.approx([0.96, 0.96])
    assert got["also_d"] == pytest.approx(0.0)
    assert got["n"] == 2 and got["lo"] < got["d"] < got["hi"]


def test_a_family_with_a_run_not_trained_yet_has_no_frontier_on_that_seed():
    from cgh_jax.analysis import matched

    arm = [_run([0.5, 0.97], [0, 0.3]), _run([0.5, 0.97], [0, 0.2])]
    fast = [_run([0.6, 1.0], [0, 0.5]), _run([0.6, 1.0], [0, 0.6])]
    slow = [_run([0.5, 1.0], [0, 0.1]), None]  # seed 1's slow run still training
    settings = {"arm": arm, "fast": fast, "slow": slow}
    c = matched.Comparison("arm", ("fast", "slow"))
    assert c.reaches(settings, by="pristine/top1", width=1) == [0.97, 1.0]  # seed 0 only
    got = matched.compare(settings, c, lambda r: matched.final(r, "corrupt_noisy/top1"), 0.95)
    assert got["base"][0] == pytest.approx(0.1) and math.isnan(got["base"][1])
    assert got["n"] == 1  # not seed 1's partial family (its fast run alone: 0.6)
    # A family member absent from the settings altogether is no missing run.
    partial = {"arm": arm, "fast": fast}
    assert matched.base_values(partial, ("fast", "slow"), lambda r: 1.0) == [1.0, 1.0]


# ----------------------------------------------------------------------------- the tables


def _entry(pristine, mem, test):
    return {"curve": {"pristine/top1": pristine, "mem": mem, "test": test}}


def test_tables_read_each_arm_at_the_matched_level_by_hand():
    from cgh_jax.analysis import matched_tables as T
    from cgh_jax.analysis.matched import Comparison

    # Arm "a" reaches 90% pristine halfway between its 2nd and 3rd evaluations; base "b" at
    # its 2nd. Both reach 0.9 at best (a) and 1.0 (b): the comparison's level is 90%.
    a = [_entry([0.5, 0.8, 1.0], [0.0, 0.1, 0.3], [0.6, 0.7, 0.8])] * 2
    b = [_entry([0.5, 0.9, 1.0], [0.0, 0.4, 0.8], [0.6, 0.9, 0.9])] * 2
    a[1] = _entry([0.5, 0.8, 0.9], [0.0, 0.1, 0.2], [0.6, 0.7, 0.8])  # seed 1 tops out at 90%
    settings = {"a": a, "b": b}
    names = {"a": "arm A", "b": "base B"}
    fit = T.Fit(y="mem", also="test", width=1, step=0.005, digits=3)
    text, got = T.matched_table(
        settings,
        [Comparison("a", "b", primary=True)],
        names,
        fit,
        by="pristine/top1",
        percent=True,
        confidence=0.95,
        primary_confidence=0.99,
    )
    r = got["a-b"]
    assert r["level"] == pytest.approx(0.9) and r["n"] == 2 and r["primary"]
    assert r["confidence"] == 0.99
    # seed 0: arm 0.1 + 0.5 * 0.2 = 0.2, base 0.4; seed 1: arm 0.2, base 0.4
    assert r["d"] == pytest.approx(-0.2)
    # arm test: 0.75 (seed 0, halfway), 0.8 (seed 1, its 3rd evaluation); base 0.9
    assert r["test_d"] == pytest.approx((0.75 + 0.8) / 2 - 0.9)
    assert "| **primary**: arm A − base B | 90.0% | 2 | 20.0 ± 0.0 | 40.0 ± 0.0 |" in text
    assert r["arm_per_seed"] == pytest.approx([0.2, 0.2])
    assert r["base_per_seed"] == pytest.approx([0.4, 0.4])
    (line,) = T.per_seed_lines(got, [Comparison("a", "b", primary=True)], names, (3, 7))
    assert line == "- arm A − base B at 90.0%, per seed (points): seed 3 -20.0, seed 7 -20.0."
    got["a-b"]["arm_per_seed"][1] = math.nan  # a seed that never reaches the level is left out
    (line,) = T.per_seed_lines(got, [Comparison("a", "b", primary=True)], names, (3, 7))
    assert line.endswith("(points): seed 3 -20.0.")
    got["a-b"]["primary"] = False
    assert T.per_seed_lines(got, [Comparison("a", "b", primary=True)], names, (3, 7)) == []
    # The grid: seed 1 of the arm never reaches 95%, so that cell counts its seeds.
    grid = T.grid_table(settings, names, fit, "pristine/top1", (0.9, 0.95))
    assert "| arm A | 20.0 | 25.0 (1/2) |" in grid
    assert "| base B | 40.0 | 60.0 |" in grid
    assert T.base_name(Comparison("a", ("b", "a")), names) == "base B frontier (2 learning rates)"
