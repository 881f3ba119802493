"""Step time of M3, RM3 and RA3 relative to SGD for narrow ResNets on this CPU.

One full train step (gradient, optimizer, parameter update; BatchNorm statistics carried)
at the same global batch for every optimizer (M3: ``3 x batch/3``), measured side by side
in one process (``m3_loop``: M3 with the three group gradients in an unrolled loop,
``grouped_grads(..., vectorize=False)``): every repetition runs each optimizer in turn,
and the table reports the median over repetitions, so all optimizers see the same machine
load. Besides wall time it reports the process's CPU time per step, which other
processes on a shared machine do not inflate. Usage, from the
repository root::

    PYTHONPATH=. python benchmarks/step_time.py [--repeats 7 --min-seconds 1 --batch 96]
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import (  # noqa: E402
    interleaved_step_times,
    make_train_step,
    markdown_table,
    median,
    num_params,
)
from cgh_jax.models import get_model  # noqa: E402

OPTIMIZERS = ("sgd", "m3", "m3_loop", "rm3", "ra3")
MODELS = {
    "resnet_tiny": {},  # (1, 1, 1, 1) BasicBlocks, width 8
    "resnet18_w16": {"width": 16, "stem": "cifar"},  # ResNet-18 layout, width 16
}


def build_runners(model_name: str, batch_size: int):
    base = "resnet18" if model_name.startswith("resnet18") else model_name
    model = get_model(base, num_classes=10, **MODELS[model_name])
    images = jax.random.normal(jax.random.key(0), (batch_size, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(1), (batch_size,), 0, 10)
    batch = {"image": images, "label": labels}
    variables = jax.jit(lambda k: model.init(k, images[:1]))(jax.random.key(2))

    def loss_fn(params, batch, stats):
        logits, new = model.apply(
            {"params": params, "batch_stats": stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new["batch_stats"]

    runners = {}
    for opt in OPTIMIZERS:
        tx, step = make_train_step(loss_fn, opt, has_state=True)
        state = [
            jax.tree.map(jnp.copy, variables["params"]),
            jax.tree.map(jnp.copy, variables["batch_stats"]),
            tx.init(variables["params"]),
        ]
        compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, batch).compile()

        def run(state=state, compiled=compiled):
            state[:] = compiled(*state, batch)
            return state[0]

        runners[opt] = run
    return runners, num_params(variables["params"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=96, help="global batch (multiple of 3)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="length of each timed repetition"
    )
    args = parser.parse_args(argv)
    print(f"# {jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}")
    rows = []
    for name in args.models.split(","):
        runners, count = build_runners(name, args.batch)
        wall, cpu = interleaved_step_times(
            runners, repeats=args.repeats, min_seconds=args.min_seconds
        )
        for opt in OPTIMIZERS:
            ratios = sorted(t / s for t, s in zip(wall[opt], wall["sgd"], strict=True))
            rows.append(
                [
                    f"{name} ({count / 1e6:.3f}M)",
                    opt,
                    f"3x{args.batch // 3}" if opt.startswith("m3") else str(args.batch),
                    f"{1e3 * median(wall[opt]):.1f}",
                    f"{median(wall[opt]) / median(wall['sgd']):.3f}",
                    f"{ratios[0]:.2f}-{ratios[-1]:.2f}",
                    f"{1e3 * median(cpu[opt]):.1f}",
                    f"{median(cpu[opt]) / median(cpu['sgd']):.3f}",
                ]
            )
        print(markdown_table(HEADERS, rows[-len(OPTIMIZERS) :]), flush=True)
    print(f"\n## Step time, median of {args.repeats} repetitions of >= {args.min_seconds} s\n")
    print(markdown_table(HEADERS, rows))
    return 0


HEADERS = [
    "model (params)",
    "optimizer",
    "batch",
    "wall ms/step",
    "vs SGD (wall)",
    "per-repetition range (wall)",
    "CPU ms/step",
    "vs SGD (CPU)",
]

if __name__ == "__main__":
    raise SystemExit(main())
