"""winsorize / winsorized_mean against a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cgh_jax
from cgh_jax.optim import winsorized_mean

SHAPES = {"scalar": (), "vec": (6,), "mat": (2, 3)}


def _np_winsorized_mean(x, c):
    """Clip each coordinate to its c-th smallest / largest value, then average (float64)."""
    x = np.asarray(x, np.float64)
    srt = np.sort(x, axis=0)
    lo, hi = srt[c], srt[x.shape[0] - 1 - c]
    return np.clip(x, lo, hi).mean(axis=0)


def _per_example(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    grads = {k: rng.standard_normal((n, *s)) * 3 for k, s in SHAPES.items()}
    grads["vec"][0] = 1e4  # an outlier example
    return jax.tree.map(lambda g: jnp.asarray(g, dtype), grads)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("num_clipped", [0, 1, 3, 9])
def test_matches_numpy(num_clipped, dtype):
    n = 20
    grads = _per_example(n, dtype, seed=num_clipped)
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), grads)
    opt = cgh_jax.winsorize(num_clipped)
    out, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    for k, g in grads.items():
        assert out[k].dtype == dtype and out[k].shape == SHAPES[k]
        expected = _np_winsorized_mean(np.asarray(g.astype(jnp.float32)), num_clipped)
        rtol = 1e-6 if dtype == jnp.float32 else 8e-3
        np.testing.assert_allclose(
            np.asarray(out[k].astype(jnp.float32)), expected, rtol=rtol, atol=rtol
        )


def test_zero_clipping_is_the_mean():
    grads = _per_example(10, jnp.float32)
    params = jax.tree.map(lambda g: g[0], grads)
    out, _ = cgh_jax.winsorize(0).update(grads, optax.EmptyState(), params)
    for k, g in grads.items():
        np.testing.assert_array_equal(out[k], jnp.mean(g, axis=0))


def test_hand_computed_case_and_outlier_suppression():
    x = jnp.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    np.testing.assert_array_equal(winsorized_mean(x, 1), [2.0])  # mean(1, 1, 2, 3, 3)
    np.testing.assert_array_equal(winsorized_mean(x, 2), [2.0])  # all clipped to the median
    np.testing.assert_allclose(winsorized_mean(x, 0), [21.2], rtol=1e-6)


def test_maximal_clipping_is_the_median():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((7, 11)), jnp.float32)
    # Every value is clipped to the median; only the mean's rounding remains.
    np.testing.assert_allclose(
        winsorized_mean(x, 3), np.median(np.asarray(x), axis=0), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("num_clipped,n", [(5, 10), (6, 10), (1, 2), (1, 1)])
def test_too_many_clipped_raises(num_clipped, n):
    opt = cgh_jax.winsorize(num_clipped)
    with pytest.raises(ValueError, match=r"0 <= 2 \* num_clipped < n"):
        params = {"w": jnp.zeros((3,))}
        opt.update({"w": jnp.zeros((n, 3))}, opt.init(params), params)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=">= 0"):
        cgh_jax.winsorize(-1)
    with pytest.raises(ValueError, match="integer"):
        cgh_jax.winsorize(1.5)
    opt = cgh_jax.winsorize(1)
    params = {"w": jnp.zeros((3,))}
    with pytest.raises(ValueError, match=r"expected an update of shape \(5, 3\)"):
        opt.update({"w": jnp.zeros((5, 4))}, opt.init(params), params)
    with pytest.raises(ValueError, match="scalar update leaf"):
        opt.update({"w": jnp.zeros(())}, opt.init(params), params)
    with pytest.raises(ValueError, match="not passing `params`"):
        opt.update({"w": jnp.zeros((5, 3))}, opt.init(params))


def test_jit_no_recompilation_and_traced_num_clipped():
    grads = _per_example(12, jnp.float32, seed=7)
    traces = []

    @jax.jit
    def aggregate(g, c):
        traces.append(1)
        return jax.tree.map(lambda x: winsorized_mean(x, c), g)

    for c in (0, 2, 4):  # a traced num_clipped: one compilation for all values
        out = aggregate(grads, c)
        for k, g in grads.items():
            np.testing.assert_allclose(out[k], _np_winsorized_mean(g, c), rtol=1e-6, atol=1e-6)
    assert len(traces) == 1
    # Out-of-range traced values are clamped to the median.
    np.testing.assert_allclose(
        aggregate(grads, 100)["vec"], np.median(np.asarray(grads["vec"]), 0), rtol=1e-6
    )
