"""The group_aligned M3 layout (cgh_jax.optim.aligned) on 8 fake CPU devices, its static
plan, and the HLO collective parser on a 2-D mesh.

References are independent of the code under test: the straightforward M3
(``grouped_grads`` + the median) on the batch reordered into the plan's groups, plain
per-slot gradients and running statistics computed one slot at a time, and collective
bytes counted by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from test_sharded_m3 import K, _assert_close, _batch, _bn_setup, _mesh, _mlp_loss, _mlp_params

from cgh_jax.optim import coordinate_median, grouped_grads
from cgh_jax.optim.aligned_plan import aligned_plan, best_slot_size, chunk_size_for
from cgh_jax.optim.hlo import hlo_collective_traffic, replica_groups, summarize_traffic
from cgh_jax.optim.sharded import resolve_layout, sharded_median_of_means_grads

# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("num_devices", [3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 256])
@pytest.mark.parametrize("per_device,slot", [(6, 2), (6, 1), (12, 4), (24, 1)])
def test_plan_partitions_the_batch_into_whole_device_groups(num_devices, per_device, slot):
    batch = per_device * num_devices
    plan = aligned_plan(batch, num_devices, K, slot)
    groups = plan.group_examples()
    assert groups.shape == (K, batch // K)
    assert sorted(groups.ravel().tolist()) == list(range(batch))
    # Every device computes one group; groups own floor(D/k) or ceil(D/k) devices.
    counts = np.bincount(plan.device_group, minlength=K)
    assert set(counts.tolist()) <= {num_devices // K, -(-num_devices // K)}
    assert counts.sum() == num_devices and np.all(np.diff(plan.device_group) >= 0)
    # Real slots are the first ones; a slot's examples are contiguous on one device.
    assert np.all((plan.slot_examples >= 0) == (plan.slot_weight > 0))
    assert plan.slots_per_device == plan.real_slots.max()
    # Each round is a partial permutation; a device never sends to itself.
    for pairs in plan.rounds:
        sources, targets = zip(*pairs, strict=True)
        assert len(set(sources)) == len(sources) and len(set(targets)) == len(targets)
        assert all(s != t for s, t in pairs)
    # The examples each device evaluates: c s, at least an even share of the busiest group.
    fewest = -(-(batch // K) // (num_devices // K))
    assert plan.slots_per_device * slot >= fewest
    assert plan.compute_ratio == pytest.approx(plan.slots_per_device * slot / per_device)
    if num_devices % K == 0:
        assert plan.compute_ratio == 1.0 and plan.rounds == ()


def test_plan_by_hand_on_8_devices():
    """48 examples, 8 devices, chunks of 2: groups on devices 0-2, 3-5, 6-7 with 3, 3, 2
    / 3, 3, 2 / 4, 4 slots; devices 2 and 5 send their last local slot to 6 and 7."""
    plan = aligned_plan(48, 8, 3, 2)
    assert plan.device_group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert plan.real_slots.tolist() == [3, 3, 2, 3, 3, 2, 4, 4]
    assert plan.rounds == (((2, 6), (5, 7)),) and plan.round_sizes == (1,)
    assert plan.slot_examples[6].tolist() == [36, 38, 40, 16]
    assert plan.slot_examples[7].tolist() == [42, 44, 46, 34]
    assert plan.group_examples()[2].tolist() == [36, 37, 38, 39, 40, 41, 16, 17] + [
        42,
        43,
        44,
        45,
        46,
        47,
        34,
        35,
    ]
    assert plan.compute_ratio == pytest.approx(4 / 3)


def test_slot_sizes_and_their_padding():
    # Smaller slots pack the groups tighter: 16 devices, 12 examples each.
    assert aligned_plan(192, 16, 3, 4).compute_ratio == pytest.approx(4 / 3)
    assert best_slot_size(192, 16, 3, 4) == 1
    assert aligned_plan(192, 16, 3, 1).compute_ratio == pytest.approx(13 / 12)
    # BatchNorm models keep the chunks of the other layouts.
    assert chunk_size_for(192, 16, 3, independent_examples=False) == 4
    assert chunk_size_for(192, 16, 3, independent_examples=True) == 1
    with pytest.raises(ValueError, match="at least as many devices as groups"):
        aligned_plan(12, 2, 3, 2)
    with pytest.raises(ValueError, match="multiple of 48"):
        aligned_plan(36, 8, 3, 2)


def test_auto_resolution_by_batch():
    assert resolve_layout("auto", 3, 2, batch_size=96) == "reduce_scatter"
    assert resolve_layout("auto", 3, 6, batch_size=96) == "group_sharded"  # 3 | 6
    assert resolve_layout("auto", 3, 8) == "group_sharded"  # batch unknown
    # Chunks of B/(Dk): every device evaluates 4/3 of its share -> group_sharded.
    assert resolve_layout("auto", 3, 16, batch_size=192) == "group_sharded"
    # Single-example slots: 13/12 of its share, within the limit -> group_aligned.
    assert resolve_layout("auto", 3, 16, batch_size=192, chunk_size=1) == "group_aligned"
    assert resolve_layout("group_aligned", 3, 8) == "group_aligned"
    with pytest.raises(ValueError, match="num_groups <= number of devices"):
        resolve_layout("group_aligned", 3, 2)


# ----------------------------------------------------------------------------- updates


def _straightforward(loss_fn, params, batch, plan, *args):
    """grouped_grads + median on the batch reordered so that its column-major group j is
    the plan's group j."""
    order = plan.group_examples().T.reshape(-1)
    g = grouped_grads(loss_fn, K, has_aux=bool(args))(
        params, jax.tree.map(lambda x: x[order], batch), *args
    )
    return jax.tree.map(coordinate_median, g.grads), g


@pytest.mark.parametrize(
    "num_devices,chunk", [(8, None), (8, 1), (7, 2), (5, 1), (6, None), (4, None)]
)
def test_updates_equal_straightforward_m3(num_devices, chunk):
    mesh = _mesh(num_devices)
    params = _mlp_params(jax.random.key(20))
    size = 6 * num_devices
    batch = jax.device_put(_batch(jax.random.key(21), size), NamedSharding(mesh, P("data")))
    fn = sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_aligned", chunk_size=chunk)
    out = jax.jit(fn)(params, batch)
    plan = aligned_plan(size, num_devices, K, chunk or 2)
    median, g = _straightforward(_mlp_loss, params, batch, plan)
    _assert_close(out.grads, median, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.loss, g.loss, rtol=1e-6)
    assert out.aux is None and out.state is None


def test_auto_layout_on_8_devices_picks_by_batch():
    """auto with a batch whose single-example slots pad little resolves per call."""
    mesh = _mesh(8)
    params = _mlp_params(jax.random.key(22))
    fn = sharded_median_of_means_grads(_mlp_loss, K, mesh, chunk_size=1)
    # 8 devices: even single-example slots leave a group 2 devices -> group_sharded (row
    # major) for 48 examples; the update equals the straightforward one on those groups.
    batch = _batch(jax.random.key(23), 48)
    out = jax.jit(fn)(params, batch)
    reorder = lambda x: jnp.swapaxes(x.reshape(K, -1, *x.shape[1:]), 0, 1).reshape(x.shape)
    g = grouped_grads(_mlp_loss, K)(params, jax.tree.map(reorder, batch))
    _assert_close(out.grads, jax.tree.map(coordinate_median, g.grads))


def _slot_reference(loss_fn, params, batch, stats, plan):
    """Per-slot gradients, losses and states on one device, from the plan's slot lists."""
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    s = plan.slot_size
    per_group = [[] for _ in range(K)]
    for d in range(plan.num_devices):
        for t in range(int(plan.real_slots[d])):
            first = int(plan.slot_examples[d, t])
            chunk = jax.tree.map(lambda x, f=first: x[f : f + s], batch)
            (loss, (aux, new)), grads = grad_fn(params, chunk, stats)
            per_group[int(plan.device_group[d])].append((grads, loss, aux, new))
    return per_group


def _mean(trees):
    return jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), axis=0), *trees)


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("vectorize", [True, False])
def test_batchnorm_matches_slot_reference(sequential, vectorize):
    mesh = _mesh(8)
    loss_fn, variables, batch = _bn_setup(48)
    params, stats = variables["params"], variables["batch_stats"]
    kw = dict(batch_stats_update="sequential", state_argnum=0, state_momentum=0.9)
    fn = sharded_median_of_means_grads(
        loss_fn,
        K,
        mesh,
        has_aux=True,
        has_state=True,
        layout="group_aligned",
        vectorize=vectorize,
        **(kw if sequential else {}),
    )
    out = jax.jit(fn)(params, batch, stats)
    plan = aligned_plan(48, 8, K, 2)
    per_group = _slot_reference(loss_fn, params, batch, stats, plan)
    means = [_mean([x[0] for x in grp]) for grp in per_group]
    median = jax.tree.map(lambda *xs: jnp.median(jnp.stack(xs), axis=0), *means)
    _assert_close(out.grads, median)
    np.testing.assert_allclose(
        out.loss, [np.mean([x[1] for x in grp]) for grp in per_group], rtol=1e-6
    )
    np.testing.assert_allclose(
        out.aux["acc"], [np.mean([x[2]["acc"] for x in grp]) for grp in per_group], rtol=1e-6
    )
    if sequential:  # k running-average updates in group order, threaded by hand
        want = stats
        for j in range(K):
            updates = []
            for d in np.flatnonzero(plan.device_group == j):
                for t in range(int(plan.real_slots[d])):
                    first = int(plan.slot_examples[d, t])
                    chunk = jax.tree.map(lambda x, f=first: x[f : f + 2], batch)
                    updates.append(loss_fn(params, chunk, want)[1][1])
            want = _mean(updates)
    else:
        want = _mean([x[3] for grp in per_group for x in grp])
    _assert_close(out.state, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out.state["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["mean"])


def test_rng_keys_per_device_and_slot():
    """Slot t of device d gets split(fold_in(rng, d), c)[t]."""
    mesh = _mesh(4)

    def loss_fn(w, batch, rng):
        noise = jax.random.normal(rng, w.shape)
        return jnp.mean(batch["x"] @ (w * noise))

    w = jnp.linspace(0.5, 1.5, 6)
    batch = {"x": jax.random.normal(jax.random.key(24), (24, 6))}
    rng = jax.random.key(25)
    fn = sharded_median_of_means_grads(loss_fn, K, mesh, layout="group_aligned", chunk_size=1)
    out = jax.jit(fn)(w, batch, rng=rng)
    plan = aligned_plan(24, 4, K, 1)
    sums = [jnp.zeros(6) for _ in range(K)]
    for d in range(4):
        keys = jax.random.split(jax.random.fold_in(rng, d), plan.slots_per_device)
        for t in range(int(plan.real_slots[d])):
            chunk = {"x": batch["x"][int(plan.slot_examples[d, t])][None]}
            j = int(plan.device_group[d])
            sums[j] = sums[j] + jax.grad(loss_fn)(w, chunk, keys[t])
    means = jnp.stack(sums) / plan.slots_per_group
    np.testing.assert_allclose(out.grads, jnp.median(means, axis=0), rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    mesh = _mesh(8)
    with pytest.raises(ValueError, match="chunk_size applies to layout='group_aligned'"):
        sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_sharded", chunk_size=1)
    with pytest.raises(ValueError, match="num_groups <= number of devices"):
        sharded_median_of_means_grads(_mlp_loss, K, _mesh(2), layout="group_aligned")
    params = _mlp_params(jax.random.key(26))
    fn = sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_aligned")
    with pytest.raises(ValueError, match="multiple of .* 8 x 3 = 24"):
        fn(params, _batch(jax.random.key(27), 36))
    fn = sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_aligned", chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size=2: .*multiple of 48"):
        fn(params, _batch(jax.random.key(27), 24))


# ----------------------------------------------------------------------------- bytes


def _traffic(fn, params, batch, num_devices):
    text = jax.jit(fn).lower(params, batch).compile().as_text()
    return summarize_traffic(hlo_collective_traffic(text, num_devices))


def test_busiest_device_moves_sgd_bytes_on_8_devices():
    """SGD all-reduces the gradient, 2 (D-1)/D P floats per device; group_aligned sends
    the same from every device (plus a few example inputs), group_sharded 1.5x from the
    devices that straddle two groups."""
    mesh = _mesh(8)
    params = _mlp_params(jax.random.key(28), widths=(6, 128, 64, 5))
    batch = jax.device_put(_batch(jax.random.key(29), 48), NamedSharding(mesh, P("data")))
    sgd = _traffic(jax.grad(_mlp_loss), params, batch, 8)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    assert sgd["max_ring_bytes"] == pytest.approx(2 * 7 / 8 * 4 * num_params, rel=0.01)
    aligned = _traffic(
        sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_aligned"),
        params,
        batch,
        8,
    )
    straddling = _traffic(
        sharded_median_of_means_grads(_mlp_loss, K, mesh, layout="group_sharded"),
        params,
        batch,
        8,
    )
    assert aligned["max_ring_bytes"] / sgd["max_ring_bytes"] <= 1.01
    assert aligned["ring_bytes"] / sgd["ring_bytes"] <= 1.01
    assert straddling["max_ring_bytes"] / sgd["max_ring_bytes"] == pytest.approx(
        1 + 4 / 7, rel=0.01
    )


def _mesh_2d():
    return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))


def test_hlo_parser_on_a_2d_mesh_shard_map():
    """Collectives over one axis of a 4x2 mesh, bytes counted by hand (f32, 64 floats)."""
    mesh = _mesh_2d()

    def f(x):
        out = jax.lax.psum(x, "a").sum()  # all-reduce, groups of 4
        out += jax.lax.psum(x, "b").sum()  # all-reduce, groups of 2
        out += jax.lax.all_gather(x, "b", tiled=True).sum()  # all-gather -> 128 floats
        out += jax.lax.psum_scatter(x, ("a", "b"), tiled=True).sum()  # -> 8 floats
        out += jax.lax.ppermute(x, "a", [(0, 1), (1, 2)]).sum()  # 2 pairs per column
        return out

    sharded = jax.shard_map(f, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)
    text = jax.jit(sharded).lower(jnp.ones(64)).compile().as_text()
    ops = {(o.op, o.group_size): o for o in hlo_collective_traffic(text, 8)}
    assert ops[("all-reduce", 4)].max_ring_bytes == pytest.approx(2 * 3 / 4 * 256)
    assert ops[("all-reduce", 2)].max_ring_bytes == pytest.approx(2 * 1 / 2 * 256)
    assert ops[("all-gather", 2)].max_ring_bytes == pytest.approx(1 / 2 * 512)
    rs = ops[("reduce-scatter", 8)]
    assert rs.operand_bytes == 256 and rs.max_ring_bytes == pytest.approx(7 / 8 * 256)
    cp = ops[("collective-permute", 2)]
    # Axis 'a' positions 0 and 1 send, in both columns: devices 0, 1, 2, 3 of the 4x2 grid.
    assert [x > 0 for x in cp.device_bytes] == [True] * 4 + [False] * 4
    assert cp.max_ring_bytes == 256 and cp.ring_bytes == pytest.approx(256 * 4 / 8)


def test_hlo_parser_on_a_2d_mesh_partitioned_by_jit():
    """jit-partitioned reductions print mesh-axis replica groups
    (``mesh['axis_0'=4,'axis_1'=2] {'axis_0'}``, with ``device_ids`` when transposed)."""
    mesh = _mesh_2d()
    x = jax.device_put(jnp.ones((16, 32)), NamedSharding(mesh, P("a", "b")))
    replicated = NamedSharding(mesh, P())
    for axis, (reduce_group, gather_group) in ((0, (4, 2)), (1, (2, 4))):
        fn = jax.jit(lambda x, axis=axis: x.sum(axis), out_shardings=replicated)
        text = fn.lower(x).compile().as_text()
        ops = hlo_collective_traffic(text, 8)
        reduce = [o for o in ops if o.op == "all-reduce"]
        gather = [o for o in ops if o.op == "all-gather"]
        assert [o.group_size for o in reduce] == [reduce_group]
        assert [o.group_size for o in gather] == [gather_group]
        # Local block [4, 16]: summing axis 0 all-reduces 16 floats over 'a' (4 devices)
        # and gathers 32 over 'b'; summing axis 1 all-reduces 4 floats over 'b' and
        # gathers 16 over 'a'.
        size = 16 if axis == 0 else 4
        n = reduce_group
        assert reduce[0].max_ring_bytes == pytest.approx(2 * (n - 1) / n * 4 * size)
        out = 32 if axis == 0 else 16
        n = gather_group
        assert gather[0].max_ring_bytes == pytest.approx((n - 1) / n * 4 * out)
        t = summarize_traffic(ops)
        assert t["max_ring_bytes"] == pytest.approx(t["ring_bytes"])


def test_replica_group_notations():
    line = "x = f32[8]{0} all-reduce(y), replica_groups=%s, to_apply=add"
    assert replica_groups(line % "{{0,2,4,6},{1,3,5,7}}", 8).tolist() == [
        [0, 2, 4, 6],
        [1, 3, 5, 7],
    ]
    assert replica_groups(line % "{}", 4).tolist() == [[0, 1, 2, 3]]
    assert replica_groups(line % "[2,4]<=[8]", 8).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert replica_groups(line % "[4,2]<=[2,4]T(1,0)", 8).tolist() == [
        [0, 4],
        [1, 5],
        [2, 6],
        [3, 7],
    ]
    mesh = "mesh['axis_0'=4,'axis_1'=2] {%s}"
    assert replica_groups(line % (mesh % "'axis_0'"), 8).tolist() == [
        [0, 2, 4, 6],
        [1, 3, 5, 7],
    ]
    assert replica_groups(line % (mesh % "'axis_1'"), 8).tolist() == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
    ]
    assert replica_groups(line % (mesh % "'axis_0','axis_1'"), 8).shape == (1, 8)
    # A sub-axis: 'axis_0':(1)2 is the major half of axis_0 (4 = 2 x 2): rows 2 apart.
    assert replica_groups(line % (mesh % "'axis_0':(1)2"), 8).tolist() == [
        [0, 4],
        [1, 5],
        [2, 6],
        [3, 7],
    ]
    transposed = "mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_0'}"
    assert replica_groups(line % transposed, 8).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    explicit = "mesh['a'=2,'b'=2], device_ids=(3,1,0,2) {'b'}"
    assert replica_groups(line % explicit, 4).tolist() == [[3, 1], [0, 2]]
    with pytest.raises(ValueError, match="Cannot read the replica groups"):
        replica_groups(line % "mesh[bad", 8)
