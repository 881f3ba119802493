"""Flax models of the Coherent Gradients papers.

ResNet-18/34/50/101/152, VGG-11/13/16/19 (with and without BatchNorm) and
Inception-V3 in torchvision's layout (equal parameter counts, same initialisers),
the small MLP/CNN of the MNIST experiments, and tiny test variants of each convnet
family. Build them by name with :func:`get_model`::

    model = cgh_jax.models.get_model("resnet18", num_classes=1000, dtype=jnp.bfloat16)
    variables = model.init(key, jnp.zeros((1, 224, 224, 3)))
    logits, updates = model.apply(
        variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": key}
    )

Why ``flax.linen`` and not ``flax.nnx``: the M3 path computes one gradient per
group of a mini-batch with ``jax.vmap`` over the group axis, and models with
BatchNorm must then use each group's own batch statistics and return per-group
running statistics that are averaged afterwards. With linen a model is a pure
function ``apply(variables, x, mutable=[...]) -> (y, new_state)``, so ``vmap``,
``grad`` and ``shard_map`` compose with it directly: the parameters are broadcast
(``in_axes=None``), the batch is mapped, and the new ``batch_stats`` come out with a
leading group axis. nnx modules are stateful Python objects, which would need
``nnx.split``/``nnx.merge`` (or ``nnx.vmap`` with state axes) around every such
transformation. linen is also what the flax ImageNet example and big_vision use,
so their training loops and checkpoints carry over.

Conventions: inputs are NHWC float arrays; ``dtype`` is the compute dtype (e.g.
bfloat16) while parameters are float32; logits are always float32. Models with
BatchNorm keep a ``'batch_stats'`` collection (updated only when ``train=True``
and ``mutable=['batch_stats']``); models with dropout draw from the ``'dropout'``
rng in training.
"""

from cgh_jax.models.inception import InceptionV3
from cgh_jax.models.layers import adaptive_avg_pool
from cgh_jax.models.registry import MODELS, get_model, list_models
from cgh_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from cgh_jax.models.small import CNN, MLP
from cgh_jax.models.vgg import VGG

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "InceptionV3",
    "ResNet",
    "adaptive_avg_pool",
    "get_model",
    "list_models",
]
