"""Optimizers' memorization compared at a fixed epoch over seeds, as W&S and CG read it: rows
of final accuracies per setting (``name``, ``key``, finished ``runs``, per seed the
accuracy of each of :data:`SETS`, ``epochs``, ``steps``, ``wall_s``, ``diverged``), sentences
that compare two rows against twice the seed spread (:func:`stats.less_beyond_spread`),
and the table. Slower learning alone lowers memorization at a fixed epoch: the matched-fit
reading is :mod:`cgh_jax.analysis.matched_page`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from cgh_jax.analysis import report, stats
from cgh_jax.analysis.stats import mean

SETS = ("corrupt_noisy", "corrupt_true", "pristine", "test")
MEM = SETS[0]  # memorization: accuracy on the corrupt examples against their noisy label
B300 = "SGD, batch 300 (M3's updates per epoch)"  # the row with M3's number of updates


def setting_row(
    name: str, key: str, dirs: Sequence[os.PathLike], planned: int, wall_s: Sequence[float]
) -> dict:
    """The row of one setting from its finished run directories (``planned`` seeds; the
    others diverged) and their recorded wall times."""
    finals = report.run_finals(dirs)
    row = dict(name=name, key=key, runs=len(dirs), diverged=planned - len(dirs), wall_s=wall_s)
    row.update({k: [f.get(f"{k}/top1", math.nan) for f in finals] for k in SETS})
    return row | dict(epochs=[f["epoch"] for f in finals], steps=[f["step"] for f in finals])


def pair(rows: list[dict], name: str, baseline: str):
    """The rows of ``name`` and ``baseline`` (None unless both have finished runs)."""
    by = {r["name"]: r for r in rows if r["runs"]}
    return (by[name], by[baseline]) if name in by and baseline in by else None


def less(rows: list[dict], name: str, baseline: str) -> bool | None:
    """Whether ``name`` memorizes less than ``baseline`` beyond twice the seed spread."""
    got = pair(rows, name, baseline)
    return None if got is None else stats.less_beyond_spread(*(r[MEM] for r in got))


def same(rows: list[dict], a: str, b: str) -> bool | None:
    """Memorization of ``a`` and ``b`` within twice the seed spread (None if unknown)."""
    both = less(rows, a, b), less(rows, b, a)
    return None if None in both else not any(both)


def compare(rows: list[dict], name: str, baseline: str) -> str | None:
    """One sentence: memorization of ``name`` vs ``baseline``, with the seed spread."""
    if (got := pair(rows, name, baseline)) is None:
        return None
    (a, b), (ma, mb, floor) = got, stats.spread_comparison(*(r[MEM] for r in got))
    verdict = "about the same as" if abs(ma - mb) <= floor else ("less", "more")[ma >= mb] + " than"
    seeds = f"; seed spread ±{100 * floor / 2:.1f}" if floor > 0 else ""
    return (
        f"{name} memorizes {verdict} {baseline}: corrupt-noisy accuracy {100 * ma:.1f}% vs "
        f"{100 * mb:.1f}% ({100 * (ma - mb):+.1f} points{seeds}); test "
        f"{100 * mean(a['test']):.1f}% vs {100 * mean(b['test']):.1f}%."
    )


def interpretation(rows: list[dict]) -> list[str]:
    """What the controls say about the comparisons above (generated from the numbers)."""
    lines, sgd = [], pair(rows, "SGD", "SGD")
    if sgd:
        lines.append(
            f"SGD ends with {100 * mean(sgd[0][MEM]):.1f}% of the corrupt labels memorized"
        )
        if mean(sgd[0][MEM]) < 0.8:
            lines[-1] += (
                ": the runs stop well before SGD memorizes all of them, so the table compares "
                "how fast memorization proceeds, not where it ends"
            )
        lines[-1] += "."
    if less(rows, "M3", "SGD") and same(rows, "M3", B300):
        lines.append(
            "**Control**: SGD with M3's number of updates per epoch (batch 300) memorizes as "
            "little as M3 (within twice the seed spread). Here M3's lower memorization is "
            "explained by its fewer updates, not by the median."
        )
    elif less(rows, "M3", B300):
        lines.append(
            "**Control**: M3 memorizes less than SGD with the same number of updates per "
            "epoch (batch 300), so the median itself suppresses memorization here."
        )
    elif same(rows, "M3", B300):
        lines.append(
            "M3 and SGD with the same number of updates (batch 300) memorize about the same "
            "here (the difference is within twice the seed spread): no clear effect of the "
            "median beyond that of fewer updates at this number of seeds."
        )
    if same(rows, "RM3", "RA3"):
        lines.append(
            "RM3 and RA3 (median vs mean of the same last three gradients) memorize about the "
            "same here (the difference is within twice the seed spread): no clear effect of "
            "the median beyond that of stale, averaged gradients."
        )
    elif less(rows, "RM3", "RA3"):
        lines.append(
            "RM3 memorizes less than RA3 (the mean of the same three gradients): the median, "
            "not the staleness, makes the difference."
        )
    winsor = [r for r in rows if r["key"].startswith("winsorize") and r["runs"]]
    if len(winsor) > 1:
        levels = [mean(r["corrupt_noisy"]) for r in winsor]
        steady = all(a >= b for a, b in zip(levels, levels[1:], strict=False))
        each = ", ".join(
            f"{r['name'].split(', ')[-1]}: {100 * v:.1f}%"
            for r, v in zip(winsor, levels, strict=True)
        )
        tests = ", ".join(f"{100 * mean(r['test']):.1f}%" for r in winsor)
        lines.append(
            f"Memorization under winsorized SGD {'falls' if steady else 'does not fall'} "
            f"steadily as more values are clipped ({each}), while test accuracy goes {tests}."
        )
    return lines


COLUMNS = (
    "optimizer|corrupt, noisy label (memorization)|corrupt, true label|pristine|test|epochs|"
    "updates|wall time per run|seeds"
).split("|")


def table_row(r: dict) -> list[str]:
    done = [f"{mean(r['epochs']):g}", f"{mean(r['steps']):,.0f}"] if r["runs"] else ["—", "—"]
    seeds = f"{r['runs']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
    return [
        r["name"],
        *(report.pct(r[k]) for k in SETS),
        *done,
        report.format_seconds(mean(r["wall_s"])),
        seeds,
    ]
