"""The chunked aggregate over group gradients against numpy references and the
straightforward path.

``chunked_aggregate_grads`` must give, leaf by leaf, ``aggregate(grouped_grads(...) +
decay * params)`` with the same loss, aux and state: exactly for leaves it does not chunk,
and to float32 round-off for chunked dense kernels (their group gradients are sums of the
same products in another blocking: the tolerance is 1e-6 of the leaf's largest value).
Against numpy: exactly, on a network whose every product and sum is exact in float32
(dyadic values, a linear loss), so that no summation order can change a bit; and to 1e-5
of the leaf's largest value for the cross-entropy MLP (numpy's forward and backward pass
in float64, ``np.median`` over the groups).
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


def _dense_layers(params) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted((n for n in params if n.startswith("hidden")), key=lambda n: int(n[6:]))
    return [
        (np.asarray(params[n]["kernel"], np.float64), np.asarray(params[n]["bias"], np.float64))
        for n in (*names, "logits")
    ]


def _numpy_group_grads(layers, x, dlogits_fn, k):
    """Per-group gradients ``[k, ...]`` of a ReLU MLP in float64 numpy: group ``j`` holds
    examples ``j, j + k, ...`` (column-major, as ``group_batch``); ``dlogits_fn(logits,
    rows)`` is the gradient of the group's loss with respect to its logits."""
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    out = [([], []) for _ in layers]
    for j in range(k):
        rows = np.arange(j, x.shape[0], k)
        acts, pre = [x[rows]], []
        for i, (w, b) in enumerate(layers):
            z = acts[-1] @ w + b
            pre.append(z)
            acts.append(np.maximum(z, 0.0) if i < len(layers) - 1 else z)
        delta = dlogits_fn(acts[-1], rows)
        for i in reversed(range(len(layers))):
            out[i][0].append(acts[i].T @ delta)
            out[i][1].append(delta.sum(0))
            if i:
                delta = (delta @ layers[i][0].T) * (pre[i - 1] > 0)
    return [(np.stack(gw), np.stack(gb)) for gw, gb in out]


def _as_params(names, leaves):
    return {n: {"kernel": w, "bias": b} for n, (w, b) in zip(names, leaves, strict=True)}


@pytest.mark.parametrize("k, rows", [(3, None), (5, 7), (15, 5)])
def test_median_equals_numpy_exactly_on_exact_arithmetic(monkeypatch, k, rows):
    # Dyadic inputs and parameters (multiples of 1/4, at most 1) and a linear loss with
    # dyadic coefficients: every product and partial sum is a float32 number, so the chunked
    # median must equal numpy's median of float64 group gradients bit for bit. ``rows``: a
    # budget of that many kernel rows (blocks of 5 of the 25 inputs), else the default blocks.
    if rows is not None:
        monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * k * 24 * rows)
    model = get_model("mlp", num_classes=6, hidden=(24, 16))
    shapes = model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))["params"]
    rng = np.random.default_rng(k)
    params = jax.tree.map(
        lambda p: jnp.asarray(rng.integers(-4, 5, p.shape) / 4, jnp.float32), shapes
    )
    n = 4 * k  # 4 examples per group: the loss's 1/4 is exact
    image = rng.integers(-4, 5, (n, 5, 5, 1)) / 4
    coef = rng.integers(-4, 5, (n, 6)) / 4
    batch = {"image": jnp.asarray(image, jnp.float32), "coef": jnp.asarray(coef, jnp.float32)}

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"])
        return jnp.sum(logits * batch["coef"]) / batch["coef"].shape[0]

    assert chunked.chunked_kernels(loss_fn, params, batch, num_groups=k) == (
        ("hidden1",),
        ("hidden2",),
        ("logits",),
    )
    got = jax.jit(chunked.chunked_aggregate_grads(loss_fn, k))(params, batch).grads
    grouped = _numpy_group_grads(
        _dense_layers(params), image, lambda logits, rows: coef[rows] / len(rows), k
    )
    want = _as_params(
        ("hidden1", "hidden2", "logits"),
        [(np.median(gw, axis=0), np.median(gb, axis=0)) for gw, gb in grouped],
    )
    for name in want:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(
                np.asarray(got[name][leaf], np.float64), want[name][leaf], f"{name}/{leaf}"
            )


def test_the_study_mlp_at_15_groups_against_numpy():
    # The median study's MLP (784-2048-10) at 360 examples per update, k = 15: numpy's
    # float64 cross-entropy gradients of each group and their median.
    k, n = 15, 360
    model = get_model("mlp", num_classes=10, hidden=(2048,))
    params = model.init(jax.random.key(7), jnp.zeros((1, 28, 28, 1)))["params"]
    batch = _batch(n, (28, 28, 1), seed=7)
    loss_fn = _mlp_loss(model)
    got = jax.jit(
        lambda p, b: chunked.chunked_aggregate_grads(loss_fn, k, has_aux=True)(p, b, {}).grads
    )(params, batch)
    labels = np.asarray(batch["label"])

    def dlogits(logits, rows):
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(rows)), labels[rows]] -= 1.0
        return p / len(rows)

    grouped = _numpy_group_grads(_dense_layers(params), np.asarray(batch["image"]), dlogits, k)
    for name, (gw, gb) in zip(("hidden1", "logits"), grouped, strict=True):
        for leaf, g in (("kernel", gw), ("bias", gb)):
            want = np.median(g, axis=0)
            err = np.max(np.abs(np.asarray(got[name][leaf], np.float64) - want))
            assert err <= 1e-5 * np.max(np.abs(want)), (name, leaf, err)


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


def test_block_rows_divide_the_kernel_where_they_can(monkeypatch):
    # The study's MLP at k = 15: a budget of 17 rows of 784 -> 16 (49 blocks); a kernel that
    # fits the budget is one block; no divisor from half the budget up -> the budget rounded
    # down to a multiple of 8 (97 rows, budget 13 -> 8), or kept below 8 (49 rows, budget 6).
    assert chunked._chunk_rows(15, 2048, 784) == 16
    assert chunked._chunk_rows(15, 10, 2048) == 2048
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 3 * 48 * 13)
    assert chunked._chunk_rows(3, 48, 97) == 8
    assert chunked._chunk_rows(3, 48, 91) == 13
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 3 * 48 * 6)
    assert chunked._chunk_rows(3, 48, 49) == 6
    assert chunked._chunk_rows(3, 48, 64) == 4


def test_small_blocks_cover_every_row(monkeypatch):
    # Blocks of 6 rows over 49 inputs (no divisor of 49 from 3 to 6): the last block
    # overlaps the one before it.
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 3 * 48 * 6)
    model = get_model("mlp", num_classes=10, hidden=(48,))
    params = model.init(jax.random.key(1), jnp.zeros((1, 7, 7, 1)))["params"]
    batch = _batch(12, (7, 7, 1), seed=1)
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
