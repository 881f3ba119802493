"""Training throughput of M3/RM3/RA3 vs SGD on one accelerator, and the input pipeline's speed.

Measures, on the first JAX device:

* images/s and step time of the trainer's own train step (``cgh_jax.step.build_steps`` with
  an ``OptimizerSpec``, as ``cgh_jax.train`` runs it) for ResNet-50 and ResNet-18 at
  224x224 (compute bfloat16, float32 parameters, synthetic data) with SGD, M3, RM3 and RA3
  at the same images per update (SGD, RM3 and RA3 at batch ``3 g``, M3 as 3 groups of
  ``g``; ``g = 256`` by default, the papers' setting), plus M3 with the three group
  gradients computed in an unrolled loop (``m3_loop``, ``m3_layout='loop'``) to compare
  with the vmapped groups (``m3``, ``m3_layout='vmap'``);
* compile time and XLA's memory analysis of every train step (arguments + outputs +
  temporaries - aliased), and the device's peak memory;
* the host's JPEG decode + random-resized-crop + flip + resize throughput with a process
  pool (numpy + Pillow; skipped with a note when Pillow is missing). TensorFlow is not
  needed: only jax, flax, optax and numpy.

``benchmarks/gpu.sh`` runs this script and then two real training runs through
``python -m cgh_jax.main``, adding their steps/s to the table (``benchmarks/train_rates.py``).

Run from the repository root (no install needed)::

    PYTHONPATH=. python benchmarks/gpu.py            # the full run, < 8 minutes on an H100
    PYTHONPATH=. python benchmarks/gpu.py --smoke    # tiny model, 2 steps, any machine

It prints a markdown table and writes it to ``$OUT/gpu_results.md`` when ``OUT`` is set
(or to ``--output``).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import StepRunner, TrainerStep, memory_summary, optimizer_spec
from cgh_jax import sharding as sharding_lib
from cgh_jax.models import get_model

OPTIMIZERS = ("sgd", "m3", "rm3", "ra3", "m3_loop")


# ----------------------------------------------------------------------------- training


def _memory_bytes(compiled) -> float | None:
    """XLA's peak bytes of a compiled step (:func:`memory_summary`), None where the backend
    has no memory analysis."""
    try:
        return memory_summary(compiled)["peak"]
    except Exception:  # not every backend implements it
        return None


def bench_train(
    model_name: str,
    optimizer: str,
    *,
    image_size: int,
    dtype: Any,
    group_batch: int,
    num_groups: int,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Times ``steps`` updates of the trainer's step with ``optimizer`` on a synthetic
    batch (kept on the device), on a one-device mesh."""
    batch_size = group_batch * num_groups
    model = get_model(model_name, num_classes=1000, dtype=dtype)
    spec = optimizer_spec(optimizer, examples_per_update=batch_size, num_groups=num_groups)
    trainer = TrainerStep(model, spec, sharding_lib.create_mesh(1), (image_size, image_size, 3))
    state = trainer.init_state()
    batch = trainer.random_batch(batch_size, num_classes=1000)

    t0 = time.perf_counter()
    compiled = trainer.compile(batch, state)
    compile_s = time.perf_counter() - t0
    memory = _memory_bytes(compiled)

    run = StepRunner(compiled, state, batch)
    for _ in range(warmup):
        run()
    jax.block_until_ready(run.state)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    return {
        "model": model_name,
        "optimizer": optimizer,
        "batch": f"{num_groups}x{group_batch}" if optimizer.startswith("m3") else str(batch_size),
        "images_per_update": batch_size,
        "step_ms": 1e3 * step_s,
        "step_ms_mean": 1e3 * float(np.mean(times)),
        "images_per_s": batch_size / step_s,
        "compile_s": compile_s,
        "memory_gib": None if memory is None else memory / 2**30,
        "finite": run.finite,
    }


# ------------------------------------------------------------------------ input pipeline


def _make_jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Smooth random RGB images (JPEG sizes like natural photos), encoded at quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
        img = Image.fromarray(np.asarray(img, np.uint8) // 2 + noise)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _decode_crop(args: tuple[bytes, int, int]) -> np.ndarray:
    """Inception-style crop: decode, random area 8-100% / aspect 3/4-4/3, flip, resize,
    scale to [-1, 1] float32 (the training preprocessing of ImageNet, in Pillow)."""
    from PIL import Image

    data, out_size, seed = args
    rng = np.random.default_rng(seed)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = img.size
    area = width * height
    box = (0, 0, width, height)
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            break
    img = img.resize((out_size, out_size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, np.float32) / 127.5 - 1.0


def bench_pipeline(
    *, num_images: int, out_size: int, source_size: tuple[int, int], seconds: float
) -> list[dict[str, Any]]:
    """Images/s of decode + crop + resize with 1 process and with a pool of all cores."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        return [{"workers": 0, "note": "skipped: Pillow is not installed on this machine"}]
    jpegs = _make_jpegs(num_images, source_size)
    mean_kb = np.mean([len(j) for j in jpegs]) / 1024
    work = [(jpegs[i % num_images], out_size, i) for i in range(100_000)]
    results = []
    workers_list = [1, os.cpu_count() or 1]
    for workers in dict.fromkeys(workers_list):
        done, t0 = 0, time.perf_counter()
        if workers == 1:
            while time.perf_counter() - t0 < seconds:
                _decode_crop(work[done])
                done += 1
        else:
            ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
            with ctx.Pool(workers) as pool:
                pool.map(_decode_crop, work[: 2 * workers])  # start the workers
                t0 = time.perf_counter()
                chunk = 64 * workers
                while time.perf_counter() - t0 < seconds:
                    pool.map(_decode_crop, work[done : done + chunk], chunksize=8)
                    done += chunk
        elapsed = time.perf_counter() - t0
        results.append(
            {
                "workers": workers,
                "images_per_s": done / elapsed,
                "note": f"{source_size[0]}x{source_size[1]} JPEG (mean {mean_kb:.0f} KiB) -> "
                f"{out_size}x{out_size} float32",
            }
        )
    return results


# ------------------------------------------------------------------------------ report


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def render(meta: dict[str, Any], rows: list[dict[str, Any]], pipe: list[dict[str, Any]]) -> str:
    lines = [
        f"Device: {meta['device']} (jax {meta['jax']}, {meta['backend']}); "
        f"host: {meta['cpus']} CPU cores; image {meta['image_size']}x{meta['image_size']}, "
        f"compute {meta['dtype']}, float32 params, synthetic data; median of "
        f"{meta['steps']} timed steps after {meta['warmup']} warm-up steps.",
        "",
        "| model | optimizer | batch | step (ms) | images/s | vs SGD (images/s) | "
        "compile (s) | XLA memory (GiB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    sgd = {
        r["model"]: r["images_per_s"] for r in rows if r["optimizer"] == "sgd" and "error" not in r
    }
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['optimizer']} | - | - | - | - | - | {r['error']} |")
            continue
        ratio = r["images_per_s"] / sgd[r["model"]] if r["model"] in sgd else None
        lines.append(
            f"| {r['model']} | {r['optimizer']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['images_per_s']:.0f} | {_fmt(ratio, '.3f')} | {r['compile_s']:.1f} | "
            f"{_fmt(r['memory_gib'], '.2f')} |"
        )
    lines += ["", f"Device peak memory over the run: {meta['peak']}.", ""]
    lines += [
        "| input pipeline | workers | images/s | images/s per worker |",
        "| --- | ---: | ---: | ---: |",
    ]
    for p in pipe:
        if "images_per_s" not in p:
            lines.append(f"| {p['note']} | - | - | - |")
        else:
            lines.append(
                f"| {p['note']} | {p['workers']} | {p['images_per_s']:.0f} | "
                f"{p['images_per_s'] / p['workers']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def _peak_memory() -> str:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        stats = {}
    peak = stats.get("peak_bytes_in_use")
    return "not reported by this backend" if peak is None else f"{peak / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps (CPU check)")
    parser.add_argument("--models", default="resnet50,resnet18")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--group-batch", type=int, default=256)
    parser.add_argument("--num-groups", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pipeline-seconds", type=float, default=8.0)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip remaining train runs after this many seconds (default 360; none with --smoke)",
    )
    parser.add_argument("--output", default=None, help="markdown file (default $OUT/...)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.group_batch, args.image_size = "resnet_tiny", 4, 32
        args.steps, args.warmup, args.pipeline_seconds = 2, 1, 0.5
    if args.budget_s is None:
        args.budget_s = float("inf") if args.smoke else 360.0
    models = [m for m in args.models.split(",") if m]
    optimizers = [o for o in args.optimizers.split(",") if o]
    unknown = sorted(set(optimizers) - set(OPTIMIZERS))
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; choose from {OPTIMIZERS}")

    start = time.perf_counter()
    # The pipeline runs first: its process pool forks before JAX starts its threads.
    pipe = bench_pipeline(
        num_images=16 if args.smoke else 64,
        out_size=args.image_size,
        source_size=(500, 375),
        seconds=args.pipeline_seconds,
    )
    print(pipe, flush=True)
    dtype = jnp.bfloat16
    device = jax.devices()[0]
    meta = {
        "device": f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s))",
        "jax": jax.__version__,
        "backend": f"python {platform.python_version()}",
        "cpus": os.cpu_count(),
        "image_size": args.image_size,
        "dtype": "bfloat16",
        "steps": args.steps,
        "warmup": args.warmup,
    }
    print(f"# {meta['device']}", flush=True)

    output = args.output
    if output is None and os.environ.get("OUT"):
        output = os.path.join(os.environ["OUT"], "gpu_results.md")

    def report(rows: list[dict[str, Any]]) -> str:
        # Rewritten after every run, so a run cut short still leaves its table.
        meta["peak"] = _peak_memory()
        table = render(meta, rows, pipe)
        table += f"\nWall time so far {time.perf_counter() - start:.0f} s.\n"
        if output:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            with open(output, "w") as f:
                f.write(table)
        return table

    rows = []
    for model_name in models:
        for opt in optimizers:
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                rows.append({"model": model_name, "optimizer": opt, "error": "skipped (time)"})
                continue
            try:
                row = bench_train(
                    model_name,
                    opt,
                    image_size=args.image_size,
                    dtype=dtype,
                    group_batch=args.group_batch,
                    num_groups=args.num_groups,
                    steps=args.steps,
                    warmup=args.warmup,
                )
            except Exception as e:  # report and go on: one failure must not lose the rest
                msg = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")[:160]
                row = {"model": model_name, "optimizer": opt, "error": msg}
            rows.append(row)
            print(row, flush=True)
            report(rows)
    print(report(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
