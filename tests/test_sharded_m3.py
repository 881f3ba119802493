"""Communication-efficient M3 (cgh_jax.optim.sharded) on 8 fake CPU devices.

References are independent of the code under test: plain per-chunk gradients on one
device and ``jnp.median``, and the straightforward M3 (``grouped_grads`` + ``m3``).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cgh_jax.optim import coordinate_median, grouped_grads, m3_sgd
from cgh_jax.optim.hlo import hlo_collective_traffic, summarize_traffic
from cgh_jax.optim.sharded import resolve_layout, sharded_median_of_means_grads

K = 3


def _mesh(n):
    return Mesh(np.array(jax.devices()[:n]), ("data",))


def _mlp_params(key, widths=(6, 17, 5)):
    keys = jax.random.split(key, len(widths))
    return {
        f"layer{i}": {
            "w": jax.random.normal(keys[i], (a, b)) / np.sqrt(a),
            "b": 0.1 * jax.random.normal(keys[i], (b,)),
        }
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False))
    }


def _mlp_loss(params, batch):
    h = batch["x"]
    layers = sorted(params)
    for i, name in enumerate(layers):
        h = h @ params[name]["w"] + params[name]["b"]
        if i < len(layers) - 1:
            h = jnp.tanh(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, batch["y"]).mean()


def _batch(key, size, dim=6, classes=5):
    kx, ky = jax.random.split(key)
    return {
        "x": jax.random.normal(kx, (size, dim)),
        "y": jax.random.randint(ky, (size,), 0, classes),
    }


def _chunk_reference(loss_fn, params, batch, num_devices, layout, *args):
    """Single-device reference: the median of group means built from explicit chunks.

    Chunk ``c`` of device ``d`` is column ``c`` of device ``d``'s local batch
    (reduce_scatter) or rows ``c`` of it (group_sharded); returns (median, group means
    of the per-chunk loss values, per-chunk aux outputs)."""
    size = jax.tree.leaves(batch)[0].shape[0]
    b = size // num_devices

    def chunks(x):
        local = x.reshape(num_devices, b, *x.shape[1:])
        if layout == "reduce_scatter":
            local = jnp.swapaxes(local.reshape(num_devices, b // K, K, *x.shape[1:]), 1, 2)
        return local.reshape(num_devices * K, b // K, *x.shape[1:])

    cs = jax.tree.map(chunks, batch)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=bool(args))
    values, grads = jax.jit(jax.vmap(value_and_grad, in_axes=(None, 0, *(None,) * len(args))))(
        params, cs, *args
    )
    # chunk v = d*k + c; group of v: c (column-major) or v // D (row-major).
    if layout == "reduce_scatter":
        to_groups = lambda x: jnp.swapaxes(x.reshape(num_devices, K, *x.shape[1:]), 0, 1)
    else:
        to_groups = lambda x: x.reshape(K, num_devices, *x.shape[1:])
    means = jax.tree.map(lambda g: to_groups(g).mean(axis=1), grads)
    median = jax.tree.map(lambda g: jnp.median(g, axis=0), means)
    return median, to_groups, values


def _assert_close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize(
    "layout,num_devices",
    [("reduce_scatter", 8), ("group_sharded", 8), ("group_sharded", 6), ("group_sharded", 4)],
)
def test_mlp_matches_chunk_reference(layout, num_devices):
    params = _mlp_params(jax.random.key(0))
    batch = _batch(jax.random.key(1), 2 * K * num_devices)
    fn = sharded_median_of_means_grads(_mlp_loss, K, _mesh(num_devices), layout=layout)
    out = jax.jit(fn)(params, batch)
    median, to_groups, losses = _chunk_reference(_mlp_loss, params, batch, num_devices, layout)
    _assert_close(out.grads, median)
    np.testing.assert_allclose(out.loss, to_groups(losses).mean(1), rtol=1e-6)
    assert out.aux is None and out.state is None
    assert jax.tree.map(jnp.shape, out.grads) == jax.tree.map(jnp.shape, params)


def test_reduce_scatter_equals_straightforward_m3():
    """Column-major groups are exactly grouped_grads' groups: compare with the plain
    jit-over-a-mesh M3 (grouped_grads + m3) on the sharded batch."""
    mesh = _mesh(8)
    params = _mlp_params(jax.random.key(2))
    batch = jax.device_put(_batch(jax.random.key(3), 48), NamedSharding(mesh, P("data")))
    fn = sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="reduce_scatter")
    out = jax.jit(fn)(params, batch)

    @jax.jit
    def straightforward(params, batch):
        g = grouped_grads(_mlp_loss, K)(params, batch)
        return jax.tree.map(coordinate_median, g.grads), g.loss

    grads, loss = straightforward(params, batch)
    _assert_close(out.grads, grads)
    np.testing.assert_allclose(out.loss, loss, rtol=1e-6)


def test_group_sharded_equals_straightforward_m3_on_row_major_groups():
    """Row-major groups: the same update as grouped_grads + m3 on a batch reordered so
    that its column-major groups are the contiguous thirds."""
    mesh = _mesh(8)
    params = _mlp_params(jax.random.key(4))
    batch = _batch(jax.random.key(5), 48)
    out = jax.jit(sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_sharded"))(
        params, batch
    )
    reorder = lambda x: jnp.swapaxes(x.reshape(K, -1, *x.shape[1:]), 0, 1).reshape(x.shape)
    g = grouped_grads(_mlp_loss, K)(params, jax.tree.map(reorder, batch))
    _assert_close(out.grads, jax.tree.map(coordinate_median, g.grads))
    np.testing.assert_allclose(out.loss, g.loss, rtol=1e-6)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3)(x)


def _bn_setup(size):
    model = _BNNet()
    key = jax.random.key(6)
    images = jax.random.normal(key, (size, 6, 6, 2))
    labels = jax.random.randint(jax.random.key(7), (size,), 0, 3)
    variables = model.init(key, images[:2], train=False)
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda x: x + 0.3, variables["batch_stats"]),
    }

    def loss_fn(params, batch, batch_stats):
        logits, new = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"acc": acc}, new["batch_stats"])

    return loss_fn, variables, {"image": images, "label": labels}


def test_batchnorm_reduce_scatter_equals_data_parallel_m3():
    """BatchNorm model: equal to the straightforward data-parallel M3 (grouped_grads with
    axis_name under shard_map: per-device group statistics, pmean of the k gradients)."""
    mesh = _mesh(8)
    loss_fn, variables, batch = _bn_setup(48)
    params, stats = variables["params"], variables["batch_stats"]
    fn = sharded_median_of_means_grads(
        loss_fn, K, mesh, has_aux=True, has_state=True, layout="reduce_scatter"
    )
    out = jax.jit(fn)(params, batch, stats)

    def local(params, batch, stats):
        g = grouped_grads(loss_fn, K, has_aux=True, has_state=True, axis_name="data")(
            params, batch, stats
        )
        return jax.tree.map(coordinate_median, g.grads), g.loss, g.aux, g.state

    # check_vma=False: the replicated parameters' gradient is per device here, and
    # grouped_grads averages it explicitly with pmean.
    ref = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P(), check_vma=False
        )
    )(params, batch, stats)
    _assert_close(out.grads, ref[0])
    np.testing.assert_allclose(out.loss, ref[1], rtol=1e-6)
    _assert_close(out.aux, ref[2])
    _assert_close(out.state, ref[3])


@pytest.mark.parametrize("num_devices", [8, 6])  # with and without straddling devices
def test_batchnorm_group_sharded_matches_chunk_reference(num_devices):
    mesh = _mesh(num_devices)
    loss_fn, variables, batch = _bn_setup(2 * K * num_devices)
    params, stats = variables["params"], variables["batch_stats"]
    fn = sharded_median_of_means_grads(loss_fn, K, mesh, has_aux=True, has_state=True)
    out = jax.jit(fn)(params, batch, stats)
    median, to_groups, values = _chunk_reference(
        loss_fn, params, batch, num_devices, "group_sharded", stats
    )
    _assert_close(out.grads, median)
    losses, (aux, states) = values
    states = jax.tree.map(lambda s: s.mean(0), states)
    np.testing.assert_allclose(out.loss, to_groups(losses).mean(1), rtol=1e-6)
    np.testing.assert_allclose(out.aux["acc"], to_groups(aux["acc"]).mean(1), rtol=1e-6)
    _assert_close(out.state, states)
    # The running statistics moved away from their initial values.
    assert not np.allclose(out.state["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["mean"])


def test_rng_keys_per_device_and_chunk():
    """Chunk c of device d gets split(fold_in(rng, d), k)[c]."""
    mesh = _mesh(4)

    def loss_fn(w, batch, rng):
        noise = jax.random.normal(rng, w.shape)
        return jnp.mean(batch["x"] @ (w * noise))

    w = jnp.linspace(0.5, 1.5, 6)
    batch = {"x": jax.random.normal(jax.random.key(8), (24, 6))}
    rng = jax.random.key(9)
    out = jax.jit(sharded_median_of_means_grads(loss_fn, K, mesh, layout="group_sharded"))(
        w, batch, rng=rng
    )
    grads = []
    for d in range(4):
        keys = jax.random.split(jax.random.fold_in(rng, d), K)
        for c in range(K):
            chunk = {"x": batch["x"][d * 6 + 2 * c : d * 6 + 2 * c + 2]}
            grads.append(jax.grad(loss_fn)(w, chunk, keys[c]))
    means = jnp.stack(grads).reshape(K, 4, 6).mean(1)
    np.testing.assert_allclose(out.grads, jnp.median(means, axis=0), rtol=1e-5, atol=1e-6)


def test_weight_decay_commutes_with_median():
    """median_j(g_j + c) == median_j(g_j) + c: rounding is monotone, so the sharded path may
    add the decay after the median. Op by op the identity is exact; inside one jit XLA may
    contract ``g + wd * p`` into a fused multiply-add in one program and not in the other,
    so the full m3_sgd chain agrees to an ulp."""
    g = jax.random.normal(jax.random.key(10), (K, 1000)) * jnp.logspace(-6, 3, 1000)
    p = jax.random.normal(jax.random.key(11), (1000,)) * 10.0
    c = 5e-4 * p
    np.testing.assert_array_equal(coordinate_median(g + c), coordinate_median(g) + c)

    lr, wd = 0.1, 5e-4
    params, grads = {"w": p}, {"w": g}
    tx = m3_sgd(lr, weight_decay=wd)
    u_ref, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    tx2 = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
    u, _ = jax.jit(tx2.update)({"w": coordinate_median(g)}, tx2.init(params), params)
    np.testing.assert_allclose(u["w"], u_ref["w"], rtol=1e-6, atol=0)


def _compiled_text(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def test_collective_bytes_sgd_naive_and_sharded():
    """Ring bytes per device from the compiled HLO on 8 devices: SGD < group_sharded
    <= 1.25 SGD < reduce_scatter (~2x) < straightforward M3 (~3x)."""
    mesh = _mesh(8)
    params = _mlp_params(jax.random.key(12), widths=(6, 128, 64, 5))
    sharding = NamedSharding(mesh, P("data"))
    batch = jax.device_put(_batch(jax.random.key(13), 48), sharding)

    def ring(fn):
        return summarize_traffic(hlo_collective_traffic(_compiled_text(fn, params, batch), 8))

    sgd = ring(jax.grad(_mlp_loss))
    naive = ring(lambda p, b: jax.tree.map(coordinate_median, grouped_grads(_mlp_loss, K)(p, b)[0]))
    rs = ring(sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="reduce_scatter"))
    gs = ring(sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_sharded"))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    sgd_model = 2 * 7 / 8 * 4 * num_params
    assert sgd["ring_bytes"] == pytest.approx(sgd_model, rel=0.02)
    assert naive["ring_bytes"] / sgd["ring_bytes"] == pytest.approx(3.0, rel=0.02)
    assert rs["ring_bytes"] / sgd["ring_bytes"] == pytest.approx(2.0, rel=0.03)
    assert gs["ring_bytes"] / sgd["ring_bytes"] <= 1.25
    assert gs["ring_bytes"] / sgd["ring_bytes"] == pytest.approx(8 / 7, rel=0.03)


def test_group_sharded_moves_sgd_bytes_when_groups_divide_devices():
    mesh = _mesh(6)
    params = _mlp_params(jax.random.key(14), widths=(6, 128, 64, 5))
    batch = _batch(jax.random.key(15), 36)
    text = _compiled_text(
        sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_sharded"), params, batch
    )
    ops = hlo_collective_traffic(text, 6)
    assert "collective-permute" not in {o.op for o in ops}
    num_params = sum(x.size for x in jax.tree.leaves(params))
    padded = -(-num_params // 6) * 6
    grad_bytes = sum(o.ring_bytes for o in ops if o.op in ("all-to-all", "all-gather"))
    # all-to-all + all-gather of the gradient (the loss gather adds a few bytes).
    assert grad_bytes == pytest.approx(2 * 5 / 6 * 4 * padded, rel=0.01)


def test_hlo_parser_on_handwritten_module():
    text = "\n".join(
        [
            "%ar = f32[100]{0} all-reduce(%x), replica_groups=[2,4]<=[8], to_apply=%add",
            "%rs = f32[3,10]{1,0} reduce-scatter(%y), replica_groups={{0,1,2,3,4,5,6,7}}",
            "%ag = bf16[80]{0} all-gather(%z), replica_groups={{0,1},{2,3},{4,5},{6,7}}",
            "%cp = f32[16]{0} collective-permute(%w), source_target_pairs={{2,3},{5,6}}",
            "%a2a = (f32[1,5]{1,0}, f32[1,5]{1,0}) all-to-all(%p, %q), replica_groups={{0,1}}",
            "%ars = f32[8]{0} all-reduce-start(%v), replica_groups={}",
            "%ard = f32[8]{0} all-reduce-done(%ars)",
            "%ags = (f32[2]{0}, f32[16]{0}) all-gather-start(%u), replica_groups=[1,8]<=[8]",
            "%agd = f32[16]{0} all-gather-done(%ags)",
        ]
    )
    ops = hlo_collective_traffic(text, 8)
    assert [o.op for o in ops] == [
        "all-reduce",
        "reduce-scatter",
        "all-gather",
        "collective-permute",
        "all-to-all",
        "all-reduce",
        "all-gather",
    ]
    ar, rs, ag, cp, a2a, ars, ags = ops
    assert ar.group_size == 4 and ar.ring_bytes == pytest.approx(2 * 3 / 4 * 400)
    assert rs.operand_bytes == 960 and rs.ring_bytes == pytest.approx(7 / 8 * 960)
    assert ag.operand_bytes == 80 and ag.ring_bytes == pytest.approx(1 / 2 * 160)
    assert cp.ring_bytes == pytest.approx(64 * 2 / 8) and cp.max_ring_bytes == 64
    # Only devices 0 and 1 take part: 20 bytes each, 5 on average over the 8 devices.
    assert a2a.group_size == 2 and a2a.max_ring_bytes == pytest.approx(1 / 2 * 40)
    assert a2a.ring_bytes == pytest.approx(1 / 2 * 40 * 2 / 8)
    assert ars.operand_bytes == 32 and ars.ring_bytes == pytest.approx(2 * 7 / 8 * 32)
    assert ags.result_bytes == 64 and ags.operand_bytes == 8
    assert ags.ring_bytes == pytest.approx(7 / 8 * 64)


def test_resolve_layout():
    assert resolve_layout("auto", 3, 8) == "group_sharded"
    assert resolve_layout("auto", 3, 2) == "reduce_scatter"
    assert resolve_layout("auto", 3, 1) == "reduce_scatter"
    with pytest.raises(ValueError, match="num_groups <= number of devices"):
        resolve_layout("group_sharded", 3, 2)
    with pytest.raises(ValueError, match="Unknown layout"):
        resolve_layout("ring", 3, 8)


def test_bad_inputs_raise_clear_errors():
    mesh = _mesh(8)
    params = _mlp_params(jax.random.key(16))
    with pytest.raises(ValueError, match="must be odd"):
        sharded_median_of_means_grads(_mlp_loss, 4, mesh)
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        sharded_median_of_means_grads(_mlp_loss, K, mesh, axis_name="batch")
    with pytest.raises(ValueError, match="Unknown layout"):
        sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="tree")
    fn = sharded_median_of_means_grads(_mlp_loss, K, mesh)
    with pytest.raises(ValueError, match="multiple of .* 8 x 3 = 24"):
        fn(params, _batch(jax.random.key(17), 36))


def test_single_device_mesh_is_plain_m3():
    mesh = _mesh(1)
    params = _mlp_params(jax.random.key(18))
    batch = _batch(jax.random.key(19), 12)
    out = jax.jit(sharded_median_of_means_grads(_mlp_loss, K, mesh))(params, batch)
    g = grouped_grads(_mlp_loss, K)(params, batch)
    _assert_close(out.grads, jax.tree.map(coordinate_median, g.grads))


@pytest.mark.parametrize("layout", ["reduce_scatter", "group_sharded"])
def test_unrolled_chunks_equal_vmapped(layout):
    mesh = _mesh(4)
    loss_fn, variables, batch = _bn_setup(24)
    params, stats = variables["params"], variables["batch_stats"]
    outs = [
        jax.jit(
            sharded_median_of_means_grads(
                loss_fn, K, mesh, has_aux=True, has_state=True, layout=layout, vectorize=v
            )
        )(params, batch, stats)
        for v in (True, False)
    ]
    _assert_close(outs[0].grads, outs[1].grads)
    _assert_close(outs[0].state, outs[1].state)
    np.testing.assert_allclose(outs[0].loss, outs[1].loss, rtol=1e-6)


def _sequential_chunk_reference(loss_fn, params, batch, stats, num_devices, layout):
    """k running-statistics updates in group order, threaded by hand: group j's update is
    the mean of the updates of its D chunks, each made from the state after group j - 1."""
    size = batch["label"].shape[0]
    b = size // num_devices

    def chunks(x):
        local = x.reshape(num_devices, b, *x.shape[1:])
        if layout == "reduce_scatter":
            local = jnp.swapaxes(local.reshape(num_devices, b // K, K, *x.shape[1:]), 1, 2)
        return local.reshape(num_devices * K, b // K, *x.shape[1:])

    cs = jax.tree.map(chunks, batch)
    # chunk v = d*k + c; its group: c (column-major) or v // D (row-major).
    group_of = [
        (v % K) if layout == "reduce_scatter" else (v // num_devices)
        for v in range(num_devices * K)
    ]
    state_of = jax.jit(lambda s, chunk: loss_fn(params, chunk, s)[1][1])
    for j in range(K):
        updates = [
            state_of(stats, jax.tree.map(lambda x, v=v: x[v], cs))
            for v in range(num_devices * K)
            if group_of[v] == j
        ]
        stats = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), axis=0), *updates)
    return stats


@pytest.mark.parametrize(
    "layout,num_devices", [("reduce_scatter", 8), ("group_sharded", 8), ("group_sharded", 6)]
)
@pytest.mark.parametrize("vectorize", [True, False])
def test_batchnorm_sequential_statistics(layout, num_devices, vectorize):
    mesh = _mesh(num_devices)
    loss_fn, variables, batch = _bn_setup(2 * K * num_devices)
    params, stats = variables["params"], variables["batch_stats"]
    kw = dict(has_aux=True, has_state=True, layout=layout, vectorize=vectorize)
    seq = sharded_median_of_means_grads(
        loss_fn,
        K,
        mesh,
        batch_stats_update="sequential",
        state_argnum=0,
        state_momentum=0.9,
        **kw,
    )
    out = jax.jit(seq)(params, batch, stats)
    ref = _sequential_chunk_reference(loss_fn, params, batch, stats, num_devices, layout)
    _assert_close(out.state, ref, rtol=1e-6, atol=1e-6)
    # The median direction does not depend on the option; 'mean' is the default.
    mean = jax.jit(sharded_median_of_means_grads(loss_fn, K, mesh, **kw))(params, batch, stats)
    jax.tree.map(np.testing.assert_array_equal, out.grads, mean.grads)
    assert not np.allclose(out.state["BatchNorm_0"]["mean"], mean.state["BatchNorm_0"]["mean"])


def test_batchnorm_sequential_needs_momentum_and_state_argnum():
    mesh = _mesh(4)
    loss_fn, _, _ = _bn_setup(12)
    kw = dict(has_aux=True, has_state=True, batch_stats_update="sequential")
    with pytest.raises(ValueError, match="state_argnum"):
        sharded_median_of_means_grads(loss_fn, K, mesh, **kw)
    with pytest.raises(ValueError, match="folded, not threaded"):
        sharded_median_of_means_grads(loss_fn, K, mesh, state_argnum=0, **kw)
    with pytest.raises(ValueError, match="one of"):
        sharded_median_of_means_grads(loss_fn, K, mesh, has_state=True, batch_stats_update="x")
