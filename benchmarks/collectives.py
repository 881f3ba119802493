"""Collective bytes per M3 step from the compiled HLO, and XLA's peak memory per optimizer.

Runs on fake CPU devices (the flag below is set before jax is imported); nothing is timed:
the numbers come from the compiled, SPMD-partitioned programs, so they are what the same
programs would send on real devices.

Measures (see :func:`cgh_jax.optim.hlo.hlo_collective_traffic`):

* HLO bytes: the sum over collective instructions of operand + result bytes (one device);
* ring bytes: bytes one device sends under ring algorithms (all-reduce ``2(n-1)/n S``,
  reduce-scatter ``(n-1)/n S_in``, all-gather ``(n-1)/n S_out``, all-to-all ``(n-1)/n S``,
  collective-permute ``S`` per source), averaged over the devices and for the busiest one.

Every program is the trainer's own train step (``cgh_jax.step.build_steps`` with an
``OptimizerSpec``; gradient, optimizer update, parameter update and the step's metrics) on
parameters replicated and the batch sharded over the devices. Methods: SGD, the
straightforward M3 (``m3_layout='vmap'``: ``grouped_grads`` + the median in the optimizer;
"loop": ``m3_layout='loop'``), and M3 with the ``reduce_scatter``, ``group_sharded`` and
``group_aligned`` layouts (``sharded_median_of_means_grads`` inside the step).

Section ``pods``: 8 to 256 devices (powers of two, which 3 groups never divide): SGD and M3
with ``group_sharded``, ``group_aligned`` and ``auto``, the bytes of the busiest device and
the examples each device evaluates (``group_aligned`` moves SGD's bytes by computing more).
256 fake devices compile these steps in seconds; nothing runs.
Usage, from the repository root::

    PYTHONPATH=. python benchmarks/collectives.py
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=256"
    ).strip()

import argparse  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from benchmarks.common import (  # noqa: E402
    TrainerStep,
    markdown_table,
    memory_summary,
    mib,
    num_params,
    optimizer_spec,
)
from cgh_jax.models import get_model  # noqa: E402
from cgh_jax.optim.aligned_plan import aligned_plan, chunk_size_for  # noqa: E402
from cgh_jax.optim.hlo import hlo_collective_traffic, summarize_traffic  # noqa: E402

K = 3


METHODS = {
    "SGD": "sgd",
    "M3 straightforward": "m3",
    "M3 straightforward (loop)": "m3_loop",
    "M3 reduce_scatter": "m3_reduce_scatter",
    "M3 group_sharded": "m3_group_sharded",
    "M3 group_aligned": "m3_group_aligned",
}
"""Table name -> benchmark variant (:data:`benchmarks.common.VARIANTS`)."""


def mlp_model(hidden: int, depth: int = 2, classes: int = 10):
    """An MLP (``depth`` hidden layers of ``hidden`` units) on flat 784-dim inputs."""
    return get_model("mlp", num_classes=classes, hidden=(hidden,) * depth), (784,)


def resnet_model():
    """resnet_tiny (BatchNorm) at 32x32."""
    return get_model("resnet_tiny", num_classes=10), (32, 32, 3)


def make_mesh(num_devices: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:num_devices]), ("data",))


def model_params(model, image_shape) -> int:
    spec = optimizer_spec("sgd", examples_per_update=1)
    return num_params(TrainerStep(model, spec, make_mesh(1), image_shape).abstract_state().params)


def traffic_rows(model, image_shape, batch_size, num_devices, label):
    """One table row per method: collectives of the compiled train step."""
    mesh = make_mesh(num_devices)
    rows, sgd = [], None
    for name, variant in METHODS.items():
        if variant in ("m3_group_sharded", "m3_group_aligned") and num_devices < K:
            continue  # they need at least as many devices as groups
        spec = optimizer_spec(variant, examples_per_update=batch_size, num_groups=K)
        trainer = TrainerStep(model, spec, mesh, image_shape)
        compiled = trainer.compile(trainer.abstract_batch(batch_size))
        t = summarize_traffic(hlo_collective_traffic(compiled.as_text(), num_devices))
        flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
        sgd = sgd or t
        rows.append(
            [
                label,
                num_devices,
                name,
                t["num_ops"],
                mib(t["hlo_bytes"]),
                mib(t["ring_bytes"]),
                f"{t['ring_bytes'] / sgd['ring_bytes']:.3f}",
                mib(t["max_ring_bytes"]),
                f"{t['max_ring_bytes'] / sgd['max_ring_bytes']:.3f}",
                f"{flops / 1e6:.1f}",
            ]
        )
    return rows


TRAFFIC_HEADERS = [
    "model (params)",
    "devices",
    "method",
    "collectives",
    "HLO bytes (MiB)",
    "ring MiB/device (avg)",
    "vs SGD (avg)",
    "ring MiB (busiest device)",
    "vs SGD (busiest)",
    "MFLOP/device",
]


def memory_rows(num_devices: int, batch_size: int):
    """Peak memory of one train step of the trainer (its state donated)."""
    mesh = make_mesh(num_devices)
    rows = []
    sharded = ["m3_group_sharded", "m3_group_aligned"] if num_devices >= K else []
    variants = ["sgd", "m3", "rm3", "ra3", *sharded]
    for name, (model, image_shape) in (("mlp", mlp_model(1024)), ("resnet_tiny", resnet_model())):
        base = None
        for variant in variants:
            spec = optimizer_spec(variant, examples_per_update=batch_size, num_groups=K)
            trainer = TrainerStep(model, spec, mesh, image_shape)
            state = trainer.abstract_state()
            m = memory_summary(trainer.compile(trainer.abstract_batch(batch_size), state))
            base = base or m["peak"]
            rows.append(
                [
                    f"{name} ({num_params(state.params) / 1e6:.2f}M)",
                    num_devices,
                    batch_size,
                    variant.replace("_", " ", 1) if variant in sharded else variant,
                    mib(num_params(state.opt_state) * 4),
                    mib(m["arguments"]),
                    mib(m["temporaries"]),
                    mib(m["peak"]),
                    f"{m['peak'] / base:.3f}",
                ]
            )
    return rows


MEMORY_HEADERS = [
    "model (params)",
    "devices",
    "global batch",
    "optimizer",
    "optimizer state (MiB)",
    "arguments (MiB/device)",
    "temporaries (MiB/device)",
    "peak (MiB/device)",
    "vs SGD",
]


def pod_rows(model, image_shape, per_device: int, device_counts) -> list[list]:
    """SGD and M3's sharded layouts on ``device_counts`` devices at ``per_device`` examples
    per device: bytes per device from the compiled trainer step (average and busiest),
    examples each device evaluates, FLOPs and peak memory per device."""
    rows = []
    for d in device_counts:
        mesh, batch = make_mesh(d), per_device * d
        sgd = None
        for name, variant in (
            ("SGD", "sgd"),
            ("M3 group_sharded", "m3_group_sharded"),
            ("M3 group_aligned", "m3_group_aligned"),
            ("M3 auto", "m3_auto"),
        ):
            spec = optimizer_spec(variant, examples_per_update=batch, num_groups=K)
            trainer = TrainerStep(model, spec, mesh, image_shape)
            compiled = trainer.compile(trainer.abstract_batch(batch))
            t = summarize_traffic(hlo_collective_traffic(compiled.as_text(), d))
            flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
            peak = memory_summary(compiled)["peak"]
            sgd = sgd or dict(t, flops=flops, peak=peak)
            layout = trainer.spec.m3_layout
            evaluated = 1.0
            if layout == "group_aligned":
                chunk = chunk_size_for(batch, d, K, independent_examples=True)
                evaluated = aligned_plan(batch, d, K, chunk).compute_ratio
            rows.append(
                [
                    d,
                    name if variant != "m3_auto" else f"M3 auto ({layout})",
                    mib(t["ring_bytes"]),
                    f"{t['ring_bytes'] / sgd['ring_bytes']:.3f}",
                    mib(t["max_ring_bytes"]),
                    f"{t['max_ring_bytes'] / sgd['max_ring_bytes']:.3f}",
                    f"{evaluated:.3f}",
                    f"{flops / sgd['flops']:.3f}",
                    f"{peak / sgd['peak']:.3f}",
                ]
            )
    return rows


POD_HEADERS = [
    "devices",
    "method",
    "ring MiB/device (avg)",
    "vs SGD (avg)",
    "ring MiB (busiest device)",
    "vs SGD (busiest)",
    "examples evaluated per device vs even split",
    "FLOPs/device vs SGD",
    "peak memory/device vs SGD",
]

SECTIONS = ("devices", "params", "batchnorm", "memory", "pods")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-per-device", type=int, default=6, help="multiple of 3")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument(
        "--pod-devices", default="8,16,32,64,128,256", help="device counts of 'pods'"
    )
    parser.add_argument(
        "--pod-batch-per-device", type=int, default=12, help="'pods': multiple of 3"
    )
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    per_device = args.batch_per_device
    print(f"# {jax.device_count()} fake {jax.devices()[0].platform} devices, jax {jax.__version__}")

    if "devices" in sections:
        model, shape = mlp_model(1024)
        label = f"MLP 784-1024-1024-10 ({model_params(model, shape) / 1e6:.2f}M)"
        rows = []
        for d in (2, 4, 6, 8):
            rows += traffic_rows(model, shape, per_device * d, d, label)
        print("\n## Collective bytes per step vs device count\n")
        print(markdown_table(TRAFFIC_HEADERS, rows), flush=True)

    if "params" in sections:
        rows = []
        for hidden in (64, 256, 1024, 2048):
            model, shape = mlp_model(hidden)
            label = f"MLP hidden {hidden} ({model_params(model, shape) / 1e6:.3f}M)"
            rows += traffic_rows(model, shape, per_device * 8, 8, label)
        print("\n## Collective bytes per step vs parameter count (8 devices)\n")
        print(markdown_table(TRAFFIC_HEADERS, rows), flush=True)

    if "batchnorm" in sections:
        model, shape = resnet_model()
        label = f"resnet_tiny ({model_params(model, shape) / 1e6:.3f}M)"
        rows = []
        for d in (6, 8):
            rows += traffic_rows(model, shape, per_device * d, d, label)
        print("\n## Collective bytes per step, BatchNorm model\n")
        print(markdown_table(TRAFFIC_HEADERS, rows), flush=True)

    if "pods" in sections:
        model, shape = mlp_model(1024)
        counts = [int(x) for x in args.pod_devices.split(",")]
        if max(counts) > jax.device_count():
            parser.error(
                f"--pod-devices needs {max(counts)} devices, this process has "
                f"{jax.device_count()}: set XLA_FLAGS=--xla_force_host_platform_device_count"
            )
        label = f"MLP 784-1024-1024-10 ({model_params(model, shape) / 1e6:.2f}M)"
        print(
            f"\n## {label}: busiest device's bytes on 2^n devices, "
            f"{args.pod_batch_per_device} examples per device\n"
        )
        rows = pod_rows(model, shape, args.pod_batch_per_device, counts)
        print("\n" + markdown_table(POD_HEADERS, rows), flush=True)

    if "memory" in sections:
        print("\n## Peak memory of one train step (XLA memory analysis)\n")
        rows = memory_rows(1, 96) + memory_rows(6, 108) + memory_rows(8, 96)
        print(markdown_table(MEMORY_HEADERS, rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
