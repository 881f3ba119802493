"""M3 layouts in the trainer on 8 fake CPU devices.

The communication-efficient layout (``group_sharded``: row-major groups, median inside the
step, optimizer without a median) must give the parameters of the straightforward path
(``grouped_grads`` + ``m3_sgd``) on the same groups: the straightforward step is fed the
batch reordered so that its column-major groups are the row-major groups of the sharded
step (with BatchNorm, whose statistics group_sharded takes per device chunk, the reference
normalizes per chunk too). ``auto`` must resolve as ``cgh_jax.spec.optimizer`` documents.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cgh_jax import configlib, sharding, train
from cgh_jax import step as step_lib
from cgh_jax.models import get_model
from cgh_jax.optim import aligned_plan, grouped_grads
from cgh_jax.spec import optimizer as spec_lib

K = 3


def _optimizer(**overrides):
    # BatchNorm statistics as the mean over groups (chunks), as _chunk_reference makes them;
    # the sequential option is checked in tests/test_optim_grads.py and test_sharded_m3.py.
    base = dict(
        name="m3",
        learning_rate=0.1,
        num_groups=K,
        weight_decay=1e-3,
        momentum=0.9,
        m3_batch_stats="mean",
    )
    return ml_collections.ConfigDict({**base, **overrides})


def _spec(layout=None, **overrides):
    spec = spec_lib.parse(_optimizer(**overrides), batch_size=8)
    return spec.fix(layout=layout or "vmap", steps_per_epoch=10, num_epochs=1)


def _row_to_column_major(x):
    """Reorders a batch so that column-major group j = the j-th contiguous block of x."""
    return jnp.swapaxes(x.reshape(K, -1, *x.shape[1:]), 0, 1).reshape(x.shape)


def _run(model, layout, batches, mesh, image_shape):
    spec = _spec(layout)
    state = step_lib.create_train_state(
        model, spec.optimizer(), image_shape, jax.random.PRNGKey(0), mesh
    )
    has_state = bool(jax.tree.leaves(state.batch_stats))
    step = step_lib.make_train_step(
        model, spec, has_state=has_state, mesh=mesh, vectorize=layout != "loop"
    )
    replicated = sharding.replicated_sharding(mesh)
    step = jax.jit(
        step,
        in_shardings=(replicated, sharding.batch_sharding(mesh)),
        out_shardings=(replicated, replicated, replicated),
    )
    history = []
    for batch in batches:
        if layout not in spec_lib.SHARDED_LAYOUTS:
            batch = jax.tree.map(_row_to_column_major, batch)
        state, metrics, finite = step(state, batch)
        assert bool(finite)
        history.append({k: float(v) for k, v in metrics.compute().items()})
    return state, history


def _batches(num, size, image_shape, classes=10):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.normal(size=(size, *image_shape)).astype(np.float32),
            "label": rng.integers(0, classes, size).astype(np.int32),
        }
        for _ in range(num)
    ]


def _assert_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture
def fast_compile():
    """XLA without most optimizations: these small runs are dominated by compile time."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _assert_same_run(fast, ref, fast_log, ref_log, model, image_shape, mesh):
    assert int(fast.step) == int(ref.step) == len(fast_log)
    _assert_close(fast.params, ref.params, rtol=2e-5, atol=2e-6)
    _assert_close(fast.opt_state, ref.opt_state, rtol=2e-4, atol=1e-5)
    _assert_close(fast.batch_stats, ref.batch_stats, rtol=2e-5, atol=2e-6)
    for got, want in zip(fast_log, ref_log, strict=True):
        for key in ("loss", "top1", "grad_norm", "update_norm"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)
    # The parameters moved (the comparison is not between two untouched states).
    tx = _spec("vmap").optimizer()
    init = step_lib.create_train_state(model, tx, image_shape, jax.random.PRNGKey(0), mesh)
    moved = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(init.params), strict=True)
    ]
    assert max(moved) > 1e-3


def test_group_sharded_mlp_equals_straightforward_m3_on_8_devices():
    """8 devices, 3 groups (two devices straddle a group boundary) vs grouped_grads + m3."""
    mesh = sharding.create_mesh(8)
    image_shape = (4, 4, 1)
    model = get_model("mlp", num_classes=10, hidden=(16,))
    batches = _batches(3, 24, image_shape)
    fast, fast_log = _run(model, "group_sharded", batches, mesh, image_shape)
    ref, ref_log = _run(model, "vmap", batches, mesh, image_shape)
    assert set(fast_log[0]) >= {"loss", "top1", "grad_norm", "update_norm", "param_norm"}
    _assert_same_run(fast, ref, fast_log, ref_log, model, image_shape, mesh)


def test_group_aligned_mlp_equals_straightforward_m3_on_8_devices():
    """group_aligned (groups of whole devices, single-example slots for a model without
    BatchNorm) vs grouped_grads + m3 on the batch reordered into the plan's groups."""
    mesh = sharding.create_mesh(8)
    image_shape = (4, 4, 1)
    model = get_model("mlp", num_classes=10, hidden=(16,))
    batches = _batches(3, 24, image_shape)
    fast, fast_log = _run(model, "group_aligned", batches, mesh, image_shape)
    chunk = aligned_plan.chunk_size_for(24, 8, K, independent_examples=True)
    groups = aligned_plan.aligned_plan(24, 8, K, chunk).group_examples()
    # _run turns contiguous thirds into grouped_grads' column-major groups.
    regrouped = [jax.tree.map(lambda x: x[groups.reshape(-1)], b) for b in batches]
    ref, ref_log = _run(model, "vmap", regrouped, mesh, image_shape)
    _assert_same_run(fast, ref, fast_log, ref_log, model, image_shape, mesh)


def _chunk_reference(model, batches, num_devices, image_shape):
    """Straightforward M3 with BatchNorm statistics per device chunk, on one device.

    group_sharded cuts the global batch into ``D k`` contiguous chunks (chunk ``v`` is on
    device ``v // k``, in group ``v // D``) and normalizes each chunk with its own
    statistics. Reference: ``grouped_grads`` with ``D k`` groups (one per chunk) on the
    batch reordered so that its column-major group ``v`` is chunk ``v``; group ``j``'s
    gradient is the mean of its ``D`` chunk gradients; then the grouped ``m3_sgd`` chain.
    """
    chunks = num_devices * K
    tx = _spec("loop").optimizer()
    mesh = sharding.create_mesh(1)
    state = step_lib.create_train_state(model, tx, image_shape, jax.random.PRNGKey(0), mesh)
    loss_fn = step_lib.make_loss_fn(model, has_state=True)
    chunk_fn = grouped_grads(loss_fn, chunks, has_aux=True, has_state=True)

    def reorder(x):
        return jnp.swapaxes(x.reshape(chunks, -1, *x.shape[1:]), 0, 1).reshape(x.shape)

    @jax.jit
    def step(state, batch):
        g = chunk_fn(state.params, jax.tree.map(reorder, batch), state.batch_stats)
        groups = jax.tree.map(lambda x: x.reshape(K, num_devices, *x.shape[1:]).mean(1), g.grads)
        updates, opt_state = tx.update(groups, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        median = jax.tree.map(lambda x: jnp.median(x, axis=0), groups)
        log = {
            "loss": jnp.mean(g.loss),
            "top1": jnp.mean(g.aux["top1"]),
            "grad_norm": optax.global_norm(median),
            "update_norm": optax.global_norm(updates),
        }
        new = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=g.state["batch_stats"],
            opt_state=opt_state,
        )
        return new, log

    history = []
    for batch in batches:
        state, log = step(state, batch)
        history.append({k: float(v) for k, v in log.items()})
    return state, history


def test_group_sharded_resnet_equals_chunked_straightforward_m3_on_8_devices(fast_compile):
    """BatchNorm: parameters, running statistics and momentum of resnet_tiny."""
    mesh = sharding.create_mesh(8)
    image_shape = (8, 8, 3)
    model = get_model("resnet_tiny", num_classes=10)
    # Chunks of 8 examples: BatchNorm over 2 examples (1x1 maps in the last stage) is
    # degenerate enough to amplify rounding differences beyond any useful tolerance.
    batches = _batches(2, 192, image_shape)
    fast, fast_log = _run(model, "group_sharded", batches, mesh, image_shape)
    ref, ref_log = _chunk_reference(model, batches, 8, image_shape)
    assert jax.tree.leaves(fast.batch_stats)
    _assert_same_run(fast, ref, fast_log, ref_log, model, image_shape, mesh)


def _resolve(layout="auto", **kw):
    args = dict(num_devices=8, has_conv=False, has_state=False, platform="cpu")
    update_batch = kw.pop("update_batch", 3 * 256)
    args.update(kw)
    spec = spec_lib.parse(_optimizer(m3_layout=layout), batch_size=update_batch // K)
    return spec.resolve_layout(**args)


def test_auto_resolution():
    # One device: the grouped path; loop for convnets on CPU, vmap otherwise.
    assert _resolve(num_devices=1)[0] == "vmap"
    assert _resolve(num_devices=1, has_conv=True)[0] == "loop"
    assert _resolve(num_devices=1, has_conv=True, platform="gpu")[0] == "vmap"
    # Several devices: resolve_layout's choice.
    assert _resolve()[0] == "group_sharded"
    assert _resolve(
        num_devices=3, update_batch=3 * 96, has_conv=True, has_state=True, platform="gpu"
    )[0] == ("group_sharded")
    assert _resolve(num_devices=2, update_batch=3 * 64)[0] == "reduce_scatter"
    # 16 devices: group_aligned where its devices evaluate <= 1.1x their share of examples
    # (single-example slots without BatchNorm: 13/12); BatchNorm chunks pad to 4/3.
    layout, reason = _resolve(num_devices=16, update_batch=3 * 64)
    assert layout == "group_aligned" and "1.083x" in reason
    layout, reason = _resolve(num_devices=16, update_batch=3 * 64 * 4, has_state=True)
    assert layout == "group_sharded" and "1.333x" in reason
    assert _resolve("group_aligned", num_devices=16, update_batch=3 * 64)[0] == "group_aligned"
    # Fallbacks, with the reason.
    layout, reason = _resolve(update_batch=3 * 20)
    assert layout == "vmap" and "not a multiple of devices x num_groups = 8 x 3" in reason
    layout, reason = _resolve(update_batch=3 * 8, has_conv=True, has_state=True)
    assert layout == "loop" and "BatchNorm" in reason
    # Explicit layouts are kept (or rejected with the reason).
    assert _resolve("loop")[0] == "loop"
    assert _resolve("reduce_scatter")[0] == "reduce_scatter"

    def check(layout, num_devices, update_batch):
        cfg = spec_lib.parse(_optimizer(m3_layout=layout), batch_size=update_batch // K)
        cfg.check_layout(num_devices)

    with pytest.raises(ValueError, match="multiple of devices x num_groups"):
        check("group_sharded", 8, 3 * 20)
    with pytest.raises(ValueError, match="num_groups <= number of devices"):
        check("group_sharded", 2, 3 * 64)
    check("reduce_scatter", 2, 3 * 64)


def test_invalid_layout_lists_the_valid_ones():
    valid = "auto, vmap, loop, chunked, reduce_scatter, group_sharded, group_aligned"
    with pytest.raises(ValueError, match=valid):
        spec_lib.parse(_optimizer(m3_layout="ring"), batch_size=8)
    cfg = configlib.optimizer_config(name="m3")
    assert cfg.m3_layout == "auto"


def test_sharded_chain_is_m3_sgd_on_the_median():
    """Weight decay + SGD on the median = m3_sgd on the group gradients (same state tree)."""
    grouped = _spec("vmap").optimizer()
    sharded = _spec("group_sharded").optimizer()
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    s1, s2 = grouped.init(params), sharded.init(params)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    for _ in range(3):
        g = {"w": jnp.asarray(rng.normal(size=(K, 4, 3)), jnp.float32)}
        med = {"w": jnp.asarray(np.median(np.asarray(g["w"]), axis=0))}
        u1, s1 = grouped.update(g, s1, params)
        u2, s2 = sharded.update(med, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6, atol=1e-7)


def test_train_and_evaluate_uses_group_sharded_on_8_devices(tmp_path, caplog):
    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="sklearn_digits", data_dir=str(tmp_path / "tfds"), eval_subset_size=48
    )
    cfg.model = dict(name="mlp", hidden=(16,), dtype="float32")
    cfg.optimizer = configlib.optimizer_config(name="m3", learning_rate=0.1)
    cfg.batch_size = 16
    cfg.max_steps = 2
    cfg.eval_batch_size = 48
    cfg.log_every_steps = 1
    # absl's logger keeps its own level (other tests may have lowered its verbosity).
    with caplog.at_level("INFO", logger="absl"):
        result = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert "M3 layout group_sharded" in caplog.text
    assert result["step"] == 2
    assert 0.0 <= result["test/top1"] <= 1.0
