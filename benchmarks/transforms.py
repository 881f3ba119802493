"""Cost of the Coherent Gradients transforms relative to plain SGD.

Prints three tables:

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
(c) the exact coordinate-wise median of k arrays (``coordinate_median``, x: [k, N]) for odd
    k from 1 to 31: time per input element (time / (k N)) of the current kernel (pruned
    min/max selection networks on order-preserving integer keys, for every k) next to the
    previous one (an odd-even transposition network for k <= 9, a sort along the group axis
    above), kept here for comparison only, and to the same network on the floats
    themselves. Rounds rotate the kernels for every k; the table shows medians.

Usage, from the repository root::

    PYTHONPATH=. python benchmarks/transforms.py     # defaults used in docs/benchmarks.md
    PYTHONPATH=. python benchmarks/transforms.py --rounds 5 --steps 5 --median-size 4194304
    PYTHONPATH=. python benchmarks/transforms.py --only median-k     # table (c) alone
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
import numpy as np
import optax

from benchmarks.common import StepRunner, TrainerStep, num_params, optimizer_spec
from cgh_jax import sharding as sharding_lib
from cgh_jax.optim import coordinate_median, median3
from cgh_jax.optim.median import _median_network, median_selection_network


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


def _previous_coordinate_median(x: jax.Array) -> jax.Array:
    """The median kernel before selection networks, for comparison in table (c) only.

    k = 3: ``median3``; k <= 9: an odd-even transposition sorting network (k rounds of
    neighbour comparators), whose unused comparators XLA's dead-code elimination removes;
    larger k: a sort along the group axis, then NaN restored where a column holds one.
    """
    k = x.shape[0]
    if k == 1:
        return x[0]
    if k == 3:
        return median3(x[0], x[1], x[2])
    if k <= 9:
        vals = [x[i] for i in range(k)]
        for rnd in range(k):
            for i in range(rnd % 2, k - 1, 2):
                vals[i], vals[i + 1] = (
                    jnp.minimum(vals[i], vals[i + 1]),
                    jnp.maximum(vals[i], vals[i + 1]),
                )
        return vals[k // 2]
    med = jnp.sort(x, axis=0)[k // 2]
    return jnp.where(jnp.isnan(x).any(axis=0), jnp.asarray(jnp.nan, x.dtype), med)


def bench_median_vs_k(size: int, ks: list[int], rounds: int, max_seconds: float) -> None:
    """Table (c): time per input element of the median kernel against k, current vs previous.

    A timing of the previous kernel that took longer than ``max_seconds`` is not repeated in
    later rounds (the sort at k >= 11 takes up to seconds per call on a small CPU).
    """
    kernels = {
        "new": jax.jit(coordinate_median),
        "old": jax.jit(_previous_coordinate_median),
        # The same selection network on the floats themselves (NaN-propagating float
        # min/max), to show what the integer keys of coordinate_median buy.
        "float": jax.jit(lambda x: x[0] if len(x) == 1 else _median_network(list(x))),
    }
    xs = {k: jax.random.normal(jax.random.key(k), (k, size), jnp.float32) for k in ks}
    times: dict[tuple[str, int], list[float]] = {}
    for k in ks:  # compile, and check the kernels agree bit for bit
        outs = [np.asarray(kernels[name](xs[k]).block_until_ready()) for name in kernels]
        for out in outs[1:]:
            np.testing.assert_array_equal(out.view(np.uint32), outs[0].view(np.uint32))
    for r in range(rounds):
        for k in ks:
            names = list(kernels)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                past = times.setdefault((name, k), [])
                if past and max(past) > max_seconds:
                    continue
                start = time.perf_counter()
                kernels[name](xs[k]).block_until_ready()
                past.append(time.perf_counter() - start)
    per_el = {key: statistics.median(t) / (key[1] * size) for key, t in times.items()}
    k9 = per_el.get(("new", 9))
    print(
        f"(c) coordinate_median of x: [k, N], N = {size:,} float32, median of up to {rounds} "
        "rounds (ns per input element = time / (k N))"
    )
    print(
        f"    {'k':>3}{'ops':>6}{'new (ms)':>10}{'new ns/el':>11}{'/ new k=9':>11}"
        f"{'old (ms)':>11}{'old ns/el':>11}{'old/new':>9}{'float-net ns/el':>17}"
    )
    for k in ks:
        new, old = per_el[("new", k)], per_el[("old", k)]
        ops = sum(c.keep_min + c.keep_max for c in median_selection_network(k))
        rel = f"{new / k9:>11.2f}" if k9 else f"{'':>11}"
        print(
            f"    {k:>3}{ops:>6}{new * k * size * 1e3:>10.2f}{new * 1e9:>11.3f}{rel}"
            f"{old * k * size * 1e3:>11.1f}{old * 1e9:>11.3f}{old / new:>9.1f}"
            f"{per_el[('float', k)] * 1e9:>17.3f}"
        )
    print("    ops: elementwise min/max operations of the new kernel's selection network")
    print("    float-net: the same network on the floats (float min/max) instead of integer keys")


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
    parser.add_argument(
        "--median-k-size", type=int, default=1 << 20, help="N (floats per group) for table (c)"
    )
    parser.add_argument(
        "--median-ks", default="1,3,5,7,9,11,15,21,31", help="odd k for table (c), comma-separated"
    )
    parser.add_argument("--median-k-rounds", type=int, default=15, help="rounds for table (c)")
    parser.add_argument(
        "--only",
        choices=("all", "median-k"),
        default="all",
        help="median-k: print table (c) only",
    )
    args = parser.parse_args()
    if args.batch_size % 3:
        parser.error("--batch-size must be a multiple of 3 (M3 splits it into 3 groups).")

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU core(s), {platform.machine()}"
    )
    ks = [int(k) for k in args.median_ks.split(",")]
    if any(k < 1 or k % 2 == 0 for k in ks):
        parser.error("--median-ks takes positive odd integers.")
    if args.only == "median-k":
        bench_median_vs_k(args.median_k_size, ks, args.median_k_rounds, max_seconds=0.5)
        return
    bench_median_kernel(args.median_size, args.kernel_repeats)
    print("(b) trainer step time relative to SGD (median over rounds)")
    print(f"      {'method':<10}{'time/step':>12}{'ratio':>8}")
    bench_steps("MLP 784-2048-10", MLP(), args.batch_size, args.steps, args.rounds)
    bench_steps("CNN c16-c32-d10", SmallCNN(), args.batch_size, args.steps, args.rounds)
    print("    * m3_sgd with m3_layout='loop': a loop over the 3 groups instead of jax.vmap")
    bench_median_vs_k(args.median_k_size, ks, args.median_k_rounds, max_seconds=0.5)


if __name__ == "__main__":
    main()
