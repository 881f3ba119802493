"""Forward FLOPs of the full-size models: XLA's cost analysis vs the published figures.

For each model the eval-mode forward pass at batch 1 (224x224; 299x299 for
Inception-V3) is jitted on abstract parameters (``jax.eval_shape``: nothing is
materialised) and three numbers are printed, all in multiply-accumulates (MACs):

* ``XLA``: ``flops / 2`` from XLA's cost analysis of the compiled program (XLA counts
  a multiply-add as 2 flops, and also counts the elementwise work of BatchNorm, ReLU,
  residual adds and pooling, one flop per element).
* ``dense``: the conventional count behind the published figures, summed over every
  convolution and matrix product of the program's jaxpr: output elements x kernel taps
  x input channels, counting taps that fall on zero padding.
* ``valid``: the same without the taps on zero padding. XLA's convolution cost skips
  those taps, which is why ``XLA`` is below ``dense`` for networks whose late layers
  run on small maps (a 3x3 kernel on a 7x7 map reads padding in 18% of its taps).

Usage::

    python benchmarks/flops.py                     # all models in the table
    python benchmarks/flops.py --models resnet18 vgg13_bn --stage lowered

``--stage lowered`` reads the cost analysis of the un-optimised program (no XLA
compilation, faster); ``compiled`` (default) reads the optimised program.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from cgh_jax.models import get_model

# Published forward cost in GMACs at 224x224 (299x299 for Inception-V3), as reported
# by torchvision's model documentation ("GFLOPS", which count multiply-adds) and the
# original papers (ResNet: He et al. 2016, Table 1; Inception-V3: Szegedy et al. 2016).
PUBLISHED_GMACS = {
    "resnet18": 1.82,
    "resnet34": 3.6,
    "resnet50": 4.1,
    "resnet101": 7.8,
    "resnet152": 11.5,
    "vgg11": 7.6,
    "vgg13": 11.3,
    "vgg16": 15.5,
    "vgg19": 19.6,
    "inception_v3": 5.7,
}
EXTRA = ("vgg13_bn",)  # the papers' VGG; same convolutions as vgg13


def _walk(jaxpr):
    """Yields every equation of a (closed) jaxpr, entering nested jaxprs."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk(inner)


def _valid_taps(in_size, out_size, kernel, stride, pad_lo, dilation):
    """Number of (output position, kernel tap) pairs that read a real input pixel."""
    out = np.arange(out_size)[:, None] * stride - pad_lo
    pos = out + np.arange(kernel)[None, :] * dilation
    return int(np.sum((pos >= 0) & (pos < in_size)))


def matmul_macs(fn, *args) -> tuple[int, int]:
    """(dense, valid) MACs of the convolutions and matrix products of ``fn(*args)``."""
    dense = valid = 0
    for eqn in _walk(jax.make_jaxpr(fn)(*args).jaxpr):
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            out = eqn.outvars[0].aval.shape
            lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
            if any(d != 1 for d in eqn.params["lhs_dilation"]):
                raise NotImplementedError("transposed convolutions are not counted")
            cin = rhs[rhs_spec[1]]
            taps = math.prod(rhs[d] for d in rhs_spec[2:])
            dense += math.prod(out) * taps * cin
            per_dim = [
                _valid_taps(lhs[ld], out[od], rhs[rd], s, lo, dil)
                for ld, rd, od, s, (lo, _), dil in zip(
                    lhs_spec[2:],
                    rhs_spec[2:],
                    out_spec[2:],
                    eqn.params["window_strides"],
                    eqn.params["padding"],
                    eqn.params["rhs_dilation"],
                    strict=True,
                )
            ]
            non_spatial = out[out_spec[0]] * out[out_spec[1]]
            valid += non_spatial * math.prod(per_dim) * cin
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            macs = math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
            dense += macs
            valid += macs
    return dense, valid


def measure(name: str, stage: str = "compiled", num_classes: int = 1000) -> dict:
    """Forward cost of ``name`` at batch 1 and its standard input size."""
    size = 299 if name.startswith("inception") else 224
    model = get_model(name, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def forward(v, images):
        return model.apply(v, images, train=False)

    start = time.perf_counter()
    lowered = jax.jit(forward).lower(variables, x)
    analysis = lowered.cost_analysis() if stage == "lowered" else lowered.compile().cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax returned one dict per device
        analysis = analysis[0]
    dense, valid = matmul_macs(forward, variables, x)
    return {
        "name": name,
        "size": size,
        "xla": analysis["flops"] / 2 / 1e9,
        "dense": dense / 1e9,
        "valid": valid / 1e9,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=[*PUBLISHED_GMACS, *EXTRA])
    parser.add_argument("--stage", choices=("compiled", "lowered"), default="compiled")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, stage {args.stage}\n")
    print(
        "| model | input | published GMACs | XLA GMACs (flops/2) | XLA / published "
        "| dense GMACs | dense / published | valid GMACs | XLA / valid |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = measure(name, args.stage)
        pub = PUBLISHED_GMACS.get(name, PUBLISHED_GMACS.get(name.removesuffix("_bn")))
        ratio = lambda a, b: f"{a / b:.3f}" if b else "-"
        print(
            f"| {name} | {r['size']} | {pub if pub else '-'} | {r['xla']:.3f} | "
            f"{ratio(r['xla'], pub)} | {r['dense']:.3f} | {ratio(r['dense'], pub)} | "
            f"{r['valid']:.3f} | {ratio(r['xla'], r['valid'])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
