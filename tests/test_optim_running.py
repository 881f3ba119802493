"""rm3 / ra3 (ring buffer of three gradients) against a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cgh_jax
from cgh_jax.optim import RunningBufferState

SHAPES = {"scalar": (), "vec": (7,), "mat": (3, 5)}
NUM_STEPS = 10


def _grad_sequence(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {n: jnp.asarray(rng.standard_normal(s), dtype) for n, s in SHAPES.items()}
        for _ in range(NUM_STEPS)
    ]


def _reference(grads, reduce):
    """Outputs and final buffer of the authors' ring buffer, in numpy (float64 values)."""
    buffer, outputs = None, []
    for t, g in enumerate(grads):
        g = {n: np.asarray(v.astype(jnp.float32), np.float64) for n, v in g.items()}
        if t == 0:
            buffer = {n: np.stack([v] * 3) for n, v in g.items()}
        else:
            for n, v in g.items():
                buffer[n][t % 3] = v
        if t < 2:
            outputs.append({n: np.zeros_like(v) for n, v in g.items()})
        else:
            outputs.append({n: reduce(b) for n, b in buffer.items()})
    return outputs, buffer


def _np_median3(b):
    return np.sort(b, axis=0)[1]


def _np_mean3(b):
    return b.mean(axis=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ["rm3", "ra3"])
def test_matches_numpy_over_ten_steps(name, dtype):
    transform = {"rm3": cgh_jax.rm3, "ra3": cgh_jax.ra3}[name]()
    reduce = {"rm3": _np_median3, "ra3": _np_mean3}[name]
    grads = _grad_sequence(dtype)
    params = jax.tree.map(jnp.zeros_like, grads[0])
    expected, expected_buffer = _reference(grads, reduce)
    state = transform.init(params)
    update = jax.jit(transform.update)
    for t, g in enumerate(grads):
        out, state = update(g, state, params)
        assert int(state.count) == t + 1
        for n in SHAPES:
            assert out[n].dtype == dtype and out[n].shape == SHAPES[n]
            got = np.asarray(out[n].astype(jnp.float32))
            if t < 2:
                np.testing.assert_array_equal(got, 0.0)
            elif name == "rm3":  # an order statistic: exact
                np.testing.assert_array_equal(got, expected[t][n])
            else:  # mean rounded once to the gradient dtype
                tol = 1e-6 if dtype == jnp.float32 else 8e-3
                np.testing.assert_allclose(got, expected[t][n], rtol=tol, atol=tol)
    for n in SHAPES:
        np.testing.assert_array_equal(
            np.asarray(state.buffer[n].astype(jnp.float32)), expected_buffer[n]
        )


def test_first_gradient_fills_all_slots_then_rotates():
    opt = cgh_jax.rm3()
    params = jnp.zeros(2)
    state = opt.init(params)
    assert isinstance(state, RunningBufferState) and state.buffer.shape == (3, 2)
    _, state = opt.update(jnp.array([1.0, 1.0]), state, params)
    np.testing.assert_array_equal(state.buffer, [[1, 1]] * 3)
    _, state = opt.update(jnp.array([2.0, 2.0]), state, params)
    np.testing.assert_array_equal(state.buffer, [[1, 1], [2, 2], [1, 1]])
    out, state = opt.update(jnp.array([3.0, 3.0]), state, params)
    np.testing.assert_array_equal(out, [2, 2])
    out, state = opt.update(jnp.array([10.0, -10.0]), state, params)
    np.testing.assert_array_equal(state.buffer, [[10, -10], [2, 2], [3, 3]])
    np.testing.assert_array_equal(out, [3, 2])


def test_state_dtype_follows_params_output_follows_updates():
    opt = cgh_jax.rm3()
    params = jnp.zeros(3, jnp.float32)
    state = opt.init(params)
    g = jnp.array([1.0, 2.0, 3.0], jnp.bfloat16)
    for _ in range(3):
        out, state = opt.update(g, state, params)
    assert state.buffer.dtype == jnp.float32 and out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out.astype(jnp.float32), [1, 2, 3])


@pytest.mark.parametrize("factory", [cgh_jax.rm3, cgh_jax.ra3])
def test_jit_no_recompilation_abstract_init_and_chain(factory):
    grads = _grad_sequence(jnp.float32, seed=1)
    params = jax.tree.map(jnp.zeros_like, grads[0])
    opt = optax.chain(factory(), optax.sgd(optax.exponential_decay(0.1, 5, 0.5)))
    traces = []

    @jax.jit
    def step(g, state, params):
        traces.append(1)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = jax.jit(opt.init)(params)
    for g in grads[:4]:
        params, state = step(g, state, params)
    assert len(traces) == 1 and step._cache_size() == 1
    abstract = jax.eval_shape(
        opt.init, jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    )
    assert abstract[0].buffer["mat"].shape == (3, 3, 5)
    assert abstract[0].count.dtype == jnp.int32


def test_grouped_input_is_refused():
    opt = cgh_jax.rm3()
    params = {"w": jnp.zeros((4,))}
    with pytest.raises(ValueError, match="param-shaped"):
        opt.update({"w": jnp.zeros((3, 4))}, opt.init(params), params)
