"""mean_at_median_norm / median_at_mean_norm against a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cgh_jax
from cgh_jax.optim import mean_at_median_norm, median_at_mean_norm

SHAPES = {"vec": (5,), "mat": (3, 4), "t3": (2, 3, 4)}


def _grouped(k, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {n: jnp.asarray(rng.standard_normal((k, *s)), dtype) for n, s in SHAPES.items()}


def _params(grouped):
    return jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), grouped)


def _np_parts(g):
    g = np.asarray(g, np.float64)
    mean, median = g.mean(axis=0), np.sort(g, axis=0)[g.shape[0] // 2]
    return mean, median


def _apply(tx, grouped):
    params = _params(grouped)
    return jax.jit(tx.update)(grouped, tx.init(params), params)[0]


@pytest.mark.parametrize("k", [1, 3, 5, 9, 15])
def test_mean_at_median_norm_matches_numpy(k):
    grouped = _grouped(k, seed=k)
    out = _apply(mean_at_median_norm(k), grouped)
    for name, g in grouped.items():
        mean, median = _np_parts(g)
        want = mean * np.linalg.norm(median) / np.linalg.norm(mean)
        np.testing.assert_allclose(np.asarray(out[name]), want, rtol=1e-5, atol=1e-7)
        # The norm is the median's, to 1e-6 relative; the direction is the mean's.
        norm = np.linalg.norm(np.asarray(out[name], np.float64))
        assert abs(norm / np.linalg.norm(median) - 1) < 1e-6
        cos = np.dot(np.ravel(out[name]), np.ravel(mean)) / norm / np.linalg.norm(mean)
        assert abs(cos - 1) < 1e-6


@pytest.mark.parametrize("k", [1, 3, 5, 9, 15])
def test_median_at_mean_norm_matches_numpy(k):
    grouped = _grouped(k, seed=100 + k)
    out = _apply(median_at_mean_norm(k), grouped)
    for name, g in grouped.items():
        mean, median = _np_parts(g)
        want = median * np.linalg.norm(mean) / np.linalg.norm(median)
        np.testing.assert_allclose(np.asarray(out[name]), want, rtol=1e-5, atol=1e-7)
        norm = np.linalg.norm(np.asarray(out[name], np.float64))
        assert abs(norm / np.linalg.norm(mean) - 1) < 1e-6


def test_hand_computed_case():
    # Group means (3, 0), (0, 4), (3, 4): median (3, 4) of norm 5, mean (2, 8/3) of norm 10/3.
    grouped = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])}
    np.testing.assert_allclose(_apply(mean_at_median_norm(3), grouped)["w"], [3.0, 4.0], 1e-6)
    np.testing.assert_allclose(
        _apply(median_at_mean_norm(3), grouped)["w"], [2.0, 8.0 / 3.0], rtol=1e-6
    )


def test_norms_are_per_tensor():
    # One leaf's scale must not leak into another's.
    grouped = {"a": jnp.array([[1.0], [2.0], [30.0]]), "b": jnp.array([[-1.0], [1.0], [3.0]])}
    out = _apply(mean_at_median_norm(3), grouped)
    np.testing.assert_allclose(out["a"], [2.0], rtol=1e-6)  # mean 11, at the median's norm 2
    np.testing.assert_allclose(out["b"], [1.0], rtol=1e-6)  # mean 1, median 1


def test_zero_divisor_gives_zeros():
    # Mean exactly zero: no direction to rescale.
    grouped = {"w": jnp.array([[1.0, -2.0], [-1.0, 2.0], [0.0, 0.0]])}
    np.testing.assert_array_equal(_apply(mean_at_median_norm(3), grouped)["w"], [0.0, 0.0])
    # Median exactly zero (a majority of zeros), mean not.
    grouped = {"w": jnp.array([[0.0, 0.0], [0.0, 0.0], [6.0, 3.0]])}
    np.testing.assert_array_equal(_apply(median_at_mean_norm(3), grouped)["w"], [0.0, 0.0])
    np.testing.assert_array_equal(_apply(mean_at_median_norm(3), grouped)["w"], [0.0, 0.0])


def test_with_sgd_is_rescaled_sgd_on_the_batch_mean():
    # Equal groups: the mean of the group means is the batch gradient.
    params = {"w": jnp.array([0.5, -1.0, 2.0])}
    batch = jnp.asarray(np.random.default_rng(0).standard_normal((9, 3)), jnp.float32)
    loss = lambda p, x: jnp.mean((x @ p["w"] - 1.0) ** 2)  # noqa: E731
    grouped = cgh_jax.grouped_grads(loss, 3)(params, batch).grads
    tx = cgh_jax.optim.mean_at_median_norm_sgd(0.1, num_groups=3)
    updates, _ = tx.update(grouped, tx.init(params), params)
    full = jax.grad(loss)(params, batch)["w"]
    median = cgh_jax.optim.coordinate_median(grouped["w"])
    want = -0.1 * full * jnp.linalg.norm(median) / jnp.linalg.norm(full)
    np.testing.assert_allclose(updates["w"], want, rtol=1e-5)


@pytest.mark.parametrize("make", [mean_at_median_norm, median_at_mean_norm])
def test_dtype_jit_no_recompile_and_abstract_init(make):
    tx = make(5)
    for dtype in (jnp.float32, jnp.bfloat16):
        grouped = _grouped(5, dtype)
        out = _apply(tx, grouped)
        assert all(out[n].dtype == dtype and out[n].shape == s for n, s in SHAPES.items())
    update = jax.jit(tx.update)
    grouped = _grouped(5)
    params = _params(grouped)
    update(grouped, tx.init(params), params)
    misses = update._cache_size()
    update(_grouped(5, seed=1), tx.init(params), params)
    assert update._cache_size() == misses
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert jax.eval_shape(tx.init, abstract) == optax.EmptyState()


@pytest.mark.parametrize("make", [mean_at_median_norm, median_at_mean_norm])
def test_refuses_bad_input(make):
    with pytest.raises(ValueError, match="odd"):
        make(4)
    tx = make(3)
    params = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match="leading group"):
        tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": jnp.zeros((3, 3))}, tx.init(params))
