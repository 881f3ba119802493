r"""Is it the median? M3 and RM3 against their mean-gradient twins at equal updates.

On MNIST (CG MLP, lr 0.1, uniform label noise 25% and 50%, 4,000 and 20,000 training
examples, 2,000 held out) every pair sees the same examples in the same number of updates:
(a) M3 (median of 3 group means of 100) vs SGD at batch 300, and RM3 vs RA3 (median vs mean
of the last three gradients); (b) the median of k group means for k = 1, 3, 5, 9, 15 at 360
examples per update. Differences in memorization (``corrupt_noisy``) are paired by seed with a
95% t-interval; test accuracy beside it. The runs are long; train them where there is time::

  python -m studies median --out docs/results/median
"""

from __future__ import annotations

from pathlib import Path

from cgh_jax.analysis import plots, report, stats
from cgh_jax.analysis.stats import paired_difference
from studies import page as P
from studies import runs as R

NOISES, SIZES, SEEDS, HELDOUT, EVAL_CAP = (
    (0.25, 0.5),
    (4_000, 20_000),
    (0, 1, 2, 3, 4),
    2_000,
    1_000,
)
# SGD at batch 300 has memorized >= half of the corrupt labels by then (a one-seed pilot).
EPOCHS = {4_000: 250, 20_000: 200}
PAIRS = {"sgd_b300": ("sgd", 300, 1), "m3": ("m3", 100, 3), "ra3": ("ra3", 100, 1)}
PAIRS["rm3"] = ("rm3", 100, 1)  # key: (optimizer, batch, groups)
COMPARE = (("m3", "sgd_b300"), ("rm3", "ra3"))  # (suppressor, its mean-gradient twin)
KS, PER_UPDATE = (1, 3, 5, 9, 15), 360  # the dose-response: k groups of PER_UPDATE / k
QUICK = dict(noises=(0.5,), sizes=(600,), seeds=(0, 1), epochs=1)


def settings(quick: bool) -> dict[str, tuple[str, int, int]]:
    """Run key -> (optimizer, batch per group, groups): the pairs and the dose-response."""
    small = 40 if quick else 100  # --quick: batches 8 fake devices divide
    got = {k: (opt, batch * small // 100, g) for k, (opt, batch, g) in PAIRS.items()}
    return got | {f"m3_k{k}": ("m3", PER_UPDATE // k, k) for k in KS}


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
            cells[noise, size] = {
                key: R.seeded(
                    R.Run(
                        f"{cell}/{key}",
                        "mnist_cg",
                        f"opt={opt},noise={noise},scheme=uniform,net=2048,batch={batch}",
                        {"num_epochs": epochs}
                        | ({"optimizer.num_groups": groups} if opt == "m3" else {})
                        | ({"model.hidden": R.QUICK_MLP["model.hidden"]} if quick else {}),
                        subset=(size, 200 if quick else HELDOUT),
                        subset_dir=cell,
                        eval_cap=EVAL_CAP,
                    ),
                    seeds,
                )
                for key, (opt, batch, groups) in settings(quick).items()
            }
    return cells


def train(args):
    return {
        cell: {key: [R.train(run, args)[0] for run in runs] for key, runs in keyed.items()}
        for cell, keyed in plan(args.quick).items()
    }


def effect(name: str, base: str, mem: tuple, test: tuple) -> str:
    """One verdict: the memorization difference with its interval, the test one beside."""
    mid, lo, hi = (100 * v for v in mem)
    verdict = "memorizes less than" if hi < 0 else "memorizes more than" if lo > 0 else None
    verdict = verdict or "shows **no effect** on memorization against"
    return (
        f"- {name} {verdict} {base}: corrupt-noisy accuracy {mid:+.1f} points (95% CI "
        f"{lo:+.1f} to {hi:+.1f}, paired by seed); test accuracy {100 * test[0]:+.1f} points "
        f"({100 * test[1]:+.1f} to {100 * test[2]:+.1f})."
    )


def cell_section(args, cell, dirs: dict[str, list[Path]]) -> tuple[list[str], dict]:
    finals = {key: report.run_finals(d) for key, d in dirs.items()}
    value = {k: {s: [f[f"{s}/top1"] for f in fs] for s in P.SETS} for k, fs in finals.items()}
    mem = {k: v["corrupt_noisy"] for k, v in value.items()}
    names = {"sgd_b300": "SGD, batch 300", "m3": "M3", "rm3": "RM3", "ra3": "RA3"}
    names |= {f"m3_k{k}": f"median of {k} group means of {PER_UPDATE // k}" for k in KS}
    rows = [[names[k], *(P.pct(v[s]) for s in ("corrupt_noisy", "test"))] for k, v in value.items()]
    tests = {(a, b): paired_difference(value[a]["test"], value[b]["test"]) for a, b in COMPARE}
    effects = {(a, b): paired_difference(mem[a], mem[b]) for a, b in COMPARE}
    dose = paired_difference(mem[f"m3_k{KS[-1]}"], mem[f"m3_k{KS[0]}"])
    dose_test = paired_difference(value[f"m3_k{KS[-1]}"]["test"], value[f"m3_k{KS[0]}"]["test"])
    lines = [effect(names[a], names[b], effects[a, b], tests[a, b]) for a, b in COMPARE]
    lines.append(effect(names[f"m3_k{KS[-1]}"], names[f"m3_k{KS[0]}"], dose, dose_test))
    half = stats.mean(mem["sgd_b300"]) >= 0.5
    lines.append(
        f"- SGD at batch 300 memorizes {P.pct(mem['sgd_b300'])}% of the corrupt labels: "
        + ("at least half, as the design asks." if half else "**less than half**: train longer.")
    )
    figure = f"dose_{cell[0]:.2f}_{cell[1]}.png"
    plots.plot_against(
        {k: value[f"m3_k{k}"] for k in KS},
        Path(args.out) / figure,
        xlabel=f"k (groups of {PER_UPDATE} examples per update)",
        title=f"{cell[0]:.0%} noise, {cell[1]:,} examples",
    )
    section = [
        f"## {cell[0]:.0%} label noise, {cell[1]:,} training examples",
        report.markdown_table(["run", "corrupt, noisy label (memorization)", "test"], rows),
        f"![memorization and test accuracy against k]({figure})",
        "\n".join(lines),
    ]
    result = {"effects": {f"{a}-{b}": effects[a, b] for a, b in COMPARE}, "dose": dose}
    return section, {**result, "values": value, "verdicts": lines, "sgd_half": half}


def page(args, trained) -> P.Page:
    sections, results, summary = [], {}, []
    for cell, dirs in trained.items():
        lines, results[f"{cell[0]}_{cell[1]}"] = cell_section(args, cell, dirs)
        sections += lines
        less = [results[f"{cell[0]}_{cell[1]}"]["effects"][f"{a}-{b}"][2] < 0 for a, b in COMPARE]
        summary.append(
            {
                "study": "Is it the median?",
                "setting": f"MNIST, MLP 2048, {cell[0]:.0%} noise, {cell[1]:,} examples",
                "measured": "; ".join(line.removeprefix("- ") for line in lines[:2]),
                "prediction": "M3 and RM3 memorize less than their mean-gradient twins",
                "match": "yes" if all(less) else "partly" if any(less) else "no",
            }
        )
    data = (
        f"real MNIST IDX files ({args.mnist}); per cell a seeded subset of the training split "
        f"and {HELDOUT:,} other examples held out as the test set"
    )
    walls = [R.run_wall_s(d) for keyed in trained.values() for ds in keyed.values() for d in ds]
    return P.Page(
        title="Is it the median? Suppressors against their mean-gradient twins",
        seeds=QUICK["seeds"] if args.quick else SEEDS,
        data=data,
        body=sections,
        runs_wall_s=sum(walls),
        extra={
            "Pairs": "the same examples per update and number of updates within each pair; "
            "lr 0.1, constant, no momentum; uniform label noise (W&S scheme, noise seed 0)",
            "Epochs": str(QUICK["epochs"])
            if args.quick
            else ", ".join(f"{n:,} examples: {e}" for n, e in EPOCHS.items()),
        },
        payload={"cells": results, "summary": summary},
    )
