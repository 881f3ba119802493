r"""Easy and hard examples (W&S §4): probe, split, then train and test within each side.

A 2-epoch SGD probe of the CG MLP on all MNIST training images labels each example easy
(correct in evaluation mode) or hard; each side is cut into equal-size train/test parts (80% /
20% of the hard side) and a fresh model per side and seed trains on its train part and is
tested on its test part. W&S find easy examples generalize much better among themselves.
About 6 minutes on 2 CPU cores::

  python -m studies easy_hard --out docs/results/easy_hard
"""

from __future__ import annotations

import os
from pathlib import Path

from cgh_jax import study
from cgh_jax import study_cli as S
from cgh_jax.analysis import easy_hard as E
from cgh_jax.analysis import plots, report, stats
from studies.common import QUICK_MLP, mlp_sgd

SIDES = ("easy", "hard")
SEEDS, EPOCHS, PROBE_SEED, SPLIT_SEED = (0, 1, 2), 20, 0, 0
TRAIN_FRACTION, TEST_FRACTION = 0.8, 0.2  # of the smaller (hard) side, per side
QUICK_SEEDS, QUICK_EPOCHS = (0,), 2


def plan(quick: bool) -> tuple[S.RunRecipe, dict[str, list[S.RunRecipe]]]:
    """The probe run, and per side one run per seed on the side's ids; plain SGD (momentum
    0, as the page was measured; the config's default is the authors' 0.9)."""
    small = QUICK_MLP if quick else {}
    probe_set = {**small, "data.eval_subset_size": 400 if quick else 5_000}
    args = "dataset=mnist,momentum=0"
    probe = S.RunRecipe("probe", "easy_hard", f"stage=probe,{args}", probe_set, PROBE_SEED)
    epochs = {**small, "num_epochs": QUICK_EPOCHS if quick else EPOCHS}
    seeds = QUICK_SEEDS if quick else SEEDS
    side_arg = f"{args},ids={{workdir}}/ids"
    return probe, {
        side: S.seeded(S.RunRecipe(side, "easy_hard", f"stage={side},{side_arg}", epochs), seeds)
        for side in SIDES
    }


def train(args):
    probe, sides = plan(args.quick)
    probe_dir, cfg = S.train(probe, args)
    records = probe_dir / "per_example" / f"epoch_{int(cfg.num_epochs):03d}.npz"
    if not records.exists():
        raise FileNotFoundError(f"The probe wrote no per-example records at {records}.")
    ids = Path(args.workdir) / "ids"
    fractions = dict(train_size=TRAIN_FRACTION, test_size=TEST_FRACTION, seed=SPLIT_SEED)
    split = E.make_easy_hard_splits(records, ids, **fractions)
    S.say(f"easy_hard: {split['num_easy']:,} easy, {split['num_hard']:,} hard; {split['sizes']}")
    dirs = {side: [S.train(run, args)[0] for run in runs] for side, runs in sides.items()}
    return probe_dir, cfg, split, dirs


def side_rows(runs: dict[str, list[Path]], sizes: dict[str, int]) -> list[dict]:
    rows = []
    for side, dirs in runs.items():
        finals = report.run_finals(dirs)
        train, test = ([f[f"{k}/top1"] for f in finals] for k in ("train_sample", "test"))
        row = dict(side=side, train_size=sizes[f"{side}_train"], test_size=sizes[f"{side}_test"])
        row.update(train=train, test=test, gap=[a - b for a, b in zip(train, test, strict=True)])
        row.update(epochs=finals[0]["epoch"], wall_s=[study.run_wall_s(d) for d in dirs])
        rows.append(row)
    return rows


def summary_item(rows: list[dict]) -> dict[str, str]:
    """The README summary row (computed from the table)."""
    easy, hard, diff, spread = E.compare_sides(rows)
    return {
        "study": "Easy and hard examples (W&S §4)",
        "setting": f"MNIST, MLP 2048, probe 2 epochs; {easy['train_size']:,} train / "
        f"{easy['test_size']:,} test per side",
        "measured": f"test accuracy easy → easy {report.pct(easy['test'])}%, hard → hard "
        f"{report.pct(hard['test'])}%; generalization gap {report.pct(easy['gap'])} vs "
        f"{report.pct(hard['gap'])} points",
        "prediction": "easy examples generalize much better among themselves than hard ones",
        "match": report.match([diff > 2 * spread]),
    }


COLUMNS = (
    "trained and tested on|train examples|held-out test examples|final train accuracy|"
    "test accuracy|generalization gap (points)|epochs|wall time per run"
).split("|")


def page(args, trained) -> report.Page:
    probe_dir, cfg, split, runs = trained
    out = Path(args.out)
    rows = side_rows(runs, split["sizes"])
    title = "Trained on one side, tested on held-out examples of the same side"
    curves, path = {f"{side} → {side}": dirs for side, dirs in runs.items()}, out / "curves.png"
    plots.plot_accuracy_curves(curves, sets=("train_sample", "test"), path=path, title=title)
    probe_final = report.run_finals([probe_dir])[0]
    table = [
        [f"{r['side']} → {r['side']}", f"{r['train_size']:,}", f"{r['test_size']:,}"]
        + [report.pct(r[k]) for k in ("train", "test", "gap")]
        + [f"{r['epochs']:g}", report.format_seconds(stats.mean(r["wall_s"]))]
        for r in rows
    ]
    hard = split.get("class_counts", {}).get("hard_train", {})
    counts = sorted(hard.items(), key=lambda x: int(x[0]))
    classes = ", ".join(f"{k}: {v}" for k, v in counts)
    seeds = QUICK_SEEDS if args.quick else SEEDS
    ids = os.path.relpath(Path(args.workdir) / "ids", S.REPO)
    body = [
        "## Results",
        "Accuracy in %; the generalization gap is the final training accuracy minus the test "
        "accuracy, in points.",
        report.markdown_table(COLUMNS, table),
        "![train and test accuracy of the easy and hard sides](curves.png)",
        f"True classes of the hard train part (digit: count): {classes}." if counts else "",
        "## What W&S found, and what happened here",
        "\n".join(E.verdict(rows)),
        f"Id files and their summary: `{ids}/` (`easy_hard_summary.json`).",
    ]
    data = (
        f"real MNIST IDX files ({args.mnist}): all 60,000 training examples for the probe; the "
        "easy/hard parts are drawn from them (the MNIST test split is not used)"
    )
    return report.Page(
        title="Easy and hard examples (W&S §4)",
        seeds=list(seeds),
        data=data,
        body=body,
        runs_wall_s=study.run_wall_s(probe_dir) + sum(w for r in rows for w in r["wall_s"]),
        extra={
            "Model and optimizer": f"{mlp_sgd(cfg)}, no momentum",
            "Probe": f"2 epochs on clean labels, seed {PROBE_SEED}; final training-sample "
            f"accuracy {report.pct(probe_final['train_sample/top1'])}%, test "
            f"{report.pct(probe_final['test/top1'])}%",
            "Split": f"easy = correct in evaluation mode after the probe: "
            f"{split['num_easy']:,} easy, {split['num_hard']:,} hard; each side cut into "
            f"train/test parts of {TRAIN_FRACTION:.0%}/{TEST_FRACTION:.0%} of the hard side's "
            f"size (split seed {SPLIT_SEED})",
            "Training within each side": "a fresh model per side and seed, "
            f"{QUICK_EPOCHS if args.quick else EPOCHS} epochs, seeds "
            f"{', '.join(map(str, seeds))} (mean ± sample std)",
        },
        payload={
            "split": {k: v for k, v in split.items() if k != "files"},
            "probe": {k: v for k, v in probe_final.items() if "/" in k},
            "rows": rows,
            "verdicts": E.verdict(rows),
            "summary": [summary_item(rows)],
        },
    )
