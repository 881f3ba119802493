"""cgh-jax side by side with the authors' PyTorch optimizers: examples per second on this CPU.

Three columns per row, each the examples per second (wall clock) of one update step:

* **cgh-jax trainer step**: the trainer's own jitted step (``cgh_jax.step.build_steps``
  through :class:`benchmarks.common.TrainerStep`, as the other benchmarks time it: the
  gradient, the optimizer, the metrics and the finite check);
* **minimal JAX step (public API)**: the shortest step a user writes with the public API,
  ``jax.value_and_grad`` (``cgh_jax.grouped_grads`` for M3) and ``optax.sgd`` /
  ``cgh_jax.m3_sgd`` / ``rm3_sgd`` / ``ra3_sgd`` under one ``jax.jit`` (MLP rows; with
  ``--resnet-minimal`` also the ResNet rows);
* **PyTorch, 2 threads**: the authors' training-loop body (forward, cross-entropy,
  ``zero_grad``, ``backward``, ``step``) with their optimizers, written for this project
  from their published semantics (:mod:`benchmarks.torch_reference`).

Rows: MLP 784-2048-10 (SGD at batch 100, M3 3 x 100, RM3, RA3) and ResNet-18 with the
CIFAR stem (SGD at batch 128, M3 3 x 128 with the loop layout, RM3); the same parameter
counts in both frameworks (checked), float32, random inputs. No momentum, no weight decay.

How it is timed: two long-lived worker processes, one per framework, take turns: while one
runs a timed block of steps the other waits, so they never compete for the cores. Each
repetition times every column once (the order rotating), and the ratios between columns are
taken within a repetition, then the median over repetitions. During every block the load of
*other* processes is measured (busy CPU time from ``/proc/stat`` minus the worker's own CPU
time, divided by the wall time); the table states it, and ``--max-other-load`` drops
repetitions measured under more.

PyTorch is an optional, benchmark-only extra (``pip install 'cgh-jax[bench]'``); without
it the PyTorch column is skipped, and the script says so. ``--smoke`` runs tiny models for a
few seconds (CI). Usage, from the repository root::

    PYTHONPATH=. python benchmarks/vs_pytorch.py [--rows mlp,resnet] [--repeats 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("trainer", "minimal", "torch")
HEADERS = {
    "trainer": "cgh-jax trainer step",
    "minimal": "minimal JAX step (public API)",
    "torch": "PyTorch, 2 threads",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a model, an optimizer and its batch."""

    label: str
    model: str  # "mlp" | "resnet18"
    optimizer: str  # "sgd" | "m3" | "rm3" | "ra3"
    batch: int  # examples per group (M3) or per step
    m3_layout: str = "vmap"  # the trainer's layout for M3 rows

    @property
    def examples_per_update(self) -> int:
        return 3 * self.batch if self.optimizer == "m3" else self.batch


ROWS = (
    Row("MLP 784-2048-10, SGD batch 100", "mlp", "sgd", 100),
    Row("MLP, M3 (3 x 100)", "mlp", "m3", 100),
    Row("MLP, RM3", "mlp", "rm3", 100),
    Row("MLP, RA3", "mlp", "ra3", 100),
    Row("ResNet-18 (CIFAR stem), SGD batch 128", "resnet18", "sgd", 128),
    Row("ResNet-18, M3 (3 x 128, loop layout)", "resnet18", "m3", 128, m3_layout="loop"),
    Row("ResNet-18, RM3", "resnet18", "rm3", 128),
)
SMOKE_BATCH = {"mlp": 6, "resnet18": 4}


def model_config(model: str, smoke: bool) -> dict[str, Any]:
    """Sizes of the model in both frameworks (tiny ones for ``--smoke``)."""
    if model == "mlp":
        return {"hidden": 16 if smoke else 2048, "image_shape": (28, 28, 1), "classes": 10}
    return {"width": 2 if smoke else 64, "image_shape": (8, 8, 3) if smoke else (32, 32, 3)}


def row_key(row: Row) -> str:
    """``mlp:sgd``, ``resnet:m3``, ...: the name ``--rows`` selects a row by."""
    return f"{'mlp' if row.model == 'mlp' else 'resnet'}:{row.optimizer}"


def row_batch(row: Row, smoke: bool) -> int:
    return SMOKE_BATCH[row.model] if smoke else row.batch


# ----------------------------------------------------------------------------- workers


class JaxWorker:
    """Builds and runs the JAX columns of a row."""

    def __init__(self):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        sys.path.insert(0, str(ROOT))
        global jax, jnp
        import jax
        import jax.numpy as jnp

        self.runners: dict[str, Any] = {}

    def _model(self, row: Row, smoke: bool):
        from cgh_jax.models import get_model

        cfg = model_config(row.model, smoke)
        if row.model == "mlp":
            return get_model("mlp", num_classes=10, hidden=(cfg["hidden"],)), cfg["image_shape"]
        model = get_model("resnet18", num_classes=10, width=cfg["width"], stem="cifar")
        return model, cfg["image_shape"]

    def setup(self, row: Row, columns: list[str], smoke: bool) -> dict[str, Any]:
        from benchmarks.common import StepRunner, TrainerStep, num_params, optimizer_spec
        from cgh_jax import sharding as sharding_lib

        self.runners = {}
        model, shape = self._model(row, smoke)
        batch = row_batch(row, smoke)
        per_update = 3 * batch if row.optimizer == "m3" else batch
        count = None
        if "trainer" in columns:
            variant = row.optimizer
            if row.optimizer == "m3":
                variant = "m3_loop" if row.m3_layout == "loop" else "m3"
            spec = optimizer_spec(variant, examples_per_update=per_update)
            trainer = TrainerStep(model, spec, sharding_lib.create_mesh(1), shape)
            state = trainer.init_state()
            data = trainer.random_batch(per_update, num_classes=10)
            self.runners["trainer"] = StepRunner(trainer.compile(data, state), state, data)
            count = num_params(state.params)
        if "minimal" in columns:
            self.runners["minimal"], count = minimal_step(model, shape, row, batch)
        return {"params": count, "step_s": self._warm_up()}

    def _warm_up(self) -> dict[str, float]:
        seconds = {}
        for name, run in self.runners.items():
            jax.block_until_ready(run())  # compiles (every later step runs the same program)
            t = time.perf_counter()
            jax.block_until_ready(run())
            seconds[name] = time.perf_counter() - t
        return seconds

    def time(self, column: str, steps: int) -> tuple[float, float]:
        run = self.runners[column]
        t, c = time.perf_counter(), _cpu_seconds()
        for _ in range(steps):
            out = run()
        jax.block_until_ready(out)
        return time.perf_counter() - t, _cpu_seconds() - c


def minimal_step(model, image_shape, row: Row, batch: int):
    """The shortest train step through the public API; returns ``(runner, num_params)``.

    ``runner()`` applies one update (one of ``3 x batch`` examples for M3) to the state it
    holds (donated) and returns the new parameters."""
    import optax

    import cgh_jax

    key = jax.random.key(0)
    per_update = 3 * batch if row.optimizer == "m3" else batch
    data = {
        "image": jax.random.normal(key, (per_update, *image_shape), jnp.float32),
        "label": jax.random.randint(key, (per_update,), 0, 10),
    }
    variables = model.init(key, data["image"][:1], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})

    def loss_fn(params, batch, stats):
        logits, new = model.apply(
            {"params": params, "batch_stats": stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new.get("batch_stats", {})

    tx = {
        "sgd": optax.sgd,
        "m3": cgh_jax.m3_sgd,
        "rm3": cgh_jax.rm3_sgd,
        "ra3": cgh_jax.ra3_sgd,
    }[row.optimizer](0.1)
    if row.optimizer == "m3":
        grouped = cgh_jax.grouped_grads(
            loss_fn, 3, has_state=True, vectorize=row.m3_layout == "vmap"
        )

        def gradient(params, batch, stats):
            out = grouped(params, batch, stats)
            return out.grads, out.state

    else:
        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

        def gradient(params, batch, stats):
            (_, stats), grads = value_and_grad(params, batch, stats)
            return grads, stats

    def step(state, batch):
        params, stats, opt_state = state
        grads, stats = gradient(params, batch, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    step = jax.jit(step, donate_argnums=(0,))
    holder = {"state": (params, stats, tx.init(params))}

    def run():
        holder["state"] = step(holder["state"], data)
        return holder["state"][0]

    count = sum(int(x.size) for x in jax.tree.leaves(params))
    return run, count


class TorchWorker:
    """Builds and runs the PyTorch column of a row (2 threads)."""

    def __init__(self):
        global torch, torch_reference
        import torch

        from benchmarks import torch_reference

        torch.set_num_threads(2)
        torch.manual_seed(0)
        self.run = None

    def setup(self, row: Row, columns: list[str], smoke: bool) -> dict[str, Any]:
        cfg = model_config(row.model, smoke)
        if row.model == "mlp":
            h, w, c = cfg["image_shape"]
            model = torch_reference.MLP(h * w * c, (cfg["hidden"],), 10)
            shape = (c, h, w)
        else:
            model = torch_reference.ResNet18(10, width=cfg["width"])
            h, w, c = cfg["image_shape"]
            shape = (c, h, w)
        model.train()
        optimizer = torch_reference.make_optimizer(row.optimizer, model.parameters())
        batch = row_batch(row, smoke)
        iterations = 3 if row.optimizer == "m3" else 1  # one M3 update = 3 batches
        data = [
            (torch.randn(batch, *shape), torch.randint(0, 10, (batch,))) for _ in range(iterations)
        ]

        def run():
            for images, labels in data:
                loss = torch_reference.train_iteration(model, optimizer, images, labels)
            return loss

        self.run = run
        for _ in range(2 if row.optimizer in ("rm3", "ra3") else 1):
            run()  # RM3 / RA3: no update on the first two calls; the next one is timed
        t = time.perf_counter()
        run()
        count = sum(p.numel() for p in model.parameters())
        return {"params": count, "step_s": {"torch": time.perf_counter() - t}}

    def time(self, column: str, steps: int) -> tuple[float, float]:
        t, c = time.perf_counter(), _cpu_seconds()
        for _ in range(steps):
            loss = self.run()
        float(loss)
        return time.perf_counter() - t, _cpu_seconds() - c


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve(kind: str) -> int:
    """Worker loop: one JSON request per line on stdin, one JSON reply per line."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # keep library prints out of the reply channel
    worker = JaxWorker() if kind == "jax" else TorchWorker()
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        if request["op"] == "setup":
            row = Row(**request["row"])
            reply = worker.setup(row, request["columns"], request["smoke"])
        else:
            wall, cpu = worker.time(request["column"], request["steps"])
            reply = {"wall": wall, "cpu": cpu}
        replies.write(json.dumps(reply) + "\n")
    return 0


# ----------------------------------------------------------------------------- coordinator


class Worker:
    """A worker process and its request/reply pipe."""

    def __init__(self, kind: str, extra_path: str | None):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if kind == "torch" and extra_path:
            # Appended after the environment's own packages: only torch comes from there.
            env["CGH_BENCH_APPEND_PATH"] = extra_path
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.request_reply({})

    def request_reply(self, request: dict[str, Any]) -> dict[str, Any]:
        if request:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def _busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system (idle iowait) irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "?"


def torch_available(extra_path: str | None) -> bool:
    if extra_path:
        sys.path.append(extra_path)
    return importlib.util.find_spec("torch") is not None


def measure_row(row: Row, workers: dict[str, Worker], columns: list[str], args) -> dict[str, Any]:
    """Median examples/s per column, paired ratios and the other processes' load."""
    owner = {c: ("torch" if c == "torch" else "jax") for c in columns}
    step_s, params = {}, {}
    for kind in sorted(set(owner.values())):
        mine = [c for c in columns if owner[c] == kind]
        reply = workers[kind].request_reply(
            {"op": "setup", "row": dataclasses.asdict(row), "columns": mine, "smoke": args.smoke}
        )
        step_s.update(reply["step_s"])
        params[kind] = reply["params"]
    if len(set(params.values())) != 1:
        raise RuntimeError(f"{row.label}: parameter counts differ: {params}")
    batch = row_batch(row, args.smoke)
    per_update = 3 * batch if row.optimizer == "m3" else batch
    steps = {c: max(1, int(args.min_seconds / max(step_s[c], 1e-6))) for c in columns}
    rates: dict[str, list[float]] = {c: [] for c in columns}
    loads: list[float] = []
    for r in range(args.repeats):
        rate, load = {}, 0.0
        for c in columns[r % len(columns) :] + columns[: r % len(columns)]:
            busy = _busy_seconds()
            reply = workers[owner[c]].request_reply({"op": "time", "column": c, "steps": steps[c]})
            # /proc/stat counts in clock ticks (10 ms): meaningful for blocks of >= 1 s.
            other = max(_busy_seconds() - busy - reply["cpu"], 0.0) / reply["wall"]
            other = min(other, os.cpu_count() or 1)
            rate[c] = steps[c] * per_update / reply["wall"]
            load = max(load, other)
        loads.append(load)
        if args.max_other_load is None or load <= args.max_other_load:
            for c in columns:
                rates[c].append(rate[c])
    kept = len(rates[columns[0]])
    out = {"row": row, "params": params.popitem()[1], "kept": kept, "loads": loads}
    if kept == 0:
        return out
    out["median"] = {c: statistics.median(rates[c]) for c in columns}
    for a, b in (("trainer", "torch"), ("minimal", "torch"), ("trainer", "minimal")):
        if a in columns and b in columns:
            ratios = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
            out[f"{a}/{b}"] = statistics.median(ratios)
    return out


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    headers = [
        "model",
        "parameters",
        *HEADERS.values(),
        "trainer / PyTorch",
        "minimal / PyTorch",
        "trainer / minimal",
        "other load (cores, median / max)",
        "repetitions kept",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for res in results:
        med = res.get("median", {})
        ratios = [
            f"{res[key]:.2f}" if key in res else "-"
            for key in ("trainer/torch", "minimal/torch", "trainer/minimal")
        ]
        cells = [
            res["row"].label,
            f"{res['params']:,}",
            *(_fmt_rate(med.get(c)) for c in COLUMNS),
            *ratios,
            f"{statistics.median(res['loads']):.2f} / {max(res['loads']):.2f}",
            f"{res['kept']}/{len(res['loads'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--rows",
        default="mlp,resnet",
        help="comma-separated: mlp, resnet, or one row as model:optimizer (resnet:m3)",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resnet-repeats", type=int, default=3, help="ResNet rows are slow")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="per timed block")
    parser.add_argument("--resnet-minimal", action="store_true", help="minimal step on ResNet")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=None,
        help="drop repetitions during which other processes used more cores than this",
    )
    parser.add_argument(
        "--torch-path", default=None, help="a directory holding torch (pip install --target)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models, seconds (CI)")
    args = parser.parse_args(argv)
    if args.worker:
        extra = os.environ.get("CGH_BENCH_APPEND_PATH")
        if extra:
            sys.path.append(extra)
        return serve(args.worker)
    if args.smoke:
        args.repeats = args.resnet_repeats = 1
        args.min_seconds = 0.01

    with_torch = torch_available(args.torch_path)
    print(f"# {os.cpu_count()} cores, load average {_loadavg()} at the start")
    if args.smoke:
        print(
            "# --smoke: tiny models (MLP 784-16-10, ResNet-18 at width 2 on 8x8 images, "
            "batches of 6 and 4); the labels name the full-size rows."
        )
    if not with_torch:
        print(
            "# PyTorch is not installed: the PyTorch column is skipped "
            "(pip install 'cgh-jax[bench]' to compare)."
        )
    wanted = set(args.rows.split(","))
    rows = [r for r in ROWS if {row_key(r), row_key(r).split(":")[0]} & wanted]
    if not rows:
        parser.error(f"--rows {args.rows!r} selects no row; use mlp, resnet or e.g. mlp:m3")
    workers = {"jax": Worker("jax", None)}
    if with_torch:
        workers["torch"] = Worker("torch", args.torch_path)
    results = []
    try:
        for row in rows:
            columns = ["trainer"]
            if row.model == "mlp" or args.resnet_minimal:
                columns.append("minimal")
            if with_torch:
                columns.append("torch")
            repeats = args.repeats if row.model == "mlp" else args.resnet_repeats
            res = measure_row(
                row, workers, columns, argparse.Namespace(**{**vars(args), "repeats": repeats})
            )
            results.append(res)
            print(table([res]).splitlines()[-1], flush=True)
    finally:
        for w in workers.values():
            w.close()
    print(f"\n## Examples per second, median of paired repetitions (load average {_loadavg()})\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
