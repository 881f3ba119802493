"""Cost of the Coherent Gradients transforms relative to plain SGD.

Prints two tables:

(a) the throughput (bytes read + written per second) of the exact median-of-3 kernel
    (``median3``, a min/max network; reads 3 arrays of N floats, writes one) as a fraction
    of the throughput of a plain jit-compiled copy: of N floats (same output size) and of
    2N floats (same total bytes, 4N floats). A mean-of-3 kernel ((a + b + c) / 3, the same
    traffic as the median) is shown for comparison.
(b) the time of one training step (forward, backward, optimizer, parameter update) of
    ``m3_sgd``, ``rm3_sgd`` and ``ra3_sgd`` relative to ``optax.sgd`` at the same global
    batch, on an MLP and on a small CNN. M3 computes 3 group-mean gradients with
    ``cgh_jax.grouped_grads`` (3 groups of batch/3 examples); the others one gradient of the
    whole batch; ``m3_sgd*`` is M3 with ``grouped_grads(..., vectorize=False)`` (an unrolled
    loop over the groups instead of ``jax.vmap``). The steps are jit-compiled with donated
    buffers and timed side by side in one process: each round times every method once (in
    rotating order), and the table shows the median over rounds.

Usage::

    python benchmarks/transforms.py                 # defaults used in docs/benchmarks.md
    python benchmarks/transforms.py --rounds 5 --steps 5 --median-size 4194304  # quicker
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

import cgh_jax
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
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(2048)(x))
        return nn.Dense(10)(x)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


def _make_steps(model: nn.Module, batch_size: int, lr: float = 0.01):
    """Returns (params, batch, {name: (jitted step, optimizer)})."""
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((batch_size, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32),
    }
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grouped = {
        True: cgh_jax.grouped_grads(loss_fn, 3),
        False: cgh_jax.grouped_grads(loss_fn, 3, vectorize=False),
    }

    def plain_step(opt):
        def step(params, state, batch):
            grads = jax.grad(loss_fn)(params, batch)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.jit(step, donate_argnums=(0, 1))

    def m3_step(opt, vectorize=True):
        def step(params, state, batch):
            grads = grouped[vectorize](params, batch).grads
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.jit(step, donate_argnums=(0, 1))

    opts = {
        "sgd": (optax.sgd(lr), plain_step),
        "m3_sgd": (cgh_jax.m3_sgd(lr), m3_step),
        "m3_sgd*": (cgh_jax.m3_sgd(lr), lambda opt: m3_step(opt, vectorize=False)),
        "rm3_sgd": (cgh_jax.rm3_sgd(lr), plain_step),
        "ra3_sgd": (cgh_jax.ra3_sgd(lr), plain_step),
    }
    return params, batch, {name: (make(opt), opt) for name, (opt, make) in opts.items()}


def bench_steps(name: str, model: nn.Module, batch_size: int, steps: int, rounds: int) -> None:
    params, batch, methods = _make_steps(model, batch_size)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    state = {}
    for method, (step, opt) in methods.items():
        p = jax.tree.map(jnp.copy, params)
        s = opt.init(p)
        p, s = step(p, s, batch)  # compile
        jax.block_until_ready(p)
        state[method] = (p, s)

    def run(method):
        step = methods[method][0]
        p, s = state[method]
        start = time.perf_counter()
        for _ in range(steps):
            p, s = step(p, s, batch)
        jax.block_until_ready(p)
        state[method] = (p, s)
        return (time.perf_counter() - start) / steps

    names = list(methods)
    times = {m: [] for m in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for m in order:
            times[m].append(run(m))
    base = statistics.median(times["sgd"])
    print(f"    {name} ({num_params:,} params), batch {batch_size}:")
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
    print("(b) step time relative to optax.sgd (median over rounds)")
    print(f"      {'method':<10}{'time/step':>12}{'ratio':>8}")
    bench_steps("MLP 784-2048-10", MLP(), args.batch_size, args.steps, args.rounds)
    bench_steps("CNN c16-c32-d10", SmallCNN(), args.batch_size, args.steps, args.rounds)
    print("    * m3_sgd with grouped_grads(..., vectorize=False): a loop over the 3 groups")


if __name__ == "__main__":
    main()
