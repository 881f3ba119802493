"""Where one core's time goes in a ResNet-18 gradient, in cgh-jax (XLA:CPU) and in PyTorch.

Each framework runs in its own process, pinned to one core and one thread (XLA:CPU with
``--xla_cpu_multi_thread_eigen=false`` added to ``XLA_FLAGS``; PyTorch with
``torch.set_num_threads(1)``), so that its profiler's op times add up to the wall time
without overlap. The program is the gradient of the cross-entropy of ResNet-18 (CIFAR
stem, train mode) with respect to the parameters and the images
(``benchmarks.step_time.build_conv_programs``; PyTorch: ``benchmarks.torch_reference``'s
``ResNet18``, forward, loss, ``backward()``), at the same batch, width and image side.

The ops are summed into parts:

* **forward convolutions**, **input-gradient convolutions** and **filter-gradient
  convolutions** (XLA: the compiled program's convolutions, told apart by their metadata
  and shape: a backward convolution whose output, read as ``[C_in, kh, kw, C_out]``, is a
  kernel's shape computes a filter gradient; PyTorch's ``convolution_backward`` computes
  both gradients in one op, so its row *backward convolutions* holds both);
* **layout copies** (XLA: the transposes and copies its layout assignment inserts, mostly
  to give the filter-gradient convolutions their operands with the batch as the
  contracted, innermost dimension; PyTorch: ``aten::copy_``, ``contiguous`` and friends);
* **everything else**: BatchNorm, ReLU, the residual sums, pooling, the loss.

Usage, from the repository root::

    PYTHONPATH=. python benchmarks/conv_profile.py                 # ResNet-18, batch 128
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \\
        PYTHONPATH=. python benchmarks/conv_profile.py
    PYTHONPATH=. python benchmarks/conv_profile.py --smoke         # tiny, seconds

Without PyTorch (``pip install 'cgh-jax[bench]'``) the script says so and prints the
cgh-jax column alone.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = (
    "forward convolutions",
    "input-gradient convolutions",
    "filter-gradient convolutions",
    "backward convolutions",
    "layout copies",
    "everything else",
)
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* (\S+?)\((.*)$", re.M)


def pin_to_one_core() -> int:
    """Restrict this process to the first core it may use; return that core."""
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def one_core_xla() -> int:
    """Before importing jax: XLA:CPU on one thread (:data:`ONE_THREAD_XLA` added to the
    caller's ``XLA_FLAGS``), the process pinned to one core; return that core."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
    return pin_to_one_core()


# ----------------------------------------------------------------------------- XLA side


def _computations(hlo_text: str) -> dict[str, str]:
    """Computation name -> its text, for every computation of an HLO module's text."""
    blocks = re.split(r"\n(?=(?:ENTRY )?%\S+ \()", hlo_text)
    named = {}
    for block in blocks:
        match = re.match(r"(?:ENTRY )?%(\S+) \(", block)
        if match:
            named[match.group(1)] = block
    return named


def classify_hlo(hlo_text: str, kernel_shapes: set[tuple[int, ...]]) -> dict:
    """Instruction name -> part, for the entry computation of a compiled XLA:CPU program.

    A convolution, or a fusion whose computation holds one (XLA:CPU hands convolutions to
    YNNPACK as fusions), is forward if its ``op_name`` has no ``transpose(`` (the VJP's
    mark); otherwise a filter gradient if its output, as it is or read as
    ``[C_in, kh, kw, C_out]``, has a kernel's shape ``[kh, kw, C_in, C_out]`` (XLA's
    weight-gradient convolutions contract over the batch and the positions and often
    carry no metadata), else an input gradient. Other fusions and copies named
    ``transpose*`` / ``copy*`` / ``wrapped_copy*`` are layout copies; the rest (the
    convolutions XLA turns into matrix products at small sizes among them) is everything
    else.
    """
    computations = _computations(hlo_text)
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    parts = {}
    for name, _, dims, opcode, rest in _INSTRUCTION.findall(entry):
        shape = tuple(int(d) for d in dims.split(",") if d)
        called = re.search(r"calls=%([^,\s]+)", rest)
        inner = computations.get(called.group(1), "") if called else ""
        conv = re.search(r" convolution\((.*)$", inner, re.M)
        if opcode == "convolution" or (opcode == "fusion" and conv):
            text = rest if opcode == "convolution" else conv.group(1) + " " + rest
            as_kernel = (shape[1], shape[2], shape[0], shape[3]) if len(shape) == 4 else shape
            if "transpose(" not in text and "op_name" in text:
                parts[name] = "forward convolutions"
            elif shape in kernel_shapes or as_kernel in kernel_shapes:
                parts[name] = "filter-gradient convolutions"
            else:
                parts[name] = "input-gradient convolutions"
        elif re.match(r"(transpose|copy|wrapped_copy)", name) or opcode in ("transpose", "copy"):
            parts[name] = "layout copies"
        else:
            parts[name] = "everything else"
    return parts


def trace_op_seconds(trace_dir: str) -> collections.Counter:
    """Op name -> total seconds over a ``jax.profiler`` trace's complete events."""
    (path,) = Path(trace_dir).rglob("*.trace.json.gz")
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            total[event["name"]] += event["dur"] * 1e-6
    return total


def jax_worker(args) -> dict:
    core = one_core_xla()
    import jax

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.step_time import build_conv_programs

    fn, fn_args = build_conv_programs(args.width, args.batch, args.image)["+ weight grads"]
    kernels = {
        tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(fn_args[0]) if leaf.ndim == 4
    }
    parts = classify_hlo(fn.lower(*fn_args).compile().as_text(), kernels)
    jax.block_until_ready(fn(*fn_args))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(args.repeats):
            jax.block_until_ready(fn(*fn_args))
        wall = (time.perf_counter() - start) / args.repeats
        jax.profiler.stop_trace()
        ops = trace_op_seconds(trace_dir)
    seconds = collections.Counter()
    for name, part in parts.items():
        seconds[part] += ops.get(name, 0.0) / args.repeats
    flags = os.environ["XLA_FLAGS"]
    return {"core": core, "wall": wall, "parts": dict(seconds), "xla_flags": flags}


def transposes_worker(args) -> dict:
    """Milliseconds (median of ``args.repeats`` + 2) of three jitted programs on the stage-1
    activation ``[N, H, W, C]``: a copy, the transpose to ``[C, H, W, N]`` (the layout of a
    filter-gradient convolution's input) and that transpose of ``relu(x * a + b)``, the
    shape of what XLA fuses into it (a BatchNorm and ReLU recomputed inside the copy)."""
    one_core_xla()
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import median

    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.image, args.image, args.width))
    to_chwn = (3, 1, 2, 0)
    programs = {
        "copy": lambda x: x * 1.0 + 0.0,
        "transpose to [C, H, W, N]": lambda x: jnp.transpose(x, to_chwn),
        "the same transpose of relu(x * a + b)": lambda x: jnp.transpose(
            jnp.maximum(x * 1.1 + 0.2, 0.0), to_chwn
        ),
    }
    ms = {}
    for name, fn in programs.items():
        fn = jax.jit(fn)
        jax.block_until_ready(fn(x))
        times = []
        for _ in range(args.repeats + 2):
            start = time.perf_counter()
            jax.block_until_ready(fn(x))
            times.append(time.perf_counter() - start)
        ms[name] = 1e3 * median(times)
    return {"ms": ms, "shape": list(x.shape)}


# ----------------------------------------------------------------------------- PyTorch side


def torch_part(op_name: str) -> str:
    """PyTorch profiler op name -> part."""
    if "convolution_backward" in op_name:
        return "backward convolutions"
    if "convolution" in op_name:
        return "forward convolutions"
    if op_name in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::to", "aten::_to_copy"):
        return "layout copies"
    return "everything else"


def torch_worker(args) -> dict:
    core = pin_to_one_core()
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_reference import ResNet18

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, width=args.width)
    images = torch.rand(args.batch, 3, args.image, args.image)
    labels = torch.randint(0, 10, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def gradient():
        model.zero_grad(set_to_none=True)
        images.grad = None
        images.requires_grad_(True)
        loss_fn(model(images), labels).backward()

    gradient()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.repeats):
            gradient()
        wall = (time.perf_counter() - start) / args.repeats
    seconds = collections.Counter()
    for op in prof.key_averages():
        seconds[torch_part(op.key)] += op.self_cpu_time_total * 1e-6 / args.repeats
    return {"core": core, "wall": wall, "parts": dict(seconds), "torch": torch.__version__}


# ----------------------------------------------------------------------------- driver


def run_worker(kind: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    command += ["--batch", str(args.batch), "--width", str(args.width)]
    command += ["--image", str(args.image), "--repeats", str(args.repeats)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    """The parts in ms per gradient and as a share of the wall time, one column per framework."""
    names = list(results)
    lines = ["| part | " + " | ".join(f"{n} ms (share)" for n in names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for part in PARTS:
        if not any(part in r["parts"] for r in results.values()):
            continue
        cells = []
        for r in results.values():
            s = r["parts"].get(part)
            cells.append("-" if s is None else f"{1e3 * s:.1f} ({s / r['wall']:.0%})")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    for label, key in (("sum of the parts", None), ("wall time", "wall")):
        cells = [
            f"{1e3 * (r[key] if key else sum(r['parts'].values())):.1f}" for r in results.values()
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="gradients traced per framework")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.width, args.image, args.repeats = 4, 4, 16, 1
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    results = {"cgh-jax (XLA:CPU)": run_worker("jax", args)}
    if importlib.util.find_spec("torch") is None:
        print("# PyTorch is not installed (pip install 'cgh-jax[bench]'): cgh-jax column only")
    else:
        results["PyTorch"] = run_worker("torch", args)
    first = next(iter(results.values()))
    print(
        f"# ResNet-18 (CIFAR stem, width {args.width}) gradient at batch {args.batch}, "
        f"{args.image}x{args.image} images, float32; one core (core {first['core']}), one "
        f"thread; mean of {args.repeats} traced gradients; XLA_FLAGS={first['xla_flags']}"
        + (f"; PyTorch {results['PyTorch']['torch']}" if "PyTorch" in results else "")
    )
    print(table(results))
    copies = run_worker("transposes", args)
    print(
        f"\n# XLA:CPU layout copies of the stage-1 activation {copies['shape']} "
        "(one core, median ms)\n\n| program | ms |\n|---|---:|"
    )
    for name, ms in copies["ms"].items():
        print(f"| {name} | {ms:.1f} |")
    return 0


WORKERS = {"jax": jax_worker, "torch": torch_worker, "transposes": transposes_worker}


if __name__ == "__main__":
    raise SystemExit(main())
