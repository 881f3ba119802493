"""median3 / coordinate_median / median_of_means / m3 against a numpy reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cgh_jax
from cgh_jax.optim import coordinate_median, median3

SHAPES = {"scalar": (), "vec": (5,), "mat": (3, 4), "t3": (2, 3, 4)}


def _random_grouped(rng, k, dtype):
    grads = {n: rng.standard_normal((k, *s)).astype(np.float32) for n, s in SHAPES.items()}
    # Ties are frequent in bf16 and in real gradients (e.g. exact zeros): include some.
    grads["mat"][-1, 0] = grads["mat"][0, 0]
    grads["vec"][:, 0] = 0.0
    return jax.tree.map(lambda g: jnp.asarray(g, dtype), grads)


def _params_like(grouped):
    return jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), grouped)


def _np_median(g):
    g = np.asarray(g.astype(jnp.float32))
    return np.sort(g, axis=0)[g.shape[0] // 2]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("k", [1, 3, 5, 7, 11])
def test_median_of_means_matches_numpy(k, dtype):
    grouped = _random_grouped(np.random.default_rng(k), k, dtype)
    params = _params_like(grouped)
    opt = cgh_jax.median_of_means(k)
    out, _ = jax.jit(opt.update)(grouped, opt.init(params), params)
    for name, g in grouped.items():
        assert out[name].dtype == dtype
        assert out[name].shape == SHAPES[name]
        # An order statistic: bit-exact, no averaging.
        np.testing.assert_array_equal(np.asarray(out[name].astype(jnp.float32)), _np_median(g))


def test_m3_is_median_of_means_3_and_median3_network():
    grouped = _random_grouped(np.random.default_rng(0), 3, jnp.float32)
    params = _params_like(grouped)
    out, _ = cgh_jax.m3().update(grouped, cgh_jax.m3().init(params), params)
    for name, g in grouped.items():
        np.testing.assert_array_equal(out[name], median3(g[0], g[1], g[2]))
        np.testing.assert_array_equal(out[name], _np_median(g))


def test_median3_all_orderings_exhaustive():
    vals = np.array([1.0, 2.0, 3.0], np.float32)
    for perm in itertools.permutations(range(3)):
        a, b, c = (jnp.asarray(vals[i]) for i in perm)
        assert float(median3(a, b, c)) == 2.0
    # Ties.
    assert float(median3(jnp.float32(1), jnp.float32(1), jnp.float32(5))) == 1.0
    assert float(median3(jnp.float32(5), jnp.float32(1), jnp.float32(5))) == 5.0


@pytest.mark.parametrize("k", [3, 5, 11])
def test_identical_groups_give_exactly_the_group_value(k):
    g = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6)), jnp.float32)
    out = coordinate_median(jnp.stack([g] * k))
    np.testing.assert_array_equal(out, g)


@pytest.mark.parametrize("k", [3, 5])
def test_one_outlier_group_is_ignored(k):
    g = jnp.asarray(np.random.default_rng(2).standard_normal((10,)), jnp.float32)
    stacked = jnp.stack([g] * (k - 1) + [g + 1e6 * jnp.sign(g)])
    np.testing.assert_array_equal(coordinate_median(stacked), g)
    stacked = jnp.stack([jnp.full_like(g, -1e30)] + [g] * (k - 1))
    np.testing.assert_array_equal(coordinate_median(stacked), g)


@pytest.mark.parametrize("k", [3, 5, 7, 9, 11])
def test_nan_propagates(k):
    x = jnp.asarray(np.random.default_rng(k).standard_normal((k, 4)), jnp.float32)
    for row in (0, k // 2, k - 1):  # a NaN in any group reaches the output
        out = np.asarray(coordinate_median(x.at[row, 2].set(jnp.nan)))
        assert np.isnan(out[2]) and not np.isnan(out[[0, 1, 3]]).any()


def test_update_requires_params():
    # Without params a [3, 3] update of a [3] parameter and of a [3, 3] parameter (no group
    # axis) would look alike, so update refuses to run without them.
    grouped = _random_grouped(np.random.default_rng(3), 3, jnp.float32)
    opt = cgh_jax.m3()
    with pytest.raises(ValueError, match="not passing `params`"):
        opt.update(grouped, opt.init(None))
    params = {"w": jnp.zeros((3, 3))}
    with pytest.raises(ValueError, match=r"expected an update of shape \(3, 3, 3\)"):
        opt.update({"w": jnp.zeros((3, 3))}, opt.init(params), params)


def test_missing_group_axis_raises_with_expected_shape():
    params = {"w": jnp.zeros((4, 2))}
    opt = cgh_jax.m3()
    with pytest.raises(ValueError, match=r"expected an update of shape \(3, 4, 2\)"):
        opt.update({"w": jnp.zeros((4, 2))}, opt.init(params), params)
    with pytest.raises(ValueError, match=r"\(3, 4, 2\)"):
        opt.update({"w": jnp.zeros((5, 4, 2))}, opt.init(params), params)


def test_wrong_group_axis_raises():
    opt = cgh_jax.median_of_means(5)
    params = {"w": jnp.zeros((2,))}
    with pytest.raises(ValueError, match="leading group/example axis of size 5"):
        opt.update({"w": jnp.zeros((3, 2))}, opt.init(params), params)
    with pytest.raises(ValueError, match="scalar update leaf"):
        opt.update({"w": jnp.zeros(())}, opt.init(params), params)
    two = {"a": jnp.zeros((2,)), "b": jnp.zeros(())}
    with pytest.raises(ValueError, match="disagree"):
        opt.update({"a": jnp.zeros((5, 2)), "b": jnp.zeros((3,))}, opt.init(two), two)


@pytest.mark.parametrize("k", [0, -3, 2, 4])
def test_even_or_nonpositive_group_count_refused(k):
    with pytest.raises(ValueError, match="num_groups must be"):
        cgh_jax.median_of_means(k)
    with pytest.raises(ValueError, match="must be odd|positive"):
        coordinate_median(jnp.zeros((max(k, 2), 3)))


def test_non_integer_group_count_refused():
    with pytest.raises(ValueError, match="integer"):
        cgh_jax.median_of_means(3.0)
    with pytest.raises(ValueError, match="integer"):
        cgh_jax.median_of_means(True)


def test_jit_no_recompilation_and_abstract_init():
    grouped = _random_grouped(np.random.default_rng(4), 3, jnp.float32)
    params = _params_like(grouped)
    opt = cgh_jax.m3()
    traces = []

    @jax.jit
    def step(updates, state, params):
        traces.append(1)
        return opt.update(updates, state, params)

    state = jax.jit(opt.init)(params)
    step(grouped, state, params)
    grouped2 = jax.tree.map(lambda g: g + 1.0, grouped)
    step(grouped2, state, params)
    assert len(traces) == 1 and step._cache_size() == 1

    abstract = jax.eval_shape(
        opt.init, jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    )
    assert jax.tree.structure(abstract) == jax.tree.structure(state)


def test_inside_chain_with_schedule():
    grouped = _random_grouped(np.random.default_rng(5), 3, jnp.float32)
    params = _params_like(grouped)
    schedule = optax.linear_schedule(1.0, 0.5, transition_steps=4)
    opt = optax.chain(cgh_jax.m3(), optax.scale_by_learning_rate(schedule))
    state = opt.init(params)
    update = jax.jit(opt.update)
    for step in range(3):
        out, state = update(grouped, state, params)
        for name, g in grouped.items():
            np.testing.assert_allclose(out[name], -float(schedule(step)) * _np_median(g), rtol=1e-6)
