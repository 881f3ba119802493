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


# --- The kernel: coordinate_median for any odd k (pruned selection networks) ---------------

from cgh_jax.optim.median import _MAX_NETWORK_SIZE, median_selection_network  # noqa: E402

KERNEL_KS = [1, 3, 5, 7, 9, 11, 15, 21, 31]
# (comparators, elementwise min/max operations) claimed in median_selection_network's docstring.
NETWORK_SIZES = {
    1: (0, 0),
    3: (3, 4),
    5: (8, 12),
    7: (14, 22),
    9: (21, 34),
    11: (28, 46),
    15: (47, 80),
    21: (79, 138),
    31: (140, 250),
}


def _np_network_select(network, x):
    """Runs a selection network on the rows of a numpy array (independent of jax)."""
    rows = list(x)
    for c in network:
        lo, hi = np.minimum(rows[c.lo], rows[c.hi]), np.maximum(rows[c.lo], rows[c.hi])
        rows[c.lo], rows[c.hi] = lo, hi
    return rows[len(rows) // 2]


def _tied_values(rng, k, n, dtype):
    """Columns with many ties, +-inf, the largest and subnormal values, in ``dtype``."""
    big, tiny = float(jnp.finfo(dtype).max), float(jnp.finfo(dtype).smallest_subnormal)
    pool = np.array([-np.inf, -big, -2.5, -1.0, -tiny, 0.0, tiny, 0.5, 1.0, big, np.inf])
    x = np.where(
        rng.random((k, n)) < 0.5,
        rng.choice(pool, size=(k, n)),
        rng.standard_normal((k, n)),
    )
    x[:, 0] = 1.0  # a column of identical values
    x[:, 1] = np.inf
    x[:, 2] = -np.inf
    return jnp.asarray(x.astype(np.float32), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("k", KERNEL_KS)
def test_coordinate_median_equals_np_median(k, dtype):
    x = _tied_values(np.random.default_rng(100 + k), k, 513, dtype)
    out = jax.jit(coordinate_median)(x)
    assert out.dtype == dtype and out.shape == (513,)
    uint = np.uint16 if x.dtype.itemsize == 2 else np.uint32
    # Every value (subnormals included) is exactly representable in float32, so np.median
    # (the middle element for odd k) is the exact reference; equality is exact.
    ref = np.median(np.asarray(x).astype(np.float32), axis=0)
    np.testing.assert_array_equal(np.asarray(out).astype(np.float32), ref)
    # An order statistic: bit for bit one of the column's inputs.
    bits, out_bits = np.asarray(x).view(uint), np.asarray(out).view(uint)
    assert (bits == out_bits[None]).any(axis=0).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("k", [3, 9, 31])
def test_coordinate_median_subnormals_exact(k, dtype):
    """Subnormals are ordinary values (XLA's CPU float comparisons would flush them)."""
    tiny = float(jnp.finfo(dtype).smallest_subnormal)
    rng = np.random.default_rng(k)
    x = rng.choice(np.array([-3 * tiny, -tiny, -0.0, 0.0, tiny, 2 * tiny, 5 * tiny]), (k, 300))
    x = jnp.asarray(x.astype(np.float32), dtype)
    out = jax.jit(coordinate_median)(x)
    ref = np.median(np.asarray(x).astype(np.float32), axis=0)
    np.testing.assert_array_equal(np.asarray(out).astype(np.float32), ref)
    assert (np.asarray(out).astype(np.float32) != 0).any()


@pytest.mark.parametrize("k", KERNEL_KS)
def test_coordinate_median_float64(k):
    with jax.enable_x64(True):
        x = np.random.default_rng(k).standard_normal((k, 64))
        x[:, :8] = np.round(x[:, :8])  # ties
        out = jax.jit(coordinate_median)(jnp.asarray(x))
        assert out.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(out), np.median(x, axis=0))


@pytest.mark.parametrize("k", KERNEL_KS[1:])
def test_coordinate_median_nan_anywhere_gives_nan(k):
    x = np.random.default_rng(k).standard_normal((k, k + 3)).astype(np.float32)
    for row in range(k):  # column j < k has its NaN in row j
        x[row, row] = np.nan
    x[:, k] = np.inf
    x[0, k] = np.nan  # NaN among infinities
    x[:, k + 1] = np.nan  # all NaN; column k + 2 has none
    for dtype in (jnp.float32, jnp.bfloat16):
        out = np.asarray(jax.jit(coordinate_median)(jnp.asarray(x, dtype)).astype(jnp.float32))
        assert np.isnan(out[: k + 2]).all()
        assert out[k + 2] == np.median(np.asarray(jnp.asarray(x[:, k + 2], dtype), np.float32))


@pytest.mark.parametrize("k", KERNEL_KS[1:])
def test_coordinate_median_signed_zeros(k):
    """The kernel orders -0.0 below +0.0 (integer keys), on every backend."""
    rng = np.random.default_rng(k)
    x = np.where(rng.random((k, 400)) < 0.5, np.float32(-0.0), np.float32(0.0))
    x[:, :200] = np.where(rng.random((k, 200)) < 0.2, rng.standard_normal((k, 200)), x[:, :200])
    x = x.astype(np.float32)
    out = np.asarray(jax.jit(coordinate_median)(jnp.asarray(x)))
    np.testing.assert_array_equal(out, np.median(x, axis=0))  # == treats -0.0 as +0.0
    # Reference under the total order -0.0 < +0.0: sort by value, then sign (+0 last).
    order = np.lexsort((~np.signbit(x), x), axis=0)
    ref = np.take_along_axis(x, order, axis=0)[k // 2]
    np.testing.assert_array_equal(np.signbit(out), np.signbit(ref))


@pytest.mark.parametrize("k", KERNEL_KS)
def test_selection_network_sizes_as_claimed(k):
    net = median_selection_network(k)
    comparators, ops = NETWORK_SIZES[k]
    assert len(net) == comparators
    assert sum(c.keep_min + c.keep_max for c in net) == ops
    assert all(0 <= c.lo < c.hi < k and (c.keep_min or c.keep_max) for c in net)
    # The traced kernel does exactly those comparisons (on integer keys for floats).
    jaxpr = jax.make_jaxpr(coordinate_median)(jnp.zeros((k, 5), jnp.float32))
    prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert prims.count("min") + prims.count("max") == ops
    assert not {"sort", "gather", "add", "sub", "mul", "div"} & set(prims)


@pytest.mark.parametrize("k", [3, 5, 7, 9, 11, 13, 15, 17, 19, 21])
def test_selection_network_zero_one_principle_exhaustive(k):
    """A comparator network selects the median of every input iff of every 0-1 input."""
    inputs = ((np.arange(2**k)[None, :] >> np.arange(k)[:, None]) & 1).astype(np.int8)
    out = _np_network_select(median_selection_network(k), inputs)
    np.testing.assert_array_equal(out, (inputs.sum(axis=0) > k // 2).astype(np.int8))


@pytest.mark.parametrize("k", [23, 25, 27, 29, 31, 33, 63, 127])
def test_selection_network_on_random_permutations(k):
    rng = np.random.default_rng(k)
    perms = np.argsort(rng.random((k, 20000)), axis=0)  # each column a permutation of 0..k-1
    out = _np_network_select(median_selection_network(k), perms)
    assert (out == k // 2).all()
    ties = rng.integers(0, 3, (k, 20000))
    np.testing.assert_array_equal(
        _np_network_select(median_selection_network(k), ties), np.median(ties, axis=0)
    )


def test_k1_is_identity_and_large_k_falls_back_to_sort():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 7)), jnp.bfloat16)
    out = jax.jit(coordinate_median)(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out).view(np.uint16), np.asarray(x[0]).view(np.uint16))
    k = _MAX_NETWORK_SIZE + 2
    y = np.random.default_rng(1).standard_normal((k, 6)).astype(np.float32)
    y[5, 2] = np.nan
    out = np.asarray(jax.jit(coordinate_median)(jnp.asarray(y)))
    np.testing.assert_array_equal(out, np.median(y, axis=0))
    assert np.isnan(out[2])
