"""Exact coordinate-wise medians and the median-of-means (M3) transform.

The kernels here select an order statistic: every output coordinate is one of the input
values, bit for bit, in the input's own dtype (bf16 stays bf16). Nothing is averaged or
rescaled.

The median of ``k`` values is computed by a *selection network*: a sorting network on ``k``
wires from which every comparator that cannot reach the middle output has been removed (see
:func:`median_selection_network`). A comparator is one elementwise ``minimum`` and/or
``maximum`` (on the floats' order-preserving integer keys, see :func:`coordinate_median`),
so XLA fuses the whole network into one pass that reads the ``k`` inputs once and writes
the result once: no sort, no gather, no arithmetic.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cgh_jax.optim import checks

# Up to this many groups the median is a selection network (elementwise min/max, one fused
# pass); above it, a sort along the group axis. Network size grows as k log^2 k: at k = 127
# it has 1,062 comparators and compiles in about a second on a CPU.
_MAX_NETWORK_SIZE = 127

MedianOfMeansState = optax.EmptyState


def median3(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    r"""Coordinate-wise median of three arrays by a min/max network.

    .. math::
      \operatorname{med}(a, b, c) = \max\big(\min(a, b), \min(\max(a, b), c)\big)

    Four elementwise min/max operations, no sort and no arithmetic, so the result is exactly
    one of the inputs at every coordinate and keeps their dtype. A NaN in any input gives
    NaN at that coordinate.

    Args:
      a: an array.
      b: an array of the same shape and dtype as ``a``.
      c: an array of the same shape and dtype as ``a``.

    Returns:
      The coordinate-wise median, shaped and typed like ``a``.

    Example:
      >>> import jax.numpy as jnp
      >>> from cgh_jax.optim import median3
      >>> median3(jnp.array([1., 5.]), jnp.array([3., 4.]), jnp.array([2., 9.]))
      Array([2., 5.], dtype=float32)
    """
    return jnp.maximum(jnp.minimum(a, b), jnp.minimum(jnp.maximum(a, b), c))


class Comparator(NamedTuple):
    """One comparator of a selection network on wires ``lo < hi``.

    It writes ``min(v[lo], v[hi])`` to wire ``lo`` when ``keep_min`` and
    ``max(v[lo], v[hi])`` to wire ``hi`` when ``keep_max``; an output that is not kept is
    never read again, so it is not computed (the comparator costs ``keep_min + keep_max``
    elementwise operations, and at least one).
    """

    lo: int
    hi: int
    keep_min: bool
    keep_max: bool


def _odd_even_merge_sort(p: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort on ``p`` (a power of 2) wires, as (lo, hi) pairs.

    Knuth's iterative form (TAOCP 5.3.4, exercise 32): for each merge size ``q`` = 1, 2, 4,
    ... and each distance ``d`` = q, q/2, ..., 1, compare ``i`` with ``i + d`` when both lie
    in the same block of ``2q`` wires and ``i`` is at the right offset for the merge step.
    """
    pairs = []
    q = 1
    while q < p:
        d = q
        while d >= 1:
            for j in range(d % q, p - d, 2 * d):
                for i in range(min(d, p - j - d)):
                    if (i + j) // (2 * q) == (i + j + d) // (2 * q):
                        pairs.append((i + j, i + j + d))
            d //= 2
        q *= 2
    return pairs


def _pairwise_sort(p: int) -> list[tuple[int, int]]:
    """Parberry's pairwise sorting network on ``p`` (a power of 2) wires, as (lo, hi) pairs.

    First compare wire ``i`` with ``i + a`` inside blocks of ``2a`` wires for ``a`` = 1, 2,
    ..., p/2 (every block then holds two "pairwise sorted" halves), then, for ``a`` = p/4,
    ..., 1, compare at distances ``d * a`` with ``d`` = e, e // 2, ..., 1, where
    ``e = p / (2a) - 1`` (Parberry, *The pairwise
    sorting network*, Parallel Processing Letters 2(2-3), 1992). Same depth and size as
    Batcher's network, but its comparators are arranged so that more of them become
    irrelevant to a middle output, which makes it the better base for a median.
    """
    pairs = []
    a = 1
    while a < p:  # phase 1: compare i with i + a inside blocks of 2a wires
        for block in range(0, p, 2 * a):
            pairs.extend((i, i + a) for i in range(block, block + a))
        a *= 2
    a, e = p // 4, 1
    while a > 0:  # phase 2: distances d * a, d = e, e // 2, ..., 1 (odd), e = 1, 3, 7, ...
        d = e
        while d > 0:
            # Wire b against b - d * a, for b >= (d + 1) a in the lower half of each block
            # of 2a wires.
            pairs.extend((b - d * a, b) for b in range((d + 1) * a, p) if (b // a) % 2 == 0)
            d //= 2
        a //= 2
        e = 2 * e + 1
    return pairs


def _restrict(pairs: list[tuple[int, int]], offset: int, k: int) -> list[tuple[int, int]]:
    """The comparators of a p-wire network among wires ``offset .. offset + k - 1``, renumbered.

    Run the p-wire network with ``-inf`` on the ``offset`` wires below and ``+inf`` on the
    wires above. A comparator that touches a padding wire never moves a value (a pad below
    the window is only ever compared with a higher wire and is its minimum; one above only
    with a lower wire and is its maximum), so the pads stay put and what remains is a
    sorting network on the ``k`` window wires.
    """
    return [(lo - offset, hi - offset) for lo, hi in pairs if offset <= lo and hi < offset + k]


def _prune(pairs: list[tuple[int, int]], out: int) -> tuple[Comparator, ...]:
    """Keeps only the comparators on which wire ``out``'s final value depends.

    Walk backwards from the output with the set of wires still needed: a comparator with
    neither output needed is dropped; otherwise it is kept (computing only the needed
    outputs) and both of its inputs become needed.
    """
    needed = {out}
    kept = []
    for lo, hi in reversed(pairs):
        keep_min, keep_max = lo in needed, hi in needed
        if keep_min or keep_max:
            kept.append(Comparator(lo, hi, keep_min, keep_max))
            needed.update((lo, hi))
    return tuple(reversed(kept))


def _cost(network: tuple[Comparator, ...]) -> int:
    return sum(c.keep_min + c.keep_max for c in network)


@functools.cache
def median_selection_network(k: int) -> tuple[Comparator, ...]:
    r"""The comparators of the min/max network that selects the median of ``k`` values.

    Construction, for odd ``k``: let :math:`p = 2^{\lceil \log_2 k \rceil}`. For each base
    sorting network on ``p`` wires (Batcher's odd-even merge sort and Parberry's pairwise
    sorting network) and each placement of the ``k`` inputs as a window of consecutive
    wires (``-inf`` below, ``+inf`` above, see ``_restrict``), keep the comparators inside
    the window (a sorting network on ``k`` wires), then drop every comparator that cannot
    influence output wire :math:`(k-1)/2` (``_prune``). Of these candidates the one with the
    fewest elementwise operations wins (ties: fewer comparators, then the first found).

    Because it is a sub-network of a sorting network that keeps everything the middle wire
    depends on, it computes exactly the :math:`(k-1)/2`-th smallest value (zero-based) for
    any totally ordered input, ties included. Sizes (comparators / elementwise min+max
    operations): k = 3: 3/4, 5: 8/12, 7: 14/22, 9: 21/34, 11: 28/46, 15: 47/80, 21: 79/138,
    31: 140/250 (``tests/test_optim_median.py`` checks these). For comparison, the
    hand-made median networks of image filtering use 19 comparators at k = 9 (Paeth) and 99
    at k = 25 (Smith); ours have 21 and 103.

    Args:
      k: a positive odd integer.

    Returns:
      A tuple of :class:`Comparator`, in application order; empty for ``k = 1``.
    """
    checks.check_odd_group_count(k, "k")
    p = 1 << max(0, (k - 1).bit_length())
    best = None
    for base in (_odd_even_merge_sort(p), _pairwise_sort(p)):
        for offset in range(p - k + 1):
            net = _prune(_restrict(base, offset, k), k // 2)
            key = (_cost(net), len(net))
            if best is None or key < best[0]:
                best = (key, net)
    return best[1]


def _median_network(values: list[jax.Array]) -> jax.Array:
    """Median of an odd number of same-shaped arrays by :func:`median_selection_network`.

    Plain ``minimum``/``maximum`` on the values (any ordered dtype); see
    :func:`coordinate_median` for the order it uses on floats.
    """
    vals: list[jax.Array | None] = list(values)
    for c in median_selection_network(len(vals)):
        a, b = vals[c.lo], vals[c.hi]
        vals[c.lo] = jnp.minimum(a, b) if c.keep_min else None
        vals[c.hi] = jnp.maximum(a, b) if c.keep_max else None
    return vals[len(vals) // 2]


_ORDER_INT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def _order_key(x: jax.Array) -> jax.Array:
    r"""The float bits as a signed integer that sorts like the float (an involution).

    With :math:`i` the bits of ``x`` read as a signed integer of the same width,
    ``key = i XOR ((i >> (w - 1)) AND (2^{w-1} - 1))``: non-negative floats keep their bits
    (already ordered), negative ones get their magnitude bits flipped, so a larger
    magnitude becomes a smaller integer. The order is IEEE's on numbers, with
    :math:`-0 < +0` and subnormals as ordinary values; the sign bit is unchanged, so the
    same map decodes a key.
    """
    it = _ORDER_INT[x.dtype.itemsize]
    i = jax.lax.bitcast_convert_type(x, it) if x.dtype != it else x
    return i ^ ((i >> (8 * x.dtype.itemsize - 1)) & jnp.asarray(jnp.iinfo(it).max, it))


def _float_median_network(values: list[jax.Array]) -> jax.Array:
    """The selection network on order keys of floats, with NaN restored."""
    dtype = values[0].dtype
    keys = _median_network([_order_key(v) for v in values])
    med = jax.lax.bitcast_convert_type(_order_key(keys), dtype)
    any_nan = functools.reduce(jnp.logical_or, [jnp.isnan(v) for v in values])
    return jnp.where(any_nan, jnp.asarray(jnp.nan, dtype), med)


def coordinate_median(x: jax.Array) -> jax.Array:
    r"""Exact coordinate-wise median over the leading axis of ``x`` (odd size).

    For ``x`` of shape ``[k, *s]`` with odd ``k`` returns ``y`` of shape ``s`` with
    :math:`y_i = x_{(m), i}`, the :math:`m`-th smallest of :math:`x_{0,i},\dots,x_{k-1,i}`
    with :math:`m = (k-1)/2` (zero-based). The result is an order statistic: one of the
    inputs, bit for bit, in the input dtype.

    ``k = 1`` returns ``x[0]``; ``k`` up to 127 a pruned min/max selection network
    (:func:`median_selection_network`: e.g. 34 elementwise operations at k = 9, 250 at
    k = 31) that XLA fuses into one pass, so the time per input element grows only slowly
    with ``k``; larger ``k`` a sort along the axis.

    Floating-point inputs (float16, bfloat16, float32, float64) go through the network as
    their order-preserving integer keys (``_order_key``: the bits, with the magnitude
    bits of negative values flipped), compared by integer ``minimum``/``maximum``, and
    are decoded back bit for bit. This fixes every detail of the order on every backend,
    and integer comparisons are cheaper on CPUs than NaN-propagating float ones:

    - ``-0.0 < +0.0``: the median of a column of zeros is the median under that order
      (``numpy.median``, which treats them as equal, may return the other zero);
    - subnormals are ordinary values (float comparisons on XLA's CPU backend would read
      them as zero);
    - ``±inf`` are the extreme values;
    - a NaN anywhere in a column gives NaN there (a quiet NaN of the dtype, whatever the
      input's NaN payload).

    Integer and boolean inputs go through the network directly.

    Args:
      x: array with a leading axis of odd size.

    Returns:
      The median over axis 0, shape ``x.shape[1:]``, dtype ``x.dtype``.

    Raises:
      ValueError: if ``x`` is a scalar or its leading axis has even size.
    """
    if x.ndim == 0:
        raise ValueError("coordinate_median needs an array with a leading axis, got a scalar.")
    k = x.shape[0]
    checks.check_odd_group_count(k, "the leading axis size")
    if k == 1:
        return x[0]
    inexact = jnp.issubdtype(x.dtype, jnp.inexact)
    if k <= _MAX_NETWORK_SIZE:
        rows = [x[i] for i in range(k)]
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize in _ORDER_INT:
            return _float_median_network(rows)
        return _median_network(rows)
    med = jnp.sort(x, axis=0)[k // 2]
    if inexact:
        med = jnp.where(jnp.isnan(x).any(axis=0), jnp.asarray(jnp.nan, x.dtype), med)
    return med


def median_of_means_any_count(num_groups: Any) -> optax.GradientTransformation:
    """median_of_means for an int or, under inject_hyperparams, a traced group count.

    A traced count cannot be read; the group axis of the updates (static) is used instead.
    """
    static_k = checks.static_int_or_none(num_groups, "num_groups")
    if static_k is not None:
        checks.check_odd_group_count(static_k)

    def init_fn(params):
        del params
        return MedianOfMeansState()

    def update_fn(updates, state, params=None):
        k = checks.check_grouped_shapes(updates, params, static_k, "median_of_means")
        if static_k is None:
            checks.check_odd_group_count(k, "the group axis size")
        return jax.tree.map(coordinate_median, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def median_of_means(num_groups: int) -> optax.GradientTransformation:
    r"""Coordinate-wise median of ``num_groups`` group-mean gradients.

    The input carries a leading group axis: leaf ``g`` has shape ``[k, *param.shape]``,
    where ``g[j]`` is the mean gradient of group ``j`` of a mini-batch (see
    :func:`cgh_jax.grouped_grads`). The output is param-shaped:

    .. math::
      u_i = \operatorname{median}\big(g_{0,i}, g_{1,i}, \dots, g_{k-1,i}\big)

    for every coordinate :math:`i`, an exact order statistic in the gradient's own dtype.
    A direction that only a minority of groups push along (a *weak* direction, e.g. the
    gradient of a few memorized examples) is suppressed; directions most groups agree on
    (*strong* directions) pass.

    Args:
      num_groups: the number of groups ``k``, a positive odd integer. Even values are
        refused: the median of an even count is not an order statistic, and the midpoint
        rule would average the two middle groups, reintroducing the mean.

    Returns:
      An :class:`optax.GradientTransformation` (stateless).

    Raises:
      ValueError: at construction for an even or non-positive ``num_groups``; in ``update``
        without ``params`` (they are required: every leaf must be exactly
        ``[k, *param.shape]``, which only the params can tell), or when a leaf lacks the
        leading group axis or has the wrong size there (the message names the expected
        shape).

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.median_of_means(3)
      >>> params = {"w": jnp.zeros(2)}
      >>> grads = {"w": jnp.array([[1., 10.], [2., -5.], [30., 0.]])}  # [3 groups, 2]
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates["w"]
      Array([2., 0.], dtype=float32)

    References:
      Chatterjee, `Coherent Gradients: An Approach to Understanding Generalization in
      Gradient Descent-based Optimization <https://arxiv.org/abs/2002.10657>`_, ICLR 2020.

      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      The input updates must have the group axis in position 0 (per-group gradients, not
      param-shaped gradients), so this transform must come **first** in a chain.
      Accumulators such as :class:`optax.MultiSteps` or :func:`optax.apply_every` do not
      compose with it: they would average the grouped updates (or accumulate steps) before
      the median is taken, which is a different algorithm.
    """
    if checks.static_int_or_none(num_groups, "num_groups") is None:
        raise ValueError(
            "num_groups must be a Python int (it fixes the shape of the updates), not a traced "
            "value."
        )
    return median_of_means_any_count(num_groups)


def m3() -> optax.GradientTransformation:
    r"""M3: the coordinate-wise median of 3 group-mean gradients.

    ``m3()`` is ``median_of_means(3)``: a mini-batch is split into three groups (each the
    size of an SGD mini-batch in the paper), and the update is, per coordinate,

    .. math::
      u_i = \max\big(\min(g_{0,i}, g_{1,i}),\ \min(\max(g_{0,i}, g_{1,i}), g_{2,i})\big).

    Returns:
      An :class:`optax.GradientTransformation` taking updates of shape
      ``[3, *param.shape]`` and returning param-shaped updates. ``update`` requires
      ``params`` (to check the group axis against them).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import cgh_jax
      >>> params = jnp.ones(4)
      >>> loss = lambda p, batch: jnp.mean((batch @ p) ** 2)
      >>> grads = cgh_jax.grouped_grads(loss, 3)(params, jnp.ones((6, 4))).grads
      >>> grads.shape
      (3, 4)
      >>> opt = optax.chain(cgh_jax.m3(), optax.sgd(0.1))
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates.shape
      (4,)

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      Must be first in a chain (leading group axis); incompatible with
      :class:`optax.MultiSteps`. See :func:`median_of_means`.
    """
    return median_of_means(3)
