"""m-coherence of per-example gradients (Chatterjee & Zielinski, 2020).

For the per-example gradients :math:`g_1, \\dots, g_m` of a fixed sample of
:math:`m` examples, the m-coherence is

.. math::

  \\alpha = \\frac{\\lVert \\sum_{i=1}^m g_i \\rVert^2}{\\sum_{i=1}^m \\lVert g_i \\rVert^2}
          = \\frac{\\sum_{i,j} g_i \\cdot g_j}{\\sum_i g_i \\cdot g_i}.

It is :math:`1` when the gradients are pairwise orthogonal, :math:`m` when they
are all identical, and roughly "the number of examples each example's gradient
helps" in between. :math:`\\alpha / m` is the normalized version in
:math:`[0, 1]`.

:func:`m_coherence` streams over the sample: it never forms the
:math:`m \\times m` matrix of dot products nor stores all gradients, only a
running parameter-shaped sum :math:`\\sum_i g_i` and a running scalar
:math:`\\sum_i \\lVert g_i \\rVert^2`, updated one jitted chunk of examples at a
time. :class:`CoherenceHook` measures it during a run of the trainer, at chosen steps;
:func:`verdict` reads a real-label and a random-label curve against CGH's expectations.

References:
  Chatterjee & Zielinski, *Making Coherence Out of Nothing At All: Measuring
  the Evolution of Gradient Alignment*, 2020. https://arxiv.org/abs/2008.01217
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cgh_jax.hooks import Hook
from cgh_jax.step import cross_entropy


class CoherenceStats(NamedTuple):
    """The m-coherence of a sample and the two sums it is made of.

    Attributes:
      alpha: :math:`\\lVert \\sum_i g_i \\rVert^2 / \\sum_i \\lVert g_i \\rVert^2`
        (NaN when every gradient is zero).
      sum_norm_sq: :math:`\\lVert \\sum_i g_i \\rVert^2`.
      norm_sq_sum: :math:`\\sum_i \\lVert g_i \\rVert^2`.
      num_examples: :math:`m`, the sample size.
    """

    alpha: jax.Array
    sum_norm_sq: jax.Array
    norm_sq_sum: jax.Array
    num_examples: int


def _leading_size(tree: Any, what: str) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} has no array leaves.")
    sizes = set()
    for leaf in leaves:
        if np.ndim(leaf) < 1:
            raise ValueError(
                f"Every leaf of {what} needs a leading example axis; got a leaf of shape "
                f"{np.shape(leaf)}."
            )
        sizes.add(np.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(
            f"The leaves of {what} disagree on the number of examples (leading axis sizes "
            f"{sorted(sizes)}); stack the same examples in every leaf."
        )
    (size,) = sizes
    if size < 1:
        raise ValueError(f"{what} holds no examples.")
    return int(size)


def _sq_norm_per_example(grads: Any, dtype: Any) -> jax.Array:
    """Squared norm of each example's gradient: leaves ``[c, ...]`` -> ``[c]``."""
    leaves = jax.tree_util.tree_leaves(grads)
    return sum(jnp.sum(jnp.square(g.astype(dtype)).reshape(g.shape[0], -1), axis=1) for g in leaves)


def _stats(total: Any, norm_sq_sum: jax.Array, m: int) -> CoherenceStats:
    sum_norm_sq = sum(jnp.vdot(t, t).real for t in jax.tree_util.tree_leaves(total))
    return CoherenceStats(
        alpha=sum_norm_sq / norm_sq_sum,
        sum_norm_sq=sum_norm_sq,
        norm_sq_sum=norm_sq_sum,
        num_examples=m,
    )


def coherence_from_grads(grads: Any, *, dtype: Any = jnp.float32) -> CoherenceStats:
    """m-coherence of stacked per-example gradients, by the direct formula.

    Args:
      grads: pytree whose leaves are ``[m, *param.shape]``: example ``i``'s
        gradient is ``tree_map(lambda g: g[i], grads)``.
      dtype: accumulation dtype.

    Returns:
      A :class:`CoherenceStats`.

    Example:
      >>> import jax.numpy as jnp
      >>> float(coherence_from_grads({"w": jnp.ones((4, 3))}).alpha)
      4.0
      >>> float(coherence_from_grads({"w": jnp.eye(3)}).alpha)
      1.0
    """
    m = _leading_size(grads, "grads")
    grads = jax.tree_util.tree_map(lambda g: jnp.asarray(g, dtype), grads)
    total = jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), grads)
    return _stats(total, jnp.sum(_sq_norm_per_example(grads, dtype)), m)


@functools.partial(jax.jit, static_argnames=("loss_fn", "has_aux"), donate_argnums=(0,))
def _chunk_update(
    carry: tuple[Any, jax.Array],
    params: Any,
    chunk: Any,
    mask: jax.Array,
    args: tuple,
    *,
    loss_fn: Callable[..., Any],
    has_aux: bool,
) -> tuple[Any, jax.Array]:
    """Adds the masked per-example gradients of one chunk to the running sums."""
    total, norm_sq_sum = carry
    dtype = norm_sq_sum.dtype

    def example_grad(example):
        one = jax.tree_util.tree_map(lambda x: x[None], example)
        return jax.grad(loss_fn, has_aux=has_aux)(params, one, *args)

    grads = jax.vmap(example_grad)(chunk)
    if has_aux:
        grads = grads[0]

    def masked(g):
        g = g.astype(dtype)
        return jnp.where(mask.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0)

    grads = jax.tree_util.tree_map(masked, grads)
    total = jax.tree_util.tree_map(lambda t, g: t + jnp.sum(g, axis=0), total, grads)
    norm_sq_sum = norm_sq_sum + jnp.sum(_sq_norm_per_example(grads, dtype))
    return total, norm_sq_sum


def m_coherence(
    loss_fn: Callable[..., Any],
    params: Any,
    batch: Any,
    *,
    chunk_size: int,
    args: tuple = (),
    has_aux: bool = False,
    dtype: Any = jnp.float32,
    data_sharding: jax.sharding.Sharding | None = None,
) -> CoherenceStats:
    """m-coherence of the per-example gradients of a sample, streamed in chunks.

    .. math::

      \\alpha = \\lVert \\sum_i g_i \\rVert^2 / \\sum_i \\lVert g_i \\rVert^2,
      \\qquad g_i = \\nabla_\\theta \\ell(\\theta; x_i).

    The sample is cut into chunks of ``chunk_size`` examples. For each chunk a
    jitted step computes the per-example gradients (``jax.vmap`` of
    ``jax.grad`` over the examples, each seen as a batch of one) and adds them
    to a running parameter-shaped sum and their squared norms to a running
    scalar. The last chunk, when ``chunk_size`` does not divide ``m``, is padded
    with copies of the last example and masked out exactly, so one compilation
    serves every chunk. Memory: two parameter copies plus ``chunk_size``
    per-example gradients.

    Args:
      loss_fn: ``loss_fn(params, batch, *args) -> loss`` (or ``(loss, aux)`` with
        ``has_aux``), the mean loss over the batch it is given -- the same
        convention as :func:`cgh_jax.optim.grouped_grads`. Use the model in
        evaluation mode (no dropout; BatchNorm with its running statistics).
        It must be hashable (a plain function): jit caches on it, so reusing
        the same function across calls (e.g. once per epoch) compiles once.
      params: the parameters to differentiate.
      batch: pytree of host arrays with a leading axis of size ``m`` (e.g.
        ``{'image': [m, H, W, C], 'label': [m]}``).
      chunk_size: examples per chunk (clipped to ``m``).
      args: extra arguments passed to ``loss_fn`` after the batch (not
        differentiated), e.g. BatchNorm statistics.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux is dropped.
      dtype: accumulation dtype (float32 by default, also for bf16 params).
      data_sharding: optional sharding for each chunk (e.g.
        ``NamedSharding(mesh, P('data'))``) to spread the per-example gradients
        over devices; ``chunk_size`` must then divide evenly over them.

    Returns:
      A :class:`CoherenceStats` (``alpha`` is NaN if every gradient is zero).

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> def loss_fn(w, batch):
      ...   return jnp.mean((batch['x'] @ w - batch['y']) ** 2)
      >>> batch = {'x': np.ones((5, 2), np.float32), 'y': np.zeros(5, np.float32)}
      >>> round(float(m_coherence(loss_fn, jnp.ones(2), batch, chunk_size=2).alpha), 4)
      5.0

    References:
      Chatterjee & Zielinski, 2020. https://arxiv.org/abs/2008.01217
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
    if not isinstance(args, tuple):
        raise ValueError(f"args must be a tuple of extra loss_fn arguments, got {type(args)}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    m = _leading_size(batch, "batch")
    host = jax.tree_util.tree_map(np.asarray, batch)
    chunk_size = min(int(chunk_size), m)
    if data_sharding is not None:
        num_devices = len(data_sharding.device_set)
        if chunk_size % num_devices:
            raise ValueError(
                f"chunk_size={chunk_size} does not split evenly over the {num_devices} devices "
                f"of data_sharding; use a multiple of {num_devices}."
            )

    total = jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), dtype), params)
    carry = (total, jnp.zeros((), dtype))
    for start in range(0, m, chunk_size):
        positions = np.arange(start, start + chunk_size)
        index = np.minimum(positions, m - 1)
        chunk = jax.tree_util.tree_map(lambda x, i=index: x[i], host)
        mask = positions < m
        if data_sharding is not None:
            chunk, mask = jax.device_put((chunk, mask), data_sharding)
        carry = _chunk_update(carry, params, chunk, mask, args, loss_fn=loss_fn, has_aux=has_aux)
    total, norm_sq_sum = carry
    return _stats(total, norm_sq_sum, m)


class CoherenceHook(Hook):
    """Measures the m-coherence and the accuracy of a fixed sample at chosen steps of a run.

    A :class:`cgh_jax.hooks.Hook` for ``train_and_evaluate(config, workdir, hooks=[...])``:
    step 0 is measured at the first evaluation (before any update), step ``s`` right after
    update ``s``, and, with ``last``, the run's last step too. The loss is the mean
    cross-entropy in evaluation mode (BatchNorm with its running statistics) against the
    sample's ``label``. Each measurement appends to :attr:`points` a dict with ``step``,
    ``epoch``, ``alpha``, ``m``, ``mean_grad_norm_sq``, ``accuracy`` (against ``label``) and,
    when the sample has ``true_label``, ``true_accuracy``.

    Args:
      sample: host arrays ``{'image': [m, ...], 'label': [m], 'true_label': [m]
        (optional)}``.
      steps: the steps to measure at (those beyond the run are skipped).
      chunk_size: examples per chunk of :func:`m_coherence`.
      last: also measure at the run's last step.
    """

    def __init__(self, sample: dict[str, Any], steps, chunk_size: int, *, last: bool = True):
        self.sample = {k: np.asarray(v) for k, v in sample.items()}
        self.steps = {int(s) for s in steps}
        self.chunk_size = chunk_size
        self.last = last
        self.points: list[dict[str, Any]] = []
        self._fns = None
        self._wanted: set[int] = set()
        self._model, self._steps_per_epoch = None, 1

    def start(self, run) -> None:
        total = run.experiment.total_steps
        self._wanted = {s for s in self.steps if s <= total} | ({total} if self.last else set())
        self._model, self._steps_per_epoch = run.model, run.experiment.steps_per_epoch

    def on_eval(self, record: dict[str, Any], state) -> None:
        if int(record["step"]) == 0 and 0 in self._wanted:
            self.measure(state, 0)

    def on_step(self, step: int, state) -> None:
        if step in self._wanted:
            self.measure(state, step)

    def _functions(self, model):
        if self._fns is None:

            def variables(params, batch_stats):
                return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}

            def loss_fn(params, batch, batch_stats):
                logits = model.apply(variables(params, batch_stats), batch["image"], train=False)
                return jnp.mean(cross_entropy(logits, batch["label"]))

            @jax.jit
            def accuracy(params, batch_stats, images, labels):
                logits = model.apply(variables(params, batch_stats), images, train=False)
                return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

            self._fns = loss_fn, accuracy
        return self._fns

    def measure(self, state, step: int) -> dict[str, Any]:
        """Measures the sample at ``state`` (the run's state after ``step`` updates) and
        appends the point."""
        if any(p["step"] == step for p in self.points):
            return next(p for p in self.points if p["step"] == step)
        loss_fn, accuracy = self._functions(self._model)
        params, stats = state.params, state.batch_stats
        batch = {"image": self.sample["image"], "label": self.sample["label"]}
        got = m_coherence(loss_fn, params, batch, chunk_size=self.chunk_size, args=(stats,))
        m = int(got.num_examples)
        point = {
            "step": step,
            "epoch": step / self._steps_per_epoch,
            "alpha": float(got.alpha),
            "m": m,
            "mean_grad_norm_sq": float(got.norm_sq_sum) / m,
            "accuracy": float(accuracy(params, stats, batch["image"], batch["label"])),
        }
        if "true_label" in self.sample:
            true = self.sample["true_label"]
            point["true_accuracy"] = float(accuracy(params, stats, batch["image"], true))
        logging.info(
            "m-coherence at step %d: %.3f (accuracy %.3f).", step, point["alpha"], point["accuracy"]
        )
        self.points.append(point)
        return point


def curve_facts(curves: dict[str, list[dict]]):
    """The curves, their points paired by step (all, up to step 100), the real peak, its fall."""
    real, rand = curves["real labels"], curves["random labels"]
    by_step = {p["step"]: p for p in rand}
    pairs = [(p, by_step[p["step"]]) for p in real if p["step"] in by_step]
    peak = max(real, key=lambda p: p["alpha"])
    early = [(a, b) for a, b in pairs if a["step"] <= 100]
    return real, rand, pairs, early, peak, real[-1]["alpha"] < peak["alpha"] / 2


def verdict(curves: dict[str, list[dict]], m: int) -> list[str]:
    real, rand, pairs, early, peak, falls = curve_facts(curves)
    higher = [a["alpha"] > b["alpha"] for a, b in pairs]
    lower = ", ".join(str(a["step"]) for (a, b), h in zip(pairs, higher, strict=True) if not h)
    lines = [
        f"- **Real labels are more coherent at every measured step** ({len(pairs)} points): "
        "the prediction holds."
        if all(higher)
        else f"- Real labels are more coherent at {sum(higher)} of {len(pairs)} measured steps; "
        f"not at steps {lower}."
    ]
    if early:
        ratio = max(a["alpha"] / b["alpha"] for a, b in early if b["alpha"] > 0)
        lines.append(
            f"- Early in training (steps ≤ 100) the real-label coherence is up to "
            f"{ratio:.1f}x the random-label coherence."
        )
    last = real[-1]
    lines.append(
        f"- Real labels: α peaks at {peak['alpha']:.1f} (step {peak['step']}) and ends at "
        f"{last['alpha']:.1f} (step {last['step']}, sample accuracy "
        f"{100 * last['accuracy']:.1f}%): "
        + (
            "coherence falls as the examples are fitted."
            if falls
            else "coherence does not fall by half within the run."
        )
    )
    lo, hi = min(p["alpha"] for p in rand), max(rand, key=lambda p: p["alpha"])
    early_rand = [p["alpha"] for p in rand if p["step"] <= 100]
    if early_rand and hi["alpha"] > 1.5 * max(early_rand):
        tail = (
            f"; it rises from at most {max(early_rand):.2f} in the first 100 steps to "
            f"{hi['alpha']:.2f} at step {hi['step']} while the network memorizes the random "
            f"labels (sample accuracy {100 * hi['accuracy']:.1f}% there): the coherence that "
            "memorization creates where the labels share none, as in the title of Chatterjee "
            "& Zielinski (2020), *Making Coherence Out of Nothing At All*."
        )
    else:
        tail = (
            f"; sample accuracy on the random labels at the end: {100 * rand[-1]['accuracy']:.1f}%."
        )
    lines.append(
        f"- Random labels: α stays between {lo:.2f} and {hi['alpha']:.2f} (for reference, "
        f"α = 1 for orthogonal gradients and {m:,} for identical ones){tail}"
    )
    return lines
