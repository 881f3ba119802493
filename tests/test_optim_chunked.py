"""The chunked aggregate over group gradients against the straightforward path.

``chunked_aggregate_grads`` must give, leaf by leaf, ``aggregate(grouped_grads(...) +
decay * params)`` with the same loss, aux and state: exactly for leaves it does not chunk,
and to float32 round-off for chunked dense kernels (their group gradients are sums of the
same products in another blocking: the tolerance is 1e-6 of the leaf's largest value).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cgh_jax import sharding
from cgh_jax import step as step_lib
from cgh_jax.models import get_model
from cgh_jax.optim import chunked, grouped_grads
from cgh_jax.spec import optimizer as optimizer_lib

RTOL = 1e-6  # of the leaf's largest magnitude


def _batch(n, shape, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, *shape)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, classes, n), jnp.int32),
    }


def _assert_close(got, want):
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b))), 1e-30)
        assert np.max(np.abs(a - b)) <= RTOL * scale, jax.tree_util.keystr(path)


def _reference(loss_fn, k, name, params, batch, *args, decay=0.0, **kwargs):
    g = grouped_grads(loss_fn, k, **kwargs)(params, batch, *args)
    agg = chunked.AGGREGATES[name]
    grads = jax.tree.map(lambda x, p: agg(x + decay * p if decay else x), g.grads, params)
    return g._replace(grads=grads)


def _mlp_loss(model):
    return step_lib.make_loss_fn(model, has_state=False)


@pytest.mark.parametrize("name", list(chunked.AGGREGATES))
@pytest.mark.parametrize("k, decay", [(3, 0.0), (5, 0.01), (15, 0.0)])
def test_mlp_matches_the_straightforward_path(name, k, decay):
    model = get_model("mlp", num_classes=10, hidden=(64, 48))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    batch = _batch(4 * k, (8, 8, 1))
    loss_fn = _mlp_loss(model)
    assert chunked.chunked_kernels(loss_fn, params, batch, {}, num_groups=k) == (
        ("hidden1",),
        ("hidden2",),
        ("logits",),
    )
    got = jax.jit(
        lambda p, b: chunked.chunked_aggregate_grads(loss_fn, k, name, has_aux=True, decay=decay)(
            p, b, {}
        )
    )(params, batch)
    want = _reference(loss_fn, k, name, params, batch, {}, decay=decay, has_aux=True)
    _assert_close(got.grads, want.grads)
    np.testing.assert_array_equal(got.loss, want.loss)
    np.testing.assert_array_equal(got.aux["top1"], want.aux["top1"])


def test_small_blocks_cover_every_row(monkeypatch):
    # Blocks of 7 rows over 64 inputs: the last block overlaps the one before it.
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 3 * 48 * 7)
    model = get_model("mlp", num_classes=10, hidden=(48,))
    params = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))["params"]
    batch = _batch(12, (8, 8, 1), seed=1)
    loss_fn = _mlp_loss(model)
    got = chunked.chunked_aggregate_grads(loss_fn, 3, has_aux=True)(params, batch, {})
    _assert_close(got.grads, _reference(loss_fn, 3, "m3", params, batch, {}, has_aux=True).grads)


class _Shared(nn.Module):
    """A dense layer applied twice (its kernel's gradient has two terms), one on 3-D
    inputs, and a kernel the loss also reads directly."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], 4, -1)  # [B, 4, 16]: dense on the last axis
        shared = nn.Dense(16, name="shared")
        x = nn.relu(shared(nn.relu(shared(x))))
        x = nn.Dense(8, name="wide")(x).reshape(x.shape[0], -1)
        return nn.Dense(10, name="head")(x)


def test_kernels_used_twice_or_elsewhere_take_the_straightforward_path():
    model = _Shared()
    params = model.init(jax.random.key(2), jnp.zeros((1, 8, 8, 1)))["params"]

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return ce + 1e-3 * jnp.sum(params["head"]["kernel"] ** 2)  # the head's kernel again

    batch = _batch(15, (8, 8, 1), seed=2)
    assert chunked.chunked_kernels(loss_fn, params, batch, num_groups=5) == (("wide",),)
    got = chunked.chunked_aggregate_grads(loss_fn, 5)(params, batch)
    _assert_close(got.grads, _reference(loss_fn, 5, "m3", params, batch).grads)


def test_batchnorm_state_dropout_and_the_loop_layout():
    # A CNN with BatchNorm and dropout: per-group statistics (the sequential update of k
    # forward passes), per-group dropout keys, the groups computed in a loop.
    model = get_model("cnn", num_classes=10, batch_norm=True, dropout_rate=0.5, hidden=32)
    variables = model.init(jax.random.key(3), jnp.zeros((1, 8, 8, 3)))
    loss_fn = step_lib.make_loss_fn(model, has_state=True)
    batch = _batch(9, (8, 8, 3), seed=3)
    options = dict(
        has_aux=True,
        has_state=True,
        vectorize=False,
        batch_stats_update="sequential",
        state_argnum=0,
        state_collection="batch_stats",
    )
    rng = jax.random.key(4)
    params, stats = variables["params"], variables["batch_stats"]
    got = chunked.chunked_aggregate_grads(loss_fn, 3, "median_at_mean_norm", **options)(
        params, batch, stats, rng=rng
    )
    g = grouped_grads(loss_fn, 3, **options)(params, batch, stats, rng=rng)
    want = jax.tree.map(chunked.AGGREGATES["median_at_mean_norm"], g.grads)
    _assert_close(got.grads, want)
    for a, b in zip(jax.tree.leaves(got.state), jax.tree.leaves(g.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert chunked.chunked_kernels(loss_fn, params, batch, stats, num_groups=3, rng=rng) == (
        ("fc1",),
        ("fc2",),
    )


def test_low_precision_dense_layers_are_not_chunked():
    model = get_model("mlp", num_classes=10, hidden=(32,), dtype=jnp.bfloat16)
    params = model.init(jax.random.key(5), jnp.zeros((1, 8, 8, 1)))["params"]
    batch = _batch(9, (8, 8, 1), seed=5)
    loss_fn = _mlp_loss(model)
    assert chunked.chunked_kernels(loss_fn, params, batch, {}, num_groups=3) == ()
    got = chunked.chunked_aggregate_grads(loss_fn, 3, has_aux=True)(params, batch, {})
    _assert_close(got.grads, _reference(loss_fn, 3, "m3", params, batch, {}, has_aux=True).grads)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="aggregate='mean'"):
        chunked.chunked_aggregate_grads(lambda p, b: 0.0, 3, "mean")
    with pytest.raises(ValueError, match="decay must be a finite number"):
        chunked.chunked_aggregate_grads(lambda p, b: 0.0, 3, decay=float("nan"))


@pytest.mark.parametrize("name", ["m3", "mean_at_median_norm"])
def test_trainer_step_chunked_equals_vmap(name):
    # With weight decay (after the median for M3, before the aggregate for the control)
    # and momentum.
    mesh = sharding.create_mesh(1)
    model = get_model("mlp", num_classes=10, hidden=(64,))
    facts = step_lib.model_facts(model, (8, 8, 1), mesh)
    states = {}
    for layout in ("vmap", "chunked"):
        cfg = dict(
            name=name,
            learning_rate=0.1,
            num_groups=5,
            weight_decay=0.01,
            momentum=0.9,
            m3_layout=layout,
        )
        spec = optimizer_lib.parse(cfg, batch_size=4).fix(
            layout=layout, steps_per_epoch=4, num_epochs=1
        )
        assert spec.aggregate_in_step == (layout == "chunked")
        steps = step_lib.build_steps(model, spec, mesh, facts=facts, with_top5=True, platform="cpu")
        state = step_lib.create_train_state(model, steps.tx, (8, 8, 1), jax.random.PRNGKey(0), mesh)
        for i in range(2):
            batch = sharding.host_batch_to_global(_batch(20, (8, 8, 1), seed=10 + i), mesh)
            state, _, finite = steps.train(state, batch)
            assert bool(finite)
        states[layout] = state
    for a, b in zip(
        jax.tree.leaves(states["chunked"]), jax.tree.leaves(states["vmap"]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
