"""Pieces shared by the sharded M3 layouts (internal to :mod:`cgh_jax.optim`, not exported):
vector the collectives move, the loss-output convention and the sequential fold of
BatchNorm statistics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cgh_jax.optim.grads import check_same_state, sequential_state_update


class MedianGrads(NamedTuple):
    """Output of the function returned by :func:`sharded_median_of_means_grads`.

    Attributes:
      grads: param-shaped coordinate-wise median of the ``k`` group-mean gradients.
      loss: ``[k]``, the mean loss of each group.
      aux: leaves with a leading ``[k]`` axis (group means of the per-chunk aux values),
        or None without ``has_aux``.
      state: new mutable collections averaged over all groups and devices, or None
        without ``has_state``.
    """

    grads: Any
    loss: jax.Array
    aux: Any
    state: Any


def flatten(tree: Any, lead: tuple[int, ...], multiple: int) -> tuple[jax.Array, Callable]:
    """Tree with leaves ``[*lead, *shape]`` -> ``[*lead, Ppad]``, and the inverse for ``[P]``.

    ``Ppad`` is the total parameter count rounded up to a multiple of ``multiple`` (zeros
    appended), so the coordinates split evenly across the devices.
    """
    leaves, treedef = jax.tree.flatten(tree)
    n = len(lead)
    shapes = [leaf.shape[n:] for leaf in leaves]
    dtypes = [leaf.dtype for leaf in leaves]
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    dtype = jnp.result_type(*dtypes)
    padded = -(-total // multiple) * multiple
    parts = [leaf.reshape(*lead, -1).astype(dtype) for leaf in leaves]
    if padded > total:
        parts.append(jnp.zeros((*lead, padded - total), dtype))
    flat = jnp.concatenate(parts, axis=-1)
    offsets = np.cumsum([0, *sizes])

    def unflatten(vec: jax.Array) -> Any:
        out = [
            vec[offsets[i] : offsets[i + 1]].reshape(shapes[i]).astype(dtypes[i])
            for i in range(len(leaves))
        ]
        return jax.tree.unflatten(treedef, out)

    return flat, unflatten


def batch_size(batch: Any) -> int:
    """The common leading size of the batch leaves (ValueError if none or mixed)."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("The batch has no array leaves.")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "Every batch leaf needs the same leading batch axis; got leading sizes "
            f"{sorted(str(s) for s in sizes)}."
        )
    return sizes.pop()


def unpack(out: Any, *, has_aux: bool, has_state: bool) -> tuple[Any, Any, Any]:
    """``loss_fn``'s output -> ``(loss, aux or None, state or None)``."""
    if has_aux and has_state:
        loss, (aux, state) = out
    elif has_aux:
        (loss, aux), state = out, None
    elif has_state:
        (loss, state), aux = out, None
    else:
        loss, aux, state = out, None, None
    return loss, aux, state


def sequential_state(
    args: tuple,
    chunk_states: Any,
    group_means: Callable[[jax.Array], jax.Array],
    *,
    state_argnum: int,
    state_collection: str | None,
    state_momentum: float,
) -> Any:
    """``k`` sequential running-statistics updates of ``args[state_argnum]``.

    ``chunk_states`` is the new state ``loss_fn`` returned for each chunk a device computed
    (leaves with a leading chunk axis, all computed from the old state); ``group_means``
    maps such a leaf to the ``[k, ...]`` means over each group's chunks (all devices). The
    ``k`` group updates are folded in group order by
    :func:`cgh_jax.optim.grads.sequential_state_update`.
    """
    if not 0 <= state_argnum < len(args):
        raise ValueError(
            f"state_argnum={state_argnum} but grad_fn got {len(args)} extra argument(s)."
        )
    old = args[state_argnum]
    state = chunk_states
    if state_collection is not None:
        if not isinstance(state, dict) or set(state) != {state_collection}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"state_collection={state_collection!r}: loss_fn must return its new "
                f"state as {{{state_collection!r}: ...}}; got {keys}."
            )
        state = state[state_collection]
    check_same_state(old, jax.tree.map(lambda x: x[0], state), "loss_fn")
    for leaf in jax.tree.leaves(old):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise ValueError(
                "batch_stats_update='sequential' folds running averages; the state holds "
                f"an integer leaf ({jnp.result_type(leaf)})."
            )
    new = sequential_state_update(old, jax.tree.map(group_means, state), state_momentum)
    return new if state_collection is None else {state_collection: new}


class StateFold(NamedTuple):
    """How the new state ``loss_fn`` returns per chunk becomes one: folded in group order
    (``sequential``, :func:`sequential_state` with the other fields) or averaged."""

    sequential: bool
    state_argnum: int
    state_collection: str | None
    state_momentum: float


def reduce_outputs(
    grads: Any,
    loss: Any,
    aux: Any,
    state: Any,
    args: tuple,
    group_means: Callable[[jax.Array], jax.Array],
    state_mean: Callable[[jax.Array], jax.Array],
    fold: StateFold,
) -> MedianGrads:
    """The median ``grads`` with the per-chunk ``loss``, ``aux`` and ``state`` reduced over
    all devices: loss and aux to their ``[k, ...]`` group means (``group_means``); the state
    folded in group order (:func:`sequential_state`) or averaged (``state_mean``)."""
    loss = group_means(loss)
    aux = None if aux is None else jax.tree.map(group_means, aux)
    if fold.sequential:
        state = sequential_state(
            args,
            state,
            group_means,
            state_argnum=fold.state_argnum,
            state_collection=fold.state_collection,
            state_momentum=fold.state_momentum,
        )
    elif state is not None:
        state = jax.tree.map(state_mean, state)
    return MedianGrads(grads, loss, aux, state)


def over_chunks(f: Callable, num_chunks: int, vectorize: bool) -> Callable:
    """``f(params, chunk, args, key)`` mapped over a leading chunk axis of ``chunks`` (and
    of ``keys``, which may be None): :func:`jax.vmap`, or an unrolled loop whose outputs
    are stacked (ordinary convolutions instead of grouped ones on some backends)."""
    if vectorize:
        return jax.vmap(f, in_axes=(None, 0, None, 0))

    def loop(params, chunks, args, keys):
        outs = [
            f(
                params,
                jax.tree.map(lambda x, c=c: x[c], chunks),
                args,
                None if keys is None else keys[c],
            )
            for c in range(num_chunks)
        ]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return loop
