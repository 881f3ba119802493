"""Collective bytes per M3 step from the compiled HLO, and XLA's peak memory per optimizer.

Runs on fake CPU devices (the flag below is set before jax is imported); nothing is timed:
the numbers come from the compiled, SPMD-partitioned programs, so they are what the same
programs would send on real devices.

Measures (see :func:`cgh_jax.optim.sharded.hlo_collective_traffic`):

* HLO bytes: the sum over collective instructions of operand + result bytes (one device);
* ring bytes: bytes one device sends under ring algorithms (all-reduce ``2(n-1)/n S``,
  reduce-scatter ``(n-1)/n S_in``, all-gather ``(n-1)/n S_out``, all-to-all ``(n-1)/n S``,
  collective-permute ``S`` per source), averaged over the devices and for the busiest one.

Methods: SGD (``jax.grad`` of the sharded batch under ``jax.jit``), the straightforward M3
(``grouped_grads`` + median under ``jax.jit``; "loop": ``vectorize=False``), and
``sharded_median_of_means_grads`` with the ``reduce_scatter`` and ``group_sharded`` layouts.
Usage, from the repository root::

    PYTHONPATH=. python benchmarks/collectives.py
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from benchmarks.common import (  # noqa: E402
    make_train_step,
    markdown_table,
    memory_summary,
    mib,
    num_params,
)
from cgh_jax.models import get_model  # noqa: E402
from cgh_jax.optim import coordinate_median, grouped_grads  # noqa: E402
from cgh_jax.optim.sharded import (  # noqa: E402
    hlo_collective_traffic,
    sharded_median_of_means_grads,
    summarize_traffic,
)

K = 3


def mlp_problem(hidden: int, depth: int = 2, classes: int = 10, dim: int = 784):
    """An MLP (``depth`` hidden layers of ``hidden`` units) and its loss."""
    model = get_model("mlp", num_classes=classes, hidden=(hidden,) * depth)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, dim)))["params"]

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"], train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    return params, loss_fn, dim


def batch_for(size: int, dim: int):
    return {"image": jnp.zeros((size, dim)), "label": jnp.zeros((size,), jnp.int32)}


def gradient_programs(loss_fn, mesh, has_state=False):
    """name -> function (params, batch, *extra) -> update direction, for each method."""
    median_of = lambda g: jax.tree.map(coordinate_median, g)
    grouped = grouped_grads(loss_fn, K, has_state=has_state)
    looped = grouped_grads(loss_fn, K, has_state=has_state, vectorize=False)
    sharded = lambda layout: sharded_median_of_means_grads(
        loss_fn, K, mesh, has_state=has_state, layout=layout
    )
    programs = {
        "SGD": jax.grad(loss_fn, has_aux=has_state),
        "M3 straightforward": lambda *a: median_of(grouped(*a).grads),
        "M3 straightforward (loop)": lambda *a: median_of(looped(*a).grads),
        "M3 reduce_scatter": sharded("reduce_scatter"),
    }
    if mesh.shape["data"] >= K:
        programs["M3 group_sharded"] = sharded("group_sharded")
    return programs


def traffic_rows(params, loss_fn, batch, num_devices, label, extra=()):
    """One table row per method: collectives of the compiled gradient computation."""
    mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    params, extra = jax.device_put((params, extra), NamedSharding(mesh, P()))
    rows, sgd = [], None
    for name, fn in gradient_programs(loss_fn, mesh, has_state=bool(extra)).items():
        compiled = jax.jit(fn).lower(params, batch, *extra).compile()
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


def resnet_problem():
    """resnet_tiny (BatchNorm) at 32x32: params, batch statistics and the loss."""
    resnet = get_model("resnet_tiny", num_classes=10)
    variables = jax.jit(lambda k: resnet.init(k, jnp.zeros((1, 32, 32, 3))))(jax.random.key(0))

    def loss_fn(params, batch, stats):
        logits, new = resnet.apply(
            {"params": params, "batch_stats": stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new["batch_stats"]

    return variables["params"], variables["batch_stats"], loss_fn


def image_batch(size: int):
    return {"image": jnp.zeros((size, 32, 32, 3)), "label": jnp.zeros((size,), jnp.int32)}


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
    """Peak memory of one full train step (params and optimizer state donated)."""
    mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
    rows = []
    problems = {"mlp": mlp_problem(1024)}
    resnet_params, resnet_stats, resnet_loss = resnet_problem()

    optimizers = ["sgd", "m3", "rm3", "ra3"] + (["m3_sharded"] if num_devices >= K else [])
    for name in ("mlp", "resnet_tiny"):
        if name == "mlp":
            params, loss_fn, dim = problems["mlp"]
            extra, has_state = None, False
            batch = batch_for(batch_size, dim)
        else:
            params, extra, loss_fn, has_state = resnet_params, resnet_stats, resnet_loss, True
            batch = image_batch(batch_size)
        batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
        base = None
        for opt in optimizers:
            tx, step = make_train_step(
                loss_fn, opt, has_state=has_state, mesh=mesh, layout="group_sharded"
            )
            rep = NamedSharding(mesh, P())
            p = jax.device_put(params, rep)
            opt_state = jax.device_put(tx.init(params), rep)
            compiled = (
                jax.jit(step, donate_argnums=(0, 1, 2)).lower(p, extra, opt_state, batch).compile()
            )
            m = memory_summary(compiled)
            base = base or m["peak"]
            label = "m3 group_sharded" if opt == "m3_sharded" else opt
            rows.append(
                [
                    f"{name} ({num_params(params) / 1e6:.2f}M)",
                    num_devices,
                    batch_size,
                    label,
                    mib(num_params(tx.init(params)) * 4),
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


SECTIONS = ("devices", "params", "batchnorm", "memory")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-per-device", type=int, default=6, help="multiple of 3")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    per_device = args.batch_per_device
    print(f"# {jax.device_count()} fake {jax.devices()[0].platform} devices, jax {jax.__version__}")

    if "devices" in sections:
        params, loss_fn, dim = mlp_problem(1024)
        label = f"MLP 784-1024-1024-10 ({num_params(params) / 1e6:.2f}M)"
        rows = []
        for d in (2, 4, 6, 8):
            rows += traffic_rows(params, loss_fn, batch_for(per_device * d, dim), d, label)
        print("\n## Collective bytes per step vs device count\n")
        print(markdown_table(TRAFFIC_HEADERS, rows), flush=True)

    if "params" in sections:
        rows = []
        for hidden in (64, 256, 1024, 2048):
            params, loss_fn, dim = mlp_problem(hidden)
            label = f"MLP hidden {hidden} ({num_params(params) / 1e6:.3f}M)"
            rows += traffic_rows(params, loss_fn, batch_for(per_device * 8, dim), 8, label)
        print("\n## Collective bytes per step vs parameter count (8 devices)\n")
        print(markdown_table(TRAFFIC_HEADERS, rows), flush=True)

    if "batchnorm" in sections:
        params, stats, loss_fn = resnet_problem()
        label = f"resnet_tiny ({num_params(params) / 1e6:.3f}M)"
        rows = []
        for d in (6, 8):
            rows += traffic_rows(
                params, loss_fn, image_batch(per_device * d), d, label, extra=(stats,)
            )
        print("\n## Collective bytes per step, BatchNorm model\n")
        print(markdown_table(TRAFFIC_HEADERS, rows), flush=True)

    if "memory" in sections:
        print("\n## Peak memory of one train step (XLA memory analysis)\n")
        rows = memory_rows(1, 96) + memory_rows(6, 108) + memory_rows(8, 96)
        print(markdown_table(MEMORY_HEADERS, rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
