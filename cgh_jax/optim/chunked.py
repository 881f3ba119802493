r"""The median of many group means at about SGD's cost: dense layers' group gradients formed
and reduced in chunks.

The straightforward path (:func:`cgh_jax.optim.grouped_grads`, then the median) writes the
``k`` group gradients of every parameter and reads them back: for the MLP 784-2048-10 with
``k = 15`` that is 15 copies of the 784 x 2048 kernel per update, most of the step's time
on a CPU. For a dense layer :math:`y = x W + b` the gradient of group :math:`j` is an
outer product summed over the group's examples,

.. math::
  \nabla_W \ell_j = X_j^\top \Delta_j, \qquad
  \Delta_j = \partial \ell_j / \partial Y_j,

so it can be formed a block of rows at a time: for rows :math:`R` of :math:`W`,
:math:`G_R = [X_{j,R}^\top \Delta_j]_{j<k}` (``[k, |R|, out]``, small enough to stay in
cache) is reduced to the aggregate's statistics (the coordinate-wise median; for the
norm-matched controls also the mean) before the next block is formed. The ``k`` full
kernel gradients never exist; the result is one param-shaped array per statistic.

:math:`X_j` and :math:`\Delta_j` come from one pass of :func:`grouped_grads` over a loss in
which every eligible ``flax.linen.Dense`` call is replaced (through
``flax.linen.intercept_methods``) by the same computation on a kernel the gradient does
not see, plus a zero perturbation :math:`\epsilon` of its output: the gradient with respect
to :math:`\epsilon` is :math:`\Delta_j`, the layer's input is returned beside the loss,
and every other parameter's group gradients come out as usual (``[k, *shape]``, then the
aggregate). BatchNorm statistics, dropout keys and the loop/vmap choice are those of
:func:`grouped_grads`.

A dense call is handled this way when it is a plain ``flax.linen.Dense`` (no custom
``dot_general``, default precision) in float32 (input, kernel and compute dtype), its
module is called once per forward pass, and the loss reads the kernel nowhere else (checked
on the traced loss). Other calls, and every other layer, take the straightforward path;
:func:`chunked_aggregate_grads` says which kernels it chunked (``chunked_kernels``).

The kernel gradients are sums of the same products as the batched product of
:func:`grouped_grads`, but a matrix product of a block of rows may sum them in another
order than one of all rows: on XLA:CPU the MLP 784-2048-10 at ``k = 15`` gives medians that
differ from the straightforward path's by up to about 1e-9 (float32 round-off) in the first
kernel, and agree bit for bit elsewhere. ``tests/test_optim_chunked.py`` checks the result
against numpy: bit for bit where float32 arithmetic is exact (so no order matters), to
1e-5 relative against float64 gradients of the study's MLP, and against the
straightforward path to 1e-6 relative.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cgh_jax.optim.grads import grouped_grads
from cgh_jax.optim.median import coordinate_median
from cgh_jax.optim.norm_match import (
    group_mean,
    mean_at_median_norm_of,
    median_at_mean_norm_of,
)
from cgh_jax.optim.sharded import MedianGrads

__all__ = [
    "AGGREGATES",
    "CHUNK_BYTES",
    "LeafAggregate",
    "chunked_aggregate_grads",
    "chunked_kernels",
]

CHUNK_BYTES = 2 * 2**20
"""Target size of one block of group gradients ``[k, rows, out]`` (float32): about the
size of a CPU's L2 cache. The rows of a block: :func:`_chunk_rows`."""


class LeafAggregate(NamedTuple):
    """An aggregate over the group axis, ``[k, *s] -> s``, as coordinate-wise statistics
    and a function of the whole leaf's statistics: ``finish(*(f(g) for f in stats))``.

    Each statistic maps ``[k, *s]`` to ``s`` coordinate by coordinate, so it can be
    computed a block of rows at a time; ``finish`` sees the assembled leaves."""

    stats: tuple[Callable[[jax.Array], jax.Array], ...]
    finish: Callable[..., jax.Array]

    def __call__(self, grouped: jax.Array) -> jax.Array:
        return self.finish(*(stat(grouped) for stat in self.stats))


def _identity(x: jax.Array) -> jax.Array:
    return x


AGGREGATES = {
    "m3": LeafAggregate((coordinate_median,), _identity),
    "mean_at_median_norm": LeafAggregate((coordinate_median, group_mean), mean_at_median_norm_of),
    "median_at_mean_norm": LeafAggregate((coordinate_median, group_mean), median_at_mean_norm_of),
}
"""The aggregate of each grouped optimizer (the same leaf functions as their optax
transforms: :func:`cgh_jax.optim.median_of_means`, :mod:`cgh_jax.optim.norm_match`)."""


# ----------------------------------------------------------------------------- dense sites


def _is_plain_dense(module: nn.Module) -> bool:
    f32 = jnp.dtype(jnp.float32)
    return (
        type(module) is nn.Dense
        and getattr(module, "dot_general", None) is None
        and getattr(module, "dot_general_cls", None) is None
        and module.precision is None
        and jnp.dtype(module.param_dtype) == f32
        and (module.dtype is None or jnp.dtype(module.dtype) == f32)
    )


def _dense_paths(fn: Callable, abstract: Sequence[Any]) -> tuple[list, set]:
    """The module paths of the dense calls of ``fn(*abstract)`` in call order, and the
    paths of those that cannot be chunked (not plain float32 ``Dense``, or called more
    than once)."""
    calls, refused = [], set()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Dense):
            path = tuple(module.path)
            x = args[0] if args else None
            if path in calls or not _is_plain_dense(module):
                refused.add(path)
            elif x is None or kwargs or len(args) != 1 or x.dtype != jnp.float32:
                refused.add(path)
            calls.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(fn, *abstract)
    return calls, refused


def _get_path(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


class _Sites(NamedTuple):
    paths: tuple[tuple[str, ...], ...]  # chunked dense modules, in call order
    kernel_index: dict[tuple[str, ...], int]  # path -> index of its kernel in the flat params


def _find_sites(loss, params, group, args, rng) -> _Sites:
    """The dense calls of ``loss`` whose kernel gradient can be chunked (see the module
    docstring); traced on abstract values."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    index = {
        tuple(getattr(k, "key", getattr(k, "name", k)) for k in path): i
        for i, (path, _) in enumerate(flat)
    }
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), (params, group, args, rng)
    )
    calls, refused = _dense_paths(lambda p, b, a, r: loss(p, b, a, r, {}), abstract)
    candidates = []
    for path in dict.fromkeys(calls):
        kernel = _get_path(params, (*path, "kernel"))
        if path in refused or kernel is None or jnp.ndim(kernel) != 2:
            continue
        candidates.append(path)
    if not candidates:
        return _Sites((), {})
    # The loss must read each candidate's kernel only through its dense call: with the
    # calls bypassed, the kernel leaves must be unused.
    bypass = {path: None for path in candidates}
    jaxpr = jax.make_jaxpr(lambda p, b, a, r: loss(p, b, a, r, bypass))(*abstract)
    used = {id(v) for eqn in jaxpr.jaxpr.eqns for v in eqn.invars}
    used |= {id(v) for v in jaxpr.jaxpr.outvars}
    invars = jaxpr.jaxpr.invars
    kept = tuple(p for p in candidates if id(invars[index[(*p, "kernel")]]) not in used)
    return _Sites(kept, {p: index[(*p, "kernel")] for p in kept})


def _dense_apply(module: nn.Module, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``flax.linen.Dense.__call__`` with the given kernel (plain float32 dense only)."""
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=None)
    if module.use_bias:
        bias = module.variables["params"]["bias"]
        y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


# ----------------------------------------------------------------------------- reduction


def _chunk_rows(num_groups: int, out_features: int, in_features: int) -> int:
    """Kernel rows per block: at most :data:`CHUNK_BYTES` of group gradients (the budget);
    the largest divisor of ``in_features`` from half the budget up (no overlapping last
    block), else the budget rounded down to a multiple of 8.

    Measured on the MLP 784-2048-10 with ``k = 15`` (a budget of 17 rows), the step
    against SGD's on one core: 16 rows 1.21x, 8, 14 or 28 rows 1.22-1.24x, 32 rows
    1.24x, but 17 rows (an odd block height, and an overlapping last block) 1.29x.
    """
    budget = max(1, min(in_features, CHUNK_BYTES // (4 * num_groups * max(out_features, 1))))
    for rows in range(budget, (budget - 1) // 2, -1):
        if in_features % rows == 0:
            return rows
    return budget - budget % 8 if budget >= 8 else budget


def _chunked_stats(
    aggregate: LeafAggregate,
    xs: jax.Array,
    deltas: jax.Array,
    kernel: jax.Array,
    decay: float,
) -> list[jax.Array]:
    """The aggregate's statistics of the kernel's group gradients ``X_j^T Delta_j`` (+
    ``decay * kernel``), a block of rows at a time.

    Args:
      xs: ``[k, ..., in]``, the layer's inputs per group.
      deltas: ``[k, ..., out]``, the gradients of the group losses with respect to its
        outputs.
      kernel: ``[in, out]``.
    """
    k, (n_in, n_out) = xs.shape[0], kernel.shape
    x = jnp.swapaxes(xs.reshape(k, -1, n_in), 1, 2)  # [k, in, m]: a block of rows is contiguous
    d = deltas.reshape(k, -1, n_out)
    rows = _chunk_rows(k, n_out, n_in)
    count = -(-n_in // rows)

    def block(start):
        xr = jax.lax.dynamic_slice_in_dim(x, start, rows, axis=1)
        g = jnp.einsum("kim,kmo->kio", xr, d)
        if decay:
            g = g + decay * jax.lax.dynamic_slice_in_dim(kernel, start, rows, axis=0)
        return [stat(g) for stat in aggregate.stats]

    def body(i, outs):
        # The last block ends at the last row (it may overlap the one before it).
        start = jnp.minimum(i * rows, n_in - rows)
        return [
            jax.lax.dynamic_update_slice_in_dim(o, s, start, axis=0)
            for o, s in zip(outs, block(start), strict=True)
        ]

    if count == 1:
        return block(0)
    outs = [jnp.zeros(kernel.shape, kernel.dtype) for _ in aggregate.stats]
    return jax.lax.fori_loop(0, count, body, outs)


# ----------------------------------------------------------------------------- gradients


def chunked_kernels(
    loss_fn: Callable[..., Any],
    params: Any,
    batch: Any,
    *args: Any,
    num_groups: int,
    rng: jax.Array | None = None,
) -> tuple[tuple[str, ...], ...]:
    """The module paths whose dense kernels :func:`chunked_aggregate_grads` would chunk
    for this loss, parameters and batch (traced on abstract values; nothing computed)."""
    group = jax.tree.map(lambda x: x[: jnp.shape(x)[0] // num_groups], batch)
    return _find_sites(_wrap(loss_fn), params, group, args, rng).paths


def _wrap(loss_fn: Callable[..., Any]) -> Callable:
    """``loss(params, batch, args, rng, kernels)``: ``loss_fn`` with the dense calls named
    in ``kernels`` (path -> kernel, or None for a zero kernel) bypassed; returns
    ``(loss_fn's output, [(x, y) per bypassed call in call order])``."""

    def loss(params, batch, args, rng, kernels, eps=None):
        seen = []

        def intercept(next_fun, call_args, kwargs, context):
            module = context.module
            path = tuple(module.path) if isinstance(module, nn.Dense) else None
            if context.method_name != "__call__" or path not in kernels:
                return next_fun(*call_args, **kwargs)
            x = call_args[0]
            kernel = kernels[path]
            if kernel is None:
                kernel = jnp.zeros((x.shape[-1], module.features), x.dtype)
            y = _dense_apply(module, x, kernel)
            if eps is not None:
                y = y + eps[len(seen)]
            seen.append(x)
            return y

        with nn.intercept_methods(intercept):
            out = (
                loss_fn(params, batch, *args)
                if rng is None
                else loss_fn(params, batch, *args, rng=rng)
            )
        return out, seen

    return loss


def chunked_aggregate_grads(
    loss_fn: Callable[..., Any],
    num_groups: int,
    aggregate: LeafAggregate | str = "m3",
    *,
    has_aux: bool = False,
    has_state: bool = False,
    vectorize: bool = True,
    decay: float = 0.0,
    **state_options: Any,
) -> Callable[..., MedianGrads]:
    r"""The aggregate over ``num_groups`` group-mean gradients, dense kernels in chunks.

    Returns ``grad_fn(params, batch, *args, rng=None) -> MedianGrads`` whose ``grads`` are
    param-shaped: per leaf, ``aggregate`` of the group gradients (``decay * params`` added
    to each first) of :func:`cgh_jax.optim.grouped_grads` with the same arguments: the
    same groups (column-major), loss, aux and state. Dense kernels that qualify (module
    docstring) are reduced a block of rows at a time without forming the ``k`` full
    gradients; every other leaf as ``aggregate(grouped)``.

    Args:
      loss_fn: as for :func:`grouped_grads` (a loss that applies Flax linen modules).
      num_groups: ``k``.
      aggregate: a :class:`LeafAggregate`, or a name in :data:`AGGREGATES`.
      has_aux, has_state, vectorize: as for :func:`grouped_grads`.
      decay: coupled weight decay added to every group gradient before the aggregate
        (the norm-matched controls need it there; for the median, adding it after is
        exact, so M3 passes 0 and leaves the decay to its optimizer).
      **state_options: ``batch_stats_update``, ``state_argnum``, ``state_collection``,
        ``state_momentum`` of :func:`grouped_grads`.

    Returns:
      The gradient function; ``grads`` is the aggregate, ``loss`` ``[k]``, ``aux`` with a
      leading ``[k]`` (or None), ``state`` as from :func:`grouped_grads`.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from cgh_jax.optim import chunked_aggregate_grads, coordinate_median, grouped_grads
      >>> model = nn.Dense(4)
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
      >>> loss = lambda p, b: jnp.mean((model.apply({"params": p}, b) - 1.0) ** 2)
      >>> batch = jax.random.normal(jax.random.key(1), (15, 3))
      >>> fast = chunked_aggregate_grads(loss, 5)(params, batch).grads
      >>> grouped = grouped_grads(loss, 5)(params, batch).grads  # leaves [5, ...]
      >>> bool(jnp.allclose(fast["kernel"], coordinate_median(grouped["kernel"])))
      True
    """
    if isinstance(aggregate, str):
        if aggregate not in AGGREGATES:
            raise ValueError(
                f"aggregate={aggregate!r} is not one of {', '.join(AGGREGATES)} (or pass a "
                "LeafAggregate)."
            )
        aggregate = AGGREGATES[aggregate]
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not math.isfinite(decay):
        raise ValueError(f"decay must be a finite number, got {decay!r}.")
    loss = _wrap(loss_fn)

    def grad_fn(params, batch, *args, rng=None):
        group = jax.tree.map(lambda x: x[: jnp.shape(x)[0] // num_groups], batch)
        sites = _find_sites(loss, params, group, args, None if rng is None else rng)
        leaves, treedef = jax.tree.flatten(params)
        kernel_ids = {i: p for p, i in sites.kernel_index.items()}
        kernels = {p: leaves[i] for i, p in kernel_ids.items()}
        rest = [x for i, x in enumerate(leaves) if i not in kernel_ids]

        def params_of(rest_leaves):
            it = iter(rest_leaves)
            full = [
                kernels[kernel_ids[i]] if i in kernel_ids else next(it) for i in range(len(leaves))
            ]
            return jax.tree.unflatten(treedef, full)

        # One probe on a group's shapes gives each bypassed output's shape (for eps).
        def outputs(rest_leaves, b, r, *a):
            (_, seen) = loss(params_of(rest_leaves), b, a, r, kernels)
            return seen

        xs_shapes = jax.eval_shape(outputs, rest, group, rng, *args)
        eps = [
            jnp.zeros((*s.shape[:-1], kernels[p].shape[1]), s.dtype)
            for s, p in zip(xs_shapes, sites.paths, strict=True)
        ]

        def wrapped(diff, b, *a, rng=None):
            rest_leaves, e = diff
            out, seen = loss(params_of(rest_leaves), b, a, rng, kernels, e)
            if has_aux and has_state:
                value, (aux, state) = out
                return value, ((aux, seen), state)
            if has_aux:
                value, aux = out
                return value, (aux, seen)
            if has_state:
                value, state = out
                return value, ((None, seen), state)
            return out, (None, seen)

        g = grouped_grads(
            wrapped,
            num_groups,
            has_aux=True,
            has_state=has_state,
            vectorize=vectorize,
            **state_options,
        )((rest, eps), batch, *args, rng=rng)
        rest_grads, deltas = g.grads
        aux, xs = g.aux
        rest_params = [x for i, x in enumerate(leaves) if i not in kernel_ids]
        out_rest = [
            aggregate(gr + decay * p if decay else gr)
            for gr, p in zip(rest_grads, rest_params, strict=True)
        ]
        out_kernels = {
            path: aggregate.finish(*_chunked_stats(aggregate, x, dl, kernels[path], decay))
            for path, x, dl in zip(sites.paths, xs, deltas, strict=True)
        }
        it = iter(out_rest)
        full = [
            out_kernels[kernel_ids[i]] if i in kernel_ids else next(it) for i in range(len(leaves))
        ]
        return MedianGrads(
            grads=jax.tree.unflatten(treedef, full),
            loss=g.loss,
            aux=aux if has_aux else None,
            state=g.state if has_state else None,
        )

    return grad_fn
