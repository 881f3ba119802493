r"""ResNet-18 (CIFAR stem) on CIFAR-10 with label noise: SGD vs M3 / RM3 / RA3 / winsorize.

The ImageNet experiment of W&S 2020 at CIFAR scale: batch 128 (M3: 3 x 128 per update),
learning rate 0.1 multiplied by 0.1 at epochs 50 and 75 of 100, no weight decay, random
horizontal flips, the full train split as evaluation subsets. Momentum as in the authors'
commands: 0.9 for the SGD baseline (their trainer's default), 0 for M3, RM3, RA3 and
winsorized SGD; ``momentum=0`` gives the SGD control without momentum.

Commands (TFDS ``cifar10`` prepared in the TFDS data dir, or the JPEG image-folder tree
``<path>/train/<class>/*.jpg``, ``<path>/test/<class>/*.jpg``)::

  python -m cgh_jax.main --config=configs/cifar10_resnet18.py:opt=m3,noise=0.5 \
      --workdir=workdirs/cifar_m3
  tar xzf ../shared/data/cifar10/cifar10jpg.tar.gz -C /tmp
  python -m cgh_jax.main \
      --config=configs/cifar10_resnet18.py:opt=sgd,noise=0.5,path=/tmp/cifar10jpg \
      --workdir=workdirs/cifar_sgd          # momentum 0.9; add momentum=0 for plain SGD

Arguments: ``opt=sgd|m3|rm3|ra3``, ``noise``, ``epochs``, ``lr``, ``batch``, ``momentum``
(default: 0.9 for ``opt=sgd``, 0 otherwise; any value given, e.g. ``momentum=0``, is used),
``seed``, ``data_dir``, ``path`` (image-folder source), ``runlocal`` (resnet_tiny, 3 steps).

Hardware and time (not measured in this repository): one GPU; ResNet-18 with the CIFAR stem
is 0.56 GMACs per 32x32 image, so 100 epochs take roughly 1-2 hours on an A100/H100. On a
2-core CPU it is impractical (about 0.2 steps/s at batch 32).

Expected result (by analogy with the papers; not measured here; SGD with momentum 0.9,
M3/RM3 without): at 50% noise SGD fits most corrupted labels by the end
(``corrupt_noisy/top1`` near 1) while M3/RM3 fit far fewer.
"""

from cgh_jax import configlib

# The authors' trainer defaults to momentum 0.9: their SGD baselines ran with it, their
# M3/RM3 commands set momentum 0 explicitly ("causes instability" otherwise). RA3 (the
# control) and winsorized SGD (ICLR 2020) run without momentum too.
AUTHORS_MOMENTUM = {"sgd": 0.9}


def get_config(arg=None):
    # momentum < 0 (the default): the authors' setting for the optimizer, see the docstring.
    args = configlib.parse_arg(arg, **{**configlib.common_args(path=""), "momentum": -1.0})
    if args.momentum < 0:
        args.momentum = AUTHORS_MOMENTUM.get(args.opt, 0.0)
    source = dict(source="image_folder", path=args.path) if args.path else dict(source="tfds")
    cfg = configlib.base_config(
        data=configlib.data_config(
            name="cifar10", normalize="unit", augment="flip", shuffle_buffer=50_000, **source
        ),
        model=dict(name="resnet18", stem="cifar", dtype="float32"),
        optimizer=configlib.optimizer_config(
            learning_rate=0.1, schedule="step", decay_epochs=(50, 75), decay_factor=0.1
        ),
        batch_size=128,
        num_epochs=100,
        eval_batch_size=1000,
        log_every_steps=100,
        checkpoint_every_steps=1_000,
    )
    tiny = {"name": "resnet_tiny", "stem": "cifar", "dtype": "float32"}
    return configlib.apply_common_args(cfg, args, tiny=tiny)
