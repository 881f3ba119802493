r"""VGG-13-BN on ImageNet with label noise: SGD vs M3 / RM3 / RA3 (W&S 2020, section 3).

The authors' settings: batch 256 (M3: 3 x 256 per update), learning rate 0.1 with a cosine
schedule stepped once per epoch, no weight decay, momentum 0.9 for the SGD baseline (the
authors' trainer default; ``momentum=0`` for none) and 0 for M3/RM3/RA3, resize 256 +
center crop 224 without augmentation, eval subsets of 50,000 examples.

Command::

  python -m cgh_jax.main --config=configs/imagenet_vgg13bn.py:opt=rm3,noise=0.5 \
      --workdir=gs://BUCKET/cgh/vgg13bn_rm3_noise50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Arguments: ``opt=sgd|m3|rm3|ra3``, ``noise=<fraction>``, ``epochs``, ``lr``, ``batch``,
``momentum`` (default: 0.9 for ``opt=sgd``, 0 otherwise; ``momentum=0`` gives plain SGD,
the control without momentum), ``seed``, ``data_dir``, ``runlocal`` (vgg_tiny at 32x32, 3
steps).

Hardware and time (not measured in this repository): VGG-13-BN is about 11.3 GMACs per
image, 6x ResNet-18; plan a TPU v4-64 or 16 A100/H100-class GPUs and about a day for 90
epochs.

Expected result (the paper's qualitative finding, not reproduced here; SGD with momentum
0.9, M3/RM3 without): SGD memorizes the noisy labels late in training, M3/RM3 much less,
with similar or better test accuracy.
"""

from cgh_jax import configlib


def get_config(arg=None):
    cfg, _ = configlib.imagenet_config(
        arg, model="vgg13_bn", tiny="vgg_tiny", optimizer=dict(schedule="cosine")
    )
    return cfg
