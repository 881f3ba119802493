"""Shared pieces of the CPU benchmark scripts: train steps, memory analysis, timing, tables.

Import after the script has set ``XLA_FLAGS`` (this module imports jax).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cgh_jax.optim import grouped_grads, m3_sgd, ra3_sgd, rm3_sgd
from cgh_jax.optim.sharded import sharded_median_of_means_grads

OPTIMIZERS = ("sgd", "m3", "rm3", "ra3")


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: str,
    *,
    num_groups: int = 3,
    has_state: bool = False,
    learning_rate: float = 0.1,
    mesh: Any = None,
    layout: str = "auto",
) -> tuple[optax.GradientTransformation, Callable]:
    """One update ``step(params, extra, opt_state, batch) -> (params, extra, opt_state)``.

    ``loss_fn(params, batch)`` returns the loss, or with ``has_state``
    ``loss_fn(params, batch, extra) -> (loss, new_extra)`` (e.g. BatchNorm statistics).
    Optimizers: ``sgd``, ``m3`` (``grouped_grads`` + ``m3_sgd``), ``m3_loop`` (the same with
    ``grouped_grads(..., vectorize=False)``), ``rm3``, ``ra3``, and ``m3_sharded``
    (:func:`sharded_median_of_means_grads` over ``mesh`` + ``sgd``).
    """
    tx = {
        "sgd": optax.sgd(learning_rate),
        "m3": m3_sgd(learning_rate, num_groups=num_groups),
        "m3_loop": m3_sgd(learning_rate, num_groups=num_groups),
        "rm3": rm3_sgd(learning_rate),
        "ra3": ra3_sgd(learning_rate),
        "m3_sharded": optax.sgd(learning_rate),
    }[optimizer]
    args = lambda extra: (extra,) if has_state else ()

    def grads_and_extra(params, extra, batch):
        if optimizer in ("m3", "m3_loop"):
            vectorize = optimizer == "m3"
            grad_fn = grouped_grads(loss_fn, num_groups, has_state=has_state, vectorize=vectorize)
            out = grad_fn(params, batch, *args(extra))
            return out.grads, out.state if has_state else extra
        if optimizer == "m3_sharded":
            fn = sharded_median_of_means_grads(
                loss_fn, num_groups, mesh, has_state=has_state, layout=layout
            )
            out = fn(params, batch, *args(extra))
            return out.grads, out.state if has_state else extra
        if has_state:
            return jax.grad(loss_fn, has_aux=True)(params, batch, extra)
        return jax.grad(loss_fn)(params, batch), extra

    def step(params, extra, opt_state, batch):
        grads, extra = grads_and_extra(params, extra, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), extra, opt_state

    return tx, step


def memory_summary(compiled) -> dict[str, float]:
    """XLA's memory analysis of a compiled program, in bytes per device.

    ``peak`` = arguments + outputs + temporaries - aliased (donated) bytes: what the
    program needs resident at once.
    """
    m = compiled.memory_analysis()
    out = {
        "arguments": float(m.argument_size_in_bytes),
        "outputs": float(m.output_size_in_bytes),
        "temporaries": float(m.temp_size_in_bytes),
        "aliased": float(m.alias_size_in_bytes),
    }
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def interleaved_step_times(
    runners: dict[str, Callable[[], Any]], *, repeats: int, min_seconds: float = 1.0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per step of each runner, measured round-robin ``repeats`` times.

    Each runner performs one step and returns something to block on. Every method gets the
    same number of steps per timing, enough for the slowest to take ``min_seconds``; the
    order of the methods rotates from one repetition to the next. Interleaving puts every
    method under the same machine load (other processes, clock changes), so ratios of the
    per-method medians are fair even on a busy machine. The CPU seconds (user + system
    time of all threads of this process) do not grow when other processes compete for the
    cores, so on a shared machine they are the steadier measure of the work per step.

    Returns:
      ``(wall, cpu)``: name -> seconds per step, one entry per repetition.
    """
    names = list(runners)
    single = {}
    for name in names:  # warm up, and estimate one step's time
        jax.block_until_ready(runners[name]())
        t = time.perf_counter()
        jax.block_until_ready(runners[name]())
        single[name] = time.perf_counter() - t
    steps = max(1, int(min_seconds / max(single.values())))
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runners[name]
            t, c = time.perf_counter(), _cpu_seconds()
            for _ in range(steps):
                out = run()
            jax.block_until_ready(out)
            wall[name].append((time.perf_counter() - t) / steps)
            cpu[name].append((_cpu_seconds() - c) / steps)
    return wall, cpu


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num_params(tree: Any) -> int:
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(tree))


def mib(x: float) -> str:
    return f"{x / 2**20:.2f}"
