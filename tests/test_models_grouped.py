"""Grouped gradients (the M3 path) through every convnet family with BatchNorm.

``cgh_jax.grouped_grads`` vmaps the loss over the groups of a batch. For a model with
BatchNorm in training mode each group must be normalised with its own batch statistics
(as a separate SGD mini-batch would be) and the new running statistics of the groups
must be averaged. Checked here against a hand loop over the groups, for the tiny
variant of each family (ResNet, VGG with BN, Inception-V3), with dropout rngs split
per group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cgh_jax.models import get_model
from cgh_jax.optim import grouped_grads

NUM_GROUPS = 3
TINY = {
    "resnet_tiny": ("bn_init",),
    "vgg_tiny": ("bn1_1",),
    "inception_tiny": ("Conv2d_1a_3x3", "bn"),
}
SIZES = {"resnet_tiny": 32, "vgg_tiny": 32, "inception_tiny": 75}


def _loss_fn(model):
    def loss_fn(params, batch, batch_stats, rng=None):
        logits, new_state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new_state

    return loss_fn


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("name", list(TINY))
def test_grouped_grads_use_per_group_batch_statistics(name):
    # float64: BatchNorm over a 1x1 map of 2 examples per group is ill-conditioned, so the
    # float32 rounding differences between the vmapped and the looped convolutions get
    # amplified; in float64 the two paths agree to about 1e-7 (the logits and the loss
    # stay float32).
    with jax.enable_x64(True):
        _check_grouped_against_loop(name)


def _check_grouped_against_loop(name):
    size = SIZES[name]
    model = get_model(name, num_classes=10, dtype=jnp.float64, param_dtype=jnp.float64)
    # rbg keys compile the init much faster on a CPU; the dropout key stays threefry,
    # whose bits are the same under vmap as in a loop.
    variables = jax.jit(model.init)(
        jax.random.key(0, impl="rbg"), jnp.zeros((1, size, size, 3), jnp.float64)
    )
    params, stats = variables["params"], variables["batch_stats"]
    images = jax.random.normal(jax.random.key(1), (2 * NUM_GROUPS, size, size, 3), jnp.float64)
    # Shift each group's images differently so that the group statistics differ clearly.
    images = images + jnp.tile(jnp.arange(NUM_GROUPS, dtype=jnp.float64), 2)[:, None, None, None]
    batch = {"image": images, "label": jnp.arange(2 * NUM_GROUPS) % 10}
    rng = jax.random.key(2)
    loss_fn = _loss_fn(model)

    grouped = jax.jit(grouped_grads(loss_fn, NUM_GROUPS, has_state=True))
    out = grouped(params, batch, stats, rng=rng)

    # Hand loop: group j = examples j, j + k, ...; dropout key j of split(rng, k).
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda p, b, s, r: loss_fn(p, b, s, rng=r), has_aux=True)
    )
    keys = jax.random.split(rng, NUM_GROUPS)
    losses, grads, states = [], [], []
    for j in range(NUM_GROUPS):
        group = jax.tree.map(lambda a, j=j: a[j::NUM_GROUPS], batch)
        (loss, state), grad = value_and_grad(params, group, stats, keys[j])
        losses.append(loss)
        grads.append(grad)
        states.append(state)

    np.testing.assert_allclose(out.loss, np.stack(losses), rtol=1e-6)
    expected_grads = jax.tree.map(lambda *g: np.stack(g), *grads)
    # Absolute tolerance on the scale of the whole gradient: some leaves are zero up to
    # rounding (a conv bias right before BatchNorm has no effect on the loss).
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(expected_grads))
    for got, want in zip(jax.tree.leaves(out.grads), jax.tree.leaves(expected_grads), strict=True):
        assert got.shape == (NUM_GROUPS, *want.shape[1:])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * scale)
    expected_state = jax.tree.map(lambda *s: np.mean(np.stack(s), axis=0), *states)
    for got, want in zip(jax.tree.leaves(out.state), jax.tree.leaves(expected_state), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)

    # The groups' statistics really are per group: compared with one full-batch update,
    # the first BN layer's running mean is the same (mean of the group means) while its
    # running variance is smaller (mean within-group variance < total variance).
    _, full = jax.jit(lambda p, b, s: loss_fn(p, b, s, rng=rng))(params, batch, stats)
    path = TINY[name]
    got, full_bn = _get(out.state["batch_stats"], path), _get(full["batch_stats"], path)
    np.testing.assert_allclose(got["mean"], full_bn["mean"], rtol=1e-4, atol=1e-6)
    assert bool(jnp.all(got["var"] < full_bn["var"]))
