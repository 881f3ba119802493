r"""Is it the median, or slower learning? The median of group means against SGD's
learning-rate family and norm-matched arms, at matched fit.

Every run of a cell takes 360 examples per update (MNIST, CG MLP 784-2048-10; uniform label
noise; a seeded training subset with 2,000 other examples held out as the test set; each
seed draws its own subset, test set and noisy labels). The arms: SGD at batch 360 with the
learning rate 0.1 scaled by 1, 0.7, 0.5, 0.35, 0.25 (its frontier); the median of k group
means of 360 / k (k = 3, 5, 9, 15); SGD's mean gradient rescaled per tensor to the norm of
the median of k group means (k = 9, 15) and the median at the mean's norm (k = 15); RA3 at the
five learning rates against RM3 (batch 120). Every run is evaluated every 2 epochs, and
memorization (accuracy on the corrupt examples against their noisy label) is compared where
each run's own path reaches the same pristine accuracy or loss
(:mod:`cgh_jax.analysis.matched`), paired by seed, with Bonferroni-corrected t-intervals.
The runs are long; train them in shards (finished runs are reused, from the run
directories or from the committed results.json), one process per core, then write the page::

  taskset -c 0 python -m studies median --out docs/results/median --shard 0/2 &
  taskset -c 1 python -m studies median --out docs/results/median --shard 1/2; wait
  python -m studies median --out docs/results/median --no-train  # the page
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cgh_jax import study
from cgh_jax import study_cli as S
from cgh_jax.analysis import matched, plots, report, stats
from cgh_jax.analysis import matched_tables as tables
from studies.common import CNN, QUICK_MLP


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the study: data, noise, length, seeds and which runs it holds."""

    name: str  # the run directories' prefix
    noise: float
    size: int  # training examples (a seeded subset; HELDOUT others are the test set)
    epochs: int
    seeds: tuple[int, ...]
    keys: tuple[str, ...]  # run keys (RUNS)
    data: str = "mnist"  # "mnist" (the MLP) | "cifar10" (the small CNN)


PER_UPDATE, HELDOUT, EVAL_CAP, EVAL_EVERY = 360, 2_000, 1_000, 2
GROUP = PER_UPDATE // 3  # M3's group batch, and RM3's / RA3's batch
LR, CNN_LR = 0.1, 0.1  # the peak learning rate of every arm at scale 1
LR_SCALES = (1.0, 0.7, 0.5, 0.35, 0.25)  # the speed-of-learning controls


def _lr_key(base: str, scale: float) -> str:
    return base if scale == 1.0 else f"{base}_lr{scale:g}"


# key -> (optimizer, batch, groups, learning-rate scale)
RUNS = {_lr_key("sgd", c): ("sgd", PER_UPDATE, 1, c) for c in LR_SCALES}
RUNS |= {_lr_key("ra3", c): ("ra3", GROUP, 1, c) for c in LR_SCALES}
RUNS |= {"rm3": ("rm3", GROUP, 1, 1.0), "m3": ("m3", GROUP, 3, 1.0)}
RUNS |= {f"m3_k{k}": ("m3", PER_UPDATE // k, k, 1.0) for k in (5, 9, 15)}
RUNS |= {f"sgd_norm_k{k}": ("mean_at_median_norm", PER_UPDATE // k, k, 1.0) for k in (9, 15)}
RUNS |= {"median_meannorm_k15": ("median_at_mean_norm", PER_UPDATE // 15, 15, 1.0)}
SGD_FAMILY = tuple(_lr_key("sgd", c) for c in LR_SCALES)  # the frontier of M3 and its arms
RA3_FAMILY = tuple(_lr_key("ra3", c) for c in LR_SCALES)  # the frontier of RM3
DOSE = {1: "sgd", 3: "m3", 5: "m3_k5", 9: "m3_k9", 15: "m3_k15"}  # k -> run key
NORM_ARM = {"m3_k9": "sgd_norm_k9", "m3_k15": "sgd_norm_k15"}  # median -> norm-matched SGD

FULL = (*SGD_FAMILY, "m3_k15", "sgd_norm_k15", "median_meannorm_k15", "m3_k9", "sgd_norm_k9")
FULL += ("m3", "m3_k5", *RA3_FAMILY, "rm3")  # in training order within a seed
SMALL = (*SGD_FAMILY, "m3", "m3_k9", "sgd_norm_k9")
CNN_KEYS = (*SGD_FAMILY, "m3", "m3_k9")
CELLS = (
    Cell("noise025_n4000", 0.25, 4_000, 250, (0, 1, 2, 3, 4), FULL),
    Cell("noise050_n4000", 0.5, 4_000, 250, (0, 1, 2, 3, 4), FULL),
    Cell("noise025_n10000", 0.25, 10_000, 200, (0, 1, 2), SMALL),
    Cell("noise050_n10000", 0.5, 10_000, 200, (0, 1, 2), SMALL),
    # Four times longer: does the median plateau or catch up?
    Cell("noise025_n4000_long", 0.25, 4_000, 1_000, (0, 1, 2), ("sgd", "m3_k15", "sgd_norm_k15")),
    # A second model and dataset: the small CNN on CIFAR-10 JPEGs.
    Cell("cifar10_noise025_n10000", 0.25, 10_000, 100, (0, 1, 2), CNN_KEYS, data="cifar10"),
)
QUICK_KEYS = (*SGD_FAMILY[:2], "m3", "m3_k15", "sgd_norm_k15", "median_meannorm_k15", "ra3", "rm3")
QUICK_CELLS = (Cell("noise050_n600", 0.5, 600, 2, (0, 1), QUICK_KEYS),)


def cell_runs(cell: Cell, quick: bool) -> dict[str, list[S.RunRecipe]]:
    """Run key -> one run per seed, in ``<cell>/<key>/seed<s>``; each seed draws its own
    training subset, held-out test set and noisy labels."""
    runs = {}
    for key in cell.keys:
        opt, batch, groups, scale = RUNS[key]
        overrides = {
            "num_epochs": cell.epochs,
            "eval_every_epochs": min(EVAL_EVERY, cell.epochs),
            "optimizer.learning_rate": round((CNN_LR if cell.data == "cifar10" else LR) * scale, 6),
            "optimizer.num_groups": groups if groups > 1 else 3,
        }
        if cell.data == "cifar10":
            config, arg = "cifar10_resnet18", f"opt={opt},noise={cell.noise},path={{cifar10}}"
            overrides |= CNN
        else:
            config, arg = "mnist_cg", f"opt={opt},noise={cell.noise},scheme=uniform,net=2048"
        if quick:  # 8 fake devices divide every update: 24 (SGD), k x 8, 8 (RA3, RM3)
            overrides |= {"model.hidden": QUICK_MLP["model.hidden"]}
            batch = 24 if opt == "sgd" else 8
        run = S.RunRecipe(
            f"{cell.name}/{key}",
            config,
            f"{arg},batch={batch}",
            overrides,
            mnist=cell.data == "mnist",
            subset=(cell.size, 200 if quick else HELDOUT),
            subset_dir=cell.name,
            eval_cap=EVAL_CAP,
            vary_data=True,
        )
        runs[key] = S.seeded(run, cell.seeds)
    return runs


def plan(args) -> dict[Cell, dict[str, list[S.RunRecipe]]]:
    """The selected cells (``--cells``; all by default) and their runs."""
    cells = QUICK_CELLS if args.quick else CELLS
    chosen = [c for c in cells if not args.cells or c.name in args.cells]
    return {cell: cell_runs(cell, args.quick) for cell in chosen}


def training_order(cells: dict[Cell, dict[str, list[S.RunRecipe]]]) -> list[S.RunRecipe]:
    """Every run, the most informative first, so that a study stopped early has whole
    seeds: the 4,000-example cells on 3 seeds, the 10,000-example cells, the other seeds,
    the long runs, the CIFAR-10 cell."""

    def tier(cell: Cell, seed: int) -> int:
        if cell.data != "mnist":
            return 4
        if is_long(cell):
            return 3
        return (0 if seed < 3 else 2) if cell.size <= 4_000 else 1

    ordered = [
        (tier(cell, run.seed), run.seed, i, j, run)
        for i, (cell, keyed) in enumerate(cells.items())
        for j, runs in enumerate(keyed.values())
        for run in runs
    ]
    return [item[-1] for item in sorted(ordered, key=lambda item: item[:4])]


def shard_arg(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N, e.g. 0/2")
    return int(i), int(n)


SHARD_HELP = (
    "train only runs I, I+N, ... of the study (in its training order) and write no page: one "
    "process per core (e.g. under `taskset -c I`); then run without --shard for the page"
)
NO_TRAIN_HELP = "write the page from the finished and archived runs only; list the missing"
CELL_NAMES = [c.name for c in CELLS]
CELLS_ARG = S.names_arg([*CELL_NAMES, *(c.name for c in QUICK_CELLS)], "cells", CELL_NAMES)
ARGS = [
    (("--shard",), dict(metavar="I/N", type=shard_arg, help=SHARD_HELP)),
    (("--cells",), dict(default=(), type=CELLS_ARG, help="comma-separated cells (default: all)")),
    (("--no-train",), dict(action="store_true", help=NO_TRAIN_HELP)),
]


def train(args):
    """Trains (or reuses) the selected runs; cell -> key -> one entry per seed (None for a
    run neither finished nor archived, with ``--no-train``)."""
    cells, archive = plan(args), study.load_archive(Path(args.out) / "results.json")
    if args.shard:
        (i, n) = args.shard
        for run in training_order(cells)[i::n]:
            S.finished(run, args, archive, train_missing=True)
        S.say(f"median: shard {i}/{n} trained; run without --shard to write the page")
        raise SystemExit(0)
    entries = {
        run.dir: S.finished(run, args, archive, train_missing=not args.no_train)
        for run in training_order(cells)
    }
    return {
        cell: {key: [entries[run.dir] for run in runs] for key, runs in keyed.items()}
        for cell, keyed in cells.items()
    }


# ----------------------------------------------------------------------------- the page

LEVELS = (0.90, 0.95, 0.97, 0.98, 0.99)  # the grid of pristine accuracies (sensitivity)
LEVEL_STEP, LOSS_DIGITS = 0.005, 3  # the matched levels: accuracy to 0.5%, loss to 3 digits
SMOOTH = 3  # paths are matched after a moving average over 3 evaluations (6 epochs)
MEM, MEM_LOSS, PRISTINE, PRISTINE_LOSS, TEST = (
    "corrupt_noisy/top1",
    "corrupt_noisy/loss",
    "pristine/top1",
    "pristine/loss",
    "test/top1",
)
MARGIN = 5  # points of memorization: a suppression smaller than this is no suppression
DECISION_RULE = f"""## Decision rule (fixed before the numbers)

The claim under test: the median of group means suppresses memorization *beyond what slower
learning explains*. A noisier or shorter update learns everything more slowly, and the
corrupt labels are the last thing a network fits, so at a fixed epoch slower learning alone
looks like suppression. Each run's memorization is therefore read where its own training
path first reaches a given fit, by linear interpolation between the evaluations around it
(`cgh_jax.analysis.matched`), after a moving average over 3 evaluations (6 epochs) of every
curve, so that one noisy evaluation does not decide where a path reaches a level. The fit
of a comparison is the best one that its compared runs reach on every seed: the highest
pristine training accuracy (to 0.5%) that the median run and its base (for a family, at
least one of its runs) reach on each seed (primary), and likewise the lowest pristine
training loss (secondary). The level is set by the fit alone, never by memorization;
memorization only starts once the pristine examples are nearly fitted, so a lower level
would compare runs before there is anything to compare. A grid of fixed levels (90 to 99%)
is shown beside it. (Four details were settled after looking at the paths of the first seed
of one cell, before any comparison over seeds was computed: a fixed 95% level, the first
choice, lay below the onset of memorization at 25% noise; without smoothing one high
evaluation of a noisy path set the level; a family's level must be reachable by at least
one of its runs; and the rule asks for positive evidence that slower learning explains it,
the margin below, not only an interval that touches zero.)

- **Supported** in a cell if, at matched pristine accuracy, the median with the most groups
  memorizes less than the SGD frontier (per seed, the least memorization of SGD at any of
  the five learning rates that reach the level) **and** less than its norm-matched SGD arm
  (SGD's direction at the median's per-tensor norm), both with corrected intervals below
  zero.
- **Slower learning explains it** if the median memorizes at most {MARGIN} points less
  than the frontier: the corrected interval of median − frontier lies above −{MARGIN} points
  (any suppression beyond slower learning is smaller than that).
- **Not established** otherwise: too uncertain to tell (an interval reaching below −{MARGIN}
  and above 0), or below the frontier but not below the norm-matched arm (the length of the
  update, not the median's direction, may be what matters).
- RM3 is judged the same way against the RA3 frontier.

The primary tests (per cell: the largest k against the frontier and against its
norm-matched arm; RM3 against the RA3 frontier) form one family, corrected by Bonferroni
over all of them that the page plans, trained yet or not; the other comparisons (smaller k,
the loss-matched reading, the median at the mean's norm) are corrected by Bonferroni within
each cell's table, likewise as planned. All
differences are paired by seed (each seed: its own data draw, initialization and batch
order)."""


curve, final, best, Comparison = matched.curve, matched.final, matched.best, matched.Comparison
FIT = tables.Fit(y=MEM, also=TEST, width=SMOOTH, step=LEVEL_STEP, digits=LOSS_DIGITS)
END_COLUMNS = "run|seeds|pristine (end)|memorization (end)|test (end)|best test during training"
END_COLUMNS += "|highest pristine during training (smoothed)"
END_MEASURES = (
    lambda e: final(e, PRISTINE),
    lambda e: final(e, MEM),
    lambda e: final(e, TEST),
    lambda e: best(e, TEST),
    lambda e: matched.reach(e, by=PRISTINE, width=SMOOTH),
)
ARM_NAMES = {
    **{key: f"SGD, lr {LR * c:g}" for c, key in zip(LR_SCALES, SGD_FAMILY, strict=True)},
    **{key: f"RA3, lr {LR * c:g}" for c, key in zip(LR_SCALES, RA3_FAMILY, strict=True)},
    "rm3": f"RM3 (batch {GROUP})",
    "m3": f"M3: median of 3 group means of {GROUP}",
    **{DOSE[k]: f"median of {k} group means of {PER_UPDATE // k}" for k in (5, 9, 15)},
    **{arm: f"SGD at the norm of the median of {arm.split('_k')[1]}" for arm in NORM_ARM.values()},
    "median_meannorm_k15": "median of 15 at the mean's norm",
}
COLORED = (*SGD_FAMILY, "ra3", "rm3", "m3", "m3_k5", "m3_k9", "m3_k15", *NORM_ARM.values())
COLORS = "#08306b #2171b5 #4292c6 #6baed6 #9ecae1 #525252 #000000 #fcbba1 #fb6a4a #cb181d "
COLORS += "#67000d #74c476 #006d2c #ff7f00"
ARM_COLORS = {  # SGD blue, RA3 and RM3 grey and black, medians red, norm-matched arms green
    ARM_NAMES[k]: c for k, c in zip((*COLORED, "median_meannorm_k15"), COLORS.split(), strict=True)
}


def comparisons(keys: Sequence[str]) -> list[Comparison]:
    """The comparisons a cell's runs allow; the primary ones (the decision rule) first."""
    ks = [k for k in (3, 5, 9, 15) if DOSE[k] in keys]
    out = []
    top = DOSE[ks[-1]] if ks else None
    if top:
        out.append(Comparison(top, SGD_FAMILY, primary=True))
        if NORM_ARM.get(top) in keys:
            out.append(Comparison(top, NORM_ARM[top], primary=True))
    if "rm3" in keys and RA3_FAMILY[0] in keys:
        out.append(Comparison("rm3", RA3_FAMILY, primary=True))
    out += [Comparison(DOSE[k], SGD_FAMILY) for k in ks[:-1]]
    out += [
        Comparison(arm, norm)
        for arm, norm in NORM_ARM.items()
        if arm != top and arm in keys and norm in keys
    ]
    if "median_meannorm_k15" in keys:
        out.append(Comparison("median_meannorm_k15", SGD_FAMILY))
    return out


def dose_table(cell_runs: dict) -> list[str]:
    """The dose-response by its points: memorization at the end and at matched fit per k."""
    rows = [
        [
            str(k),
            str(PER_UPDATE // k),
            report.pct([final(e, MEM) for e in cell_runs[key]]),
            report.pct([final(e, PRISTINE) for e in cell_runs[key]]),
            report.pct([final(e, TEST) for e in cell_runs[key]]),
        ]
        for k, key in DOSE.items()
        if key in cell_runs
    ]
    if len(rows) < 2:
        return []
    header = ["k", "group batch", "memorization (end)", "pristine (end)", "test (end)"]
    return [
        "Dose-response at lr 0.1, by its points (mean ± std over seeds; no curve is fitted; "
        "at matched fit: the tables above):",
        report.markdown_table(header, rows, "rrrrr"),
    ]


def cell_verdict(primary: dict) -> dict:
    """The decision rule on a cell's primary results."""
    top = next((k for k in primary if k.endswith("-frontier") and not k.startswith("rm3")), None)
    verdict: dict = {"median": "no median run", "arm": None, "rm3": None}
    if top is not None:
        arm = verdict["arm"] = top.split("-")[0]
        front, norm = primary[top], primary.get(f"{arm}-{NORM_ARM.get(arm)}")
        verdict["median"] = decide(front, norm)
    if rm3 := primary.get("rm3-frontier"):
        verdict["rm3"] = decide(rm3, None)
    return verdict


def decide(front: dict, norm: dict | None) -> str:
    """The decision rule: ``front`` (and ``norm``) are the corrected differences of
    memorization (fractions) against the frontier (and the norm-matched arm)."""
    if front["n"] < 2 or (norm is not None and norm["n"] < 2):
        return "too few seeds yet"
    if front["hi"] < 0 and (norm is None or norm["hi"] < 0):
        return "supported"
    if front["lo"] > -MARGIN / 100:
        return "slower learning explains it"
    return "not established"


PANELS = {
    PRISTINE: dict(xlabel="pristine training accuracy (%)", percent_x=True, xlim=(50, 100)),
    PRISTINE_LOSS: dict(
        xlabel="pristine training loss (log scale, falling to the right)", xlog=True, invert_x=True
    ),
    "epoch": dict(xlabel="epoch"),
    MEM: dict(ylabel="memorization (%)", percent_y=True),
    MEM_LOSS: dict(ylabel="loss on the noisy labels (falling upwards)", invert_y=True),
}


def plot_memorization(args, cell: Cell, present: dict, pairs, levels=None) -> str:
    """The cell's figure: one panel per ``(x, y)`` of ``pairs`` (the matched level of ``x``
    marked), one line per run; returns its file name."""
    figure = f"paths_{cell.name}.png"
    arms = {
        ARM_NAMES[k]: [tuple((curve(e, x), curve(e, y)) for x, y in pairs) for e in runs if e]
        for k, runs in present.items()
        if k not in RA3_FAMILY[1:]
    }
    panels = [
        dict(index=i, level=(levels or {}).get(x)) | PANELS[x] | PANELS[y]
        for i, (x, y) in enumerate(pairs)
    ]
    plots.plot_paths(
        panels, arms, Path(args.out) / figure, title=cell_title(cell), colors=ARM_COLORS
    )
    return figure


def is_long(cell: Cell) -> bool:
    """The long cell: read against epochs, with no primary test."""
    return cell.epochs > 250


def cell_title(cell: Cell) -> str:
    data = "MNIST, MLP 784-2048-10" if cell.data == "mnist" else "CIFAR-10, small CNN"
    return (
        f"{data}, {cell.noise:.0%} label noise, {cell.size:,} training examples, "
        f"{cell.epochs} epochs"
    )


def cell_section(args, cell: Cell, present: dict, missing: int, confidence, primary_confidence):
    """A cell's tables, figure and verdict (of its ``present`` arms: those with a finished
    run); (markdown blocks, results.json part)."""
    comps = comparisons(list(present))
    read = functools.partial(tables.matched_table, present, comps, ARM_NAMES, FIT)
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
    figure = plot_memorization(args, cell, present, pairs, levels)
    verdict = cell_verdict({k: v for k, v in acc.items() if v["primary"]})
    loss_at = pristine_loss_at(present, top, acc_level) if top else {}
    pairings = tables.readings(present, top, READINGS, levels, SMOOTH) if top else {}
    incomplete = (
        f"**Incomplete**: {missing} of this cell's runs are still to train; the tables use the "
        "seeds that finished.\n\n"
        if missing
        else ""
    )
    median = ARM_NAMES.get(verdict["arm"], "—")
    rm3 = f"; RM3 against the RA3 frontier: **{verdict['rm3']}**" if verdict["rm3"] else ""
    section = [
        incomplete + "At the end of training (mean ± std over seeds):",
        tables.end_table(present, ARM_NAMES, END_COLUMNS.split("|"), END_MEASURES),
        "![memorization (accuracy, then loss, on the noisy labels) against pristine accuracy and "
        f"loss, one line per run]({figure})",
        "Memorization at matched pristine accuracy (primary; each comparison at the highest "
        "accuracy the arm and its base reach on every seed). Differences in points, paired by "
        "seed; "
        f"**primary** rows: {primary_confidence:.2%} intervals (Bonferroni over the page's "
        f"primary tests), other rows: {confidence:.2%} (Bonferroni within this cell); test "
        "accuracy at the same fit beside it (a family: its best):",
        acc_table,
        "\n".join(tables.per_seed_lines(acc, comps, ARM_NAMES, cell.seeds)),
        "At matched pristine loss (secondary; the lowest loss the arm and its base reach):",
        loss_table,
        "Memorization at fixed levels of pristine accuracy (mean over seeds):",
        tables.grid_table(present, ARM_NAMES, FIT, PRISTINE, LEVELS),
        "\n".join(tables.best_lines(present, comps, ARM_NAMES, TEST)),
        *dose_table(present),
        f"- **Decision rule, this cell**: {median}: **{verdict['median']}**{rm3}.",
        report.trained_line(e for runs in present.values() for e in runs if e is not None),
    ]
    got = {"matched_accuracy": acc, "matched_loss": by_loss, "verdict": verdict}
    return section, got | {"pristine_loss_at_matched_accuracy": loss_at, "readings": pairings}


MEASURES = {
    PRISTINE: "pristine accuracy",
    PRISTINE_LOSS: "pristine loss",
    MEM: "accuracy on the noisy labels",
    MEM_LOSS: "loss on the noisy labels",
}
READINGS = ((PRISTINE, MEM), (PRISTINE, MEM_LOSS), (PRISTINE_LOSS, MEM), (PRISTINE_LOSS, MEM_LOSS))


def pristine_loss_at(present: dict, top: Comparison, level: float) -> dict[str, float]:
    """Per run key of the first primary comparison (its arm and its base's runs), the mean
    over seeds of the pristine loss where the run's path first reaches ``level`` of
    pristine accuracy (smoothed as in the matching); keys that never reach it are left out."""
    at = lambda e: matched.at_fit(e, PRISTINE_LOSS, level, by=PRISTINE, width=SMOOTH)  # noqa: E731
    keys = (top.arm, *(top.base if isinstance(top.base, tuple) else (top.base,)))
    means = {k: stats.mean(matched.per_seed(present.get(k, ()), at)) for k in keys}
    return {k: v for k, v in means.items() if not math.isnan(v)}


def long_section(args, cell: Cell, present: dict, missing: int) -> tuple[list[str], dict]:
    """The long cell: memorization against epochs, and where each arm ends."""
    figure = plot_memorization(args, cell, present, (("epoch", MEM), (PRISTINE, MEM)))

    def at_epoch(e, epoch):
        return math.nan if e is None else float(np.interp(epoch, curve(e, "epoch"), curve(e, MEM)))

    marks = (cell.epochs // 4, cell.epochs // 2, cell.epochs)
    rows = [
        [
            ARM_NAMES[k],
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
    for arm in ("m3_k15", "sgd_norm_k15"):
        if arm in present and "sgd" in present:
            mem_end = lambda e: final(e, MEM)  # noqa: E731
            d = stats.paired_difference(
                matched.per_seed(present[arm], mem_end), matched.per_seed(present["sgd"], mem_end)
            )
            diffs[arm] = d
            if not math.isnan(d[1]):
                lines.append(
                    f"- At epoch {cell.epochs}, {ARM_NAMES[arm]} − SGD: {100 * d[0]:+.1f} points "
                    f"of memorization (95% CI {100 * d[1]:+.1f} to {100 * d[2]:+.1f})."
                )
    incomplete = f"**Incomplete**: {missing} runs still to train.\n\n" if missing else ""
    section = [
        incomplete + "The data and seeds of the 4,000-example, 25%-noise cell, trained four "
        "times longer (constant learning rate: the first 250 epochs are that cell's runs):",
        report.markdown_table(header, rows, "lrrrrrrr"),
        f"![memorization against epochs and pristine accuracy, one line per run]({figure})",
        "\n".join(lines),
        report.trained_line(e for runs in present.values() for e in runs if e is not None),
    ]
    return section, {"end_differences": diffs}


def summary_row(cell: Cell, got: dict) -> dict[str, str]:
    """The README's row of one cell, from the decision rule."""
    acc, v = got["matched_accuracy"], got["verdict"]
    front = acc[v["arm"] + "-frontier"]
    measured = f"at {100 * front['level']:.1f}% pristine accuracy (the best fit the median "
    measured += f"reaches), memorization of the {ARM_NAMES[v['arm']]} − SGD frontier: "
    measured += f"{report.ci_text(front)} points"
    if norm := acc.get(f"{v['arm']}-{NORM_ARM.get(v['arm'])}"):
        measured += f"; − SGD at its norm: {report.ci_text(norm)}"
    if rm3 := acc.get("rm3-frontier"):
        measured += f"; RM3 − RA3 frontier: {report.ci_text(rm3)}"
    if loss := got["matched_loss"].get(v["arm"] + "-frontier"):
        measured += (
            f"; at matched pristine loss ({loss['level']:.3g}), median − SGD frontier: "
            f"{report.ci_text(loss)}"
        )
    has_norm_arm = NORM_ARM.get(v["arm"]) in cell.keys  # the CIFAR-10 cell has none
    also = " and less than SGD at the median's norm" if has_norm_arm else ""
    return {
        "study": "Is it the median, or slower learning?",
        "setting": f"{cell_title(cell)}, {PER_UPDATE} examples per update",
        "measured": f"{measured} (corrected intervals; {front['n']} of {len(cell.seeds)} "
        f"seeds); verdict: {v['median']}",
        "prediction": "at matched fit the median memorizes less than SGD at any learning "
        f"rate{also}",
        "match": {"supported": "yes", "not established": "undecided"}.get(v["median"], "no"),
    }


def verdict_section(results: dict) -> tuple[str, list[dict]]:
    """The page's verdict, cell by cell, from the decision rule; the README rows."""
    lines, summary = ["## Verdict", ""], []
    for cell, got in results.items():
        if not (v := got.get("verdict")) or v["arm"] is None:
            continue
        rm3 = f"; RM3: **{v['rm3']}**" if v["rm3"] else ""
        lines.append(f"- {cell_title(cell)}: the median — **{v['median']}**{rm3}.")
        if v["median"] != "too few seeds yet":
            summary.append(summary_row(cell, got))
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
    lines += loss_caveats(results) + readings_table(results)
    return "\n".join(lines), summary


def readings_table(results: dict) -> list[str]:
    """The page's exploratory table: per cell, the first primary comparison under every
    pairing of fit and memorization measures (:func:`tables.readings`)."""
    rows = {cell_title(c): got["readings"] for c, got in results.items() if got.get("readings")}
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


def loss_caveats(results: dict) -> list[str]:
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
                f"- {cell_title(cell)}: at matched pristine *loss* (the secondary reading, "
                f"{loss['level']:.3g}) the {ARM_NAMES[v['arm']]} memorizes "
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


def page(args, trained) -> report.Page:
    done = {  # per cell, the arms with a finished run
        cell: {k: runs for k, runs in keyed.items() if any(e is not None for e in runs)}
        for cell, keyed in trained.items()
    }
    # One family of primary tests, fixed by the plan (trained or not; the long cell has none),
    # so that a cell's first run does not widen the other cells' intervals.
    planned = [comparisons(keyed) for cell, keyed in trained.items() if not is_long(cell)]
    m = max(sum(c.primary for tests in planned for c in tests), 1)
    sections, results = [], {}
    for cell, cell_runs in trained.items():
        present, missing = done[cell], sum(e is None for r in cell_runs.values() for e in r)
        if not present:
            section, got = [f"Not trained yet: {missing} runs (`--cells {cell.name}`)."], {}
        elif is_long(cell):
            section, got = long_section(args, cell, present, missing)
        else:
            per_cell = stats.bonferroni(max(2 * len(comparisons(cell_runs)), 1))
            section, got = cell_section(args, cell, present, missing, per_cell, stats.bonferroni(m))
        sections += [f"## {cell_title(cell)}", *(block for block in section if block)]
        results[cell] = {**got, "missing": missing}
    verdict, summary = verdict_section(results)
    entries = {
        f"{cell.name}/{key}/seed{seed}": entry
        for cell, keyed in trained.items()
        for key, runs in keyed.items()
        for seed, entry in zip(cell.seeds, runs, strict=True)
        if entry is not None
    }
    missing = sum(e is None for keyed in trained.values() for r in keyed.values() for e in r)
    walls = [e["wall_s"] for e in entries.values()]
    status = f"{len(entries)} runs trained" + (
        f", **{missing} still to train** (each cell says which)" if missing else ""
    )
    return report.Page(
        title="Is it the median, or slower learning? Memorization at matched fit",
        seeds=sorted({s for cell in trained for s in cell.seeds}),
        data=(
            f"real MNIST IDX files ({args.mnist}) and the CIFAR-10 JPEGs; per cell and seed a "
            f"seeded subset of the training split, {HELDOUT:,} other examples held out as the "
            "test set"
        ),
        body=[DECISION_RULE, verdict, *sections],
        runs_wall_s=sum(walls),
        extra={
            "Runs": f"{status}. {PER_UPDATE} examples per update in every run; constant "
            "learning rate, no momentum; uniform label noise (W&S scheme); each seed draws "
            f"its own subset, test set and noisy labels; evaluated every {EVAL_EVERY} "
            "epochs; every run's curve in results.json (`runs`, with its config fingerprint)",
        },
        payload={
            "cells": {cell.name: got for cell, got in results.items()},
            "summary": summary,
            "runs": entries,
            "primary_tests": m,
        },
    )
