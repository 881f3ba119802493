r"""The ``group_aligned`` M3 layout: every device computes one group, SGD's collectives.

Per device (``shard_map`` over the ``D`` devices of the batch axis), with the static
:class:`~cgh_jax.optim.aligned_plan.AlignedPlan` of the batch:

1. the examples move to the device that computes them: ``len(plan.rounds)`` collective
   permutes of a few example *inputs* (none when ``k`` divides ``D``);
2. the device evaluates its ``c`` slots of ``s`` examples (:func:`jax.vmap`, or a loop)
   and takes one gradient of :math:`\sum_t w_t\,\ell_t` (``w_t`` = 1 for its real slots,
   0 for unused ones): the partial sum of its group's slot gradients, one parameter-sized
   vector, no ``[k, P]`` stack;
3. an all-to-all gives every device one ``P/D`` slice of every device's partial sum; it
   adds them up per group (``segment_sum`` over the devices' groups), divides by the
   ``G`` slots of a group, and takes the exact coordinate-wise median of the ``k`` group
   means on its slice;
4. an all-gather assembles the median.

Steps 3 and 4 move ``2 (D-1)/D`` parameter vectors per device, the bytes of SGD's
all-reduce, and no device sends more than the others: unlike ``group_sharded`` no device
holds examples of two groups. The price, when ``k`` does not divide ``D``, is compute:
every device evaluates ``c s`` examples instead of ``B/D`` (``plan.compute_ratio``; see
:mod:`cgh_jax.optim.aligned_plan`).

BatchNorm statistics are per slot (``s`` examples), as the other sharded layouts' are per
chunk of ``B/(D k)`` examples (the default slot size). Running statistics: ``'mean'``
averages the slot updates, ``'sequential'`` folds the ``k`` group means in group order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cgh_jax.optim.aligned_plan import AlignedPlan, aligned_plan
from cgh_jax.optim.median import coordinate_median
from cgh_jax.optim.sharded_common import (
    MedianGrads,
    StateFold,
    batch_size,
    flatten,
    over_chunks,
    reduce_outputs,
    unpack,
)

__all__ = ["aligned_median_of_means_grads"]


def aligned_median_of_means_grads(
    loss_fn: Callable[..., Any],
    num_groups: int,
    mesh: Mesh,
    *,
    has_aux: bool,
    has_state: bool,
    axis_name: str,
    vectorize: bool,
    fold: StateFold,
    chunk_size: int | None,
) -> Callable[..., MedianGrads]:
    """``grad_fn(params, batch, *args, rng=None) -> MedianGrads`` of the ``group_aligned``
    layout (arguments checked by :func:`cgh_jax.optim.sharded_median_of_means_grads`).

    ``chunk_size`` is the slot size ``s`` (None: ``B / (D k)``). Slot ``t`` of device ``d``
    gets the key ``jax.random.split(jax.random.fold_in(rng, d), c)[t]``.
    """
    k = num_groups
    num_devices = mesh.shape[axis_name]

    @functools.cache
    def plan_for(size: int) -> AlignedPlan:
        if chunk_size is not None:
            return aligned_plan(size, num_devices, k, chunk_size)
        if size % (num_devices * k):
            raise ValueError(
                f"The batch size {size} must be a multiple of (devices on axis "
                f"{axis_name!r}) x num_groups = {num_devices} x {k} = {num_devices * k} "
                "(chunks of B / (devices x num_groups) examples). Change the global batch "
                "size, or give chunk_size."
            )
        return aligned_plan(size, num_devices, k, size // (num_devices * k))

    def chunk_loss(params, chunk, args, key):
        kwargs = {} if key is None else {"rng": key}
        loss, aux, state = unpack(
            loss_fn(params, chunk, *args, **kwargs), has_aux=has_aux, has_state=has_state
        )
        return loss, (aux, state)

    def local(plan: AlignedPlan, params, batch, args, rng):
        d = jax.lax.axis_index(axis_name)
        # A per-device copy of the parameters: the gradient of a replicated value would
        # carry an implicit all-reduce (shard_map's transpose rule).
        params = jax.lax.pcast(params, axis_name, to="varying")
        u, s, c = plan.local_slots, plan.slot_size, plan.slots_per_device
        local_slots = jax.tree.map(lambda x: x.reshape(u, s, *x.shape[1:]), batch)
        pool = [local_slots]
        for pairs, index in zip(plan.rounds, plan.send_index, strict=True):
            sent = jnp.asarray(index)[d]
            pool.append(
                jax.tree.map(
                    lambda x, sent=sent, pairs=pairs: jax.lax.ppermute(
                        x[sent], axis_name, list(pairs)
                    ),
                    local_slots,
                )
            )
        pool = jax.tree.map(lambda *xs: jnp.concatenate(xs), *pool)
        source = jnp.asarray(plan.slot_source)[d]
        slots = jax.tree.map(lambda x: x[source], pool)  # [c, s, ...]
        weight = jnp.asarray(plan.slot_weight)[d]  # [c]
        group = jnp.asarray(plan.device_group)[d]
        keys = None if rng is None else jax.random.split(jax.random.fold_in(rng, d), c)

        def total(p):
            loss, extras = over_chunks(chunk_loss, c, vectorize)(p, slots, args, keys)
            return jnp.sum(weight.astype(loss.dtype) * loss), (loss, extras)

        (_, (loss, (aux, state))), grads = jax.value_and_grad(total, has_aux=True)(params)

        mine, unflatten = flatten(grads, (), num_devices)
        received = jax.lax.all_to_all(
            mine.reshape(num_devices, -1), axis_name, 0, 0, tiled=True
        )  # [D, Ppad / D]: row e is device e's partial sum on this device's slice
        sums = jax.ops.segment_sum(
            received, jnp.asarray(plan.device_group), num_segments=k, indices_are_sorted=True
        )
        med = coordinate_median(sums) / plan.slots_per_group
        grads = unflatten(jax.lax.all_gather(med, axis_name, tiled=True, to="invarying"))

        def group_means(x):
            """Per-slot values ``[c, ...]`` -> ``[k, ...]`` means over each group's slots."""
            wide = jnp.promote_types(x.dtype, jnp.float32)
            w = weight.reshape(c, *(1,) * (x.ndim - 1)).astype(wide)
            mine = jnp.sum(w * x.astype(wide), axis=0)
            onehot = (jnp.arange(k) == group).astype(wide).reshape(k, *(1,) * mine.ndim)
            return jax.lax.psum(onehot * mine, axis_name) / plan.slots_per_group

        def state_mean(x):
            """Per-slot state ``[c, ...]`` -> the mean over all real slots (integers:
            device 0's slot 0, e.g. a step counter that all slots share)."""
            if not jnp.issubdtype(x.dtype, jnp.inexact):
                return jax.lax.all_gather(x[0], axis_name, to="invarying")[0]
            return jnp.mean(group_means(x), axis=0).astype(x.dtype)

        return reduce_outputs(grads, loss, aux, state, args, group_means, state_mean, fold)

    def grad_fn(params, batch, *args, rng=None) -> MedianGrads:
        plan = plan_for(batch_size(batch))
        sharded = jax.shard_map(
            functools.partial(local, plan),
            mesh=mesh,
            in_specs=(P(), P(axis_name), P(), P()),
            out_specs=P(),
        )
        return sharded(params, batch, args, rng)

    return grad_fn
