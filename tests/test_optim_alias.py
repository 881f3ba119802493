"""m3_sgd / rm3_sgd / ra3_sgd / winsorized_sgd: equivalences, weight decay, injection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cgh_jax


def _params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "dense": {"w": jnp.asarray(rng.standard_normal((4, 3)), dtype), "b": jnp.zeros(3, dtype)},
        "scale": jnp.asarray(1.5, dtype),
    }


def _grads(seed, params):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def _stack(tree, k):
    return jax.tree.map(lambda g: jnp.stack([g] * k), tree)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_m3_sgd_identical_groups_reproduce_sgd_exactly(weight_decay):
    schedule = optax.cosine_decay_schedule(0.1, decay_steps=30)
    m3 = cgh_jax.m3_sgd(schedule, weight_decay=weight_decay)
    sgd = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule))
    p_m3 = p_sgd = _params()
    s_m3, s_sgd = m3.init(p_m3), sgd.init(p_sgd)

    @jax.jit
    def step(p_m3, s_m3, p_sgd, s_sgd, g):
        u, s_m3 = m3.update(_stack(g, 3), s_m3, p_m3)
        v, s_sgd = sgd.update(g, s_sgd, p_sgd)
        return optax.apply_updates(p_m3, u), s_m3, optax.apply_updates(p_sgd, v), s_sgd

    for t in range(30):
        p_m3, s_m3, p_sgd, s_sgd = step(p_m3, s_m3, p_sgd, s_sgd, _grads(t, p_m3))
    jax.tree.map(np.testing.assert_array_equal, p_m3, p_sgd)


def test_m3_sgd_weight_decay_is_added_before_the_median():
    params = {"w": jnp.array([1.0, -2.0, 4.0])}
    grouped = {"w": jnp.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.0], [-3.0, 5.0, 1.0]])}
    lr, wd = 0.5, 0.25
    opt = cgh_jax.m3_sgd(lr, weight_decay=wd)
    updates, _ = opt.update(grouped, opt.init(params), params)
    decayed = np.asarray(grouped["w"]) + wd * np.asarray(params["w"])
    np.testing.assert_allclose(updates["w"], -lr * np.median(decayed, axis=0), rtol=1e-6)


def test_median_of_five_groups():
    params = {"w": jnp.zeros(4)}
    grouped = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((5, 4)), jnp.float32)}
    opt = cgh_jax.m3_sgd(1.0, num_groups=5)
    updates, _ = opt.update(grouped, opt.init(params), params)
    np.testing.assert_array_equal(updates["w"], -np.median(np.asarray(grouped["w"]), axis=0))
    with pytest.raises(ValueError, match=r"\(5, 4\)"):
        opt.update({"w": jnp.zeros((3, 4))}, opt.init(params), params)


@pytest.mark.parametrize("name", ["rm3", "ra3"])
def test_running_aliases_match_manual_computation(name):
    lr, wd = 0.1, 1e-2
    opt = {"rm3": cgh_jax.rm3_sgd, "ra3": cgh_jax.ra3_sgd}[name](lr, weight_decay=wd)
    reduce = {"rm3": lambda b: np.sort(b, 0)[1], "ra3": lambda b: b.mean(0)}[name]
    params = {"w": jnp.asarray(np.random.default_rng(2).standard_normal(6), jnp.float32)}
    state = opt.init(params)
    history = []
    for t in range(7):
        g = _grads(10 + t, params)
        history.append(np.asarray(g["w"], np.float64) + wd * np.asarray(params["w"], np.float64))
        updates, state = jax.jit(opt.update)(g, state, params)
        if t < 2:
            np.testing.assert_array_equal(updates["w"], 0.0)
        else:
            expected = -lr * reduce(np.stack(history[-3:]))
            np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)


def test_winsorized_sgd_matches_manual_computation():
    params = {"w": jnp.array([0.5, -1.0])}
    per_example = {"w": jnp.asarray(np.random.default_rng(3).standard_normal((9, 2)), jnp.float32)}
    lr, wd, c = 0.3, 0.1, 2
    opt = cgh_jax.winsorized_sgd(lr, num_clipped=c, weight_decay=wd)
    updates, _ = opt.update(per_example, opt.init(params), params)
    x = np.asarray(per_example["w"], np.float64) + wd * np.asarray(params["w"])
    srt = np.sort(x, 0)
    expected = -lr * np.clip(x, srt[c], srt[-1 - c]).mean(0)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="num_clipped"):
        opt.update({"w": jnp.zeros((4, 2))}, opt.init(params), params)


def test_momentum_is_opt_in_and_matches_optax():
    params = _params(4)
    opt = cgh_jax.m3_sgd(0.1, momentum=0.9, nesterov=True)
    ref = optax.sgd(0.1, momentum=0.9, nesterov=True)
    s, r = opt.init(params), ref.init(params)
    for t in range(5):
        g = _grads(20 + t, params)
        u, s = opt.update(_stack(g, 3), s, params)
        v, r = ref.update(g, r, params)
        jax.tree.map(np.testing.assert_array_equal, u, v)
    # Injected (traced) momentum gives the same updates.
    injected = optax.inject_hyperparams(cgh_jax.m3_sgd)(0.1, momentum=0.9, nesterov=True)
    s, r = injected.init(params), ref.init(params)
    for t in range(3):
        g = _grads(30 + t, params)
        u, s = jax.jit(injected.update)(_stack(g, 3), s, params)
        v, r = ref.update(g, r, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u, v)
    # Default: no momentum state at all (the papers' setting).
    assert not any(
        isinstance(x, optax.TraceState)
        for x in jax.tree.leaves(cgh_jax.m3_sgd(0.1).init(params), is_leaf=lambda x: True)
    )


@pytest.mark.parametrize(
    "factory,kwargs,grouped",
    [
        (cgh_jax.m3_sgd, {}, 3),
        (cgh_jax.m3_sgd, {"num_groups": 5, "weight_decay": 1e-3}, 5),
        (cgh_jax.rm3_sgd, {"weight_decay": 1e-3}, 0),
        (cgh_jax.ra3_sgd, {}, 0),
        (cgh_jax.winsorized_sgd, {"num_clipped": 1}, 4),
    ],
)
def test_inject_hyperparams_learning_rate(factory, kwargs, grouped):
    params = _params(5)
    opt = optax.inject_hyperparams(factory)(learning_rate=0.1, **kwargs)
    state = opt.init(params)
    g = _grads(6, params)
    g = _stack(g, grouped) if grouped else g
    traces = []

    @jax.jit
    def step(g, state, params):
        traces.append(1)
        return opt.update(g, state, params)

    for _ in range(3):  # past the running buffers' warm-up
        u1, state = step(g, state, params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.2, jnp.float32)
    u2, _ = step(g, state, params)
    assert len(traces) == 1
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(u2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 2 * a, rtol=1e-6), u1, u2)


def test_bf16_params_stay_bf16():
    params = _params(7, jnp.bfloat16)
    for opt, g in [
        (cgh_jax.m3_sgd(0.1, weight_decay=1e-2), _stack(_grads(8, params), 3)),
        (cgh_jax.rm3_sgd(0.1), _grads(8, params)),
        (cgh_jax.ra3_sgd(0.1), _grads(8, params)),
        (cgh_jax.winsorized_sgd(0.1, num_clipped=1), _stack(_grads(8, params), 4)),
    ]:
        updates, _ = jax.jit(opt.update)(g, opt.init(params), params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="learning_rate"):
        cgh_jax.m3_sgd(-0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        cgh_jax.rm3_sgd(0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        cgh_jax.ra3_sgd(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="odd"):
        cgh_jax.m3_sgd(0.1, num_groups=4)
    with pytest.raises(ValueError, match="num_clipped"):
        cgh_jax.winsorized_sgd(0.1, num_clipped=-2)


def test_public_api_imports_only_jax_level_modules():
    import subprocess
    import sys

    code = (
        "import sys, cgh_jax; "
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections') "
        "if m in sys.modules]; print(bad); assert not bad, bad; print(cgh_jax.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr


TRANSFORMS = {
    "m3": (cgh_jax.m3, 3),
    "median_of_means5": (lambda: cgh_jax.median_of_means(5), 5),
    "winsorize": (lambda: cgh_jax.winsorize(1), 4),
    "rm3": (cgh_jax.rm3, 0),
    "ra3": (cgh_jax.ra3, 0),
    "m3_sgd": (lambda: cgh_jax.m3_sgd(0.1, weight_decay=1e-3), 3),
    "rm3_sgd": (lambda: cgh_jax.rm3_sgd(0.1, momentum=0.5), 0),
    "ra3_sgd": (lambda: cgh_jax.ra3_sgd(optax.constant_schedule(0.1)), 0),
    "winsorized_sgd": (lambda: cgh_jax.winsorized_sgd(0.1, num_clipped=1), 4),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_jit_abstract_init_and_dtype(name, dtype):
    factory, leading = TRANSFORMS[name]
    opt = factory()
    params = _params(9, dtype)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    state = jax.jit(opt.init)(params)
    assert jax.tree.structure(jax.eval_shape(opt.init, abstract)) == jax.tree.structure(state)
    traces = []

    @jax.jit
    def update(g, state, params):
        traces.append(1)
        return opt.update(g, state, params)

    for step in range(4):
        g = _grads(40 + step, params)
        g = _stack(g, leading) if leading else g
        updates, state = update(g, state, params)
    assert len(traces) == 1
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        assert u.shape == p.shape and u.dtype == dtype
