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
from pathlib import Path

import numpy as np

from cgh_jax.analysis import plots, report, stats
from cgh_jax.analysis.stats import paired_difference
from studies import page as P
from studies import runs as R

NOISES, SIZES, SEEDS, HELDOUT, EVAL_CAP = (
    (0.25, 0.5),
    (4_000, 10_000),
    (0, 1, 2, 3, 4),
    2_000,
    1_000,
)
# SGD at batch 360 memorizes >= half of the corrupt labels by then (a one-seed pilot at 300).
EPOCHS, EVAL_EVERY = {4_000: 250, 10_000: 200}, 10  # evaluations: every 10 epochs and the end
KS, PER_UPDATE = (1, 3, 5, 9, 15), 360  # the dose-response: k groups of PER_UPDATE / k
GROUP = PER_UPDATE // 3  # M3's group batch, and RM3's / RA3's batch
DOSE = {1: "sgd", 3: "m3"} | {k: f"m3_k{k}" for k in KS[2:]}  # k -> run key
SETTINGS = {DOSE[k]: ("sgd" if k == 1 else "m3", PER_UPDATE // k, k) for k in KS}
SETTINGS |= {"rm3": ("rm3", GROUP, 1), "ra3": ("ra3", GROUP, 1)}  # (optimizer, batch, groups)
# At 10,000 examples the dose-response is k = 1, 3 (the pair's runs) and 9, on 3 seeds.
DOSE_AT = {10_000: ((1, 3, 9), 3)}  # size -> (ks, seeds of the other ks); else (KS, all)
COMPARE = (("m3", "sgd"), ("rm3", "ra3"))  # (suppressor, its mean-gradient twin)
PAIRED = ("sgd", "m3", "rm3", "ra3")  # trained on every seed in every cell
DIFF_SETS = ("corrupt_noisy", "test")  # memorization, and test accuracy beside it
QUICK = dict(noises=(0.5,), sizes=(600,), seeds=(0, 1), epochs=1)  # 8 fake devices divide 24


def plan(quick: bool) -> dict[tuple[float, int], dict[str, list[R.Run]]]:
    """(noise, size) -> run key -> one run per seed."""
    noises, sizes, seeds = (
        (QUICK[k] for k in ("noises", "sizes", "seeds")) if quick else (NOISES, SIZES, SEEDS)
    )
    cells = {}
    for noise in noises:
        for size in sizes:
            cell = f"noise{round(100 * noise):03d}_n{size}"
            epochs = QUICK["epochs"] if quick else EPOCHS[size]
            ks, dose_seeds = DOSE_AT.get(size, (KS, len(seeds)))
            cells[noise, size] = {
                key: R.seeded(
                    R.Run(
                        f"{cell}/{key}",
                        "mnist_cg",
                        f"opt={opt},noise={noise},scheme=uniform,net=2048,batch={batch}",
                        {"num_epochs": epochs, "eval_every_epochs": min(EVAL_EVERY, epochs)}
                        | ({"optimizer.num_groups": groups} if opt == "m3" else {})
                        | ({"model.hidden": R.QUICK_MLP["model.hidden"]} if quick else {}),
                        subset=(size, 200 if quick else HELDOUT),
                        subset_dir=cell,
                        eval_cap=EVAL_CAP,
                    ),
                    seeds if key in PAIRED else seeds[:dose_seeds],
                )
                for key, (opt, batch, groups) in SETTINGS.items()
                if key in PAIRED or groups in ks
            }
    return cells


def shard_arg(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N, e.g. 0/2")
    return int(i), int(n)


SHARD_HELP = (
    "train only runs I, I+N, ... of the study and write no page: one process per core "
    "(e.g. under `taskset -c I`); then run without --shard to write the page"
)
ARGS = [(("--shard",), dict(metavar="I/N", type=shard_arg, help=SHARD_HELP))]


def train(args):
    cells = plan(args.quick)
    if args.shard:
        (i, n), runs = args.shard, [r for k in cells.values() for rs in k.values() for r in rs]
        for run in runs[i::n]:
            R.train(run, args)
        R.say(f"median: shard {i}/{n} trained; run without --shard to write the page")
        raise SystemExit(0)
    return {
        cell: {key: [R.train(run, args)[0] for run in runs] for key, runs in keyed.items()}
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
