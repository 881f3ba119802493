"""A page that compares optimizers' memorization at matched fit: a cell's tables, figure and
verdict, the verdict over cells, and the readings that disagree with it.

A *cell* is one setting (data, noise, length) whose arms (run key -> one finished run per
seed, ``None`` where missing) are compared by :class:`matched.Comparison`; the primary ones
decide the cell by the rule of :func:`decide`. Memorization is the accuracy on the corrupt
examples against their noisy labels (:data:`MEM`), fit the pristine examples' accuracy
(:data:`PRISTINE`, the primary reading) or loss (:data:`PRISTINE_LOSS`); both are read
where each run's own smoothed path reaches the comparison's level
(:mod:`cgh_jax.analysis.matched`, :mod:`cgh_jax.analysis.matched_tables`). A study supplies
its names and rule as a :class:`Spec`, its cells' titles, comparisons and extra blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cgh_jax.analysis import matched, plots, report, stats
from cgh_jax.analysis import matched_tables as tables
from cgh_jax.analysis.matched import Comparison, best, curve, final

MEM, MEM_LOSS = "corrupt_noisy/top1", "corrupt_noisy/loss"
PRISTINE, PRISTINE_LOSS, TEST = "pristine/top1", "pristine/loss", "test/top1"
MEASURES = {
    PRISTINE: "pristine accuracy",
    PRISTINE_LOSS: "pristine loss",
    MEM: "accuracy on the noisy labels",
    MEM_LOSS: "loss on the noisy labels",
}
READINGS = ((PRISTINE, MEM), (PRISTINE, MEM_LOSS), (PRISTINE_LOSS, MEM), (PRISTINE_LOSS, MEM_LOSS))
PANELS = {
    PRISTINE: dict(xlabel="pristine training accuracy (%)", percent_x=True, xlim=(50, 100)),
    PRISTINE_LOSS: dict(
        xlabel="pristine training loss (log scale, falling to the right)", xlog=True, invert_x=True
    ),
    "epoch": dict(xlabel="epoch"),
    MEM: dict(ylabel="memorization (%)", percent_y=True),
    MEM_LOSS: dict(ylabel="loss on the noisy labels (falling upwards)", invert_y=True),
}
END_COLUMNS = "run|seeds|pristine (end)|memorization (end)|test (end)|best test during training"
END_COLUMNS += "|highest pristine during training (smoothed)"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a study fixes: run key -> name (``names``), name -> color, each median key's
    norm-matched SGD key (``norm_arm``), the matching (``fit``; its ``width`` smooths
    every path), the grid of fixed accuracy ``levels``, the decision rule's ``margin``
    (points) and the keys left out of the figures (``unplotted``)."""

    names: Mapping[str, str]
    colors: Mapping[str, str]
    norm_arm: Mapping[str, str]
    fit: tables.Fit
    levels: tuple[float, ...]
    margin: float
    unplotted: tuple[str, ...] = ()


def decide(front: dict, norm: dict | None, margin: float) -> str:
    """The decision rule: ``front`` (and ``norm``) are the corrected differences of
    memorization (fractions) against the frontier (and the norm-matched arm); ``margin`` in
    points: a suppression smaller than this is no suppression."""
    if front["n"] < 2 or (norm is not None and norm["n"] < 2):
        return "too few seeds yet"
    if front["hi"] < 0 and (norm is None or norm["hi"] < 0):
        return "supported"
    if front["lo"] > -margin / 100:
        return "slower learning explains it"
    return "not established"


def cell_verdict(spec: Spec, primary: dict) -> dict:
    """The decision rule on a cell's primary results (comparison key -> corrected result):
    the first median against the frontier (and its norm-matched arm); RM3 against RA3's."""
    top = next((k for k in primary if k.endswith("-frontier") and not k.startswith("rm3")), None)
    verdict: dict = {"median": "no median run", "arm": None, "rm3": None}
    if top is not None:
        arm = verdict["arm"] = top.split("-")[0]
        front, norm = primary[top], primary.get(f"{arm}-{spec.norm_arm.get(arm)}")
        verdict["median"] = decide(front, norm, spec.margin)
    if rm3 := primary.get("rm3-frontier"):
        verdict["rm3"] = decide(rm3, None, spec.margin)
    return verdict


def plot_memorization(spec: Spec, path: Path, title: str, present: dict, pairs, levels=None):
    """The cell's figure at ``path``: one panel per ``(x, y)`` of ``pairs`` (the matched level
    of ``x`` marked), one line per run."""
    arms = {
        spec.names[k]: [tuple((curve(e, x), curve(e, y)) for x, y in pairs) for e in runs if e]
        for k, runs in present.items()
        if k not in spec.unplotted
    }
    panels = [
        dict(index=i, level=(levels or {}).get(x)) | PANELS[x] | PANELS[y]
        for i, (x, y) in enumerate(pairs)
    ]
    plots.plot_paths(panels, arms, path, title=title, colors=spec.colors)


def pristine_loss_at(present: dict, top: Comparison, level: float, width: int) -> dict[str, float]:
    """Per run key of the comparison ``top`` (its arm and its base's runs), the mean over
    seeds of the pristine loss where the run's path first reaches ``level`` of pristine
    accuracy (smoothed over ``width``); keys that never reach it are left out."""
    at = lambda e: matched.at_fit(e, PRISTINE_LOSS, level, by=PRISTINE, width=width)  # noqa: E731
    keys = (top.arm, *(top.base if isinstance(top.base, tuple) else (top.base,)))
    means = {k: stats.mean(matched.per_seed(present.get(k, ()), at)) for k in keys}
    return {k: v for k, v in means.items() if not math.isnan(v)}


@dataclasses.dataclass(frozen=True)
class CellPage:
    """What the page says of one cell: its ``title``, the ``figure`` (a path beside the page),
    its ``seeds``, the arms with a finished run (``present``) and how many runs are
    ``missing``."""

    title: str
    figure: Path
    seeds: Sequence[int]
    present: dict
    missing: int


def cell_section(spec: Spec, cell: CellPage, comps, confidence, primary_confidence, extra=()):
    """A cell's tables, figure and verdict for the comparisons ``comps`` (primary first),
    ``extra`` blocks before the verdict; (markdown blocks, results.json part)."""
    present, width = cell.present, spec.fit.width
    read = functools.partial(tables.matched_table, present, comps, spec.names, spec.fit)
    acc_table, acc = read(
        by=PRISTINE, percent=True, confidence=confidence, primary_confidence=primary_confidence
    )
    loss_table, by_loss = read(
        by=PRISTINE_LOSS, percent=False, confidence=confidence, primary_confidence=None
    )
    top = next((c for c in comps if c.primary), None)  # its levels are marked in the figure
    acc_level = acc[top.key]["level"] if top else None
    loss_level = by_loss[top.key]["level"] if top else None
    levels = {PRISTINE: acc_level, PRISTINE_LOSS: loss_level}
    pairs = ((PRISTINE, MEM), (PRISTINE_LOSS, MEM), (PRISTINE_LOSS, MEM_LOSS))
    plot_memorization(spec, cell.figure, cell.title, present, pairs, levels)
    verdict = cell_verdict(spec, {k: v for k, v in acc.items() if v["primary"]})
    loss_at = pristine_loss_at(present, top, acc_level, width) if top else {}
    pairings = tables.readings(present, top, READINGS, levels, width) if top else {}
    incomplete = (
        f"**Incomplete**: {cell.missing} of this cell's runs are still to train; the tables use "
        "the seeds that finished.\n\n"
        if cell.missing
        else ""
    )
    median = spec.names.get(verdict["arm"], "—")
    rm3 = f"; RM3 against the RA3 frontier: **{verdict['rm3']}**" if verdict["rm3"] else ""
    end_measures = (
        lambda e: final(e, PRISTINE),
        lambda e: final(e, MEM),
        lambda e: final(e, TEST),
        lambda e: best(e, TEST),
        lambda e: matched.reach(e, by=PRISTINE, width=width),
    )
    section = [
        incomplete + "At the end of training (mean ± std over seeds):",
        tables.end_table(present, spec.names, END_COLUMNS.split("|"), end_measures),
        "![memorization (accuracy, then loss, on the noisy labels) against pristine accuracy and "
        f"loss, one line per run]({cell.figure.name})",
        "Memorization at matched pristine accuracy (primary; each comparison at the highest "
        "accuracy the arm and its base reach on every seed). Differences in points, paired by "
        "seed; "
        f"**primary** rows: {primary_confidence:.2%} intervals (Bonferroni over the page's "
        f"primary tests), other rows: {confidence:.2%} (Bonferroni within this cell); test "
        "accuracy at the same fit beside it (a family: its best):",
        acc_table,
        "\n".join(tables.per_seed_lines(acc, comps, spec.names, cell.seeds)),
        "At matched pristine loss (secondary; the lowest loss the arm and its base reach):",
        loss_table,
        "Memorization at fixed levels of pristine accuracy (mean over seeds):",
        tables.grid_table(present, spec.names, spec.fit, PRISTINE, spec.levels),
        "\n".join(tables.best_lines(present, comps, spec.names, TEST)),
        *extra,
        f"- **Decision rule, this cell**: {median}: **{verdict['median']}**{rm3}.",
        report.trained_line(e for runs in present.values() for e in runs if e is not None),
    ]
    got = {"matched_accuracy": acc, "matched_loss": by_loss, "verdict": verdict}
    return section, got | {"pristine_loss_at_matched_accuracy": loss_at, "readings": pairings}


def long_section(
    spec: Spec, cell: CellPage, epochs: int, base: str, arms: Sequence[str], intro: str
):
    """A cell read against epochs, with no verdict: memorization at a quarter, half and all
    of ``epochs``, and each of ``arms`` − ``base`` at the end (paired by seed, uncorrected)."""
    present = cell.present
    plot_memorization(spec, cell.figure, cell.title, present, (("epoch", MEM), (PRISTINE, MEM)))

    def at_epoch(e, epoch):
        return math.nan if e is None else float(np.interp(epoch, curve(e, "epoch"), curve(e, MEM)))

    marks = (epochs // 4, epochs // 2, epochs)
    rows = [
        [
            spec.names[k],
            str(sum(e is not None for e in runs)),
            *(report.pct([at_epoch(e, m) for e in runs]) for m in marks),
            report.pct([final(e, PRISTINE) for e in runs]),
            report.pct([final(e, TEST) for e in runs]),
            report.pct([best(e, TEST) for e in runs]),
        ]
        for k, runs in present.items()
    ]
    header = ["run", "seeds", *(f"memorization at epoch {m}" for m in marks)]
    header += ["pristine (end)", "test (end)", "best test"]
    lines, diffs = [], {}
    mem_end = lambda e: final(e, MEM)  # noqa: E731
    for arm in arms:
        if arm in present and base in present:
            d = stats.paired_difference(
                matched.per_seed(present[arm], mem_end), matched.per_seed(present[base], mem_end)
            )
            diffs[arm] = d
            if not math.isnan(d[1]):
                lines.append(
                    f"- At epoch {epochs}, {spec.names[arm]} − SGD: {100 * d[0]:+.1f} points "
                    f"of memorization (95% CI {100 * d[1]:+.1f} to {100 * d[2]:+.1f})."
                )
    missing = cell.missing
    incomplete = f"**Incomplete**: {missing} runs still to train.\n\n" if missing else ""
    section = [
        incomplete + intro,
        report.markdown_table(header, rows, "lrrrrrrr"),
        f"![memorization against epochs and pristine accuracy, one line per run]"
        f"({cell.figure.name})",
        "\n".join(lines),
        report.trained_line(e for runs in present.values() for e in runs if e is not None),
    ]
    return section, {"end_differences": diffs}


def verdict_section(spec: Spec, results: Mapping, title: Callable[[object], str]) -> str:
    """The page's verdict, cell by cell (``results``: cell -> its results.json part, titled by
    ``title``), from the decision rule; then the loss caveats and the readings table."""
    lines = ["## Verdict", ""]
    for cell, got in results.items():
        if not (v := got.get("verdict")) or v["arm"] is None:
            continue
        rm3 = f"; RM3: **{v['rm3']}**" if v["rm3"] else ""
        lines.append(f"- {title(cell)}: the median — **{v['median']}**{rm3}.")
    verdicts = [r["verdict"]["median"] for r in results.values() if r.get("verdict")]
    decided = [v for v in verdicts if v != "too few seeds yet"]
    if decided and all(v == "supported" for v in decided):
        lines += ["", "The median suppresses memorization beyond slower learning in every cell."]
    elif decided and all(v == "slower learning explains it" for v in decided):
        lines += [
            "",
            f"In the {len(decided)} cell(s) decided so far the median does not suppress "
            "memorization beyond what slower learning explains: at matched pristine accuracy "
            "it memorizes no less than SGD at some lower learning rate.",
        ]
    lines += loss_caveats(spec, results, title) + readings_table(results, title)
    return "\n".join(lines)


def readings_table(results: Mapping, title: Callable[[object], str]) -> list[str]:
    """The page's exploratory table: per cell, the first primary comparison under every
    pairing of fit and memorization measures (:func:`tables.readings`)."""
    rows = {title(c): got["readings"] for c, got in results.items() if got.get("readings")}
    if not rows:
        return []
    return [
        "",
        "### Every pairing of the measures (exploratory, chosen after the numbers)",
        "",
        "The accuracy-matched and loss-matched readings above measure memorization by "
        "accuracy on the noisy labels. Memorization can be measured by the loss on the noisy "
        "labels as well, so there are four readings of each cell's first primary comparison "
        "(the median with the most groups against the SGD frontier, at the same matched "
        "levels). Each entry is median − frontier signed so that **positive means the median "
        "memorized more**: points of accuracy, or for the loss the frontier's loss on the "
        "noisy labels minus the median's (nats; lower is more memorized); uncorrected 95% "
        "intervals, and not part of the decision rule (the first column is the primary "
        "reading, its corrected interval in the cell's table):",
        "",
        tables.readings_table(rows, READINGS, MEASURES),
        "",
        parting_line(list(rows.values())),
    ]


def parting_line(cells: list[dict]) -> str:
    """How many cells' intervals lie above zero when both measures are accuracies and below
    zero when both are losses, of the cells with an interval (two seeds or more)."""
    both = lambda by, y: [r[f"{by} | {y}"] for r in cells if r[f"{by} | {y}"]["n"] >= 2]  # noqa: E731
    accuracy, loss = both(PRISTINE, MEM), both(PRISTINE_LOSS, MEM_LOSS)
    more, less = sum(r["lo"] > 0 for r in accuracy), sum(r["hi"] < 0 for r in loss)
    return (
        f"Measured by accuracy on both sides, the median memorized more than the frontier in "
        f"{more} of {len(accuracy)} cells (interval above zero); measured by loss on both "
        f"sides, less in {less} of {len(loss)} (interval below zero)."
    )


def loss_caveats(spec: Spec, results: Mapping, title: Callable[[object], str]) -> list[str]:
    """Sentences for the cells where the loss-matched (secondary) reading finds the median
    below the frontier while the accuracy-matched (primary) verdict does not say so."""
    out, confident = [], []
    for cell, got in results.items():
        v = got.get("verdict")
        if not v or v["arm"] is None or v["median"] in ("supported", "too few seeds yet"):
            continue
        loss = got["matched_loss"].get(v["arm"] + "-frontier")
        if loss and loss["n"] >= 2 and loss["hi"] < 0:
            acc = got["matched_accuracy"][v["arm"] + "-frontier"]
            level, primary = acc["level"], "the opposite of the primary reading"
            if v["median"] != "slower learning explains it":  # not established: can't tell
                primary = f"where the primary reading, {report.ci_text(acc)}, cannot tell"
            at = dict(got["pristine_loss_at_matched_accuracy"])
            median, sgd = at.pop(v["arm"], math.nan), list(at.values())
            confident.append(bool(sgd) and median < min(sgd))
            sgd_text = f"{min(sgd):.3f} to {max(sgd):.3f}" if sgd else "none"
            out.append(
                f"- {title(cell)}: at matched pristine *loss* (the secondary reading, "
                f"{loss['level']:.3g}) the {spec.names[v['arm']]} memorizes "
                f"{report.ci_text(loss)} points against the SGD frontier, below it, "
                f"{primary}. Where its path first reaches "
                f"{100 * level:.1f}% pristine accuracy (the primary level), its pristine loss "
                f"is {median:.3f}; SGD's at the learning rates that reach it: {sgd_text} "
                "(means over the seeds that reach it)."
            )
    if not out:
        return []
    because = (
        "at the same pristine accuracy the median's pristine loss is the lower (the numbers "
        "above; it fits the pristine examples more confidently): SGD reaches the median's "
        "loss only later, when it has memorized more."
    )
    if all(confident):
        why = f"The readings part because {because}"
    elif any(confident):
        why = (
            f"In {sum(confident)} of these {len(confident)} cells the readings part because "
            f"{because} In the rest the median's pristine loss at the primary level is not "
            "below every SGD run's, so there the parting is not only a matter of confidence."
        )
    else:
        why = (
            "At the primary level the median's pristine loss is not below every SGD run's "
            "in any cell above, so the parting is not only a matter of confidence."
        )
    return [
        "",
        "The secondary reading disagrees with the verdict: the rule was fixed with accuracy "
        "as the primary fit, and by it the verdict above stands, but at matched pristine loss "
        "the median memorizes less than SGD at every learning rate:",
        "",
        *out,
        "",
        f"{why} Which measure of fit is the fair one decides the answer; this page does not "
        "settle it.",
    ]
