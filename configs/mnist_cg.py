r"""The Coherent Gradients MNIST experiments (Chatterjee, ICLR 2020): SGD vs winsorized SGD.

The paper's fully connected nets on MNIST (60,000 training images): ``net=2048`` (one hidden
layer of 2048 ReLUs) or ``net=3x256``; SGD with learning rate 0.1, batch 100, no momentum,
label noise by permuting the labels of a random subset (the CG scheme ``permute``);
winsorized SGD clips each coordinate's per-example gradients to the ``clip``-th smallest
and largest values of the batch before averaging. M3 / RM3 / RA3 are available too.

Commands::

  python -m cgh_jax.main --config=configs/mnist_cg.py:opt=winsorize,clip=4,noise=0.5 \
      --workdir=workdirs/mnist_w4
  # the IDX files instead of TFDS 'mnist' (here: the copy beside the repository)
  python -m cgh_jax.main \
      --config=configs/mnist_cg.py:opt=sgd,noise=0.5,path=../shared/data/mnist \
      --workdir=workdirs/mnist_sgd

Arguments: ``opt=sgd|m3|rm3|ra3|winsorize``, ``clip`` (winsorize's ``num_clipped``),
``noise``, ``scheme`` (``permute`` | ``uniform`` | ``uniform_other``), ``net`` (``2048`` |
``3x256``), ``epochs``, ``lr``, ``batch``, ``momentum``, ``seed``, ``data_dir``, ``path``
(IDX directory), ``runlocal`` (a 32-unit MLP, 3 steps).

Hardware and time: a CPU is enough. The 2048-unit MLP runs SGD at roughly 50-100 steps/s on
2 cores (600 steps per epoch); winsorized SGD materializes 100 per-example gradients per
step (100 x 1.6M floats) and runs several times slower.

Expected result (the paper's finding): with noise SGD eventually fits the corrupted labels
(``corrupt_noisy/top1`` rises towards 1) while winsorizing with larger ``clip`` slows that
memorization much more than it slows learning the pristine examples.
"""

from cgh_jax import configlib

NETS = {"2048": (2048,), "3x256": (256, 256, 256)}


def get_config(arg=None):
    args = configlib.parse_arg(
        arg, **configlib.common_args(clip=0, scheme="permute", net="2048", path="")
    )
    if args.net not in NETS:
        raise ValueError(f"net={args.net!r} is not one of {', '.join(NETS)}.")
    source = dict(source="idx", path=args.path) if args.path else dict(source="tfds")
    cfg = configlib.base_config(
        data=configlib.data_config(
            name="mnist", noise_scheme=args.scheme, shuffle_buffer=60_000, **source
        ),
        model=dict(name="mlp", hidden=NETS[args.net], dtype="float32"),
        optimizer=configlib.optimizer_config(learning_rate=0.1, num_clipped=args.clip),
        batch_size=100,
        num_epochs=100,
        eval_batch_size=1000,
        log_every_steps=200,
        checkpoint_every_steps=6_000,
    )
    tiny = {"name": "mlp", "hidden": (32,), "dtype": "float32"}
    return configlib.apply_common_args(cfg, args, tiny=tiny)
