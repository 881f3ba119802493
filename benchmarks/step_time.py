"""Step times on this CPU: the trainer's step against a minimal one, the median of many
groups against SGD, and M3 / RM3 / RA3 against SGD on narrow ResNets.

Every section times the trainer's own train step (``cgh_jax.step.build_steps`` with an
``OptimizerSpec``: gradient, optimizer, parameter update and the step's metrics; BatchNorm
statistics carried, the state donated) side by side in one process: every repetition runs
each variant in turn (rotating the order), and the tables report medians over the
repetitions, so all variants see the same machine load, which each section states (the
cores other processes kept busy while it timed). Besides wall time the tables give the
process's CPU time per step, which other processes on a shared machine do not inflate.

Sections (``--sections``, comma-separated):

* ``trainer``: the MLP 784-2048-10 with SGD at batch 100 (1.6 M parameters): the trainer's
  step (``trainer``: loss, top-1, learning rate and a finite check), the program that
  computes the global norms of the gradient, parameters and update (``norms``: the
  trainer runs it once per logging interval, before that interval's last step), and a
  minimal step written with the public API only (``minimal``: ``jax.value_and_grad`` +
  ``optax.sgd`` + ``optax.apply_updates`` under ``jax.jit``, the parameters and
  optimizer state donated). ``trainer, per step at log every N`` is the trainer's mean
  cost per step: its step plus a Nth of the norms.
* ``groups``: the MLP at 360 examples per update: SGD (batch 360) against the median of
  ``k`` group means (``k`` groups of ``360 / k``) and its norm-matched controls, in the
  ``vmap`` layout (``grouped_grads``: the ``k`` group gradients, then the median) and the
  ``chunked`` layout (dense kernels' group gradients formed and reduced in chunks of rows,
  :mod:`cgh_jax.optim.chunked`).
* ``resnets``: ``resnet_tiny`` and ``resnet18_w16`` at a global batch of 96 for SGD, M3
  (3 x 32, ``m3_layout='vmap'``; ``m3_loop``: ``m3_layout='loop'``), RM3 and RA3.
* ``conv``: where a conv net's step goes on XLA:CPU: ResNet-18 (CIFAR stem, width 64,
  11.2 M parameters) at batch 128, float32, the forward pass alone (``forward``), the
  gradient with respect to the images only (``+ input grads``: the backward pass without
  the weight-gradient convolutions) and the full gradient (``+ weight grads``), each
  jitted; differences between rows are the cost of each part, and ``cores`` (CPU time /
  wall time) how much of the machine XLA:CPU keeps busy.
* ``filters``: the weight gradient of one 3x3 convolution (stride 1, SAME) at each of
  ResNet-18's four stages (the ``conv`` section's width, batch and image side), as XLA
  computes it (the transpose of ``conv_general_dilated`` with respect to the kernel) and
  as matrix products: ``im2col`` (the 3x3 patches ``[N H W, 9 C]``, then one product with
  the output gradient ``[N H W, C']``) and ``9 taps`` (per tap ``(i, j)`` the shifted input
  ``[N H W, C]`` against the output gradient); the forward convolution beside them for
  scale. Each formulation is checked against XLA's before it is timed.

Usage, from the repository root::

    PYTHONPATH=. python benchmarks/step_time.py --sections trainer [--repeats 9]
    PYTHONPATH=. python benchmarks/step_time.py --sections groups [--ks 3,5,9,15]
    PYTHONPATH=. python benchmarks/step_time.py --sections resnets [--models resnet_tiny]
    PYTHONPATH=. python benchmarks/step_time.py --sections conv [--conv-batch 128]
    PYTHONPATH=. python benchmarks/step_time.py --sections filters
    PYTHONPATH=. python benchmarks/step_time.py --smoke     # every section, tiny, no timing value
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import functools  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import (  # noqa: E402
    MachineLoad,
    StepRunner,
    TrainerStep,
    interleaved_step_times,
    markdown_table,
    median,
    num_params,
    optimizer_spec,
)
from cgh_jax import sharding as sharding_lib  # noqa: E402
from cgh_jax.models import get_model  # noqa: E402
from cgh_jax.spec import optimizer as optimizer_lib  # noqa: E402

SECTIONS = ("trainer", "groups", "resnets", "conv", "filters")
OPTIMIZERS = ("sgd", "m3", "m3_loop", "rm3", "ra3")
MODELS = {
    "resnet_tiny": {},  # (1, 1, 1, 1) BasicBlocks, width 8
    "resnet18_w16": {"width": 16, "stem": "cifar"},  # ResNet-18 layout, width 16
}
MNIST_SHAPE = (28, 28, 1)
CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _timed(runners: dict[str, Callable], args) -> tuple[dict, dict, MachineLoad]:
    with MachineLoad() as load:
        wall, cpu = interleaved_step_times(
            runners, repeats=args.repeats, min_seconds=args.min_seconds
        )
    return wall, cpu, load


def _ms(xs) -> str:
    return f"{1e3 * median(xs):.2f}"


def _range(xs, ys) -> str:
    ratios = sorted(x / y for x, y in zip(xs, ys, strict=True))
    return f"{ratios[0]:.2f}-{ratios[-1]:.2f}"


# ----------------------------------------------------------------------------- trainer


def minimal_sgd_runner(model, params, batch, learning_rate: float) -> Callable:
    """One SGD step through the public API only: ``jax.value_and_grad`` of the mean
    cross-entropy, ``optax.sgd``, ``optax.apply_updates``, jitted, its state donated."""
    tx = optax.sgd(learning_rate)

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"], train=True)
        labels = batch["label"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    step = jax.jit(step, donate_argnums=(0,))
    held = [(params, tx.init(params))]

    def run():
        held[0], _ = step(held[0], batch)
        return held[0][0]

    return run


def trainer_section(args) -> str:
    model = get_model("mlp", num_classes=10, hidden=(args.hidden,))
    mesh = sharding_lib.create_mesh(1)
    spec = optimizer_spec("sgd", examples_per_update=args.batch)
    trainer = TrainerStep(model, spec, mesh, MNIST_SHAPE)
    batch = trainer.random_batch(args.batch, num_classes=10)
    state = trainer.init_state()
    runners = {"trainer": StepRunner(trainer.compile(batch, state), state, batch)}
    norms_state, norms = trainer.init_state(), trainer.compile_norms(batch)
    runners["norms"] = lambda: norms(norms_state, batch)[0]
    params = jax.tree.map(jnp.array, trainer.init_state().params)
    runners["minimal"] = minimal_sgd_runner(model, params, batch, spec.learning_rate)
    count = num_params(params)
    wall, cpu, load = _timed(runners, args)
    rows = []
    for name in runners:
        rows.append(
            [
                name,
                _ms(wall[name]),
                f"{median(wall['minimal']) / median(wall[name]):.3f}",
                _range(wall["minimal"], wall[name]),
                _ms(cpu[name]),
                f"{median(cpu['minimal']) / median(cpu[name]):.3f}",
                f"{args.batch / median(wall[name]):,.0f}",
            ]
        )
    every = args.log_every
    mixed = {
        key: median(t["trainer"]) + median(t["norms"]) / every
        for key, t in (("wall", wall), ("cpu", cpu))
    }
    rows.append(
        [
            f"trainer, per step at log every {every}",
            f"{1e3 * mixed['wall']:.2f}",
            f"{median(wall['minimal']) / mixed['wall']:.3f}",
            "",
            f"{1e3 * mixed['cpu']:.2f}",
            f"{median(cpu['minimal']) / mixed['cpu']:.3f}",
            f"{args.batch / mixed['wall']:,.0f}",
        ]
    )
    headers = [
        "step",
        "wall ms/step",
        "speed vs minimal (wall)",
        "per-repetition range",
        "CPU ms/step",
        "speed vs minimal (CPU)",
        "examples/s (wall)",
    ]
    return (
        f"\n## The trainer's step against a minimal one: MLP 784-{args.hidden}-10 "
        f"({count / 1e6:.2f}M params), SGD, batch {args.batch}\n\n"
        f"Median of {args.repeats} repetitions of >= {args.min_seconds} s; {load.describe()}.\n\n"
        + markdown_table(headers, rows)
    )


# ----------------------------------------------------------------------------- groups

GROUPED = ("m3", "mean_at_median_norm", "median_at_mean_norm")
LAYOUTS = ("vmap", "chunked")


def groups_section(args) -> str:
    model = get_model("mlp", num_classes=10, hidden=(args.hidden,))
    mesh = sharding_lib.create_mesh(1)
    variants = {
        "sgd": optimizer_lib.parse(
            {"name": "sgd", "learning_rate": 0.1}, batch_size=args.per_update
        )
    }
    for k in (int(x) for x in args.ks.split(",")):
        if args.per_update % k:
            raise SystemExit(f"--per-update {args.per_update} is not a multiple of k = {k}")
        for name in args.grouped.split(","):
            for layout in LAYOUTS:
                cfg = {"name": name, "learning_rate": 0.1, "num_groups": k, "m3_layout": layout}
                spec = optimizer_lib.parse(cfg, batch_size=args.per_update // k)
                variants[f"{name} k={k} {layout}"] = spec
    runners = {}
    for label, spec in variants.items():
        trainer = TrainerStep(model, spec, mesh, MNIST_SHAPE)
        state = trainer.init_state()
        batch = trainer.random_batch(args.per_update, num_classes=10)
        runners[label] = StepRunner(trainer.compile(batch, state), state, batch)
    wall, cpu, load = _timed(runners, args)
    rows = [
        [
            label,
            _ms(wall[label]),
            f"{median(wall[label]) / median(wall['sgd']):.3f}",
            _range(wall[label], wall["sgd"]),
            _ms(cpu[label]),
            f"{median(cpu[label]) / median(cpu['sgd']):.3f}",
        ]
        for label in runners
    ]
    headers = [
        "optimizer",
        "wall ms/step",
        "vs SGD (wall)",
        "per-repetition range",
        "CPU ms/step",
        "vs SGD (CPU)",
    ]
    return (
        f"\n## Many groups: MLP 784-{args.hidden}-10, {args.per_update} examples per update\n\n"
        f"Median of {args.repeats} repetitions of >= {args.min_seconds} s; {load.describe()}.\n\n"
        + markdown_table(headers, rows)
    )


# ----------------------------------------------------------------------------- resnets


def build_resnet_runners(model_name: str, batch_size: int):
    base = "resnet18" if model_name.startswith("resnet18") else model_name
    model = get_model(base, num_classes=10, **MODELS[model_name])
    mesh = sharding_lib.create_mesh(1)
    runners, count = {}, 0
    for opt in OPTIMIZERS:
        spec = optimizer_spec(opt, examples_per_update=batch_size)
        trainer = TrainerStep(model, spec, mesh, (32, 32, 3))
        state = trainer.init_state()
        batch = trainer.random_batch(batch_size, num_classes=10)
        count = num_params(state.params)
        runners[opt] = StepRunner(trainer.compile(batch, state), state, batch)
    return runners, count


RESNET_HEADERS = [
    "model (params)",
    "optimizer",
    "batch",
    "wall ms/step",
    "vs SGD (wall)",
    "per-repetition range (wall)",
    "CPU ms/step",
    "vs SGD (CPU)",
]


def resnets_section(args) -> str:
    rows, loads = [], []
    for name in args.models.split(","):
        runners, count = build_resnet_runners(name, args.resnet_batch)
        wall, cpu, load = _timed(runners, args)
        loads.append(f"{name}: {load.describe()}")
        for opt in OPTIMIZERS:
            rows.append(
                [
                    f"{name} ({count / 1e6:.3f}M)",
                    opt,
                    f"3x{args.resnet_batch // 3}" if opt.startswith("m3") else args.resnet_batch,
                    f"{1e3 * median(wall[opt]):.1f}",
                    f"{median(wall[opt]) / median(wall['sgd']):.3f}",
                    _range(wall[opt], wall["sgd"]),
                    f"{1e3 * median(cpu[opt]):.1f}",
                    f"{median(cpu[opt]) / median(cpu['sgd']):.3f}",
                ]
            )
    return (
        f"\n## Narrow ResNets, median of {args.repeats} repetitions of >= {args.min_seconds} s"
        "\n\n" + "; ".join(loads) + ".\n\n" + markdown_table(RESNET_HEADERS, rows)
    )


# ----------------------------------------------------------------------------- conv


def build_conv_programs(width: int, batch_size: int, image_size: int) -> dict[str, tuple]:
    """ResNet-18 (CIFAR stem) in train mode: the forward pass, the forward pass with the
    input gradients, and with the full gradient, each a jitted function and its arguments."""
    model = get_model("resnet18", num_classes=10, width=width, stem="cifar")
    key_x, key_y, key_init = jax.random.split(jax.random.PRNGKey(0), 3)
    images = jax.random.uniform(key_x, (batch_size, image_size, image_size, 3))
    labels = jax.random.randint(key_y, (batch_size,), 0, 10)
    variables = model.init(key_init, images, train=False)
    params, stats = variables["params"], variables["batch_stats"]

    def loss_fn(params, images):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    return {
        "forward": (jax.jit(loss_fn), (params, images)),
        "+ input grads": (jax.jit(jax.grad(loss_fn, argnums=1)), (params, images)),
        "+ weight grads": (jax.jit(jax.grad(loss_fn, argnums=(0, 1))), (params, images)),
    }


def build_conv_runners(width: int, batch_size: int, image_size: int) -> dict[str, Callable]:
    """:func:`build_conv_programs`, each program a callable without arguments."""
    programs = build_conv_programs(width, batch_size, image_size)
    return {name: functools.partial(fn, *args) for name, (fn, args) in programs.items()}


def conv_section(args) -> str:
    runners = build_conv_runners(args.conv_width, args.conv_batch, args.conv_image)
    wall, cpu, load = _timed(runners, args)
    rows, before = [], 0.0
    for name in runners:
        w, c = median(wall[name]), median(cpu[name])
        rows.append(
            [name, f"{1e3 * w:.0f}", f"{1e3 * (w - before):.0f}", f"{1e3 * c:.0f}", f"{c / w:.2f}"]
        )
        before = w
    headers = ["program", "wall ms", "wall ms added by this part", "CPU ms", "cores"]
    return (
        f"\n## ResNet-18 (CIFAR stem, width {args.conv_width}) at batch {args.conv_batch}: "
        f"forward, input gradients, weight gradients\n\nMedian of {args.repeats} repetitions "
        f"of >= {args.min_seconds} s; {load.describe()}.\n\n" + markdown_table(headers, rows)
    )


# ----------------------------------------------------------------------------- filters


def _conv3x3(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=CONV_DIMS)


def filter_grad_xla(x, dy):
    """XLA's weight gradient: the transpose of the convolution with respect to its kernel."""
    w = jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype)
    return jax.vjp(lambda w: _conv3x3(x, w), w)[1](dy)[0]


def _shifted(x):
    """The nine inputs of a 3x3 SAME convolution's taps, ``(i, j)`` in row-major order."""
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]


def _contract_examples(a, b):
    """``a^T b`` for ``a`` ``[..., C]`` and ``b`` ``[..., C']``: ``[C, C']``."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def filter_grad_im2col(x, dy):
    """The 3x3 patches ``[N H W, 9 C]`` against the output gradient: one matrix product."""
    g = _contract_examples(jnp.concatenate(_shifted(x), axis=-1), dy)
    return g.reshape(3, 3, x.shape[-1], dy.shape[-1])


def filter_grad_taps(x, dy):
    """One matrix product per tap: the shifted input against the output gradient."""
    return jnp.stack([_contract_examples(s, dy) for s in _shifted(x)]).reshape(
        3, 3, x.shape[-1], dy.shape[-1]
    )


FILTER_GRADS = {"XLA": filter_grad_xla, "im2col": filter_grad_im2col, "9 taps": filter_grad_taps}


def filters_section(args) -> str:
    stages = [(args.conv_image // 2**s, args.conv_width * 2**s) for s in range(4)]
    runners, checks = {}, {}
    for side, channels in stages:
        kx, kd, kw = jax.random.split(jax.random.PRNGKey(side), 3)
        x = jax.random.normal(kx, (args.conv_batch, side, side, channels))
        dy = jax.random.normal(kd, (args.conv_batch, side, side, channels))
        w = 0.05 * jax.random.normal(kw, (3, 3, channels, channels))
        forward = jax.jit(_conv3x3)
        runners[(side, "forward")] = functools.partial(forward, x, w)
        reference = jax.jit(filter_grad_xla)(x, dy)
        scale = float(jnp.max(jnp.abs(reference)))
        for name, fn in FILTER_GRADS.items():
            fn = jax.jit(fn)
            checks[(side, name)] = float(jnp.max(jnp.abs(fn(x, dy) - reference))) / scale
            runners[(side, name)] = functools.partial(fn, x, dy)
    worst = max(checks.values())
    if worst > 1e-4:
        raise SystemExit(f"a filter gradient differs from XLA's by {worst:.1e} (relative)")
    wall, cpu, load = _timed(runners, args)
    rows = []
    for side, channels in stages:
        flops = 2 * args.conv_batch * side * side * channels * channels * 9
        ms = {name: 1e3 * median(wall[(side, name)]) for name in ("forward", *FILTER_GRADS)}
        best = min(FILTER_GRADS, key=lambda name: ms[name])
        rows.append(
            [
                f"{side}x{side}, {channels} -> {channels}",
                f"{flops / 1e9:.2f}",
                *(f"{ms[name]:.1f}" for name in ("forward", *FILTER_GRADS)),
                f"{ms['XLA'] / ms['forward']:.2f}",
                f"{best} ({ms['XLA'] / ms[best]:.2f}x XLA)",
            ]
        )
    headers = ["conv (side, channels)", "GFLOP each", "forward ms"]
    headers += [f"filter grad: {name} ms" for name in FILTER_GRADS]
    headers += ["XLA / forward", "fastest filter grad"]
    return (
        f"\n## The filter gradient of a 3x3 convolution at ResNet-18's stages, batch "
        f"{args.conv_batch}\n\nMedian of {args.repeats} repetitions of >= {args.min_seconds} s; "
        f"{load.describe()}; the matrix-product formulations agree with XLA's to "
        f"{worst:.1e} (relative to the largest entry).\n\n" + markdown_table(headers, rows)
    )


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="length of each timed repetition"
    )
    parser.add_argument("--hidden", type=int, default=2048, help="trainer/groups: MLP width")
    parser.add_argument("--batch", type=int, default=100, help="trainer: batch")
    parser.add_argument("--log-every", type=int, default=200, help="trainer: log interval")
    parser.add_argument("--per-update", type=int, default=360, help="groups: examples/update")
    parser.add_argument("--ks", default="15", help="groups: group counts, comma-separated")
    parser.add_argument(
        "--grouped", default=",".join(GROUPED), help="groups: grouped optimizers to time"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="resnets: models")
    parser.add_argument(
        "--resnet-batch", type=int, default=96, help="resnets: global batch (multiple of 3)"
    )
    parser.add_argument("--conv-batch", type=int, default=128, help="conv: batch")
    parser.add_argument("--conv-width", type=int, default=64, help="conv: ResNet-18 width")
    parser.add_argument("--conv-image", type=int, default=32, help="conv: image side")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one short repetition")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {', '.join(SECTIONS)}")
    if args.smoke:
        args.repeats, args.min_seconds, args.hidden, args.batch = 1, 0.0, 32, 12
        args.per_update, args.ks = 30, "3,5"
        args.models, args.resnet_batch = "resnet_tiny", 6
        args.conv_batch, args.conv_width, args.conv_image = 4, 2, 8
    print(f"# {jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}")
    builders = {
        "trainer": trainer_section,
        "groups": groups_section,
        "resnets": resnets_section,
        "conv": conv_section,
        "filters": filters_section,
    }
    for name in sections:
        print(builders[name](args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
