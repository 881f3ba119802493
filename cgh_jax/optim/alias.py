"""Ready-made optimizers: M3, RM3, RA3 and winsorized SGD.

Each is ``optax.chain(add_decayed_weights, <aggregator>, sgd)``, built the way
``optax.contrib.dpsgd`` is. Coupled L2 weight decay is added to the gradients *before* the
median/clipping (as in the authors' trainer); for M3 and winsorized SGD the params are
broadcast over the leading group/example axis.

Hyperparameters are checked at construction: a negative, NaN or infinite learning rate,
weight decay or momentum outside [0, 1) raises ``ValueError``; a learning-rate schedule is
evaluated once at step 0 and checked the same way (later steps are not).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cgh_jax.optim.median import median_of_means_any_count
from cgh_jax.optim.norm_match import mean_at_median_norm, median_at_mean_norm
from cgh_jax.optim.running import ra3, rm3
from cgh_jax.optim.winsorize import winsorize


def _is_python_zero(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0


def _concrete_scalar(value: Any) -> float | None:
    """The value of a concrete real scalar (Python, numpy or JAX), else None (traced, arrays)."""
    if isinstance(value, bool) or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray | jax.Array) and value.shape == ():
        if np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer):
            return float(value)
    return None


def _check_learning_rate(learning_rate: Any) -> None:
    """A negative, NaN or infinite learning rate is refused; a schedule is read at step 0.

    A callable schedule is evaluated once, at step 0 with an int32 count (as optax's ``sgd``
    calls it in the first ``update``): cheap for optax's schedules, and the only value
    known before training. Later steps are not checked. Traced values (under
    ``optax.inject_hyperparams`` inside ``jit``) are not checked.
    """
    if callable(learning_rate):
        value = _concrete_scalar(learning_rate(jnp.zeros((), jnp.int32)))
        where = "the learning_rate schedule at step 0"
    else:
        value = _concrete_scalar(learning_rate)
        where = "learning_rate"
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{where} is {value}; it must be a finite number >= 0 (e.g. 0.1).")


def _check_hyperparams(learning_rate: Any, weight_decay: Any, momentum: Any) -> None:
    """Checks concrete values (and a schedule at step 0); traced values pass through."""
    _check_learning_rate(learning_rate)
    decay = _concrete_scalar(weight_decay)
    if decay is not None and not (math.isfinite(decay) and decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}.")
    mom = _concrete_scalar(momentum)
    if mom is not None and not 0 <= mom < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}.")


def _chain(
    aggregator: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: Any,
    momentum: Any,
    nesterov: bool,
) -> optax.GradientTransformation:
    _check_hyperparams(learning_rate, weight_decay, momentum)
    parts = []
    if not _is_python_zero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(aggregator)
    parts.append(
        optax.sgd(
            learning_rate,
            momentum=None if _is_python_zero(momentum) else momentum,
            nesterov=nesterov,
        )
    )
    return optax.chain(*parts)


def m3_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_groups: int = 3,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""SGD on the coordinate-wise median of group-mean gradients (M3).

    .. math::
      \theta_{t+1} = \theta_t - \eta_t\,
        \operatorname{median}_{j<k}\big(g^{(j)}_t + \lambda\theta_t\big)

    where :math:`g^{(j)}_t` is the mean gradient of group :math:`j` of the mini-batch.

    Args:
      learning_rate: a float or an optax schedule (``step -> learning rate``), applied
        after the aggregation; finite and >= 0 (a schedule is checked at step 0).
      num_groups: odd number of groups ``k`` (3 for M3).
      weight_decay: coupled L2 coefficient :math:`\lambda`: :math:`\lambda\theta` is
        added to the gradients before the aggregation. 0 (the paper's setting) omits it.
      momentum: heavy-ball momentum applied after the aggregation. Default 0, as in the
        papers; the authors report that momentum makes M3/RM3 unstable, so a nonzero value
        is an experiment outside the papers.
      nesterov: use Nesterov momentum (only with ``momentum > 0``).

    Returns:
      An :class:`optax.GradientTransformation` taking updates of shape
      ``[num_groups, *param.shape]`` (from :func:`cgh_jax.grouped_grads`).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import cgh_jax
      >>> params = {"w": jnp.zeros(3)}
      >>> loss = lambda p, batch: jnp.mean((batch @ p["w"] - 1.0) ** 2)
      >>> grad_fn = cgh_jax.grouped_grads(loss, 3)
      >>> opt = cgh_jax.m3_sgd(0.1)
      >>> state = opt.init(params)
      >>> grads = grad_fn(params, jnp.ones((9, 3))).grads  # leaves [3, 3]
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> params["w"]
      Array([0.2, 0.2, 0.2], dtype=float32)

      The learning rate can be injected (``optax.inject_hyperparams(cgh_jax.m3_sgd)(0.1)``)
      and changed in the state.

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      The input updates need the leading group axis; do not wrap in
      :class:`optax.MultiSteps` (it would accumulate before the median). Under
      ``optax.inject_hyperparams`` the group count is read from the updates' group axis.
    """
    return _chain(
        median_of_means_any_count(num_groups), learning_rate, weight_decay, momentum, nesterov
    )


def rm3_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""SGD on the running median of the last three gradients (RM3).

    .. math::
      \theta_{t+1} = \theta_t - \eta_t\,
        \operatorname{median}\big(\tilde g_t, \tilde g_{t-1}, \tilde g_{t-2}\big),
      \qquad \tilde g_s = g_s + \lambda\theta_s,

    with no update on the first two steps (see :func:`cgh_jax.rm3`). Memory: three extra
    copies of the parameters.

    Args:
      learning_rate: a float or an optax schedule (``step -> learning rate``), applied
        after the aggregation; finite and >= 0 (a schedule is checked at step 0).
      weight_decay: coupled L2 coefficient :math:`\lambda`: :math:`\lambda\theta` is
        added to the gradients before the aggregation. 0 (the paper's setting) omits it.
      momentum: heavy-ball momentum applied after the aggregation. Default 0, as in the
        papers; the authors report that momentum makes M3/RM3 unstable, so a nonzero value
        is an experiment outside the papers.
      nesterov: use Nesterov momentum (only with ``momentum > 0``).

    Returns:
      An :class:`optax.GradientTransformation` taking ordinary (param-shaped) gradients.

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.rm3_sgd(0.1)
      >>> params = jnp.ones(2)
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jnp.ones(2), state, params)
      >>> updates  # the first two steps make no update
      Array([-0., -0.], dtype=float32)

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      Do not wrap in :class:`optax.MultiSteps` (it would accumulate gradients before they
      enter the buffer).
    """
    return _chain(rm3(), learning_rate, weight_decay, momentum, nesterov)


def ra3_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""SGD on the running mean of the last three gradients (RA3, the control for RM3).

    .. math::
      \theta_{t+1} = \theta_t - \frac{\eta_t}{3}\big(\tilde g_t + \tilde g_{t-1} +
        \tilde g_{t-2}\big), \qquad \tilde g_s = g_s + \lambda\theta_s,

    with no update on the first two steps (see :func:`cgh_jax.ra3`).

    Args:
      learning_rate: a float or an optax schedule (``step -> learning rate``), applied
        after the aggregation; finite and >= 0 (a schedule is checked at step 0).
      weight_decay: coupled L2 coefficient :math:`\lambda`: :math:`\lambda\theta` is
        added to the gradients before the aggregation. 0 (the paper's setting) omits it.
      momentum: heavy-ball momentum applied after the aggregation. Default 0, as in the
        papers; the authors report that momentum makes M3/RM3 unstable, so a nonzero value
        is an experiment outside the papers.
      nesterov: use Nesterov momentum (only with ``momentum > 0``).

    Returns:
      An :class:`optax.GradientTransformation` taking ordinary (param-shaped) gradients.

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.ra3_sgd(1.0)
      >>> params = jnp.zeros(1)
      >>> state = opt.init(params)
      >>> for g in (3., 6., 9.):
      ...   updates, state = opt.update(jnp.array([g]), state, params)
      >>> updates
      Array([-6.], dtype=float32)

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      Do not wrap in :class:`optax.MultiSteps`.
    """
    return _chain(ra3(), learning_rate, weight_decay, momentum, nesterov)


def winsorized_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_clipped: int,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Winsorized SGD: SGD on the coordinate-wise winsorized mean of per-example gradients.

    .. math::
      \theta_{t+1} = \theta_t - \frac{\eta_t}{n}\sum_{e<n}
        \operatorname{clip}\big(\tilde g_e,\ \tilde g_{(c)},\ \tilde g_{(n-1-c)}\big),
      \qquad \tilde g_e = g_e + \lambda\theta_t,

    per coordinate, with :math:`\tilde g_{(c)}` the :math:`c`-th smallest value over the
    :math:`n` examples (see :func:`cgh_jax.winsorize`).

    Args:
      learning_rate: a float or an optax schedule (``step -> learning rate``), applied
        after the aggregation; finite and >= 0 (a schedule is checked at step 0).
      num_clipped: ``c``, the number of values clipped at each end (``2 c < n``).
      weight_decay: coupled L2 coefficient :math:`\lambda`: :math:`\lambda\theta` is
        added to the gradients before the aggregation. 0 (the paper's setting) omits it.
      momentum: heavy-ball momentum applied after the aggregation. Default 0, as in the
        papers; the authors report that momentum makes M3/RM3 unstable, so a nonzero value
        is an experiment outside the papers.
      nesterov: use Nesterov momentum (only with ``momentum > 0``).

    Returns:
      An :class:`optax.GradientTransformation` taking per-example gradients of shape
      ``[n, *param.shape]`` (from :func:`cgh_jax.per_example_grads`).

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.winsorized_sgd(1.0, num_clipped=1)
      >>> params = jnp.zeros(1)
      >>> per_example = jnp.array([[0.], [1.], [2.], [3.], [100.]])
      >>> updates, _ = opt.update(per_example, opt.init(params), params)
      >>> updates
      Array([-2.], dtype=float32)

    References:
      Chatterjee, `Coherent Gradients: An Approach to Understanding Generalization in
      Gradient Descent-based Optimization <https://arxiv.org/abs/2002.10657>`_, ICLR 2020.

    .. warning::
      The input updates need the leading per-example axis; do not wrap in
      :class:`optax.MultiSteps`.
    """
    return _chain(winsorize(num_clipped), learning_rate, weight_decay, momentum, nesterov)


def mean_at_median_norm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_groups: int,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""SGD on the mean gradient rescaled, per tensor, to the norm of the median of
    ``num_groups`` group means (:func:`cgh_jax.optim.norm_match.mean_at_median_norm`): the
    norm-matched SGD control of M3 with ``num_groups`` groups. Arguments as
    :func:`m3_sgd`; the input has the leading group axis.
    """
    agg = mean_at_median_norm(num_groups)
    return _chain(agg, learning_rate, weight_decay, momentum, nesterov)


def median_at_mean_norm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_groups: int,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""SGD on the median of ``num_groups`` group means rescaled, per tensor, to the norm of
    their mean (:func:`cgh_jax.optim.norm_match.median_at_mean_norm`): the median's
    direction at SGD's step length. Arguments as :func:`m3_sgd`; the input has the leading
    group axis.
    """
    agg = median_at_mean_norm(num_groups)
    return _chain(agg, learning_rate, weight_decay, momentum, nesterov)


__all__ = [
    "m3_sgd",
    "mean_at_median_norm_sgd",
    "median_at_mean_norm_sgd",
    "ra3_sgd",
    "rm3_sgd",
    "winsorized_sgd",
]
