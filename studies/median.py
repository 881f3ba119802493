r"""Is it the median? M3 and RM3 against their mean-gradient twins at equal updates.

On MNIST (CG MLP, lr 0.1, uniform label noise 25% and 50%, 4,000 and 10,000 training
examples, 2,000 held out) every run of a cell takes 360 examples per update, so all see the
same examples in the same number of updates: (a) M3 (median of 3 group means of 120) vs SGD at
batch 360, and RM3 vs RA3 (median vs mean of the last three gradients of batch 120), on 5
seeds; (b) the median of k group means for k = 1 (SGD), 3 (M3), 5, 9, 15 on 4,000 examples and
k = 1, 3, 9 on 10,000 (k = 9 on 3 seeds there, for time). Differences in memorization
(``corrupt_noisy``) are paired by seed with a 95% t-interval; test accuracy beside it. The runs
are long; train them where there is time (finished runs are reused), one process per core::

  taskset -c 0 python -m studies median --out docs/results/median --shard 0/2 &
  taskset -c 1 python -m studies median --out docs/results/median --shard 1/2; wait
  python -m studies median --out docs/results/median  # the page
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np

from cgh_jax.analysis import matched, plots, report, stats
from cgh_jax.analysis.stats import paired_difference
from studies import page as P
from studies import runs as R


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
CELLS = (
    Cell("noise025_n4000", 0.25, 4_000, 250, (0, 1, 2, 3, 4), FULL),
    Cell("noise050_n4000", 0.5, 4_000, 250, (0, 1, 2, 3, 4), FULL),
    Cell("noise025_n10000", 0.25, 10_000, 200, (0, 1, 2), SMALL),
    Cell("noise050_n10000", 0.5, 10_000, 200, (0, 1, 2), SMALL),
    # Four times longer: does the median plateau or catch up?
    Cell("noise025_n4000_long", 0.25, 4_000, 1_000, (0, 1, 2), ("sgd", "m3_k15", "sgd_norm_k15")),
    # A second model and dataset: the small CNN on CIFAR-10 JPEGs.
    Cell("cifar10_noise025_n10000", 0.25, 10_000, 100, (0, 1, 2), (*SGD_FAMILY, "m3", "m3_k9"),
         data="cifar10"),
)
QUICK_CELLS = (Cell("noise050_n600", 0.5, 600, 2, (0, 1), (*SGD_FAMILY[:2], "m3", "m3_k15",
               "sgd_norm_k15", "median_meannorm_k15", "ra3", "rm3")),)
CNN = {
    "data.augment": "none",  # the W&S comparisons train without augmentation
    "optimizer.schedule": "constant",
    "model": dict(name="cnn", features=(32, 64), hidden=128, dtype="float32"),
}


def cell_runs(cell: Cell, quick: bool) -> dict[str, list[R.Run]]:
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
            overrides |= {"model.hidden": R.QUICK_MLP["model.hidden"]}
            batch = 24 if opt == "sgd" else 8
        run = R.Run(
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
        runs[key] = R.seeded(run, cell.seeds)
    return runs


def plan(args) -> dict[Cell, dict[str, list[R.Run]]]:
    """The selected cells (``--cells``; all by default) and their runs."""
    cells = QUICK_CELLS if args.quick else CELLS
    chosen = [c for c in cells if not args.cells or c.name in args.cells]
    return {cell: cell_runs(cell, args.quick) for cell in chosen}


def training_order(cells: dict[Cell, dict[str, list[R.Run]]]) -> list[R.Run]:
    """Every run, the most informative first, so that a study stopped early has whole
    seeds: the 4,000-example cells on 3 seeds, the 10,000-example cells, the other seeds,
    the long runs, the CIFAR-10 cell."""

    def tier(cell: Cell, seed: int) -> int:
        if cell.data != "mnist":
            return 4
        if cell.epochs > 250:
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


def cells_arg(text: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if unknown := sorted(set(names) - {c.name for c in (*CELLS, *QUICK_CELLS)}):
        valid = ", ".join(c.name for c in CELLS)
        raise argparse.ArgumentTypeError(f"unknown cells {unknown}; valid: {valid}")
    return names


SHARD_HELP = (
    "train only runs I, I+N, ... of the study (in its training order) and write no page: one "
    "process per core (e.g. under `taskset -c I`); then run without --shard for the page"
)
ARGS = [
    (("--shard",), dict(metavar="I/N", type=shard_arg, help=SHARD_HELP)),
    (("--cells",), dict(default=(), type=cells_arg, help="comma-separated cells (default: all)")),
    (
        ("--no-train",),
        dict(
            action="store_true",
            help="write the page from the finished and archived runs only; list the missing",
        ),
    ),
]


def train(args):
    """Trains (or reuses) the selected runs; cell -> key -> one entry per seed (None for a
    run neither finished nor archived, with ``--no-train``)."""
    cells, archive = plan(args), R.load_archive(args.out)
    if args.shard:
        (i, n) = args.shard
        for run in training_order(cells)[i::n]:
            R.finished(run, args, archive, train_missing=True)
        R.say(f"median: shard {i}/{n} trained; run without --shard to write the page")
        raise SystemExit(0)
    entries = {
        run.dir: R.finished(run, args, archive, train_missing=not args.no_train)
        for run in training_order(cells)
    }
    return {
        cell: {key: [entries[run.dir] for run in runs] for key, runs in keyed.items()}
        for cell, keyed in cells.items()
    }


def effect(name: str, base: str, mem: tuple, test: tuple, n: int) -> str:
    """One verdict: the memorization difference with its interval, the test one beside."""
    mid, lo, hi = (100 * v for v in mem)
    verdict = "memorizes less than" if hi < 0 else "memorizes more than" if lo > 0 else None
    verdict = verdict or "shows **no effect** on memorization against"
    return (
        f"- {name} {verdict} {base}: corrupt-noisy accuracy {mid:+.1f} points (95% CI "
        f"{lo:+.1f} to {hi:+.1f}, paired by seed, n = {n}); test accuracy "
        f"{100 * test[0]:+.1f} points ({100 * test[1]:+.1f} to {100 * test[2]:+.1f})."
    )


def dose_slope(mem: dict[str, list[float]], ks, n: int) -> tuple[float, float, float]:
    """The dose-response: per seed (the first ``n``), the least-squares slope of memorization
    (points) against log2 k, i.e. points per doubling of k; its mean and 95% t-interval."""
    by_seed = np.array([mem[DOSE[k]][:n] for k in ks]).T  # (seeds, len(ks))
    slopes = [np.polyfit(np.log2(ks), 100 * row, 1)[0] for row in by_seed]
    return paired_difference(slopes, [0.0] * len(slopes))  # a one-sample t-interval


def slope_line(slope: tuple[float, float, float], ks, n: int) -> str:
    mid, lo, hi = slope
    trend = "falls" if hi < 0 else "rises" if lo > 0 else "stays **flat** (no trend)"
    return (
        f"- Dose-response: as k grows ({', '.join(map(str, ks))}) at {PER_UPDATE} examples per "
        f"update, memorization {trend}: {mid:+.1f} points per doubling of k (95% CI {lo:+.1f} "
        f"to {hi:+.1f}, over {n} seeds)."
    )


def cell_section(args, cell, dirs: dict[str, list[Path]]) -> tuple[list[str], dict]:
    finals = {key: report.run_finals(d) for key, d in dirs.items()}
    value = {k: {s: [f[f"{s}/top1"] for f in fs] for s in P.SETS} for k, fs in finals.items()}
    mem = {k: v["corrupt_noisy"] for k, v in value.items()}
    names = {"rm3": f"RM3 (batch {GROUP})", "ra3": f"RA3 (batch {GROUP})"}
    names |= {DOSE[k]: f"median of {k} group means of {PER_UPDATE // k}" for k in KS}
    names |= {"sgd": f"SGD, batch {PER_UPDATE} (k = 1)", "m3": f"M3, 3 groups of {GROUP} (k = 3)"}
    ks = [k for k in KS if DOSE[k] in value]
    seeds = {k: len(v) for k, v in mem.items()}  # the dose-only runs may have fewer
    names |= {k: f"{names[k]} (first {n} seeds)" for k, n in seeds.items() if n < seeds["sgd"]}
    columns = ("pristine", "corrupt_noisy", "test")
    rows = [[names[k], *(P.pct(v[s]) for s in columns)] for k, v in value.items()]
    pairs = (*COMPARE, (DOSE[ks[-1]], DOSE[ks[0]]))
    n = {(a, b): min(seeds[a], seeds[b]) for a, b in pairs}
    diff = {
        (a, b, s): paired_difference(value[a][s][: n[a, b]], value[b][s][: n[a, b]])
        for a, b in pairs
        for s in DIFF_SETS
    }
    lines = [
        effect(names[a], names[b], diff[a, b, DIFF_SETS[0]], diff[a, b, DIFF_SETS[1]], n[a, b])
        for a, b in pairs
    ]
    dose_n = min(seeds[DOSE[k]] for k in ks)
    slope, half = dose_slope(mem, ks, dose_n), stats.mean(mem["sgd"]) >= 0.5
    lines += [
        slope_line(slope, ks, dose_n),
        f"- SGD at batch {PER_UPDATE} memorizes {P.pct(mem['sgd'])}% of the corrupt labels: "
        + ("at least half, as the design asks." if half else "**less than half**: train longer."),
    ]
    walls = [R.run_wall_s(d) for ds in dirs.values() for d in ds]
    machines = {R.run_info(d).get("machine", "not recorded") for ds in dirs.values() for d in ds}
    lines.append(
        f"- Trained: {len(walls)} runs, {P.format_seconds(sum(walls))} of wall time in all "
        f"(the longest {P.format_seconds(max(walls))}), on {'; '.join(sorted(machines))}."
    )
    figure = f"dose_{cell[0]:.2f}_{cell[1]}.png"
    plots.plot_against(
        {k: value[DOSE[k]] for k in ks},
        Path(args.out) / figure,
        xlabel=f"k, the number of groups ({PER_UPDATE} examples per update)",
        title=f"{cell[0]:.0%} noise, {cell[1]:,} examples",
    )
    section = [
        f"## {cell[0]:.0%} label noise, {cell[1]:,} training examples",
        report.markdown_table(
            ["run", "pristine (train)", "corrupt, noisy label (memorization)", "test"], rows
        ),
        f"![memorization and test accuracy against k]({figure})",
        "\n".join(lines),
    ]
    effects = {f"{a}-{b}": diff[a, b, "corrupt_noisy"] for a, b in pairs}  # ks[-1]-sgd: dose
    tests = {f"{a}-{b}": diff[a, b, "test"] for a, b in pairs}
    got = {"effects": effects, "test_effects": tests, "slope": slope, "values": value}
    return section, got | {"verdicts": lines, "sgd_half": half}


def summary_row(cell, got) -> dict[str, str]:
    """The README's row of one cell: the two pairs' differences and the dose-response slope."""
    ci = lambda d: f"{d[0]:+.1f} ({d[1]:+.1f} to {d[2]:+.1f})"  # noqa: E731  (points)
    e, v = {k: [100 * x for x in d] for k, d in got["effects"].items()}, got["values"]
    measured = (
        f"memorization (corrupt, noisy label, %): SGD b{PER_UPDATE} "
        f"{P.pct(v['sgd']['corrupt_noisy'])}, M3 {P.pct(v['m3']['corrupt_noisy'])}, RA3 "
        f"{P.pct(v['ra3']['corrupt_noisy'])}, RM3 {P.pct(v['rm3']['corrupt_noisy'])}; paired "
        f"difference, points (95% CI): M3 − SGD {ci(e['m3-sgd'])}, RM3 − RA3 {ci(e['rm3-ra3'])}"
        f"; per doubling of k: {ci(got['slope'])}"
    )
    less = [got["effects"][f"{a}-{b}"][2] < 0 for a, b in COMPARE] + [got["slope"][2] < 0]
    return {
        "study": "Is it the median?",
        "setting": f"MNIST, MLP 2048, {cell[0]:.0%} noise, {cell[1]:,} examples, "
        f"{PER_UPDATE} examples per update",
        "measured": measured,
        "prediction": "M3 and RM3 memorize less than their mean-gradient twins; "
        "memorization falls as k grows",
        "match": "yes" if all(less) else "partly" if any(less) else "no",
    }


def verdict(results: dict[str, dict]) -> str:
    """The page's first section: over all cells, how often each comparison came out which way."""
    lines = ["## Verdict (each cell below gives the numbers)", ""]
    for pair, what, unit in (
        ("m3-sgd", "M3 memorizes less than SGD with the same examples and updates", "points"),
        ("rm3-ra3", "RM3 memorizes less than RA3 (mean of the same gradients)", "points"),
        ("slope", "Memorization falls as the number of groups k grows", "points per doubling"),
    ):
        ways = [(r["slope"] if pair == "slope" else r["effects"][pair]) for r in results.values()]
        less, more = sum(hi < 0 for _, _, hi in ways), sum(lo > 0 for _, lo, _ in ways)
        mids = ", ".join(f"{m * (1 if pair == 'slope' else 100):+.1f}" for m, _, _ in ways)
        lines.append(
            f"- {what}: in {less} of {len(ways)} cells (the opposite in {more}, no effect in "
            f"{len(ways) - less - more}; 95% CIs). Mean differences, cells in page order: "
            f"{mids} {unit}."
        )
    return "\n".join(lines)


def page(args, trained) -> P.Page:
    sections, results, summary = [], {}, []
    for cell, dirs in trained.items():
        section, got = cell_section(args, cell, dirs)
        sections, results[f"{cell[0]}_{cell[1]}"] = sections + section, got
        summary.append(summary_row(cell, got))
    sections = [verdict(results), *sections]
    data = (
        f"real MNIST IDX files ({args.mnist}); per cell a seeded subset of the training split "
        f"and {HELDOUT:,} other examples held out as the test set"
    )
    walls = [R.run_wall_s(d) for keyed in trained.values() for ds in keyed.values() for d in ds]
    epochs = ", ".join(f"{n:,} examples: {e}" for n, e in EPOCHS.items())
    return P.Page(
        title="Is it the median? Suppressors against their mean-gradient twins",
        seeds=QUICK["seeds"] if args.quick else SEEDS,
        data=data,
        body=sections,
        runs_wall_s=sum(walls),
        extra={
            "Runs": f"{PER_UPDATE} examples per update in every run, so the same examples and "
            "number of updates; lr 0.1, constant, no momentum; uniform label noise (W&S scheme, "
            "noise seed 0); the MLP has no BatchNorm, so `optimizer.m3_batch_stats` plays no part",
            "Epochs": str(QUICK["epochs"])
            if args.quick
            else f"{epochs}; evaluated every "
            f"{EVAL_EVERY} epochs and at the end (the tables: the end)",
        },
        payload={"cells": results, "summary": summary},
    )
