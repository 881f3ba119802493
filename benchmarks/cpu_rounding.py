"""Is a gradient computed under an XLA:CPU flag as accurate as the default one? ResNet-18
(CIFAR stem) in train mode, the full gradient of the mean cross-entropy (every parameter
array and the input gradient), computed in float32 under each setting of ``XLA_FLAGS`` and
compared with a float64 reference of the same inputs, on several random batches.

The error of an array is ``max |g - g64| / max |g64|``; per batch the table gives its
median and its worst over the arrays, and how many arrays stay within 1e-5 (float32
round-off carried through the network). A deep ReLU net with BatchNorm amplifies
round-off: a BatchNorm output within round-off of zero flips its ReLU, and the backward
pass spreads the flip over its channel and every earlier layer, so one batch's error
depends on where its flips land. A setting is as accurate as the default when its errors
over the batches are no larger than the default's.

Each setting runs in its own process (XLA reads ``XLA_FLAGS`` once, at start-up); the
parameters are initialized once without flags and the batches drawn by numpy. Usage, from
the repository root::

  PYTHONPATH=. python benchmarks/cpu_rounding.py \\
      --flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROUND_OFF = 1e-5  # an array's error at float32 round-off carried through the network


def worker(args) -> None:
    """One process: make the inputs (``--make``), or one gradient (float64 with ``--x64``)."""
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optax

    from cgh_jax.models import get_model

    dtype = jnp.float64 if args.x64 else jnp.float32
    model = get_model(
        "resnet18", num_classes=10, width=args.width, stem="cifar", dtype=dtype, param_dtype=dtype
    )
    if args.make:
        images = jnp.zeros((args.batch, args.image, args.image, 3))
        variables = model.init(jax.random.PRNGKey(0), images, train=False)
        Path(args.out).write_bytes(pickle.dumps(jax.tree.map(np.asarray, variables)))
        return
    variables = pickle.loads(Path(args.inputs).read_bytes())
    rng = np.random.default_rng(args.seed)  # the batch: uniform images, random labels
    images = rng.random((args.batch, args.image, args.image, 3), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch)
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)  # noqa: E731
    variables, images = cast(variables), cast(images)

    def loss_fn(params, images):
        logits, _ = model.apply(
            {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    grads = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(variables["params"], images)
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(grads)]
    Path(args.out).write_bytes(pickle.dumps(leaves))


def errors(got: list, reference: list):
    """Per array: max |got - reference| / max |reference|."""
    import numpy as np

    return np.array(
        [np.abs(g - r).max() / np.abs(r).max() for g, r in zip(got, reference, strict=True)]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", action="append", default=[], help="an XLA_FLAGS setting")
    parser.add_argument("--seeds", default="0,1,2,3", help="the batches: numpy seeds")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=32)
    for name in ("--make", "--x64"):
        parser.add_argument(name, action="store_true", help=argparse.SUPPRESS)
    for name in ("--out", "--inputs"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out:
        worker(args)
        return 0

    import numpy as np

    from cgh_jax.formatting import markdown_table

    shape = ["--width", str(args.width), "--batch", str(args.batch), "--image", str(args.image)]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    settings = {"default (no flag)": "", **{f"`{flags}`": flags for flags in args.flags}}
    cells: dict[str, list[str]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:

        def run(flags: str, *extra: str, out: str = os.path.join(tmp, "grads.pkl")):
            env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
            command = [sys.executable, __file__, *shape, "--out", out, *extra]
            subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL)
            return pickle.loads(Path(out).read_bytes())

        inputs = ["--inputs", os.path.join(tmp, "params.pkl")]
        run("", "--make", out=inputs[1])
        for seed in seeds:
            batch = [*inputs, "--seed", str(seed)]
            reference = run("", *batch, "--x64")
            for name, flags in settings.items():
                err = errors(run(flags, *batch), reference)
                within = int(np.sum(err < ROUND_OFF))
                cells[name].append(
                    f"{100 * np.median(err):.4f} / {100 * err.max():.4f} ({within}/{err.size})"
                )
    print(
        f"ResNet-18 (CIFAR stem, width {args.width}), batches of {args.batch} {args.image}x"
        f"{args.image} images: float32 gradients against float64. Per batch: the median and the "
        "worst array's error in % of the array's largest entry (arrays within 1e-5)\n"
    )
    header = ["setting", *(f"batch {s}" for s in seeds)]
    print(
        markdown_table(
            header, [[name, *row] for name, row in cells.items()], "l" + "r" * len(seeds)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
