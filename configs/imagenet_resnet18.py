r"""ResNet-18 on ImageNet with label noise: SGD vs M3 / RM3 / RA3 (W&S 2020, section 3).

The authors' settings: batch 256 (M3: 3 x 256 = 768 examples per update, so a third as many
updates per epoch), learning rate 0.1 multiplied by 0.1 at epochs 30 and 60 of 90, no
weight decay, resize 256 + center crop 224 without augmentation, eval subsets of 50,000
examples. Momentum as in the authors' commands: 0.9 for the SGD baseline (their trainer's
default), 0 for M3, RM3 and RA3 (``momentum=0`` makes the SGD run momentum-free too).

Commands (one host; on a pod slice run them on every worker, see docs/launch.md)::

  python -m cgh_jax.main --config=configs/imagenet_resnet18.py:opt=m3,noise=0.5 \
      --workdir=gs://BUCKET/cgh/resnet18_m3_noise50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  # the SGD baseline (momentum 0.9); add momentum=0 for SGD without momentum
  python -m cgh_jax.main --config=configs/imagenet_resnet18.py:opt=sgd,noise=0.5 \
      --workdir=gs://BUCKET/cgh/resnet18_sgd_noise50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Arguments: ``opt=sgd|m3|rm3|ra3``, ``noise=<fraction>``, ``epochs``, ``lr``, ``batch``,
``momentum`` (default: 0.9 for ``opt=sgd``, 0 otherwise; ``momentum=0`` gives plain SGD,
the control without momentum), ``seed``, ``data_dir``, ``runlocal`` (a CPU smoke run:
resnet_tiny at 32x32, 3 steps; needs the dataset or ``tfds.testing.mock_data``).

Hardware and time (not measured in this repository): a TPU v4-32 or 8 x A100/H100 class
GPUs; the data pipeline (JPEG decode) needs about 2-3k images/s per accelerator host. An
SGD epoch is 5,004 updates; expect a few hours for the 90 epochs on such a slice.

Expected result (the paper's qualitative finding, not reproduced here; their SGD with
momentum 0.9, M3/RM3 without): at 50% noise SGD memorizes (``corrupt_noisy/top1`` climbs
towards the pristine accuracy late in training) while M3 and RM3 keep
``corrupt_noisy/top1`` low and ``corrupt_true/top1`` and ``test/top1`` close to or above
SGD's; RA3 behaves like SGD.
"""

from cgh_jax import configlib


def get_config(arg=None):
    cfg, _ = configlib.imagenet_config(
        arg,
        model="resnet18",
        tiny="resnet_tiny",
        optimizer=dict(schedule="step", decay_epochs=(30, 60), decay_factor=0.1),
    )
    return cfg
