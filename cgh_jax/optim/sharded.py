"""Communication-efficient M3 under data parallelism.

With the batch sharded over ``D`` devices, the straightforward M3 step (``grouped_grads``
then ``m3``) all-reduces ``k`` group gradients, ``k`` times the bytes of SGD's single
all-reduce. The functions here compute the same update, the coordinate-wise median of the
``k`` group-mean gradients, with explicit per-device code (:func:`jax.shard_map`) that
moves fewer bytes:

``reduce_scatter`` (column-major groups, the assignment of :func:`cgh_jax.grouped_grads`)
  Each device computes the gradients of its ``k`` local groups ``[k, P]``; a
  reduce-scatter gives every device the global group sums on a ``1/D`` slice of the
  coordinates; each device takes the exact median of its slice; an all-gather assembles
  the median. Ring cost ``(k+1)(D-1)/D * P`` per device: ``(k+1)/2`` times SGD's
  ``2(D-1)/D * P``, i.e. 2x for ``k = 3`` (the straightforward path is 3x).

``group_sharded`` (row-major groups)
  Group ``j`` is the ``j``-th contiguous ``B/k`` examples of the global batch, so it lives
  on about ``D/k`` consecutive devices. Each device sums the chunks of its primary group
  into one vector; a device whose examples straddle a group boundary sends its
  secondary-group part to the next device (one collective-permute, only when ``k`` does
  not divide ``D``); an all-to-all gives every device, for its coordinate slice, one
  partial sum from every device, which it adds up per group; median; all-gather. Ring cost
  ``2(D-1)/D * P`` per device, exactly SGD's, when ``k`` divides ``D``; otherwise plus one
  gradient per straddling device (``k = 3``, ``D = 8``: 2 straddlers, ``8/7 = 1.14`` times
  SGD's bytes on average).

With ``k | D`` each device's chunks all lie in one group, and the device computes one
gradient of their summed losses: no ``[k, P]`` stack of group gradients exists, so the step
needs about SGD's memory too.

``group_aligned`` (groups of whole devices; :mod:`cgh_jax.optim.aligned`)
  Group ``j`` is computed by ``floor(D/k)`` or ``ceil(D/k)`` whole devices; the examples
  move to them first (a few collective-permutes of example inputs), each device evaluates
  ``c`` slots of ``s`` examples (unused ones weighted 0) and takes one gradient of their
  summed losses; all-to-all, per-group sums, median, all-gather as ``group_sharded``. Ring
  cost ``2(D-1)/D * P`` on *every* device, SGD's, for any ``D >= k``, and one gradient in
  memory; when ``k`` does not divide ``D`` every device evaluates more examples than an
  even split (at least ``D / (k floor(D/k))`` times: 4/3 at 8 devices, 1.004 at 256;
  :mod:`cgh_jax.optim.aligned_plan`). No layout has both: a device holding examples of two
  groups holds two partial gradients and must send both.

All layouts give the update of the straightforward M3 *for the same group assignment* to
float tolerance (the group sums are added in a different order); the median itself is an
exact order statistic. The row-major assignment is a different (equally valid) random
partition of a shuffled batch into ``k`` equal groups than the column-major one of
``grouped_grads``.

The measure of communication used to compare layouts, the collectives of a compiled HLO
module, is :func:`cgh_jax.optim.hlo.hlo_collective_traffic`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cgh_jax.optim import checks
from cgh_jax.optim.aligned import aligned_median_of_means_grads
from cgh_jax.optim.aligned_plan import aligned_plan
from cgh_jax.optim.grads import check_batch_stats_update
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

__all__ = [
    "LAYOUTS",
    "MAX_ALIGNED_COMPUTE_RATIO",
    "MedianGrads",
    "resolve_layout",
    "sharded_median_of_means_grads",
]

LAYOUTS = ("auto", "reduce_scatter", "group_sharded", "group_aligned")
"""Accepted values of ``layout`` in :func:`sharded_median_of_means_grads`."""

MAX_ALIGNED_COMPUTE_RATIO = 1.1
"""``'auto'`` picks ``'group_aligned'`` only when its devices evaluate at most this many
times the examples of an even split (:attr:`AlignedPlan.compute_ratio`): it trades compute
for the busiest device's bytes, and on most accelerators compute is the larger cost."""


def resolve_layout(
    layout: str,
    num_groups: int,
    num_devices: int,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> str:
    """Returns the concrete layout for ``layout`` (``'auto'`` resolved).

    ``'auto'`` picks, with ``k = num_groups`` and ``D = num_devices``:

    * ``'reduce_scatter'`` when ``k > D`` (e.g. 3 groups on 1 or 2 devices);
    * ``'group_sharded'`` when ``k`` divides ``D``: SGD's collective bytes on every device,
      the same work on every device (``'group_aligned'`` would be the same program);
    * otherwise ``'group_aligned'`` when the batch size is given, the batch splits into
      its slots (of ``chunk_size``, default ``B/(Dk)``) and its devices evaluate at most
      :data:`MAX_ALIGNED_COMPUTE_RATIO` times the examples of an even split: SGD's bytes on
      every device for a little more compute;
    * else ``'group_sharded'`` (even compute; a device straddling two groups sends one
      extra gradient, about 1.5 times SGD's bytes on that device).

    Raises:
      ValueError: unknown layout, or ``'group_sharded'``/``'group_aligned'`` with more
        groups than devices.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
    if layout == "auto":
        if num_groups > num_devices:
            return "reduce_scatter"
        if num_devices % num_groups == 0 or batch_size is None:
            return "group_sharded"
        chunk = chunk_size or max(batch_size // (num_devices * num_groups), 1)
        try:
            ratio = aligned_plan(batch_size, num_devices, num_groups, chunk).compute_ratio
        except ValueError:  # the batch does not split into slots of this size
            return "group_sharded"
        return "group_aligned" if ratio <= MAX_ALIGNED_COMPUTE_RATIO else "group_sharded"
    if layout in ("group_sharded", "group_aligned") and num_groups > num_devices:
        raise ValueError(
            f"layout={layout!r} needs num_groups <= number of devices, got "
            f"{num_groups} groups on {num_devices} devices. Use layout='reduce_scatter' "
            "(or 'auto')."
        )
    return layout


def _row_major_plan(num_groups: int, num_devices: int) -> tuple[np.ndarray, list[int]]:
    """Static bookkeeping of the row-major (group_sharded) assignment.

    The ``D * k`` chunks of ``B / (D k)`` examples are numbered ``v = d k + c`` (device
    ``d``, local chunk ``c``); chunk ``v`` belongs to group ``v // D``.

    Returns:
      primary: ``[D]`` the first group each device touches.
      straddlers: devices whose chunks span two groups (their second group is the next
        device's primary group when ``k <= D``).
    """
    k, d = num_groups, num_devices
    primary = np.array([(i * k) // d for i in range(d)], dtype=np.int32)
    straddlers = [i for i in range(d) if (i * k + k - 1) // d != primary[i]]
    return primary, straddlers


def _split_chunks(batch: Any, num_groups: int, row_major: bool) -> Any:
    """Local batch ``[b, ...]`` -> ``[k, b/k, ...]`` (row- or column-major)."""

    def split(x):
        b = x.shape[0]
        if row_major:
            return x.reshape(num_groups, b // num_groups, *x.shape[1:])
        return jnp.moveaxis(x.reshape(b // num_groups, num_groups, *x.shape[1:]), 1, 0)

    return jax.tree.map(split, batch)


def sharded_median_of_means_grads(
    loss_fn: Callable[..., Any],
    num_groups: int,
    mesh: Mesh,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    layout: str = "auto",
    axis_name: str = "data",
    vectorize: bool = True,
    batch_stats_update: str = "mean",
    state_argnum: int | None = None,
    state_collection: str | None = None,
    state_momentum: float | None = None,
    chunk_size: int | None = None,
) -> Callable[..., MedianGrads]:
    r"""Median-of-means gradient of a batch sharded over ``mesh``, with few collectives.

    Returns ``grad_fn(params, batch, *args, rng=None) -> MedianGrads`` computing

    .. math::
      u_i = \operatorname{median}_j\ \bar g_{j,i}, \qquad
      \bar g_j = \frac{1}{D}\sum_{d=0}^{D-1} \nabla_\theta\,
        \ell\big(\theta; \mathcal{C}_{d,j}\big),

    where the batch of ``B`` examples (sharded over the ``D`` devices of mesh axis
    ``axis_name``) is cut into ``D k`` chunks of ``B/(Dk)`` examples, each device computes
    the mean-loss gradient of its ``k`` chunks with one ``jax.vmap`` (the FLOPs of one
    batch; a loop with ``vectorize=False``), and group ``j`` is ``D`` of those chunks: with
    ``layout='reduce_scatter'`` chunk ``j`` of every device, taken column-major from the
    local batch (examples ``j, j+k, ...``: exactly the groups of ``grouped_grads`` under
    ``shard_map``); with ``layout='group_sharded'`` the ``j``-th contiguous ``B/k``
    examples of the global batch. With ``layout='group_aligned'`` the chunks (slots of
    ``chunk_size`` examples) of a group are computed by whole devices and the groups are
    those of :meth:`cgh_jax.optim.aligned_plan.AlignedPlan.group_examples`. See the module
    docstring for the collectives and their cost.

    ``u`` is already the M3 update direction: follow it with ``optax.add_decayed_weights``
    (optional) and ``optax.sgd``, not with a median transform. Adding the weight decay
    after the median is exact: rounding is monotone, so
    :math:`\operatorname{median}_j(g_j + c) = \operatorname{median}_j(g_j) + c` bit for bit
    (op by op; inside one ``jit`` XLA may fuse ``g + wd * p`` into a multiply-add, which
    can move the last bit).

    Typical use in a train step (``tx = optax.chain(optax.add_decayed_weights(wd),
    optax.sgd(lr))``)::

      grad_fn = sharded_median_of_means_grads(loss_fn, 3, mesh, has_state=True)

      @jax.jit
      def train_step(params, batch_stats, opt_state, batch):
          out = grad_fn(params, batch, batch_stats)
          updates, opt_state = tx.update(out.grads, opt_state, params)
          return optax.apply_updates(params, updates), out.state, opt_state

    Args:
      loss_fn: ``loss_fn(params, batch, *args, rng=None)`` returning the mean loss over
        the batch it is given, or ``(loss, aux)`` / ``(loss, state)`` /
        ``(loss, (aux, state))`` with ``has_aux`` / ``has_state`` / both (as
        :func:`cgh_jax.grouped_grads`). ``rng`` is passed only when ``grad_fn`` gets one.
      num_groups: ``k``, a positive odd integer.
      mesh: the device mesh; the batch is split along ``axis_name``.
      has_aux: ``loss_fn`` returns auxiliary values (averaged over each group's chunks).
      has_state: ``loss_fn`` returns new mutable collections (e.g. ``batch_stats``),
        averaged over all chunks.
      layout: ``'group_sharded'``, ``'reduce_scatter'``, ``'group_aligned'`` or ``'auto'``
        (see :func:`resolve_layout`; ``'auto'`` is resolved per batch size).
      axis_name: the mesh axis the batch is sharded over.
      vectorize: True computes the ``k`` chunks of a device with :func:`jax.vmap`; False
        unrolls a loop over them (same results). Under ``vmap`` a convolution's weight
        gradient becomes a grouped convolution, which some backends (XLA on CPU) run
        slowly; the loop keeps ordinary convolutions.
      batch_stats_update: ``'mean'`` (default): the new state is the mean of the ``D k``
        chunk updates, all made from the old state. ``'sequential'``: ``k`` consecutive
        running-average updates in group order, group ``j``'s batch statistic being the
        mean of its ``D`` chunks' statistics (the chunks of a group run on different
        devices at once, so the state cannot be threaded; the chunk updates are averaged
        per group and folded by :func:`cgh_jax.optim.grads.sequential_state_update`,
        which assumes every floating-point state leaf is a running average with decay
        ``state_momentum``, as Flax ``BatchNorm(momentum=state_momentum)``'s are).
      state_argnum: for ``'sequential'``, the position in ``*args`` of the state.
      state_collection: for ``'sequential'``, the key under which ``loss_fn`` returns
        the new state (``'batch_stats'``), or None if it returns the state itself.
      state_momentum: for ``'sequential'``, the decay ``m`` in ``[0, 1)``.
      chunk_size: ``'group_aligned'`` only: examples per ``loss_fn`` call (the BatchNorm
        batch); None: ``B / (D k)``, the chunks of the other layouts. Smaller slots pad
        less (:func:`cgh_jax.optim.aligned_plan.best_slot_size`) and change nothing else
        for a loss that does not couple examples.

    Returns:
      ``grad_fn``. Its ``params`` and ``*args`` are replicated, ``batch`` leaves have a
      leading axis ``B`` with ``B % (D * k) == 0``; ``rng`` (optional) is a key: chunk
      ``c`` of device ``d`` gets ``jax.random.split(jax.random.fold_in(rng, d), k)[c]``.
      Call it inside ``jax.jit``.

    Raises:
      ValueError: even/non-positive ``num_groups``, an axis not in the mesh, an unknown
        layout, ``'group_sharded'`` or ``'group_aligned'`` with ``k > D``, ``chunk_size``
        with another layout; at call time a batch whose size is not a multiple of
        ``D * k`` (``group_aligned``: of ``D s`` and ``k s``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> loss = lambda p, batch: jnp.mean((batch["x"] @ p - batch["y"]) ** 2)
      >>> grad_fn = sharded_median_of_means_grads(loss, 3, mesh)
      >>> batch = {"x": jnp.ones((6, 2)), "y": jnp.arange(6.0)}
      >>> jax.jit(grad_fn)(jnp.zeros(2), batch).grads.shape
      (2,)

    .. warning::
      Models with BatchNorm compute batch statistics per chunk (``B/(Dk)`` examples on one
      device), as the straightforward M3 does under ``shard_map``/``pmap``. A ``jax.jit``
      run of ``grouped_grads`` on a sharded batch instead normalizes over each whole group.
    """
    num_groups = checks.static_int_or_none(num_groups, "num_groups")
    if num_groups is None:
        raise ValueError("num_groups must be a Python int, not a traced value.")
    checks.check_odd_group_count(num_groups)
    if axis_name not in mesh.shape:
        raise ValueError(
            f"axis_name {axis_name!r} is not an axis of the mesh (axes {tuple(mesh.shape)})."
        )
    state_momentum = check_batch_stats_update(
        batch_stats_update,
        has_state=has_state,
        state_argnum=state_argnum,
        state_momentum=state_momentum,
        fold=True,
        why_fold="in sharded_median_of_means_grads needs state_momentum (the decay of the "
        "running averages, Flax BatchNorm.momentum): a group's chunks run on different "
        "devices at once, so the k updates are folded, not threaded.",
    )
    fold = StateFold(
        batch_stats_update == "sequential", state_argnum, state_collection, state_momentum
    )
    k = num_groups
    num_devices = mesh.shape[axis_name]
    resolve_layout(layout, k, num_devices)  # an impossible explicit layout fails here
    if chunk_size is not None and layout not in ("auto", "group_aligned"):
        raise ValueError(
            f"chunk_size applies to layout='group_aligned' only, got layout={layout!r}."
        )

    def build_chunked(row_major: bool) -> Callable[..., MedianGrads]:
        """The ``reduce_scatter`` (column-major) or ``group_sharded`` (row-major) layout."""
        primary, straddlers = _row_major_plan(k, num_devices)

        def chunk_loss(params, chunk, args, key):
            kwargs = {} if key is None else {"rng": key}
            loss, aux, state = unpack(
                loss_fn(params, chunk, *args, **kwargs), has_aux=has_aux, has_state=has_state
            )
            return loss, (aux, state)

        def local(params, batch, args, rng):
            d = jax.lax.axis_index(axis_name)
            # Differentiate with respect to a per-device copy of the parameters: the gradient
            # of a replicated value would carry an implicit all-reduce (shard_map's transpose
            # rule), which is exactly the communication this function replaces.
            params = jax.lax.pcast(params, axis_name, to="varying")
            chunks = _split_chunks(batch, k, row_major)
            keys = None if rng is None else jax.random.split(jax.random.fold_in(rng, d), k)

            if row_major and not straddlers:
                # All chunks of a device belong to one group: one gradient of their summed
                # losses gives the device's partial group sum directly (no [k, P] copies).
                def total(p):
                    loss, extras = over_chunks(chunk_loss, k, vectorize)(p, chunks, args, keys)
                    return jnp.sum(loss), (loss, extras)

                (_, (loss, (aux, state))), grads = jax.value_and_grad(total, has_aux=True)(params)
                mine, unflatten = flatten(grads, (), num_devices)
                med = _slice_median(mine)
            else:
                value_and_grad = jax.value_and_grad(chunk_loss, has_aux=True)
                (loss, (aux, state)), grads = over_chunks(value_and_grad, k, vectorize)(
                    params, chunks, args, keys
                )
                if row_major:
                    # Sum the chunks of the primary group, and of the next group (the spill of
                    # a device that straddles a group boundary), before flattening.
                    chunk_group = (d * k + jnp.arange(k)) // num_devices
                    is_primary = chunk_group == jnp.asarray(primary)[d]

                    def masked_sum(mask):
                        def leaf_sum(g):
                            m = mask.reshape(k, *(1,) * (g.ndim - 1))
                            return jnp.sum(jnp.where(m, g, jnp.zeros((), g.dtype)), axis=0)

                        return jax.tree.map(leaf_sum, grads)

                    mine, unflatten = flatten(masked_sum(is_primary), (), num_devices)
                    spill, _ = flatten(masked_sum(~is_primary), (), num_devices)
                    perm = [(s, s + 1) for s in straddlers]
                    med = _slice_median(mine + jax.lax.ppermute(spill, axis_name, perm))
                else:
                    flat, unflatten = flatten(grads, (k,), num_devices)
                    sums = jax.lax.psum_scatter(flat, axis_name, scatter_dimension=1, tiled=True)
                    med = coordinate_median(sums)

            med = med / num_devices
            grads = unflatten(jax.lax.all_gather(med, axis_name, tiled=True, to="invarying"))

            return reduce_outputs(grads, loss, aux, state, args, _group_means, _state_mean, fold)

        def _group_means(x):
            """Per-chunk values ``[k, ...]`` -> group means ``[k, ...]`` over all devices.

            Integer values are averaged as float32."""
            if not jnp.issubdtype(x.dtype, jnp.inexact):
                x = x.astype(jnp.float32)
            if not row_major:
                return jax.lax.pmean(x, axis_name)
            gathered = jax.lax.all_gather(x, axis_name, to="invarying")  # [D, k, ...]: v = d k + c
            return jnp.mean(gathered.reshape(k, num_devices, *x.shape[1:]), axis=1)

        def _state_mean(x):
            """Per-chunk state ``[k, ...]`` -> mean over all chunks (integers: device 0's
            chunk 0, e.g. a step counter that all chunks share)."""
            if not jnp.issubdtype(x.dtype, jnp.inexact):
                return jax.lax.all_gather(x[0], axis_name, to="invarying")[0]
            wide = jnp.promote_types(x.dtype, jnp.float32)
            return jax.lax.pmean(jnp.mean(x.astype(wide), axis=0), axis_name).astype(x.dtype)

        def _slice_median(mine):
            """This device's partial sum ``[Ppad]`` of its group -> the median of the group
            sums on its coordinate slice ``[Ppad / D]``."""
            blocks = mine.reshape(num_devices, -1)
            received = jax.lax.all_to_all(blocks, axis_name, 0, 0, tiled=True)  # [D, Ppad/D]
            sums = jax.ops.segment_sum(
                received, jnp.asarray(primary), num_segments=k, indices_are_sorted=True
            )
            return coordinate_median(sums)

        def chunked_fn(params, batch, *args, rng=None) -> MedianGrads:
            size = batch_size(batch)
            if size % (num_devices * k):
                raise ValueError(
                    f"The batch size {size} must be a multiple of (devices on axis "
                    f"{axis_name!r}) x num_groups = {num_devices} x {k} = {num_devices * k}, "
                    "so that every device holds whole chunks of every group it serves. "
                    "Change the global batch size."
                )
            sharded = jax.shard_map(
                local,
                mesh=mesh,
                in_specs=(P(), P(axis_name), P(), P()),
                out_specs=P(),
            )
            return sharded(params, batch, args, rng)

        return chunked_fn

    @functools.cache
    def build(concrete: str) -> Callable[..., MedianGrads]:
        if concrete != "group_aligned":
            return build_chunked(row_major=concrete == "group_sharded")
        return aligned_median_of_means_grads(
            loss_fn,
            k,
            mesh,
            has_aux=has_aux,
            has_state=has_state,
            axis_name=axis_name,
            vectorize=vectorize,
            fold=fold,
            chunk_size=chunk_size,
        )

    def grad_fn(params, batch, *args, rng=None) -> MedianGrads:
        concrete = resolve_layout(
            layout, k, num_devices, batch_size=batch_size(batch), chunk_size=chunk_size
        )
        return build(concrete)(params, batch, *args, rng=rng)

    return grad_fn
