r"""m-coherence over training, real vs random labels (Chatterjee & Zielinski 2020).

The CG MLP trains with SGD on the same 2,000 MNIST images twice, with real and with random
labels; ``cgh_jax.analysis.CoherenceHook`` measures the m-coherence
:math:`\alpha = \lVert \sum_i g_i \rVert^2 / \sum_i \lVert g_i \rVert^2` of a fixed sample at steps
spaced logarithmically. CGH expects real labels to be far more coherent early on, and the
coherence to fall as the examples are fitted. A few minutes on 2 CPU cores::

  python -m studies coherence --out docs/results/coherence
"""

from __future__ import annotations

import json
from pathlib import Path

from cgh_jax import study
from cgh_jax import study_cli as S
from cgh_jax.analysis import coherence as C
from cgh_jax.analysis import examples, plots, report
from studies.common import cg_page, cg_sgd

KINDS = {"real labels": 0.0, "random labels": 1.0}
SUBSET, SAMPLE, CHUNK, EPOCHS, SAMPLE_SEED = 2_000, 200, 100, 60, 0
STEPS = (0, 3, 10, 30, 100, 300, 600, 1000, 2000, 3000)
HELDOUT, EVAL_CAP = 1_000, 500  # the trainer's per-epoch evaluation, kept small
QUICK_SUBSET, QUICK_SAMPLE, QUICK_CHUNK = (800, 200), 64, 16
POINTS = "coherence.json"  # the measured points, beside the run's metrics.jsonl


def plan(quick: bool) -> dict[str, S.RunRecipe]:
    subset = QUICK_SUBSET if quick else (SUBSET, HELDOUT)
    return {
        kind: cg_sgd("real" if noise == 0 else "random", noise, EPOCHS, quick, subset, EVAL_CAP)
        for kind, noise in KINDS.items()
    }


def train(args):
    """Trains both runs with the m-coherence hook; a finished run's points are read back."""
    from cgh_jax.analysis import CoherenceHook

    m, chunk = (QUICK_SAMPLE, QUICK_CHUNK) if args.quick else (SAMPLE, CHUNK)
    curves, dirs, configs = {}, {}, {}
    for kind, run in plan(args.quick).items():
        cfg, run_dir = S.build_config(run, args), Path(args.workdir) / run.dir
        hook = CoherenceHook(examples.sample_examples(cfg.data, m, SAMPLE_SEED), STEPS, chunk)
        S.say(f"coherence: training with {kind}, measuring m-coherence of {m} examples")
        study.train_run(study.Run(run.dir, cfg), args.workdir, hooks=[hook])
        if hook.points and hook.points[0]["step"] == min(STEPS):
            (run_dir / POINTS).write_text(json.dumps(hook.points, indent=1))
        elif hook.points or not (run_dir / POINTS).exists():
            raise RuntimeError(
                f"{run_dir} has no complete m-coherence points (the run was resumed, or "
                "finished without the hook); delete the run directory and rerun."
            )
        curves[kind] = json.loads((run_dir / POINTS).read_text())
        dirs[kind], configs[kind] = run_dir, cfg
    return curves, dirs, configs, m, chunk


def summary_item(curves: dict[str, list[dict]]) -> dict[str, str]:
    """The README summary row (computed from the curves)."""
    real, rand, _, early, peak, falls = C.curve_facts(curves)
    more_coherent = bool(early) and all(a["alpha"] > b["alpha"] for a, b in early)
    return {
        "study": "m-coherence (Chatterjee & Zielinski 2020)",
        "setting": f"MNIST, MLP 2048, SGD; m = {real[0]['m']:,} training examples",
        "measured": f"α real labels: peak {peak['alpha']:.1f} (step {peak['step']}), end "
        f"{real[-1]['alpha']:.1f}; random labels: {min(p['alpha'] for p in rand):.2f} to "
        f"{max(p['alpha'] for p in rand):.2f}",
        "prediction": "real labels far more coherent than random early on; falls as fitted",
        "match": report.match([more_coherent, falls]),
    }


def page(args, trained) -> report.Page:
    curves, dirs, configs, m, chunk = trained
    plots.plot_coherence_curves(curves, Path(args.out) / "coherence.png", m=m)
    rand = {p["step"]: p for p in curves["random labels"]}
    rows = [
        [f"{p['step']:,}", f"{p['epoch']:.2f}", f"{p['alpha']:.2f}", report.pct(p["accuracy"])]
        + (
            [f"{q['alpha']:.2f}", report.pct(q["accuracy"])]
            if (q := rand.get(p["step"]))
            else ["—"] * 2
        )
        for p in curves["real labels"]
    ]
    columns = "step|epoch|α, real labels|sample accuracy, real|α, random labels|sample "
    columns = (columns + "accuracy (random labels)").split("|")
    steps = [p["step"] for p in curves["real labels"]]
    cfg = configs["real labels"]
    walls = {kind: study.run_wall_s(d) for kind, d in dirs.items()}
    data = (
        f"a seeded random subset of {SUBSET:,} training examples (numpy default_rng("
        f"{S.SUBSET_SEED})); the sample: {m:,} examples of the subset drawn by numpy "
        f"default_rng({SAMPLE_SEED}), with the labels trained on"
    )
    return cg_page(
        args,
        "m-coherence over training: real vs random labels (Chatterjee & Zielinski 2020)",
        cfg,
        f"{cfg.num_epochs} epochs ({max(steps):,} steps)",
        data,
        body=[
            "## Results",
            report.markdown_table(columns, rows),
            "![m-coherence and sample accuracy against steps](coherence.png)",
            "## What CGH expects, and what happened",
            "\n".join(C.verdict(curves, m)),
        ],
        runs_wall_s=sum(walls.values()),
        extra={
            "Random labels": "noise 1.0 of the W&S `uniform` scheme (every label redrawn "
            "uniformly over the 10 classes, noise seed 0)",
            "Measurement": f"`cgh_jax.analysis.CoherenceHook` (`m_coherence`) on m = {m:,} "
            f"examples in chunks of {chunk}, loss in evaluation mode, at {len(steps)} steps",
            "Wall time per run": ", ".join(
                f"{k}: {report.format_seconds(v)}" for k, v in walls.items()
            ),
        },
        payload={
            "sample_size": m,
            "curves": curves,
            "verdicts": C.verdict(curves, m),
            "summary": [summary_item(curves)],
        },
    )
