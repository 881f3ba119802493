r"""m-coherence over training, real vs random labels (Chatterjee & Zielinski 2020).

For the per-example gradients :math:`g_1, \dots, g_m` of a fixed sample of :math:`m` training
examples, :math:`\alpha = \lVert \sum_i g_i \rVert^2 / \sum_i \lVert g_i \rVert^2` is 1 when
they are pairwise orthogonal and :math:`m` when identical (below 1 when they cancel). The CG
MLP (2048 ReLUs) is trained by the trainer with SGD (lr 0.1, batch 100) twice on the same
MNIST examples, with real and with random labels (noise 1.0 of the W&S scheme);
``cgh_jax.analysis.CoherenceHook`` measures the sample's :math:`\alpha` and accuracy at steps
spaced logarithmically. CGH expects real labels to be far more coherent early on, and
coherence to fall as the examples are fitted. A few minutes on 2 CPU cores::

  python -m studies coherence --out docs/results/coherence
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from studies import page as P
from studies.runs import (
    SUBSET_SEED,
    Run,
    build_config,
    run_training,
    run_wall_s,
    say,
    train_examples,
)

KINDS = {"real labels": 0.0, "random labels": 1.0}
SUBSET, SAMPLE, CHUNK, EPOCHS, SEED, SAMPLE_SEED = 2_000, 200, 100, 60, 0, 0
STEPS = (0, 3, 10, 30, 100, 300, 600, 1000, 2000, 3000)
HELDOUT, EVAL_CAP = 1_000, 500  # the trainer's per-epoch evaluation, kept small
SETTINGS = {"eval_batch_size": 400, "checkpoint_every_steps": 0, "log_every_steps": 100}
QUICK = {"num_epochs": 2, "model.hidden": (32,), "batch_size": 40}
QUICK_SUBSET, QUICK_SAMPLE, QUICK_CHUNK = (800, 200), 64, 16
POINTS = "coherence.json"  # the measured points, beside the run's metrics.jsonl


def plan(quick: bool) -> dict[str, Run]:
    return {
        kind: Run(
            dir="real" if noise == 0 else "random",
            config="mnist_cg",
            arg=f"opt=sgd,scheme=uniform,net=2048,noise={noise}",
            overrides={**SETTINGS, "num_epochs": EPOCHS, **(QUICK if quick else {})},
            seed=SEED,
            subset=QUICK_SUBSET if quick else (SUBSET, HELDOUT),
            eval_cap=EVAL_CAP,
        )
        for kind, noise in KINDS.items()
    }


def fixed_sample(data_config, size: int, seed: int = SAMPLE_SEED) -> dict[str, np.ndarray]:
    """A seeded random sample of ``size`` training examples, with the labels trained on."""
    got = train_examples(data_config, ("image", "label", "true_label"), batch_size=500)
    if got["label"].size < size:
        raise ValueError(f"The training set has {got['label'].size} examples, fewer than {size}.")
    pick = np.sort(np.random.default_rng(seed).choice(got["label"].size, size, replace=False))
    return {
        "image": got["image"][pick],
        "label": got["label"][pick].astype(np.int32),
        "true_label": got["true_label"][pick].astype(np.int32),
    }


def train(args):
    """Trains both runs with the m-coherence hook; a finished run's points are read back."""
    from cgh_jax.analysis import CoherenceHook

    m, chunk = (QUICK_SAMPLE, QUICK_CHUNK) if args.quick else (SAMPLE, CHUNK)
    curves, dirs, configs = {}, {}, {}
    for kind, run in plan(args.quick).items():
        cfg, run_dir = build_config(run, args), Path(args.workdir) / run.dir
        hook = CoherenceHook(fixed_sample(cfg.data, m), STEPS, chunk)
        say(f"coherence: training with {kind}, measuring m-coherence of {m} examples")
        run_training(cfg, run_dir, hooks=[hook])
        if hook.points and hook.points[0]["step"] == min(STEPS):
            (run_dir / POINTS).write_text(json.dumps(hook.points, indent=1))
        elif hook.points or not (run_dir / POINTS).exists():
            raise RuntimeError(
                f"{run_dir} has no complete m-coherence points (the run was resumed, or "
                "finished without the hook); delete the run directory and rerun."
            )
        curves[kind], dirs[kind], configs[kind] = _load(run_dir), run_dir, cfg
    return curves, dirs, configs, m, chunk


def _load(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / POINTS).read_text())


def plot(curves: dict[str, list[dict]], path: Path, m: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_alpha, ax_acc = fig.subplots(1, 2)
    colors = {"real labels": "tab:blue", "random labels": "tab:red"}
    for kind, points in curves.items():
        x = [max(p["step"], 0.5) for p in points]
        ax_alpha.plot(x, [p["alpha"] for p in points], marker=".", color=colors[kind], label=kind)
        acc = [100 * p["accuracy"] for p in points]
        ax_acc.plot(x, acc, marker=".", color=colors[kind], label=kind)
    ax_alpha.axhline(1.0, color="gray", lw=0.8, ls="--", label="orthogonal gradients (1)")
    ax_alpha.set_yscale("log")
    ax_alpha.set_ylabel(f"m-coherence α (m = {m:,})")
    ax_alpha.set_title("m-coherence of per-example gradients")
    ax_acc.set_ylabel("accuracy on the sample (%), trained labels")
    ax_acc.set_title("fit of the sample")
    ax_acc.set_ylim(-2, 102)
    for ax in (ax_alpha, ax_acc):
        ax.set_xscale("log")
        ax.set_xlabel("step (step 0 drawn at 0.5)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def verdict(curves: dict[str, list[dict]], m: int) -> list[str]:
    real, rand = curves["real labels"], curves["random labels"]
    by_step = {p["step"]: p for p in rand}
    pairs = [(p, by_step[p["step"]]) for p in real if p["step"] in by_step]
    higher = [a["alpha"] > b["alpha"] for a, b in pairs]
    early = [(a, b) for a, b in pairs if a["step"] <= 100]
    if all(higher):
        lines = [
            f"- **Real labels are more coherent at every measured step** ({len(pairs)} "
            "points): the prediction holds."
        ]
    else:
        lower = [a["step"] for (a, b), h in zip(pairs, higher, strict=True) if not h]
        lines = [
            f"- Real labels are more coherent at {sum(higher)} of {len(pairs)} measured steps; "
            f"not at steps {', '.join(map(str, lower))}."
        ]
    if early:
        ratio = max(a["alpha"] / b["alpha"] for a, b in early if b["alpha"] > 0)
        lines.append(
            f"- Early in training (steps ≤ 100) the real-label coherence is up to "
            f"{ratio:.1f}x the random-label coherence."
        )
    peak, last = max(real, key=lambda p: p["alpha"]), real[-1]
    falls = last["alpha"] < peak["alpha"] / 2
    lines.append(
        f"- Real labels: α peaks at {peak['alpha']:.1f} (step {peak['step']}) and ends at "
        f"{last['alpha']:.1f} (step {last['step']}, sample accuracy "
        f"{100 * last['accuracy']:.1f}%): "
        + (
            "coherence falls as the examples are fitted."
            if falls
            else "coherence does not fall by half within the run."
        )
    )
    lo, hi = min(p["alpha"] for p in rand), max(rand, key=lambda p: p["alpha"])
    early_rand = [p["alpha"] for p in rand if p["step"] <= 100]
    if early_rand and hi["alpha"] > 1.5 * max(early_rand):
        tail = (
            f"; it rises from at most {max(early_rand):.2f} in the first 100 steps to "
            f"{hi['alpha']:.2f} at step {hi['step']} while the network memorizes the random "
            f"labels (sample accuracy {100 * hi['accuracy']:.1f}% there): the coherence that "
            "memorization creates where the labels share none, as in the title of Chatterjee "
            "& Zielinski (2020), *Making Coherence Out of Nothing At All*."
        )
    else:
        tail = (
            f"; sample accuracy on the random labels at the end: {100 * rand[-1]['accuracy']:.1f}%."
        )
    lines.append(
        f"- Random labels: α stays between {lo:.2f} and {hi['alpha']:.2f} (for reference, "
        f"α = 1 for orthogonal gradients and {m:,} for identical ones){tail}"
    )
    return lines


def summary_item(curves: dict[str, list[dict]]) -> dict[str, str]:
    """The README summary row (computed from the curves)."""
    real, rand = curves["real labels"], curves["random labels"]
    by_step = {p["step"]: p for p in rand}
    early = [(p, by_step[p["step"]]) for p in real if p["step"] in by_step and p["step"] <= 100]
    more_coherent = bool(early) and all(a["alpha"] > b["alpha"] for a, b in early)
    peak = max(real, key=lambda p: p["alpha"])
    falls = real[-1]["alpha"] < peak["alpha"] / 2
    return {
        "study": "m-coherence (Chatterjee & Zielinski 2020)",
        "setting": f"MNIST, MLP 2048, SGD; m = {real[0]['m']:,} training examples",
        "measured": f"α real labels: peak {peak['alpha']:.1f} (step {peak['step']}), end "
        f"{real[-1]['alpha']:.1f}; random labels: {min(p['alpha'] for p in rand):.2f} to "
        f"{max(p['alpha'] for p in rand):.2f}",
        "prediction": "real labels far more coherent than random early on; falls as fitted",
        "match": {(True, True): "yes", (False, False): "no"}.get((more_coherent, falls), "partly"),
    }


def page(args, trained) -> P.Page:
    curves, dirs, configs, m, chunk = trained
    plot(curves, Path(args.out) / "coherence.png", m)
    rand_by_step = {p["step"]: p for p in curves["random labels"]}
    rows = []
    for p in curves["real labels"]:
        q = rand_by_step.get(p["step"])
        rows.append(
            [
                f"{p['step']:,}",
                f"{p['epoch']:.2f}",
                f"{p['alpha']:.2f}",
                P.pct(p["accuracy"]),
                f"{q['alpha']:.2f}" if q else "—",
                P.pct(q["accuracy"]) if q else "—",
            ]
        )
    columns = [
        "step",
        "epoch",
        "α, real labels",
        "sample accuracy, real",
        "α, random labels",
        "sample accuracy (random labels)",
    ]
    steps = [p["step"] for p in curves["real labels"]]
    cfg = configs["real labels"]
    walls = {kind: run_wall_s(d) for kind, d in dirs.items()}
    data = (
        P.QUICK_DATA
        if args.quick
        else f"real MNIST IDX files ({args.mnist}); a seeded random subset of {SUBSET:,} "
        f"training examples (numpy default_rng({SUBSET_SEED})); the sample: {m:,} examples of "
        f"the subset drawn by numpy default_rng({SAMPLE_SEED}), with the labels trained on"
    )
    return P.Page(
        title="m-coherence over training: real vs random labels (Chatterjee & Zielinski 2020)",
        seeds=[SEED],
        data=data,
        body=[
            "## Results",
            "",
            P.markdown_table(columns, rows),
            "",
            "![m-coherence and sample accuracy against steps](coherence.png)",
            "",
            "## What CGH expects, and what happened",
            "",
            *verdict(curves, m),
        ],
        runs_wall_s=sum(walls.values()),
        extra={
            "Model and optimizer": f"MLP {'-'.join(str(h) for h in cfg.model.hidden)} (ReLU), "
            f"SGD lr {cfg.optimizer.learning_rate}, batch {cfg.batch_size}, "
            f"{cfg.num_epochs} epochs ({max(steps):,} steps)",
            "Random labels": "noise 1.0 of the W&S `uniform` scheme (every label redrawn "
            "uniformly over the 10 classes, noise seed 0)",
            "Measurement": f"`cgh_jax.analysis.CoherenceHook` (`m_coherence`) on m = {m:,} "
            f"examples in chunks of {chunk}, loss in evaluation mode, at {len(steps)} steps",
            "Wall time per run": ", ".join(f"{k}: {P.format_seconds(v)}" for k, v in walls.items()),
        },
        payload={
            "sample_size": m,
            "curves": curves,
            "verdicts": verdict(curves, m),
            "summary": [summary_item(curves)],
        },
    )
