"""Shared pieces of the benchmark scripts: the trainer's step, memory analysis, timing, tables.

Every benchmark that updates parameters times or compiles the trainer's own step, built by
the trainer's own assembly (:func:`cgh_jax.assembly.assemble`: the model's facts, the M3
layout, :func:`cgh_jax.step.build_steps`); a benchmark *variant* is an optimizer config and,
for M3, the ``m3_layout`` it is built with (:data:`VARIANTS`).

Import after the script has set ``XLA_FLAGS`` (this module imports jax).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cgh_jax import assembly as assembly_lib
from cgh_jax import sharding as sharding_lib
from cgh_jax import step as step_lib
from cgh_jax.formatting import markdown_table  # noqa: F401  (the benchmarks' tables)
from cgh_jax.spec import optimizer as optimizer_lib

VARIANTS = {
    "sgd": ("sgd", None),
    "m3": ("m3", "vmap"),
    "m3_loop": ("m3", "loop"),
    "rm3": ("rm3", None),
    "ra3": ("ra3", None),
    "m3_reduce_scatter": ("m3", "reduce_scatter"),
    "m3_group_sharded": ("m3", "group_sharded"),
    "m3_group_aligned": ("m3", "group_aligned"),
    "m3_auto": ("m3", "auto"),
}
"""Benchmark variant -> (optimizer name, M3 layout). ``m3`` is M3 with ``grouped_grads``
through ``jax.vmap``, ``m3_loop`` the same with an unrolled loop over the groups
(``vectorize=False``); the last three are the communication-efficient layouts of
:mod:`cgh_jax.optim.sharded`, which need a mesh of several devices. ``m3_auto`` is M3 with
``m3_layout='auto'`` (the trainer's default)."""


def optimizer_spec(
    variant: str, *, examples_per_update: int, num_groups: int = 3, learning_rate: float = 0.1
) -> optimizer_lib.OptimizerConfig:
    """The optimizer fields of a benchmark variant at ``examples_per_update`` examples.

    Every variant sees the same examples per update: M3 takes ``num_groups`` groups of
    ``examples_per_update / num_groups``, the others one batch of ``examples_per_update``.
    Constant learning rate, no momentum, no weight decay (the papers' comparisons).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}.")
    name, layout = VARIANTS[variant]
    cfg: dict[str, Any] = {"name": name, "learning_rate": learning_rate}
    groups = 1
    if layout is not None:
        cfg = {**cfg, "num_groups": num_groups, "m3_layout": layout}
        groups = num_groups
    if examples_per_update % groups:
        raise ValueError(
            f"{variant}: {examples_per_update} examples per update are not a multiple of "
            f"{groups} groups."
        )
    return optimizer_lib.parse(cfg, batch_size=examples_per_update // groups)


class TrainerStep:
    """The trainer's jitted train step for one model, optimizer and mesh, built by the
    trainer's own :func:`cgh_jax.assembly.assemble` (an explicit M3 layout stays as
    configured; one that cannot run on the mesh is refused). The schedule is one epoch of
    one step (the benchmarks use constant rates).

    Attributes:
      assembly: the :class:`cgh_jax.assembly.Assembly`.
      spec: the optimizer spec with its concrete layout.
      steps: :class:`cgh_jax.step.Steps` (``train``, ``eval``, ``tx``).
      image_shape: ``(H, W, C)`` (or ``(D,)``) of one example.
    """

    def __init__(
        self, model, spec: optimizer_lib.OptimizerConfig, mesh, image_shape: Sequence[int]
    ):
        self.model, self.mesh, self.image_shape = model, mesh, tuple(image_shape)
        self.assembly = assembly_lib.assemble(
            model, spec, mesh, self.image_shape, steps_per_epoch=1, num_epochs=1, with_top5=False
        )
        self.spec, self.steps = self.assembly.optimizer, self.assembly.steps

    def abstract_state(self) -> step_lib.TrainState:
        """Shapes and shardings of the train state (lowering without initializing)."""
        return self.assembly.abstract_state()

    def init_state(self, seed: int = 0) -> step_lib.TrainState:
        """A freshly initialized (and checked) train state, as the trainer makes it."""
        return self.assembly.new_state(jax.random.PRNGKey(seed))

    def abstract_batch(self, num_examples: int, dtype: Any = jnp.float32) -> dict[str, Any]:
        """Shapes and sharding of a batch of ``num_examples`` (``image``, ``label``)."""
        sharding = sharding_lib.batch_sharding(self.mesh)
        return {
            "image": jax.ShapeDtypeStruct(
                (num_examples, *self.image_shape), dtype, sharding=sharding
            ),
            "label": jax.ShapeDtypeStruct((num_examples,), jnp.int32, sharding=sharding),
        }

    def random_batch(self, num_examples: int, num_classes: int, seed: int = 0) -> dict[str, Any]:
        """A synthetic batch (standard normal images, uniform labels) on the mesh."""
        k1, k2 = jax.random.split(jax.random.key(seed))
        batch = {
            "image": jax.random.normal(k1, (num_examples, *self.image_shape), jnp.float32),
            "label": jax.random.randint(k2, (num_examples,), 0, num_classes, jnp.int32),
        }
        return jax.device_put(batch, sharding_lib.batch_sharding(self.mesh))

    def compile(self, batch: dict[str, Any], state: Any = None):
        """The compiled train step for ``batch`` (arrays or ``ShapeDtypeStruct``s)."""
        state = self.abstract_state() if state is None else state
        return self.steps.train.lower(state, batch).compile()

    def compile_norms(self, batch: dict[str, Any], state: Any = None):
        """The compiled norms step (``Steps.norms``: what the trainer runs once per
        logging interval besides the train step) for ``batch``."""
        state = self.abstract_state() if state is None else state
        return self.steps.norms.lower(state, batch).compile()


class StepRunner:
    """Calls a compiled train step on a state it holds (the step donates it): one call, one
    update; returns the new parameters to block on. ``finite`` is the step's own flag (loss
    and norms finite) of the last call."""

    def __init__(self, compiled, state: step_lib.TrainState, batch):
        self.compiled, self.state, self.batch, self._finite = compiled, state, batch, None

    def __call__(self):
        self.state, _, self._finite = self.compiled(self.state, self.batch)
        return self.state.params

    @property
    def finite(self) -> bool:
        return bool(self._finite)


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


class MachineLoad:
    """How busy the rest of the machine was while a benchmark timed: a context manager.

    On Linux it reads the CPU time of all processes from ``/proc/stat`` at entry and exit
    and subtracts this process's own (``getrusage``): ``other_cores`` is the average
    number of cores that other processes kept busy (0 on an idle machine). ``describe``
    also gives the 1-minute load average at entry and exit. Elsewhere only the load
    averages are known.
    """

    def __enter__(self) -> MachineLoad:
        self._start = (time.perf_counter(), _busy_cpu_seconds(), _cpu_seconds(), _loadavg())
        self.other_cores: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, own0, self._load0 = self._start
        wall, busy, own = time.perf_counter() - wall0, _busy_cpu_seconds(), _cpu_seconds()
        self._load1 = _loadavg()
        if busy is not None and busy0 is not None and wall > 0:
            self.other_cores = max(0.0, (busy - busy0) - (own - own0)) / wall

    def describe(self) -> str:
        cores = "n/a" if self.other_cores is None else f"{self.other_cores:.2f}"
        return (
            f"other processes used {cores} of {os.cpu_count()} cores on average; load "
            f"average (1 min) {self._load0:.2f} at the start, {self._load1:.2f} at the end"
        )


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes spent (not idle, not waiting for I/O) since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def num_params(tree: Any) -> int:
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(tree))


def mib(x: float) -> str:
    return f"{x / 2**20:.2f}"
