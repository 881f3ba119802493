r"""Inception-V3 on ImageNet with label noise: SGD vs M3 / RM3 / RA3 (W&S 2020, section 3).

The authors' settings: batch 256 (M3: 3 x 256 per update), learning rate 0.1 with a cosine
schedule stepped once per epoch, no weight decay, momentum 0.9 for the SGD baseline (the
authors' trainer default; ``momentum=0`` for none) and 0 for M3/RM3/RA3, 299x299 inputs
(resize 342 + center crop 299, torchvision's Inception evaluation) without augmentation, no
auxiliary classifier, eval subsets of 50,000 examples.

Command::

  python -m cgh_jax.main --config=configs/imagenet_inception_v3.py:opt=m3,noise=0.5 \
      --workdir=gs://BUCKET/cgh/inception_m3_noise50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Arguments: ``opt=sgd|m3|rm3|ra3``, ``noise=<fraction>``, ``epochs``, ``lr``, ``batch``,
``momentum`` (default: 0.9 for ``opt=sgd``, 0 otherwise; ``momentum=0`` gives plain SGD,
the control without momentum), ``seed``, ``data_dir``, ``runlocal`` (inception_tiny at its
minimum input size 75x75, 3 steps).

Hardware and time (not measured in this repository): about 5.7 GMACs per image at 299x299,
3x ResNet-18; plan a TPU v4-64 or 16 A100/H100-class GPUs and most of a day for 90 epochs.

Expected result (the paper's qualitative finding, not reproduced here; SGD with momentum
0.9, M3/RM3 without): SGD memorizes the noisy labels, M3/RM3 much less, with similar or
better test accuracy.
"""

from cgh_jax import configlib


def get_config(arg=None):
    cfg, args = configlib.imagenet_config(
        arg,
        model="inception_v3",
        tiny="inception_tiny",
        optimizer=dict(schedule="cosine"),
        data=dict(image_size=299, resize_size=342),
    )
    if args.runlocal:  # the tiny model's minimum input size
        cfg.data.image_size = 75
        cfg.data.resize_size = 80
    return cfg
