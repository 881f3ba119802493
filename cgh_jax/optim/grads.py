"""Grouped and per-example gradients: the inputs of M3 and winsorized SGD."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class GroupedGrads(NamedTuple):
    """What :func:`grouped_grads` and :func:`per_example_grads` return.

    Attributes:
      grads: a tree like the params with leaves ``[k, *param.shape]``: the mean gradient of
        each group.
      loss: ``[k]``, the mean loss of each group.
      aux: the auxiliary output of the loss with a leading ``[k]`` axis, or None.
      state: the new mutable collections (e.g. ``{'batch_stats': ...}``): the mean of the
        groups' updates, or ``k`` sequential updates (``batch_stats_update``); or None.
    """

    grads: Any
    loss: jax.Array
    aux: Any = None
    state: Any = None


def group_batch(batch: Any, num_groups: int) -> Any:
    """Splits every leaf ``[B, ...]`` of ``batch`` into ``[num_groups, B // num_groups, ...]``.

    The split is column-major: group ``j`` holds examples ``j, j + k, j + 2k, ...``. With
    the batch axis sharded over devices (and the per-device batch divisible by ``k``), every
    group then spans every shard and the split moves no data between devices.

    Raises:
      ValueError: if the leaves disagree on ``B`` or ``B`` is not divisible by
        ``num_groups``.
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("The batch has no array leaves to split into groups.")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes:
        raise ValueError("Every batch leaf needs a leading batch axis; got a scalar leaf.")
    if len(sizes) != 1:
        raise ValueError(f"Batch leaves disagree on the batch size: {sorted(sizes)}.")
    size = sizes.pop()
    if size % num_groups:
        raise ValueError(
            f"The batch size {size} is not divisible by num_groups={num_groups}. Use a batch "
            f"size that is a multiple of {num_groups} (e.g. {size - size % num_groups} or "
            f"{size + num_groups - size % num_groups}); on several devices the per-device batch "
            f"must be a multiple of {num_groups} too."
        )

    def split(x):
        x = jnp.asarray(x)
        x = x.reshape(size // num_groups, num_groups, *x.shape[1:])
        return jnp.moveaxis(x, 1, 0)

    return jax.tree.map(split, batch)


def _mean_over_groups(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=0).astype(x.dtype)
    return x[0]


BATCH_STATS_UPDATES = ("sequential", "mean")
"""Accepted values of ``batch_stats_update`` in :func:`grouped_grads`."""


def _check_momentum(momentum: Any) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise ValueError(f"state_momentum must be a float in [0, 1), got {momentum!r}.")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"state_momentum must lie in [0, 1), got {momentum!r}.")
    return float(momentum)


def check_batch_stats_update(
    batch_stats_update: str,
    *,
    has_state: bool,
    state_argnum: Any,
    state_momentum: Any,
    fold: bool,
    why_fold: str,
) -> float | None:
    """Checks the ``batch_stats_update`` arguments of the grouped gradients.

    Args:
      batch_stats_update: ``'mean'`` or ``'sequential'``.
      has_state, state_argnum, state_momentum: as given to the gradient function.
      fold: ``'sequential'`` is computed by :func:`sequential_state_update` (needs
        ``state_momentum``), not by threading the state through the groups.
      why_fold: the end of the error message when ``state_momentum`` is missing.

    Returns:
      The checked momentum (``None`` when it is not needed).
    """
    if batch_stats_update not in BATCH_STATS_UPDATES:
        raise ValueError(
            f"batch_stats_update must be one of {BATCH_STATS_UPDATES}, got {batch_stats_update!r}."
        )
    if batch_stats_update != "sequential":
        return None
    if not has_state:
        raise ValueError("batch_stats_update='sequential' needs has_state=True.")
    if isinstance(state_argnum, bool) or not isinstance(state_argnum, numbers.Integral):
        raise ValueError(
            "batch_stats_update='sequential' needs state_argnum, the position in *args of "
            f"the state that loss_fn updates (e.g. 0); got {state_argnum!r}."
        )
    if not fold:
        return None
    if state_momentum is None:
        raise ValueError(f"batch_stats_update='sequential' {why_fold}")
    return _check_momentum(state_momentum)


def sequential_state_update(old_state: Any, group_states: Any, momentum: float) -> Any:
    r"""Folds ``k`` running-statistics updates made in parallel into ``k`` sequential ones.

    **Assumption** (stated, not detected): every floating-point leaf of the state is a
    running average with decay ``momentum``,
    :math:`r \leftarrow m\,r + (1-m)\,s`, where the batch statistic :math:`s` does not
    depend on :math:`r` (Flax's ``nn.BatchNorm(momentum=m)`` in train mode: its running
    mean and variance, with ``s`` the batch mean and the biased batch variance). Given the
    update of each group *from the same* ``old_state`` :math:`r_0`,
    :math:`n_j = m\,r_0 + (1-m)\,s_j` (``group_states``, leading axis ``[k]``), each
    group's contribution is :math:`(1-m)\,s_j = n_j - m\,r_0`, and ``k`` consecutive
    updates in group order give

    .. math::
      r_k = m^k r_0 + \sum_{j=1}^{k} m^{k-j} (1-m)\, s_j,

    computed by the recurrence :math:`r_j = m\,r_{j-1} + (n_j - m\,r_0)` in at least
    float32, then cast to the leaf's dtype. Mathematically exact; in floating point it
    agrees with ``k`` consecutive updates to a few units in the last place (the recovered
    :math:`n_j - m r_0` carries the rounding of :math:`n_j`).

    Args:
      old_state: the state before the update (e.g. the ``batch_stats`` tree).
      group_states: a tree of the same structure, each leaf with a leading axis ``[k]``:
        group ``j``'s updated state, computed from ``old_state``.
      momentum: the decay ``m`` in ``[0, 1)`` (Flax ``BatchNorm.momentum``; PyTorch's
        ``momentum=0.1`` is ``m = 0.9``).

    Returns:
      The state after the ``k`` sequential updates, structured and typed like
      ``old_state``.

    Raises:
      ValueError: if the trees differ in structure or shapes, or a leaf is not floating
        point (an integer counter is not a running average).
    """
    m = _check_momentum(momentum)
    old_def, new_def = jax.tree.structure(old_state), jax.tree.structure(group_states)
    if old_def != new_def:
        raise ValueError(
            "batch_stats_update='sequential': the state loss_fn returns must have the "
            f"structure of the state it is given; got {new_def} for {old_def}."
        )

    def fold(r0, new):
        r0, new = jnp.asarray(r0), jnp.asarray(new)
        if new.shape[1:] != r0.shape or new.ndim == 0:
            raise ValueError(
                "batch_stats_update='sequential': a group state of shape "
                f"{new.shape} does not match the old state's {r0.shape} with a leading group "
                "axis."
            )
        if not jnp.issubdtype(r0.dtype, jnp.inexact):
            raise ValueError(
                "batch_stats_update='sequential' folds running averages; the state holds an "
                f"integer leaf ({r0.dtype}). Use vectorize=False with state_argnum, which "
                "threads any state through the groups."
            )
        wide = jnp.promote_types(r0.dtype, jnp.float32)
        r0w, neww = r0.astype(wide), new.astype(wide)
        base = m * r0w
        r = r0w
        for j in range(new.shape[0]):
            r = m * r + (neww[j] - base)
        return r.astype(r0.dtype)

    return jax.tree.map(fold, old_state, group_states)


def check_state_momentum(
    loss_fn: Callable[..., Any],
    momentum: float,
    params: Any,
    batch: Any,
    *args: Any,
    state_argnum: int,
    state_collection: str | None = None,
    has_aux: bool = False,
    rtol: float = 1e-3,
) -> None:
    r"""Checks the assumption of :func:`sequential_state_update` on one batch.

    Runs ``loss_fn`` (in the convention of :func:`grouped_grads` with ``has_state=True``)
    on ``batch`` from two states, :math:`r` (``args[state_argnum]``) and
    :math:`r + \delta` with :math:`\delta_i = 1 + |r_i|`, and checks, leaf by leaf, that
    the new states differ by :math:`m\,\delta`: the update is
    :math:`r \mapsto m\,r + c` with a :math:`c` that does not depend on :math:`r`, which is
    what the fold of ``batch_stats_update='sequential'`` under ``vmap`` (and in
    :func:`cgh_jax.optim.sharded_median_of_means_grads`) relies on. A caller sets
    ``state_momentum`` from the model (e.g. a ResNet's ``bn_momentum``); this catches a
    wrong value, a layer with another momentum, or a state that is not a running average.
    Run it once, outside the training step (two forward passes).

    Args:
      loss_fn: as for :func:`grouped_grads` with ``has_state=True``.
      momentum: the claimed decay ``m``.
      params: parameters.
      batch: a batch (any size the model accepts).
      *args: the extra arguments of ``loss_fn``, the state at ``state_argnum``.
      state_argnum: position of the state in ``args``.
      state_collection: as for :func:`grouped_grads`.
      has_aux: whether ``loss_fn`` also returns aux (``(loss, (aux, state))``).
      rtol: relative tolerance on :math:`m\,\delta`.

    Raises:
      ValueError: naming the first leaf whose update is not affine with slope ``m``, or an
        integer leaf.
    """
    m = _check_momentum(momentum)
    fn = _normalize_loss_fn(loss_fn, has_aux, True)
    old = args[state_argnum]

    def new_state(state):
        shifted = args[:state_argnum] + (state,) + args[state_argnum + 1 :]
        out = fn(params, batch, None, *shifted)[1][1]
        return out if state_collection is None else out[state_collection]

    delta = jax.tree.map(lambda r: 1.0 + jnp.abs(jnp.asarray(r, jnp.float32)), old)
    shifted = jax.tree.map(lambda r, d: (r + d).astype(jnp.result_type(r)), old, delta)
    n0, n1 = jax.jit(new_state)(old), jax.jit(new_state)(shifted)
    check_same_state(old, n0, "loss_fn")
    flat, _ = jax.tree_util.tree_flatten_with_path(old)
    for (path, r), a, b, d in zip(
        flat, jax.tree.leaves(n0), jax.tree.leaves(n1), jax.tree.leaves(delta), strict=True
    ):
        name = jax.tree_util.keystr(path)
        if not jnp.issubdtype(jnp.result_type(r), jnp.inexact):
            raise ValueError(f"State leaf {name} is an integer, not a running average.")
        got = np.asarray(b, np.float64) - np.asarray(a, np.float64)
        want = m * np.asarray(d, np.float64)
        if not np.allclose(got, want, rtol=rtol, atol=rtol * float(np.max(want, initial=0.0))):
            slope = float(np.median(got / np.asarray(d, np.float64)))
            raise ValueError(
                f"State leaf {name} is not updated as r <- {m} r + c: shifting the state by d "
                f"moved the update by {slope:.4g} d (median). Pass the model's own momentum "
                "as state_momentum, or use vectorize=False (which threads the state)."
            )


def check_same_state(old: Any, new: Any, where: str) -> None:
    """Raises ValueError unless ``new`` has ``old``'s structure, shapes and dtypes."""

    def spec(tree):
        return [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]

    if jax.tree.structure(old) != jax.tree.structure(new) or spec(old) != spec(new):
        raise ValueError(
            f"batch_stats_update='sequential': {where} must return its new state with the "
            "structure, shapes and dtypes of the state it is given (args[state_argnum], or "
            "{state_collection: args[state_argnum]} with state_collection); got "
            f"{jax.tree.structure(new)} for {jax.tree.structure(old)}."
        )


def _pmean(tree: Any, axis_name: Any) -> Any:
    def reduce(x):
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.float32)
        return jax.lax.pmean(x, axis_name)

    return jax.tree.map(reduce, tree)


def _as_device_varying(tree: Any, axis_name: Any) -> Any:
    """Marks ``tree`` as varying over ``axis_name`` (a no-op where it already is).

    Under ``jax.shard_map``, the gradient with respect to a device-invariant (replicated)
    input is summed over the devices by autodiff. Marking the params as varying first makes
    every device compute the gradient of its own loss, which is then averaged explicitly,
    the same on ``shard_map`` and on ``pmap`` (where this is a no-op).
    """
    names = tuple(axis_name) if isinstance(axis_name, tuple | list) else (axis_name,)

    def cast(x):
        manual = getattr(jax.typeof(x), "manual_axis_type", None)
        varying = getattr(manual, "varying", frozenset())
        missing = tuple(n for n in names if n not in varying)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


def _normalize_loss_fn(loss_fn: Callable[..., Any], has_aux: bool, has_state: bool):
    """Wraps ``loss_fn`` into ``(params, batch, rng, *args) -> (loss, (aux, state))``."""

    def fn(params, batch, rng, *args):
        out = (
            loss_fn(params, batch, *args) if rng is None else loss_fn(params, batch, *args, rng=rng)
        )
        if not (has_aux or has_state):
            return out, (None, None)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            expected = {
                (True, False): "(loss, aux)",
                (False, True): "(loss, state)",
                (True, True): "(loss, (aux, state))",
            }[(has_aux, has_state)]
            raise ValueError(
                f"loss_fn must return {expected} with has_aux={has_aux}, has_state={has_state}; "
                f"got {type(out).__name__}."
            )
        loss, rest = out
        if has_aux and has_state:
            if not (isinstance(rest, tuple | list) and len(rest) == 2):
                raise ValueError(
                    "loss_fn must return (loss, (aux, state)) with has_aux=True, has_state=True."
                )
            return loss, (rest[0], rest[1])
        return (loss, (rest, None)) if has_aux else (loss, (None, rest))

    return fn


def grouped_grads(
    loss_fn: Callable[..., Any],
    num_groups: int,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    axis_name: Any = None,
    vectorize: bool = True,
    batch_stats_update: str = "mean",
    state_argnum: int | None = None,
    state_collection: str | None = None,
    state_momentum: float | None = None,
) -> Callable[..., GroupedGrads]:
    r"""Mean gradients of ``num_groups`` groups of a batch, stacked on a leading axis.

    The batch (leaves ``[B, ...]``) is split column-major into :math:`k` groups of
    :math:`B/k` examples, :math:`G_j = \{j, j+k, j+2k, \dots\}`, and for each group

    .. math::
      g_j = \nabla_\theta\, \ell(\theta; G_j), \qquad
      \ell(\theta; G) = \frac{1}{|G|}\sum_{e \in G} \ell_e(\theta)

    with ``loss_fn`` computing the batch-mean loss :math:`\ell(\theta; G)`. All groups are
    computed at once with :func:`jax.vmap` over the group axis (params and ``*args``
    broadcast), so the FLOPs equal one gradient of the whole batch.

    The column-major split keeps every group spread over every data shard (the per-device
    batch must be a multiple of ``k``): the split itself moves no example between devices.
    Under ``jax.jit`` with the batch sharded over a ``Mesh``, XLA keeps dense layers data
    parallel, but for the vmapped convolutions of a convnet its partitioner may gather the
    batch onto every device; ``vectorize=False`` stays data parallel (at k gradient
    all-reduces), and :func:`cgh_jax.optim.sharded_median_of_means_grads` is the
    communication-efficient data-parallel path.

    **Mutable state** (``has_state=True``, e.g. Flax ``batch_stats``): each group normalizes
    with its own batch statistics, as a separate SGD-sized mini-batch would. The gradients
    do not depend on the running statistics (train-mode BatchNorm normalizes with the batch
    statistics), so only the returned state depends on ``batch_stats_update``:

    - ``'mean'`` (default): the new states of the groups, each updated from the same old
      state, are averaged. For BatchNorm the running update
      :math:`r \leftarrow m\,r + (1-m)\,\mu_j` is affine in the batch statistic with
      weights summing to one, so this is one update with the average of the group
      statistics, :math:`m\,r_0 + (1-m)\,\bar\mu`. Integer state leaves are taken from
      group 0.
    - ``'sequential'`` (the authors' trainer: ``k`` train-mode forward passes, one per
      group, in group order): ``k`` consecutive updates,
      :math:`r_k = m^k r_0 + \sum_{j=1}^{k} m^{k-j}(1-m)\,\mu_j`. It needs to know which
      argument is the state: ``state_argnum`` (index into ``*args``), and
      ``state_collection`` when ``loss_fn`` returns ``{state_collection: new}`` for an
      argument ``old`` (Flax's ``mutable=['batch_stats']`` output) rather than ``new``
      itself. With ``vectorize=False`` the state is threaded through the loop: group
      ``j`` runs on the state group ``j - 1`` produced, exactly as ``k`` consecutive calls
      (any state, not only running averages; ``state_momentum`` is not used). With
      ``vectorize=True`` the groups run in parallel from the old state and their updates
      are folded by :func:`sequential_state_update`, which assumes that every
      floating-point state leaf is a running average with decay ``state_momentum`` (true
      of Flax ``BatchNorm(momentum=state_momentum)``; the caller states it, it is not
      detected) and agrees with the loop to a few units in the last place.

    **RNG**: ``rng`` is split into :math:`k` keys; group :math:`j` gets key :math:`j`
    (e.g. independent dropout masks).

    **Explicit per-device code** (``axis_name`` under ``jax.shard_map``/``jax.pmap``):
    every device splits its local batch the same way, so local group :math:`j` holds the
    device's members of global group :math:`j`; grads, loss, aux and state are then
    averaged over ``axis_name`` with :func:`jax.lax.pmean`, giving the global per-group
    results (for BatchNorm, give the model the same ``axis_name`` so the batch statistics
    are global too). Integer aux/state leaves are averaged as float32.

    Args:
      loss_fn: ``loss_fn(params, batch, *args, rng=...)`` returning ``loss`` (a scalar, the
        mean over the batch it is given), ``(loss, aux)`` with ``has_aux``,
        ``(loss, state)`` with ``has_state``, or ``(loss, (aux, state))`` with both. The
        ``rng`` keyword is passed only when the returned function gets an ``rng``.
      num_groups: ``k``, a positive int.
      has_aux: whether ``loss_fn`` returns auxiliary outputs (e.g. metrics).
      has_state: whether ``loss_fn`` returns new mutable collections.
      axis_name: a mapped axis name (or tuple of names) to average over, or None.
      vectorize: True (default) computes the groups with :func:`jax.vmap`; False unrolls
        a loop over the groups inside the same trace, each an ordinary gradient of
        ``B/k`` examples. Same results; the loop avoids the grouped convolutions that
        ``vmap`` makes of convolution weight gradients, which are slow on some backends
        (see ``docs/benchmarks.md``), at the cost of ``k`` smaller kernels.
      batch_stats_update: ``'mean'`` or ``'sequential'``: how the groups' state updates
        combine (see above). Only with ``has_state``.
      state_argnum: for ``'sequential'``, the position in ``*args`` of the state that
        ``loss_fn`` returns updated.
      state_collection: for ``'sequential'``, None when ``loss_fn`` returns the new state
        itself, or the key under which it returns it (``'batch_stats'`` for a loss that
        returns Flax's mutable-collections dict).
      state_momentum: for ``'sequential'`` with ``vectorize=True``, the decay ``m`` of the
        running averages in the state (Flax ``BatchNorm.momentum``), in ``[0, 1)``.

    Returns:
      ``grad_fn(params, batch, *args, rng=None) -> GroupedGrads``. It raises ValueError if
      the batch size is not divisible by ``num_groups``, and for ``'sequential'`` if the
      state returned does not match the state given (structure, shapes, dtypes).

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> loss = lambda w, batch: jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
      >>> batch = {"x": jnp.ones((6, 2)), "y": jnp.arange(6.0)}
      >>> out = cgh_jax.grouped_grads(loss, 3)(jnp.zeros(2), batch)
      >>> out.grads.shape, out.loss.shape  # groups {0, 3}, {1, 4}, {2, 5}
      ((3, 2), (3,))
      >>> out.grads[:, 0]
      Array([-3., -5., -7.], dtype=float32)

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      The gradients carry a leading group axis: feed them to :func:`cgh_jax.m3` /
      :func:`cgh_jax.median_of_means` (first in the chain), or average them over axis 0 for
      an ordinary gradient. Memory: :math:`k` gradient copies.
    """
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise ValueError(f"num_groups must be a Python int, got {num_groups!r}.")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}.")
    num_groups = int(num_groups)
    sequential = batch_stats_update == "sequential"
    state_momentum = check_batch_stats_update(
        batch_stats_update,
        has_state=has_state,
        state_argnum=state_argnum,
        state_momentum=state_momentum,
        fold=vectorize,
        why_fold="with vectorize=True needs state_momentum, the decay of the running averages "
        "(Flax BatchNorm.momentum), to fold the k parallel updates into sequential ones; or "
        "use vectorize=False, which threads the state through the groups.",
    )
    value_and_grad = jax.value_and_grad(
        _normalize_loss_fn(loss_fn, has_aux, has_state), has_aux=True
    )

    def state_in(args):
        if not 0 <= state_argnum < len(args):
            raise ValueError(
                f"state_argnum={state_argnum} but grad_fn got {len(args)} extra argument(s)."
            )
        return args[state_argnum]

    def state_out(new):
        if state_collection is None:
            return new
        if not isinstance(new, dict) or set(new) != {state_collection}:
            keys = sorted(new) if isinstance(new, dict) else type(new).__name__
            raise ValueError(
                f"state_collection={state_collection!r}: loss_fn must return its new state "
                f"as {{{state_collection!r}: ...}}; got {keys}."
            )
        return new[state_collection]

    def wrap(new):
        return new if state_collection is None else {state_collection: new}

    def with_state(args, state):
        return args[:state_argnum] + (state,) + args[state_argnum + 1 :]

    def grad_fn(params, batch, *args, rng=None):
        groups = group_batch(batch, num_groups)
        rngs = None if rng is None else jax.random.split(rng, num_groups)
        if axis_name is not None:
            params = _as_device_varying(params, axis_name)
        if vectorize:
            in_axes = (None, 0, None if rng is None else 0) + (None,) * len(args)
            (loss, (aux, state)), grads = jax.vmap(value_and_grad, in_axes=in_axes)(
                params, groups, rngs, *args
            )
            if sequential:
                old = state_in(args)
                check_same_state(old, jax.tree.map(lambda x: x[0], state_out(state)), "loss_fn")
                state = wrap(sequential_state_update(old, state_out(state), state_momentum))
            elif has_state:
                state = jax.tree.map(_mean_over_groups, state)
        else:
            outs = []
            for j in range(num_groups):
                out = value_and_grad(
                    params,
                    jax.tree.map(lambda x, j=j: x[j], groups),
                    None if rngs is None else rngs[j],
                    *args,
                )
                if sequential:  # the next group runs on the state this one produced
                    new = state_out(out[0][1][1])
                    check_same_state(state_in(args), new, "loss_fn")
                    args = with_state(args, new)
                outs.append(out)
            (loss, (aux, state)), grads = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
            if sequential:
                state = wrap(state_in(args))
            elif has_state:
                state = jax.tree.map(_mean_over_groups, state)
        if axis_name is not None:
            grads, loss, aux, state = _pmean((grads, loss, aux, state), axis_name)
        return GroupedGrads(
            grads=grads,
            loss=loss,
            aux=aux if has_aux else None,
            state=state if has_state else None,
        )

    return grad_fn


def per_example_grads(
    loss_fn: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., GroupedGrads]:
    r"""Per-example gradients, stacked on a leading axis of size ``B``.

    :func:`grouped_grads` with one example per group: ``loss_fn`` is called on a batch of
    one example (the leading axis of size 1 is kept, so the same batch-mean loss works) and
    the result has ``grads`` leaves ``[B, *param.shape]``, ``loss`` ``[B]`` and ``aux`` with
    a leading ``[B]``; ``state`` is None (per-example BatchNorm statistics are undefined).
    The input of :func:`cgh_jax.winsorize`.

    Args:
      loss_fn: ``loss_fn(params, batch, *args, rng=...)`` returning ``loss`` or
        ``(loss, aux)`` (with ``has_aux``).
      has_aux: whether ``loss_fn`` returns auxiliary outputs.

    Returns:
      ``grad_fn(params, batch, *args, rng=None) -> GroupedGrads``; with ``rng`` each example
      gets its own key.

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> loss = lambda w, x: jnp.mean(x @ w)
      >>> cgh_jax.per_example_grads(loss)(jnp.zeros(2), jnp.array([[1., 2.], [3., 4.]])).grads
      Array([[1., 2.],
             [3., 4.]], dtype=float32)

    .. warning::
      Memory grows as ``B`` copies of the gradient.
    """

    def grad_fn(params, batch, *args, rng=None):
        leaves = jax.tree.leaves(batch)
        if not leaves or np.ndim(leaves[0]) == 0:
            raise ValueError("per_example_grads needs batch leaves with a leading batch axis.")
        size = np.shape(leaves[0])[0]
        return grouped_grads(loss_fn, size, has_aux=has_aux)(params, batch, *args, rng=rng)

    return grad_fn
