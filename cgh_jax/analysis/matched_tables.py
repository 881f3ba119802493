"""Markdown tables of arms compared at matched fit (:mod:`cgh_jax.analysis.matched`).

An arm is a key of ``settings`` (key -> one finished run per seed, ``None`` where missing);
``names`` gives each key, and :class:`Fit` the study's reading: the measure ``y`` (e.g.
memorization) compared where each run's path of a fit measure, smoothed over ``width``
evaluations, reaches the comparison's level, and ``also`` (e.g. test accuracy) read at the
same place. Values are fractions, shown in percent (:func:`report.pct`); differences in
points. The columns call ``y`` memorization and ``also`` test accuracy, as the label-noise
studies read them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from cgh_jax.analysis import matched, report, stats
from cgh_jax.analysis.matched import Comparison

MATCHED_COLUMNS = (
    "comparison (arm − base)",
    "matched at",
    "seeds",
    "arm: memorization",
    "base: memorization",
    "difference, points (corrected CI)",
    "arm: test",
    "base: test (best of a family)",
    "test difference",
)


@dataclasses.dataclass(frozen=True)
class Fit:
    """How runs are matched: ``y`` (and ``also``) read where the smoothed path (moving
    average over ``width`` evaluations) of the fit measure reaches a level; accuracy levels
    on a grid of ``step``, loss levels to ``digits`` significant digits."""

    y: str
    also: str
    width: int
    step: float
    digits: int


def base_name(c: Comparison, names: Mapping[str, str]) -> str:
    """The base of ``c``: its name, or a family's ``<first member's name> frontier``."""
    if isinstance(c.base, tuple):
        return f"{names[c.base[0]].split(',')[0]} frontier ({len(c.base)} learning rates)"
    return names[c.base]


def end_table(
    settings: Mapping[str, Sequence],
    names: Mapping[str, str],
    columns: Sequence[str],
    measures: Sequence[Callable],
) -> str:
    """Per arm: its name, finished seeds of all, and each of ``measures`` (run -> fraction)
    as mean ± std over seeds under ``columns`` (after the first two)."""
    rows = [
        [names[key], f"{sum(e is not None for e in runs)}/{len(runs)}"]
        + [report.pct([measure(e) for e in runs]) for measure in measures]
        for key, runs in settings.items()
    ]
    return report.markdown_table(columns, rows, "lr" + "r" * len(measures))


def grid_table(
    settings: Mapping[str, Sequence],
    names: Mapping[str, str],
    fit: Fit,
    by: str,
    levels: Sequence[float],
) -> str:
    """``fit.y`` of every arm at each fixed level of ``by`` (mean over the seeds that reach
    it; their number when not all do)."""
    rows = []
    for key, runs in settings.items():
        row = [names[key]]
        for level in levels:
            got = (matched.at_fit(e, fit.y, level, by=by, width=fit.width) for e in runs)
            values = [v for v in got if not math.isnan(v)]
            done = sum(e is not None for e in runs)
            text = f"{100 * stats.mean(values):.1f}" if values else "—"
            row.append(text + (f" ({len(values)}/{done})" if values and len(values) < done else ""))
        rows.append(row)
    header = ["run", *(f"memorization at {level:.0%} pristine" for level in levels)]
    return report.markdown_table(header, rows, "l" + "r" * len(levels))


def matched_table(
    settings: Mapping[str, Sequence],
    comps: Sequence[Comparison],
    names: Mapping[str, str],
    fit: Fit,
    *,
    by: str,
    percent: bool,
    confidence: float,
    primary_confidence: float | None,
) -> tuple[str, dict[str, dict]]:
    """Each comparison at its own level of ``by`` (:func:`matched.compare_at_fit`); a
    primary one at ``primary_confidence`` (``None``: none is primary here), the others at
    ``confidence``. ``percent``: levels are accuracies. Returns the table and, per
    comparison key, ``d``, ``lo``, ``hi``, ``n``, ``confidence``, ``level``, ``primary``,
    ``test_d`` (the difference of ``fit.also``) and ``arm_per_seed`` / ``base_per_seed``
    (``fit.y`` at the level per seed; NaN where a seed is missing or does not reach it)."""
    rows, results = [], {}
    for c in comps:
        primary = c.primary and primary_confidence is not None
        conf = primary_confidence if primary else confidence
        reading = dict(by=by, width=fit.width, step=fit.step, digits=fit.digits)
        r = matched.compare_at_fit(settings, c, y=fit.y, also=fit.also, confidence=conf, **reading)
        results[c.key] = {**{k: r[k] for k in ("d", "lo", "hi", "n")}, "confidence": conf}
        results[c.key] |= {"level": r["level"], "primary": primary, "test_d": r["also_d"]}
        results[c.key] |= {"arm_per_seed": r["arm"], "base_per_seed": r["base"]}
        rows.append(
            [
                ("**primary**: " if primary else "") + f"{names[c.arm]} − {base_name(c, names)}",
                f"{100 * r['level']:.1f}%" if percent else f"{r['level']:g}",
                str(r["n"]),
                report.pct(r["arm"]),
                report.pct(r["base"]),
                report.ci_text(r),
                report.pct(r["arm_also"]),
                report.pct(r["base_also"]),
                "—" if math.isnan(r["also_d"]) else f"{100 * r['also_d']:+.1f}",
            ]
        )
    return report.markdown_table(MATCHED_COLUMNS, rows, "lrrrrrrrr"), results


def per_seed_lines(
    results: Mapping[str, dict],
    comps: Sequence[Comparison],
    names: Mapping[str, str],
    seeds: Sequence[int],
) -> list[str]:
    """For each primary comparison of :func:`matched_table`'s ``results``: arm − base per
    seed, in points (the seeds where both have a value)."""
    lines = []
    for c in comps:
        r = results[c.key]
        if not r["primary"]:
            continue
        pairs = zip(seeds, r["arm_per_seed"], r["base_per_seed"], strict=True)
        diffs = [f"seed {s} {100 * (a - b):+.1f}" for s, a, b in pairs if not math.isnan(a - b)]
        lines.append(
            f"- {names[c.arm]} − {base_name(c, names)} at {100 * r['level']:.1f}%, per seed "
            f"(points): {', '.join(diffs) or 'none'}."
        )
    return lines


def best_lines(
    settings: Mapping[str, Sequence],
    comps: Sequence[Comparison],
    names: Mapping[str, str],
    key: str,
) -> list[str]:
    """For each comparison against a family: the arm's best ``key`` during training against
    the family's best (per seed), with an uncorrected 95% interval of the difference."""
    lines = []
    for c in comps:
        if not isinstance(c.base, tuple):
            continue
        best = lambda e: matched.best(e, key)  # noqa: E731
        arm = matched.per_seed(settings[c.arm], best)
        base = matched.base_values(settings, c.base, best, matched.largest)
        d, lo, hi = stats.paired_difference(arm, base)
        if not math.isnan(lo):
            lines.append(
                f"- Best test accuracy during training, {names[c.arm]}: {report.pct(arm)}% "
                f"against the best of the {base_name(c, names)}: {report.pct(base)}% "
                f"({100 * d:+.1f} points, 95% CI {100 * lo:+.1f} to {100 * hi:+.1f}, "
                "uncorrected)."
            )
    return lines


def readings(
    settings: Mapping[str, Sequence],
    c: Comparison,
    pairs: Sequence[tuple[str, str]],
    levels: Mapping[str, float],
    width: int,
) -> dict[str, dict]:
    """``c`` under each pairing ``(by, y)`` of a fit measure and a measured one, read where
    each run's smoothed ``by`` path reaches ``levels[by]``: ``"<by> | <y>"`` -> ``d``, ``lo``,
    ``hi``, ``n`` of arm − base (uncorrected 95% t-interval). A ``.../loss`` ``y`` is
    negated, so that for memorization positive means "the arm memorized more" either way
    (a lower loss on a label is more fitted) and a family's base is, per seed, its least
    memorized run (:func:`matched.frontier`; for a loss, the highest)."""
    out = {}
    for by, y in pairs:
        sign = -1.0 if y.endswith("/loss") else 1.0
        at = lambda e, by=by, y=y, sign=sign: (
            sign
            * matched.at_fit(  # noqa: E731
                e, y, levels[by], by=by, width=width
            )
        )
        got = matched.compare(settings, c, at, 0.95)
        out[f"{by} | {y}"] = {k: got[k] for k in ("d", "lo", "hi", "n")}
    return out


def readings_table(
    rows: Mapping[str, Mapping[str, dict]],
    pairs: Sequence[tuple[str, str]],
    names: Mapping[str, str],
) -> str:
    """One row per name of ``rows`` (name -> :func:`readings`), one column per pairing
    (named by ``names`` of its measures): accuracy differences in points, loss differences
    in nats to 2 decimals."""
    header = ["cell", *(f"fit: {names[by]}; memorization: {names[y]}" for by, y in pairs)]
    text = lambda r, y: report.ci_text(r, *((1, 2) if y.endswith("/loss") else ()))  # noqa: E731
    body = [[name, *(text(got[f"{by} | {y}"], y) for by, y in pairs)] for name, got in rows.items()]
    return report.markdown_table(header, body, "l" + "r" * len(pairs))
