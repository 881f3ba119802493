"""Tests of cgh_jax.models: architectures, shapes, BatchNorm modes, dtypes, initialisers.

Full-size models are only traced (``jax.eval_shape``); real forward passes use the tiny
variants. Parameters of the tiny models are initialised with an ``rbg`` key under
``jax.jit``: the threefry generator's init programs take several times longer to compile
on a CPU, and the key type does not change what is tested.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cgh_jax.models import adaptive_avg_pool, get_model, list_models

# torchvision parameter counts at 1000 classes (torchvision.models.*, weights=None).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "inception_v3": 23_834_568,
}
FULL_SIZE = [*TORCHVISION_PARAMS]
TINY = {"resnet_tiny": 32, "vgg_tiny": 32, "inception_tiny": 75}


def _image_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _abstract_variables(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


_JITTED_INITS: dict = {}


def _init(name, shape, seed=0, **kwargs):
    """(model, variables) of ``get_model(name, num_classes=10, **kwargs)``; compiles once."""
    cache_key = (name, shape, tuple(sorted(kwargs.items())))
    model = get_model(name, num_classes=10, **kwargs)
    if cache_key not in _JITTED_INITS:
        _JITTED_INITS[cache_key] = jax.jit(model.init)
    init = _JITTED_INITS[cache_key]
    return model, init(jax.random.key(seed, impl="rbg"), jnp.zeros(shape))


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("name", FULL_SIZE)
def test_parameter_count_equals_torchvision(name):
    model = get_model(name, num_classes=1000)
    size = _image_size(name)
    variables = _abstract_variables(model, (1, size, size, 3))
    assert _count(variables["params"]) == TORCHVISION_PARAMS[name]
    has_bn = name.startswith(("resnet", "inception")) or name.endswith("_bn")
    assert ("batch_stats" in variables) == has_bn


def test_inception_aux_head_parameter_count():
    model = get_model("inception_v3", num_classes=1000, aux_logits=True)
    variables = _abstract_variables(model, (1, 299, 299, 3))
    assert _count(variables["params"]) == 27_161_264


def test_small_net_parameter_counts():
    # 784*2048 + 2048 + 2048*10 + 10 and the 3x256 net of Coherent Gradients.
    mlp = get_model("mlp", num_classes=10)
    assert _count(_abstract_variables(mlp, (1, 28, 28, 1))["params"]) == 1_628_170
    deep = get_model("mlp", num_classes=10, hidden=(256, 256, 256))
    expected = 784 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 10 + 10
    assert _count(_abstract_variables(deep, (1, 28, 28, 1))["params"]) == expected
    # conv 3x3x1x32 + 32, 3x3x32x64 + 64, dense 7*7*64 -> 128, 128 -> 10.
    cnn = get_model("cnn", num_classes=10)
    expected = 9 * 32 + 32 + 9 * 32 * 64 + 64 + 3136 * 128 + 128 + 128 * 10 + 10
    assert _count(_abstract_variables(cnn, (1, 28, 28, 1))["params"]) == expected


@pytest.mark.parametrize("name", FULL_SIZE)
def test_output_shapes(name):
    model = get_model(name, num_classes=7)
    size = _image_size(name)
    variables = _abstract_variables(model, (1, size, size, 3))
    sizes = [size] if name == "inception_v3" else [size, 32]
    for s in sizes:
        x = jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32)
        out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
        assert out.shape == (2, 7) and out.dtype == jnp.float32
    # Training mode (dropout rng, BN stats) traces too.
    x = jax.ShapeDtypeStruct((2, sizes[-1], sizes[-1], 3), jnp.float32)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
        ),
        variables,
        x,
    )
    assert out.shape == (2, 7)


def test_resnet_stems_feature_map_sizes():
    for stem, expected in (("imagenet", (2, 1, 1, 8 * 8)), ("cifar", (2, 4, 4, 8 * 8))):
        model = get_model("resnet_tiny", num_classes=10, stem=stem)
        variables = _abstract_variables(model, (1, 32, 32, 3))
        _, inter = jax.eval_shape(
            lambda v, x, m=model: m.apply(
                v, x, capture_intermediates=True, mutable=["intermediates"]
            ),
            variables,
            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
        )
        last = inter["intermediates"]["stage4_block1"]["__call__"][0]
        assert last.shape == expected, stem
    with pytest.raises(ValueError, match="stem"):
        bad = get_model("resnet_tiny", num_classes=10, stem="deep")
        _abstract_variables(bad, (1, 32, 32, 3))


def test_inception_aux_logits_modes():
    model = get_model("inception_v3", num_classes=5, aux_logits=True)
    variables = _abstract_variables(model, (1, 299, 299, 3))
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    (logits, aux), _ = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
        ),
        variables,
        x,
    )
    assert logits.shape == aux.shape == (2, 5)
    assert logits.dtype == aux.dtype == jnp.float32
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 5)


def test_input_errors():
    inception = get_model("inception_v3", num_classes=10)
    with pytest.raises(ValueError, match="at least 75x75"):
        _abstract_variables(inception, (1, 32, 32, 3))
    aux = get_model("inception_tiny", num_classes=10, aux_logits=True)
    with pytest.raises(ValueError, match="aux_logits"):
        _abstract_variables(aux, (1, 75, 75, 3))
    vgg = get_model("vgg11", num_classes=10)
    with pytest.raises(ValueError, match="at least 32x32"):
        _abstract_variables(vgg, (1, 16, 16, 3))
    with pytest.raises(ValueError, match="channels"):
        _abstract_variables(get_model("resnet18", num_classes=10), (1, 32, 32))


# ----------------------------------------------------------------------------- registry


def test_registry_names():
    expected = {
        *FULL_SIZE,
        "mlp",
        "cnn",
        "resnet_tiny",
        "vgg_tiny",
        "inception_tiny",
    }
    assert set(list_models()) == expected


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_model("resnet19", num_classes=10)
    message = str(err.value)
    assert "resnet19" in message
    for name in list_models():
        assert name in message


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet18", num_classes=10.0)
    with pytest.raises(ValueError, match="no argument.*depth.*Valid arguments"):
        get_model("resnet18", num_classes=10, depth=3)
    with pytest.raises(ValueError, match="dtype"):
        get_model("mlp", num_classes=10, dtype="not-a-dtype")
    with pytest.raises(ValueError, match="floating dtype"):
        get_model("mlp", num_classes=10, dtype=jnp.int32)
    assert get_model("mlp", num_classes=10, dtype="bfloat16").dtype == jnp.bfloat16


def test_kwargs_override_defaults():
    model = get_model("vgg13_bn", num_classes=10, hidden=512, dropout_rate=0.1)
    assert model.batch_norm and model.hidden == 512 and model.dropout_rate == 0.1
    assert get_model("resnet18", num_classes=10, stem="cifar").stem == "cifar"


# ----------------------------------------------------------------------------- adaptive pooling


def _torch_adaptive_pool_reference(x: np.ndarray, out: int) -> np.ndarray:
    """Loop form of torch.nn.AdaptiveAvgPool2d on NHWC input."""
    b, h, w, c = x.shape
    y = np.zeros((b, out, out, c), np.float64)
    for i in range(out):
        h0, h1 = (i * h) // out, math.ceil((i + 1) * h / out)
        for j in range(out):
            w0, w1 = (j * w) // out, math.ceil((j + 1) * w / out)
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


@pytest.mark.parametrize("in_size,out_size", [(1, 7), (3, 7), (7, 7), (10, 7), (13, 4), (5, 1)])
def test_adaptive_avg_pool_matches_reference(in_size, out_size):
    x = np.random.default_rng(in_size).normal(size=(2, in_size, in_size, 3)).astype(np.float32)
    y = adaptive_avg_pool(jnp.asarray(x), out_size)
    np.testing.assert_allclose(y, _torch_adaptive_pool_reference(x, out_size), rtol=1e-5, atol=1e-6)
    if in_size == 1:  # a 1x1 map is replicated
        np.testing.assert_array_equal(y, np.broadcast_to(x, y.shape))


def test_adaptive_avg_pool_rectangular_and_errors():
    x = jnp.arange(2 * 4 * 6 * 1, dtype=jnp.float32).reshape(2, 4, 6, 1)
    y = adaptive_avg_pool(x, (2, 3))
    np.testing.assert_allclose(y, x.reshape(2, 2, 2, 3, 2, 1).mean(axis=(2, 4)))
    with pytest.raises(ValueError, match="NHWC"):
        adaptive_avg_pool(jnp.zeros((4, 4)), 2)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("name", ["resnet50", "vgg13_bn", "inception_v3", "mlp", "cnn"])
def test_bfloat16_compute_dtype(name):
    model = get_model(name, num_classes=10, dtype=jnp.bfloat16)
    size = {"inception_v3": 299, "mlp": 28, "cnn": 28}.get(name, 32)
    channels = 1 if name in ("mlp", "cnn") else 3
    variables = _abstract_variables(model, (1, size, size, channels))
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    logits, inter = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        ),
        variables,
        jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32),
    )
    assert logits.dtype == jnp.float32
    # Every layer below the top (convs, BN, dense, pools, blocks) computes in bfloat16.
    layer_outputs = {
        "/".join(k[:-1]): v[0]
        for k, v in traverse_util.flatten_dict(inter["intermediates"]).items()
        if len(k) > 1
    }
    assert len(layer_outputs) >= 2
    for path, value in layer_outputs.items():
        assert value.dtype == jnp.bfloat16, path


# ----------------------------------------------------------------------------- tiny models


_FIRST_CONV = {("conv_init",), ("conv1_1",), ("Conv2d_1a_3x3", "conv")}


@pytest.fixture(scope="module", params=list(TINY))
def tiny(request):
    name = request.param
    size = TINY[name]
    model, variables = _init(name, (1, size, size, 3))
    x = jax.random.normal(jax.random.key(1), (6, size, size, 3)) * 2.0 + 0.5
    train_apply = jax.jit(
        lambda v, x, key: model.apply(
            v,
            x,
            train=True,
            rngs={"dropout": key},
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda mdl, _: mdl.scope.path in _FIRST_CONV,
        )
    )
    eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))
    return dict(
        name=name,
        model=model,
        x=x,
        variables=variables,
        train=train_apply,
        eval=eval_apply,
    )


def _first_conv_output(name: str, intermediates):
    if name == "resnet_tiny":
        return intermediates["conv_init"]["__call__"][0]
    if name == "vgg_tiny":
        return intermediates["conv1_1"]["__call__"][0]
    return intermediates["Conv2d_1a_3x3"]["conv"]["__call__"][0]


def _first_bn_stats(name: str, batch_stats):
    if name == "resnet_tiny":
        return batch_stats["bn_init"]
    if name == "vgg_tiny":
        return batch_stats["bn1_1"]
    return batch_stats["Conv2d_1a_3x3"]["bn"]


def test_tiny_train_mode_updates_batch_stats(tiny):
    name, v, x = tiny["name"], tiny["variables"], tiny["x"]
    logits, new = tiny["train"](v, x, jax.random.key(0))
    assert logits.shape == (6, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # Every running statistic moved.
    for old_leaf, new_leaf in zip(
        jax.tree.leaves(v["batch_stats"]), jax.tree.leaves(new["batch_stats"]), strict=True
    ):
        assert not np.allclose(old_leaf, new_leaf)
    # First BN layer: r <- 0.9 r + 0.1 * (biased batch statistic), checked by hand.
    h = np.asarray(_first_conv_output(name, new["intermediates"]), np.float64)
    stats = _first_bn_stats(name, new["batch_stats"])
    np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        stats["var"], 0.9 * 1.0 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )


def test_tiny_eval_mode_keeps_batch_stats_and_is_per_example(tiny):
    v, x = tiny["variables"], tiny["x"]
    _, trained = tiny["train"](v, x, jax.random.key(0))
    v = {**v, "batch_stats": trained["batch_stats"]}
    logits, new = tiny["eval"](v, x)
    for a, b in zip(
        jax.tree.leaves(v["batch_stats"]), jax.tree.leaves(new["batch_stats"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # Eval mode uses the running statistics: an example's logits do not depend on the batch.
    reordered, _ = tiny["eval"](v, x[::-1])
    np.testing.assert_allclose(reordered[::-1], logits, rtol=1e-5, atol=1e-5)
    # ... whereas train mode normalises with the batch statistics.
    half, _ = tiny["train"](v, jnp.concatenate([x[:3], x[:3]]), jax.random.key(0))
    full, _ = tiny["train"](v, x, jax.random.key(0))
    assert not np.allclose(half[:3], full[:3], atol=1e-4)


def test_tiny_deterministic_for_fixed_key(tiny):
    name, v, x = tiny["name"], tiny["variables"], tiny["x"]
    _, again = _init(name, (1, *x.shape[1:]))
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    _, other = _init(name, (1, *x.shape[1:]), seed=1)
    assert not any(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(v["params"]), jax.tree.leaves(other["params"]), strict=True)
        if a.size > 1 and np.std(a) > 0
    )
    first, _ = tiny["train"](v, x, jax.random.key(3))
    second, _ = tiny["train"](v, x, jax.random.key(3))
    np.testing.assert_array_equal(first, second)


# ----------------------------------------------------------------------------- initialisers


def _std_close(x, expected, tol=0.1):
    x = np.asarray(x, np.float64)
    assert abs(x.std() / expected - 1) < tol, (x.std(), expected)
    assert abs(x.mean()) < 4 * expected / math.sqrt(x.size)


def test_resnet_initialisers_match_torchvision():
    params = _init("resnet_tiny", (1, 32, 32, 3))[1]["params"]
    k = params["conv_init"]["kernel"]  # (7, 7, 3, 8): kaiming normal, fan_out = 7*7*8
    _std_close(k, math.sqrt(2.0 / (7 * 7 * 8)))
    k = params["stage4_block1"]["conv2"]["kernel"]  # (3, 3, 64, 64)
    _std_close(k, math.sqrt(2.0 / (3 * 3 * 64)))
    for block in ("stage1_block1", "stage2_block1", "stage4_block1"):
        for bn in ("bn1", "bn2", "downsample_bn"):
            if bn in params[block]:
                np.testing.assert_array_equal(params[block][bn]["scale"], 1.0)
                np.testing.assert_array_equal(params[block][bn]["bias"], 0.0)
    bound = 1 / math.sqrt(64)  # PyTorch Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for leaf in (params["fc"]["kernel"], params["fc"]["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.5 * bound
    zero = _init("resnet_tiny", (1, 32, 32, 3), zero_init_residual=True)[1]["params"]
    for block in ("stage1_block1", "stage2_block1", "stage4_block1"):
        np.testing.assert_array_equal(zero[block]["bn2"]["scale"], 0.0)
        np.testing.assert_array_equal(zero[block]["bn1"]["scale"], 1.0)


def test_vgg_and_inception_initialisers_match_torchvision():
    params = _init("vgg_tiny", (1, 32, 32, 3))[1]["params"]
    _std_close(params["conv5_1"]["kernel"], math.sqrt(2.0 / (3 * 3 * 32)))
    np.testing.assert_array_equal(params["conv5_1"]["bias"], 0.0)
    _std_close(params["fc1"]["kernel"], 0.01)
    np.testing.assert_array_equal(params["fc1"]["bias"], 0.0)
    params = _init("inception_tiny", (1, 75, 75, 3))[1]["params"]
    _std_close(params["Mixed_7c"]["branch3x3dbl_1"]["conv"]["kernel"], 0.1)
    _std_close(params["fc"]["kernel"], 0.1)


# ----------------------------------------------------------------------------- small nets


def test_mlp_and_cnn_forward():
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    for name, kwargs in (("mlp", {"hidden": (32, 16)}), ("cnn", {"batch_norm": True})):
        model, v = _init(name, (1, 28, 28, 1), **kwargs)
        logits, state = model.apply(v, x, train=True, mutable=["batch_stats"])
        assert logits.shape == (4, 10) and logits.dtype == jnp.float32
        assert ("batch_stats" in state) == (name == "cnn")
    # The MLP is a plain function of its input: compare with numpy.
    model, v = _init("mlp", (1, 2, 2, 1), hidden=(5,))
    p = jax.tree.map(np.asarray, v["params"])
    xs = np.random.default_rng(0).normal(size=(3, 2, 2, 1)).astype(np.float32)
    h = np.maximum(xs.reshape(3, 4) @ p["hidden1"]["kernel"] + p["hidden1"]["bias"], 0)
    expected = h @ p["logits"]["kernel"] + p["logits"]["bias"]
    assert expected.shape == (3, 10)
    np.testing.assert_allclose(model.apply(v, xs), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- sharding


def test_bn_axis_name_gives_global_statistics_under_shard_map():
    """Per-device code with ``bn_axis_name`` normalises with the statistics of the global batch."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
    synced, v = _init("cnn", (1, 28, 28, 1), batch_norm=True, bn_axis_name="data")
    plain = get_model("cnn", num_classes=10, batch_norm=True)

    def train(model):
        return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])

    per_device = jax.jit(
        jax.shard_map(
            train(synced), mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())
        )
    )
    logits, state = per_device(v, x)
    want_logits, want_state = jax.jit(train(plain))(v, x)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(want_state), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
