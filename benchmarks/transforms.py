"""Cost of the Coherent Gradients transforms relative to plain SGD.

Prints two tables:

(a) the throughput (bytes read + written per second) of the exact median-of-3 kernel
    (``median3``, a min/max network; reads 3 arrays of N floats, writes one) as a fraction
    of the throughput of a plain jit-compiled copy: of N floats (same output size) and of
    2N floats (same total bytes, 4N floats). A mean-of-3 kernel ((a + b + c) / 3, the same
    traffic as the median) is shown for comparison.
(b) the time of one step of the trainer's own train step (``cgh_jax.step.build_steps``
    with an ``OptimizerSpec``: forward, backward, optimizer, parameter update, the step's
    metrics) with ``m3_sgd``, ``rm3_sgd`` and ``ra3_sgd`` relative to SGD at the same global
    batch, on an MLP and on a small CNN. M3 computes 3 group-mean gradients with
    ``cgh_jax.grouped_grads`` (3 groups of batch/3 examples, ``m3_layout='vmap'``); the
    others one gradient of the whole batch; ``m3_sgd*`` is M3 with ``m3_layout='loop'`` (an
    unrolled loop over the groups instead of ``jax.vmap``). The steps are jit-compiled with
    the state donated and timed side by side in one process: each round times every method
    once (in rotating order), and the table shows the median over rounds.

Usage, from the repository root::

    PYTHONPATH=. python benchmarks/transforms.py     # defaults used in docs/benchmarks.md
    PYTHONPATH=. python benchmarks/transforms.py --rounds 5 --steps 5 --median-size 4194304
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks.common import StepRunner, TrainerStep, num_params, optimizer_spec
from cgh_jax import sharding as sharding_lib
from cgh_jax.optim import median3


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` (which must block) over ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_median_kernel(size: int, repeats: int) -> None:
    keys = jax.random.split(jax.random.key(0), 4)
    a, b, c = (jax.random.normal(k, (size,), jnp.float32) for k in keys[:3])
    x2 = jax.random.normal(keys[3], (2 * size,), jnp.float32)
    kernels = {
        # name: (jitted kernel, args, bytes moved)
        "copy N -> N": (jax.jit(jnp.copy), (a,), 2 * size * 4),
        "copy 2N -> 2N": (jax.jit(jnp.copy), (x2,), 4 * size * 4),
        "median3 3N -> N": (jax.jit(median3), (a, b, c), 4 * size * 4),
        "mean3 3N -> N": (jax.jit(lambda a, b, c: (a + b + c) / 3), (a, b, c), 4 * size * 4),
    }
    rates = {}
    for name, (f, args, nbytes) in kernels.items():
        f(*args).block_until_ready()  # compile
        t = _time(lambda f=f, args=args: f(*args).block_until_ready(), repeats)
        rates[name] = (t, nbytes / t)
    print(f"(a) median kernel, N = {size:,} float32 ({size * 4 / 2**20:.0f} MiB per array)")
    print(f"    {'kernel':<18}{'time (ms)':>10}{'GB/s':>8}{'/ copy N':>10}{'/ copy 2N':>11}")
    for name, (t, rate) in rates.items():
        print(
            f"    {name:<18}{t * 1e3:>10.2f}{rate / 1e9:>8.2f}"
            f"{rate / rates['copy N -> N'][1]:>10.2f}{rate / rates['copy 2N -> 2N'][1]:>11.2f}"
        )


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(2048)(x))
        return nn.Dense(10)(x)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


METHODS = {"sgd": "sgd", "m3_sgd": "m3", "m3_sgd*": "m3_loop", "rm3_sgd": "rm3", "ra3_sgd": "ra3"}
"""Printed name -> benchmark variant (:data:`benchmarks.common.VARIANTS`)."""


def bench_steps(name: str, model: nn.Module, batch_size: int, steps: int, rounds: int) -> None:
    mesh = sharding_lib.create_mesh(1)
    runners, count = {}, 0
    for method, variant in METHODS.items():
        spec = optimizer_spec(variant, examples_per_update=batch_size, learning_rate=0.01)
        trainer = TrainerStep(model, spec, mesh, (28, 28, 1))
        state = trainer.init_state()
        batch = trainer.random_batch(batch_size, num_classes=10)
        count = num_params(state.params)
        runners[method] = StepRunner(trainer.compile(batch, state), state, batch)
        jax.block_until_ready(runners[method]())  # the first step, outside the timings

    def run(method):
        start = time.perf_counter()
        for _ in range(steps):
            out = runners[method]()
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / steps

    names = list(METHODS)
    times = {m: [] for m in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for m in order:
            times[m].append(run(m))
    base = statistics.median(times["sgd"])
    print(f"    {name} ({count:,} params), batch {batch_size}:")
    for m in names:
        t = statistics.median(times[m])
        print(f"      {m:<10}{t * 1e3:>9.2f} ms{t / base:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--median-size", type=int, default=1 << 24)
    parser.add_argument("--kernel-repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timings per method")
    args = parser.parse_args()
    if args.batch_size % 3:
        parser.error("--batch-size must be a multiple of 3 (M3 splits it into 3 groups).")

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU core(s), {platform.machine()}"
    )
    bench_median_kernel(args.median_size, args.kernel_repeats)
    print("(b) trainer step time relative to SGD (median over rounds)")
    print(f"      {'method':<10}{'time/step':>12}{'ratio':>8}")
    bench_steps("MLP 784-2048-10", MLP(), args.batch_size, args.steps, args.rounds)
    bench_steps("CNN c16-c32-d10", SmallCNN(), args.batch_size, args.steps, args.rounds)
    print("    * m3_sgd with m3_layout='loop': a loop over the 3 groups instead of jax.vmap")


if __name__ == "__main__":
    main()
