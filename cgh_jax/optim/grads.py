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
      state: the new mutable collections (e.g. ``{'batch_stats': ...}``) averaged over the
        groups, or None.
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
    with its own batch statistics, as a separate SGD-sized mini-batch would, and the new
    states of the groups are averaged. For BatchNorm this is exact bookkeeping: the running
    mean update :math:`r \leftarrow m\,r + (1-m)\,\mu_j` is affine in the batch statistic
    :math:`\mu_j` with weights summing to one, so the average of the :math:`k` updated
    running statistics equals one update with the average of the group statistics (and
    likewise for the variance). Integer state leaves are taken from group 0.

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

    Returns:
      ``grad_fn(params, batch, *args, rng=None) -> GroupedGrads``. It raises ValueError if
      the batch size is not divisible by ``num_groups``.

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
    value_and_grad = jax.value_and_grad(
        _normalize_loss_fn(loss_fn, has_aux, has_state), has_aux=True
    )

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
        else:
            outs = [
                value_and_grad(
                    params,
                    jax.tree.map(lambda x, j=j: x[j], groups),
                    None if rngs is None else rngs[j],
                    *args,
                )
                for j in range(num_groups)
            ]
            (loss, (aux, state)), grads = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        if has_state:
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
