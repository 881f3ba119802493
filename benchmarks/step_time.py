"""Step time of M3, RM3 and RA3 relative to SGD for narrow ResNets on this CPU.

The trainer's own train step (``cgh_jax.step.build_steps`` with an ``OptimizerSpec``:
gradient, optimizer, parameter update and the step's metrics; BatchNorm statistics carried,
the state donated) at the same global batch for every optimizer (M3: ``3 x batch/3``),
measured side by side in one process (``m3``: ``m3_layout='vmap'``; ``m3_loop``:
``m3_layout='loop'``, the three group gradients in an unrolled loop): every repetition runs
each optimizer in turn,
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

from benchmarks.common import (  # noqa: E402
    StepRunner,
    TrainerStep,
    interleaved_step_times,
    markdown_table,
    median,
    num_params,
    optimizer_spec,
)
from cgh_jax import sharding as sharding_lib  # noqa: E402
from cgh_jax.models import get_model  # noqa: E402

OPTIMIZERS = ("sgd", "m3", "m3_loop", "rm3", "ra3")
MODELS = {
    "resnet_tiny": {},  # (1, 1, 1, 1) BasicBlocks, width 8
    "resnet18_w16": {"width": 16, "stem": "cifar"},  # ResNet-18 layout, width 16
}


def build_runners(model_name: str, batch_size: int):
    base = "resnet18" if model_name.startswith("resnet18") else model_name
    model = get_model(base, num_classes=10, **MODELS[model_name])
    mesh = sharding_lib.create_mesh(1)
    runners, count = {}, 0
    for opt in OPTIMIZERS:
        spec = optimizer_spec(opt, examples_per_update=batch_size)
        trainer = TrainerStep(model, spec, mesh, (32, 32, 3))
        state = trainer.init_state()
        batch = trainer.random_batch(batch_size, num_classes=10)
        count = num_params(state.params)
        runners[opt] = StepRunner(trainer.compile(batch, state), state, batch)
    return runners, count


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
