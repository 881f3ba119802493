"""grouped_grads / per_example_grads: hand loops, BatchNorm state, mesh, shard_map, pmap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import cgh_jax
from cgh_jax.optim import group_batch

K = 3
NUM_DEVICES = 8
BATCH = 48  # 6 per device: divisible by K on every device


class BNNet(nn.Module):
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(x)
        return nn.Dense(4)(nn.relu(x))


def _setup():
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.standard_normal((BATCH, 5)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 4, BATCH), jnp.int32),
    }
    variables = BNNet().init(jax.random.key(0), batch["x"][:2], train=False)
    # Non-trivial running statistics, so that their combination is tested.
    stats = jax.tree.map(lambda s: s + 0.5, variables["batch_stats"])
    return variables["params"], stats, batch


def _loss_fn(axis_name=None):
    model = BNNet(axis_name=axis_name)

    def loss_fn(params, batch, batch_stats):
        logits, new_state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["x"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        return loss, ({"accuracy": accuracy}, new_state)

    return loss_fn


def _hand_loop(params, stats, batch):
    """Per-group gradients by an explicit loop over the column-major groups."""
    grads, losses, accs, states = [], [], [], []
    for j in range(K):
        group = jax.tree.map(lambda x, j=j: x[j::K], batch)
        (loss, (aux, state)), g = jax.value_and_grad(_loss_fn(), has_aux=True)(params, group, stats)
        grads.append(g)
        losses.append(loss)
        accs.append(aux["accuracy"])
        states.append(state)
    stack = lambda *xs: jnp.stack(xs)
    mean = lambda *xs: jnp.mean(jnp.stack(xs), axis=0)
    return (
        jax.tree.map(stack, *grads),
        jnp.stack(losses),
        jnp.stack(accs),
        jax.tree.map(mean, *states),
    )


def _assert_matches(out, reference, rtol=2e-5, atol=1e-6):
    grads, loss, acc, state = reference
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=rtol, atol=atol)
    jax.tree.map(close, out.grads, grads)
    close(out.loss, loss)
    close(out.aux["accuracy"], acc)
    jax.tree.map(close, out.state, state)


@pytest.fixture(scope="module")
def problem():
    params, stats, batch = _setup()
    return params, stats, batch, jax.jit(_hand_loop)(params, stats, batch)


def test_group_batch_is_column_major():
    x = jnp.arange(12)
    np.testing.assert_array_equal(group_batch(x, 3), [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
    nested = group_batch({"a": jnp.zeros((6, 2, 2)), "b": [jnp.zeros(6)]}, 3)
    assert nested["a"].shape == (3, 2, 2, 2) and nested["b"][0].shape == (3, 2)


@pytest.mark.parametrize("vectorize", [True, False])
def test_matches_hand_loop_on_one_device(problem, vectorize):
    params, stats, batch, reference = problem
    grad_fn = cgh_jax.grouped_grads(
        _loss_fn(), K, has_aux=True, has_state=True, vectorize=vectorize
    )
    out = jax.jit(grad_fn)(params, batch, stats)
    _assert_matches(out, reference)
    # Groups really differ (BatchNorm statistics are per group), and the shapes are right.
    assert out.grads["Dense_0"]["kernel"].shape == (K, 5, 8)
    assert not np.allclose(out.grads["Dense_0"]["kernel"][0], out.grads["Dense_0"]["kernel"][1])


def test_batchnorm_running_stats_are_the_mean_of_group_updates(problem):
    params, stats, batch, _ = problem
    grad_fn = cgh_jax.grouped_grads(_loss_fn(), K, has_aux=True, has_state=True)
    out = jax.jit(grad_fn)(params, batch, stats)
    h = np.asarray(batch["x"] @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    group_means = np.stack([h[j::K].mean(0) for j in range(K)])
    expected = 0.9 * np.asarray(stats["BatchNorm_0"]["mean"]) + 0.1 * group_means.mean(0)
    np.testing.assert_allclose(out.state["batch_stats"]["BatchNorm_0"]["mean"], expected, rtol=1e-5)


@pytest.mark.parametrize("vectorize", [True, False])
def test_jit_over_data_sharded_mesh(problem, vectorize):
    params, stats, batch, reference = problem
    mesh = Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))
    batch_sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    grad_fn = cgh_jax.grouped_grads(
        _loss_fn(), K, has_aux=True, has_state=True, vectorize=vectorize
    )
    out = jax.jit(grad_fn)(params, batch_sharded, stats)
    _assert_matches(out, reference)


def test_column_major_split_moves_no_data():
    mesh = Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))
    x = jax.device_put(jnp.zeros((BATCH, 5)), NamedSharding(mesh, P("data")))
    split = jax.jit(lambda x: group_batch(x, K), out_shardings=NamedSharding(mesh, P(None, "data")))
    hlo = split.lower(x).compile().as_text()
    for op in ("all-to-all", "all-gather", "collective-permute", "all-reduce"):
        assert op not in hlo, op


def test_shard_map_with_axis_name(problem):
    params, stats, batch, reference = problem
    mesh = Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))
    grad_fn = cgh_jax.grouped_grads(
        _loss_fn("data"), K, has_aux=True, has_state=True, axis_name="data"
    )
    mapped = jax.jit(
        jax.shard_map(grad_fn, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P())
    )
    _assert_matches(mapped(params, batch, stats), reference)


def test_pmap_with_axis_name(problem):
    params, stats, batch, reference = problem
    grad_fn = cgh_jax.grouped_grads(
        _loss_fn("data"), K, has_aux=True, has_state=True, axis_name="data"
    )
    local = jax.tree.map(lambda x: x.reshape(NUM_DEVICES, -1, *x.shape[1:]), batch)
    out = jax.pmap(grad_fn, axis_name="data", in_axes=(None, 0, None))(params, local, stats)
    for d in (0, NUM_DEVICES - 1):
        _assert_matches(jax.tree.map(lambda x, d=d: x[d], out), reference)


def test_rng_is_split_per_group_and_optional():
    def loss_fn(w, batch, rng=None):
        noise = jnp.zeros(()) if rng is None else jax.random.uniform(rng)
        return jnp.mean(batch @ w), noise

    w, batch, rng = jnp.ones(2), jnp.ones((6, 2)), jax.random.key(3)
    keys = jax.random.split(rng, K)
    for vectorize in (True, False):
        out = cgh_jax.grouped_grads(loss_fn, K, has_aux=True, vectorize=vectorize)(
            w, batch, rng=rng
        )
        np.testing.assert_array_equal(out.aux, [jax.random.uniform(k) for k in keys])
    out = cgh_jax.grouped_grads(loss_fn, K, has_aux=True)(w, batch)
    np.testing.assert_array_equal(out.aux, 0.0)
    assert out.state is None


def test_plain_loss_and_state_only():
    loss = lambda w, b: jnp.mean((b["x"] @ w - b["y"]) ** 2)
    batch = {"x": jnp.ones((6, 2)), "y": jnp.arange(6.0)}
    out = cgh_jax.grouped_grads(loss, K)(jnp.zeros(2), batch)
    assert out.aux is None and out.state is None
    np.testing.assert_allclose(out.grads[:, 0], [-3.0, -5.0, -7.0])

    def stateful(w, b):
        return loss(w, b), {"count": jnp.sum(b["y"])}

    out = cgh_jax.grouped_grads(stateful, K, has_state=True)(jnp.zeros(2), batch)
    assert out.aux is None
    np.testing.assert_allclose(out.state["count"], np.mean([0 + 3, 1 + 4, 2 + 5]))


def test_per_example_grads_match_loop():
    loss = lambda w, b: (jnp.mean(jnp.tanh(b["x"] @ w) * b["y"]), b["x"].shape[0])
    rng = np.random.default_rng(4)
    batch = {"x": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32), "y": jnp.arange(5.0)}
    w = jnp.asarray(rng.standard_normal(3), jnp.float32)
    out = jax.jit(cgh_jax.per_example_grads(loss, has_aux=True))(w, batch)
    assert out.grads.shape == (5, 3) and out.loss.shape == (5,)
    np.testing.assert_array_equal(out.aux, 1)  # the loss sees a batch of one example
    for i in range(5):
        one = jax.tree.map(lambda x, i=i: x[i : i + 1], batch)
        np.testing.assert_allclose(
            out.grads[i], jax.grad(lambda w, b=one: loss(w, b)[0])(w), rtol=1e-5, atol=1e-6
        )


def test_feeds_m3_sgd_end_to_end(problem):
    params, stats, batch, _ = problem
    grad_fn = cgh_jax.grouped_grads(_loss_fn(), K, has_aux=True, has_state=True)
    opt = cgh_jax.m3_sgd(0.1)
    out = jax.jit(grad_fn)(params, batch, stats)
    updates, _ = jax.jit(opt.update)(out.grads, opt.init(params), params)
    expected = jax.tree.map(lambda g: -0.1 * np.sort(np.asarray(g), 0)[1], out.grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


def test_errors():
    loss = lambda w, b: jnp.mean(b @ w)
    with pytest.raises(ValueError, match="not divisible by num_groups=3"):
        cgh_jax.grouped_grads(loss, 3)(jnp.zeros(2), jnp.ones((7, 2)))
    with pytest.raises(ValueError, match="disagree"):
        cgh_jax.grouped_grads(loss, 3)(jnp.zeros(2), {"a": jnp.ones((6, 2)), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=">= 1"):
        cgh_jax.grouped_grads(loss, 0)
    with pytest.raises(ValueError, match="Python int"):
        cgh_jax.grouped_grads(loss, 3.0)
    with pytest.raises(ValueError, match=r"\(loss, aux\)"):
        cgh_jax.grouped_grads(loss, 3, has_aux=True)(jnp.zeros(2), jnp.ones((6, 2)))


# --- BatchNorm running statistics: 'sequential' (k consecutive updates) vs 'mean' ----------


def _by_hand_sequential(params, stats, batch, momentum=0.9):
    """k train-mode forward passes, one per group in group order, threading batch_stats."""
    model = BNNet()
    for j in range(K):
        group = jax.tree.map(lambda x, j=j: x[j::K], batch)
        _, new = model.apply(
            {"params": params, "batch_stats": stats},
            group["x"],
            train=True,
            mutable=["batch_stats"],
        )
        stats = new["batch_stats"]
    return stats


def _sequential_fn(vectorize, **kw):
    kw = {"state_argnum": 0, "state_collection": "batch_stats", **kw}
    if vectorize:
        kw.setdefault("state_momentum", 0.9)
    return cgh_jax.grouped_grads(
        _loss_fn(),
        K,
        has_aux=True,
        has_state=True,
        vectorize=vectorize,
        batch_stats_update="sequential",
        **kw,
    )


def test_sequential_batch_stats_equal_consecutive_train_mode_updates(problem):
    params, stats, batch, reference = problem
    by_hand = jax.jit(_by_hand_sequential)(params, stats, batch)
    # Independent closed form: r_k = m^k r0 + sum_j m^(k-j) (1 - m) mu_j (float64).
    h = np.asarray(batch["x"] @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], np.float64)
    r = np.asarray(stats["BatchNorm_0"]["mean"], np.float64)
    closed = 0.9**K * r + sum(0.9 ** (K - 1 - j) * 0.1 * h[j::K].mean(0) for j in range(K))
    np.testing.assert_allclose(by_hand["BatchNorm_0"]["mean"], closed, rtol=1e-5, atol=1e-6)
    # Not the mean of the group updates.
    assert not np.allclose(
        by_hand["BatchNorm_0"]["mean"], reference[3]["batch_stats"]["BatchNorm_0"]["mean"]
    )

    loop = jax.jit(_sequential_fn(False))(params, batch, stats)
    vmapped = jax.jit(_sequential_fn(True))(params, batch, stats)
    # The loop threads the state as the hand loop does (XLA compiles the two programs
    # differently, so 1 ulp apart at most); the vmap fold agrees to a few ulps.
    for out, tol in ((loop, 2.5e-7), (vmapped, 1e-6)):
        assert set(out.state) == {"batch_stats"}
        for path in (("BatchNorm_0", "mean"), ("BatchNorm_0", "var")):
            got, want = out.state["batch_stats"], by_hand
            for key in path:
                got, want = got[key], want[key]
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # Gradients, losses and aux do not depend on the running statistics in train mode.
    mean_out = jax.jit(
        cgh_jax.grouped_grads(_loss_fn(), K, has_aux=True, has_state=True, vectorize=False)
    )(params, batch, stats)
    jax.tree.map(np.testing.assert_array_equal, loop.grads, mean_out.grads)
    np.testing.assert_array_equal(loop.loss, mean_out.loss)
    _assert_matches(
        vmapped._replace(state=reference[3]), reference
    )  # grads/loss/aux of the vmap path unchanged too


def test_mean_batch_stats_is_the_default_bit_for_bit(problem):
    params, stats, batch, _ = problem
    for vectorize in (True, False):
        kw = dict(has_aux=True, has_state=True, vectorize=vectorize)
        default = jax.jit(cgh_jax.grouped_grads(_loss_fn(), K, **kw))(params, batch, stats)
        mean = jax.jit(cgh_jax.grouped_grads(_loss_fn(), K, batch_stats_update="mean", **kw))(
            params, batch, stats
        )
        jax.tree.map(np.testing.assert_array_equal, default, mean)


def test_sequential_state_update_float64_and_plain_state():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        r0 = {"a": rng.standard_normal(4), "b": [rng.standard_normal((2, 3))]}
        stats = [jax.tree.map(lambda x: rng.standard_normal(x.shape), r0) for _ in range(5)]
        m = 0.7
        parallel = jax.tree.map(
            lambda r, *s: np.stack([m * r + (1 - m) * x for x in s]), r0, *stats
        )
        expected = r0
        for s in stats:
            expected = jax.tree.map(lambda r, x: m * r + (1 - m) * x, expected, s)
        out = cgh_jax.optim.grads.sequential_state_update(r0, parallel, m)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13), out, expected)
        # m = 0: the last group's statistics, exactly.
        out0 = cgh_jax.optim.grads.sequential_state_update(
            r0, jax.tree.map(jnp.asarray, parallel), 0.0
        )
        jax.tree.map(lambda a, s: np.testing.assert_array_equal(a, s[-1]), out0, parallel)


def test_sequential_threads_any_state_in_the_loop():
    """vectorize=False threads a non-running-average state (a counter) and a bare state."""

    def loss(w, batch, state):
        return jnp.mean(batch @ w), {"count": state["count"] + 1, "sum": state["sum"] + batch.sum()}

    state = {"count": jnp.int32(5), "sum": jnp.float32(0.0)}
    batch = jnp.arange(12.0).reshape(6, 2)
    out = cgh_jax.grouped_grads(
        loss, 3, has_state=True, vectorize=False, batch_stats_update="sequential", state_argnum=0
    )(jnp.ones(2), batch, state)
    assert int(out.state["count"]) == 8 and float(out.state["sum"]) == float(batch.sum())
    with pytest.raises(ValueError, match="integer leaf"):
        cgh_jax.grouped_grads(
            loss,
            3,
            has_state=True,
            batch_stats_update="sequential",
            state_argnum=0,
            state_momentum=0.9,
        )(jnp.ones(2), batch, state)


def test_sequential_errors(problem):
    params, stats, batch, _ = problem
    kw = dict(has_aux=True, has_state=True, batch_stats_update="sequential")
    with pytest.raises(ValueError, match="one of"):
        cgh_jax.grouped_grads(_loss_fn(), K, has_state=True, batch_stats_update="seq")
    with pytest.raises(ValueError, match="has_state=True"):
        cgh_jax.grouped_grads(_loss_fn(), K, batch_stats_update="sequential", state_argnum=0)
    with pytest.raises(ValueError, match="state_argnum"):
        cgh_jax.grouped_grads(_loss_fn(), K, **kw)
    with pytest.raises(ValueError, match="state_momentum"):
        cgh_jax.grouped_grads(_loss_fn(), K, state_argnum=0, **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        cgh_jax.grouped_grads(_loss_fn(), K, state_argnum=0, state_momentum=1.0, **kw)
    for vectorize in (True, False):
        # Without state_collection the returned {'batch_stats': ...} does not match.
        fn = cgh_jax.grouped_grads(
            _loss_fn(), K, state_argnum=0, state_momentum=0.9, vectorize=vectorize, **kw
        )
        with pytest.raises(ValueError, match="structure"):
            fn(params, batch, stats)
        fn = cgh_jax.grouped_grads(
            _loss_fn(),
            K,
            state_argnum=0,
            state_collection="stats",
            state_momentum=0.9,
            vectorize=vectorize,
            **kw,
        )
        with pytest.raises(ValueError, match="'stats'"):
            fn(params, batch, stats)
    with pytest.raises(ValueError, match="extra argument"):
        _sequential_fn(True, state_argnum=1)(params, batch, stats)


def test_sequential_under_shard_map(problem):
    """Per-device code with a global BatchNorm (axis_name): the same k sequential updates."""
    params, stats, batch, _ = problem
    by_hand = jax.jit(_by_hand_sequential)(params, stats, batch)
    mesh = Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))
    for vectorize in (True, False):
        grad_fn = cgh_jax.grouped_grads(
            _loss_fn("data"),
            K,
            has_aux=True,
            has_state=True,
            axis_name="data",
            vectorize=vectorize,
            batch_stats_update="sequential",
            state_argnum=0,
            state_collection="batch_stats",
            state_momentum=0.9,
        )
        sharded = jax.jit(
            jax.shard_map(
                lambda p, b, s, grad_fn=grad_fn: grad_fn(p, b, s).state,
                mesh=mesh,
                in_specs=(P(), P("data"), P()),
                out_specs=P(),
            )
        )
        out = sharded(params, batch, stats)["batch_stats"]
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out, by_hand
        )


def test_check_state_momentum(problem):
    params, stats, batch, _ = problem
    check = cgh_jax.optim.grads.check_state_momentum
    kw = dict(state_argnum=0, state_collection="batch_stats", has_aux=True)
    check(_loss_fn(), 0.9, params, batch, stats, **kw)  # BNNet's BatchNorm(momentum=0.9)
    with pytest.raises(ValueError, match=r"BatchNorm_0.*0\.99"):
        check(_loss_fn(), 0.99, params, batch, stats, **kw)

    def counter(w, b, state):
        return jnp.mean(b @ w), {"n": state["n"] + 1}

    with pytest.raises(ValueError, match="not updated as"):  # slope 1, not a running average
        check(counter, 0.5, jnp.ones(2), jnp.ones((4, 2)), {"n": jnp.float32(0)}, state_argnum=0)
    with pytest.raises(ValueError, match="integer"):
        check(counter, 0.5, jnp.ones(2), jnp.ones((4, 2)), {"n": jnp.int32(0)}, state_argnum=0)
