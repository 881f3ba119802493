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

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from cgh_jax import study
from cgh_jax import study_cli as S
from cgh_jax.analysis import matched_page as P
from cgh_jax.analysis import matched_tables as tables
from cgh_jax.analysis import report, stats
from cgh_jax.analysis.matched import Comparison, final
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


CELL_NAMES = [c.name for c in CELLS]
CELLS_ARG = S.names_arg([*CELL_NAMES, *(c.name for c in QUICK_CELLS)], "cells", CELL_NAMES)
ARGS = [
    *S.SHARD_ARGS,
    (("--cells",), dict(default=(), type=CELLS_ARG, help="comma-separated cells (default: all)")),
]


def train(args):
    """Trains (or reuses) the selected runs; cell -> key -> one entry per seed (None for a
    run neither finished nor archived, with ``--no-train``)."""
    cells, archive = plan(args), study.load_archive(Path(args.out) / "results.json")
    entries = S.train_in_order(training_order(cells), args, archive)
    return {
        cell: {key: [entries[run.dir] for run in runs] for key, runs in keyed.items()}
        for cell, keyed in cells.items()
    }


# ----------------------------------------------------------------------------- the page

LEVELS = (0.90, 0.95, 0.97, 0.98, 0.99)  # the grid of pristine accuracies (sensitivity)
LEVEL_STEP, LOSS_DIGITS = 0.005, 3  # the matched levels: accuracy to 0.5%, loss to 3 digits
SMOOTH = 3  # paths are matched after a moving average over 3 evaluations (6 epochs)
PRISTINE, MEM, TEST = P.PRISTINE, P.MEM, P.TEST
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


REPORT = P.Spec(
    names=ARM_NAMES,
    colors=ARM_COLORS,
    norm_arm=NORM_ARM,
    fit=tables.Fit(y=MEM, also=TEST, width=SMOOTH, step=LEVEL_STEP, digits=LOSS_DIGITS),
    levels=LEVELS,
    margin=MARGIN,
    unplotted=RA3_FAMILY[1:],
)


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


LONG_ARMS = ("m3_k15", "sgd_norm_k15")  # the long cell: each against SGD at the end
LONG_INTRO = (
    "The data and seeds of the 4,000-example, 25%-noise cell, trained four times longer "
    "(constant learning rate: the first 250 epochs are that cell's runs):"
)


def is_long(cell: Cell) -> bool:
    """The long cell: read against epochs, with no primary test."""
    return cell.epochs > 250


def cell_title(cell: Cell) -> str:
    data = "MNIST, MLP 784-2048-10" if cell.data == "mnist" else "CIFAR-10, small CNN"
    return (
        f"{data}, {cell.noise:.0%} label noise, {cell.size:,} training examples, "
        f"{cell.epochs} epochs"
    )


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


def summary_rows(results: dict) -> list[dict[str, str]]:
    """The README's rows: one per cell with a decided verdict."""
    decided = lambda v: v and v["arm"] is not None and v["median"] != "too few seeds yet"  # noqa: E731
    return [summary_row(cell, got) for cell, got in results.items() if decided(got.get("verdict"))]


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
        figure = Path(args.out) / f"paths_{cell.name}.png"
        about = P.CellPage(cell_title(cell), figure, cell.seeds, present, missing)
        if not present:
            section, got = [f"Not trained yet: {missing} runs (`--cells {cell.name}`)."], {}
        elif is_long(cell):
            section, got = P.long_section(REPORT, about, cell.epochs, "sgd", LONG_ARMS, LONG_INTRO)
        else:
            per_cell = stats.bonferroni(max(2 * len(comparisons(cell_runs)), 1))
            comps, primary = comparisons(list(present)), stats.bonferroni(m)
            extra = dose_table(present)
            section, got = P.cell_section(REPORT, about, comps, per_cell, primary, extra)
        sections += [f"## {cell_title(cell)}", *(block for block in section if block)]
        results[cell] = {**got, "missing": missing}
    verdict = P.verdict_section(REPORT, results, cell_title)
    summary = summary_rows(results)
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
