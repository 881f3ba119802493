r"""Label noise (CG §3; W&S Fig. 1): pristine vs corrupt examples at 0-100% noise.

The CG MLP (2048 ReLUs), SGD lr 0.1, batch 100, on a seeded subset of 2,000 MNIST images
whose labels are redrawn uniformly with probability p; tested on 2,000 held-out ones. CGH
predicts (1) pristine examples are learned faster than corrupt ones, (2) learning slows as
the noise grows. About 8 minutes on 2 CPU cores::

  python -m studies label_noise --out docs/results/label_noise
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from cgh_jax import study
from cgh_jax import study_cli as S
from cgh_jax.analysis import examples, plots, report
from cgh_jax.analysis import label_noise as L
from studies.common import cg_page, cg_sgd

NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUBSET, HELDOUT, EPOCHS, EVAL_CAP = 2_000, 2_000, 60, 1_000
QUICK_LEVELS, QUICK_SUBSET = (0.0, 0.5), (600, 200)


def plan(quick: bool) -> dict[float, S.RunRecipe]:
    """One run per noise level: the paper's config on the subset, data per ``--quick``."""
    subset = QUICK_SUBSET if quick else (SUBSET, HELDOUT)
    return {
        noise: cg_sgd(f"noise{round(noise * 100):03d}", noise, EPOCHS, quick, subset, EVAL_CAP)
        for noise in (QUICK_LEVELS if quick else NOISE_LEVELS)
    }


def train(args):
    return {noise: S.train(run, args) for noise, run in plan(args.quick).items()}


def summary_item(rows: list[dict], epochs: float) -> dict[str, str]:
    """The row of the README's summary table (computed, like the verdicts)."""
    noisy, _, p1, p2 = L.predictions(rows)
    measured = "; ".join(
        f"{L.label(r['noise'])}: pristine {report.pct(r['pristine_ep1'])}% vs corrupt "
        f"{report.pct(r['corrupt_ep1'])}% after 1 epoch, corrupt "
        f"{report.pct(r['final'].get('corrupt_noisy/top1', math.nan))}% after {epochs:g}"
        for r in noisy
    )
    return {
        "study": "Label noise (CG §3, W&S Fig. 1)",
        "setting": "MNIST, MLP 2048, SGD lr 0.1, noise 0-100%",
        "measured": measured,
        "prediction": "pristine learned faster than corrupt; slower as noise grows",
        "match": report.match([p1, p2]),
    }


def row(noise: float, run_dir: Path, cfg) -> dict:
    records = report.load_metrics(run_dir)
    final = report.final_metrics(records)
    pristine, corrupt = examples.noise_counts(cfg.data)
    row = dict(noise=noise, num_pristine=pristine, num_corrupt=corrupt)
    for name, key in (("pristine", "pristine/top1"), ("corrupt", "corrupt_noisy/top1")):
        row[f"{name}_ep1"] = report.value_at_epoch(records, key, 1)
        row[f"{name}_to_50"] = report.first_epoch_at_least(records, key, 0.5)
    row.update(final={k: v for k, v in final.items() if "/" in k}, epochs=final["epoch"])
    return {**row, "eval_subset": cfg.data.eval_subset_size, "wall_s": study.run_wall_s(run_dir)}


COLUMNS = (
    "noise|corrupt examples|pristine, after 1 epoch|corrupt (noisy label), after 1 epoch|"
    "epoch pristine ≥ 50%|epoch corrupt ≥ 50%|final pristine|final corrupt (noisy label)|"
    "final corrupt (true label)|final test|run wall time"
).split("|")


def table_row(r: dict) -> list[str]:
    epochs = ("—" if math.isnan(e) else f"{e:g}" for e in (r["pristine_to_50"], r["corrupt_to_50"]))
    return [
        L.label(r["noise"]),
        f"{r['num_corrupt']:,} / {r['num_pristine'] + r['num_corrupt']:,}",
        *(report.pct(r[f"{k}_ep1"]) for k in ("pristine", "corrupt")),
        *epochs,
        *(report.pct(r["final"].get(f"{k}/top1", math.nan)) for k in report.DEFAULT_SETS),
        report.format_seconds(r["wall_s"]),
    ]


def page(args, trained) -> report.Page:
    out = Path(args.out)
    metrics = {noise: report.load_metrics(d) for noise, (d, _) in trained.items()}
    title = "MNIST, MLP 2048, SGD lr 0.1, batch 100: accuracy against epochs"
    curves = {L.label(n): m for n, m in metrics.items()}
    plots.plot_accuracy_curves(
        curves, sets=report.DEFAULT_SETS, path=out / "curves.png", title=title
    )
    plots.plot_memorization_rates(curves, out / "rates.png")
    rows = [row(noise, d, cfg) for noise, (d, cfg) in trained.items()]
    cfg0 = next(iter(trained.values()))[1]
    epochs = cfg0.num_epochs
    body = [
        "## Results",
        "Top-1 accuracy in %. *Corrupt (noisy label)* is memorization: agreement with the "
        "wrong label the example was trained on.",
        report.markdown_table(COLUMNS, [table_row(r) for r in rows]),
        "![accuracy curves per noise level](curves.png)",
        "![pristine and corrupt accuracy for all noise levels](rates.png)",
        "## What CGH predicts, and what happened",
        "\n".join(L.verdicts(rows, epochs)),
        f"Runs: `{os.path.relpath(args.workdir, S.REPO)}/<noiseNNN>/metrics.jsonl`.",
    ]
    data = (
        f"training on a seeded random subset of {SUBSET:,} of the 60,000 training examples; "
        f"test: {HELDOUT:,} other training-split examples held out, with their true labels "
        f"(one permutation by numpy default_rng({S.SUBSET_SEED}) cut into the two parts)"
    )
    return cg_page(
        args,
        "Label noise: pristine vs corrupt examples (CG §3, W&S Figure 1)",
        cfg0,
        "no momentum, no weight decay, constant learning rate",
        data,
        body=body,
        runs_wall_s=sum(r["wall_s"] for r in rows),
        extra={
            "Label noise": "W&S `uniform` scheme, noise seed 0: with probability p the label "
            "is redrawn uniformly over all 10 classes; corrupt = label changed",
            "Epochs": f"{epochs}; accuracies measured before each epoch and after the last on "
            f"evaluation subsets of up to {EVAL_CAP:,} pristine and {EVAL_CAP:,} corrupt "
            "training examples (all of a set when smaller)",
        },
        payload={
            "epochs": epochs,
            "subset": None if args.quick else SUBSET,
            "rows": rows,
            "verdicts": L.verdicts(rows, epochs),
            "summary": [summary_item(rows, epochs)],
        },
    )
