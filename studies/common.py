"""What several studies share: the CG MLP run and page, the small CNN, the ``--quick`` model."""

from cgh_jax.analysis import report
from cgh_jax.study_cli import RunRecipe

CG_SEED = 0  # the seed of the single-seed CG MLP runs
QUICK_MLP = {"model.hidden": (32,), "batch_size": 40}  # --quick: 8 fake devices divide 40
CNN = {  # configs/cifar10_resnet18.py as the W&S comparisons' small CNN
    "data.augment": "none",  # they train without augmentation
    "optimizer.schedule": "constant",
    "model": dict(name="cnn", features=(32, 64), hidden=128, dtype="float32"),
}


def cg_sgd(dir: str, noise: float, epochs: int, quick: bool, subset, eval_cap: int) -> RunRecipe:
    """The CG MLP (2048 ReLUs) trained by SGD (lr 0.1, batch 100, seed :data:`CG_SEED`) at a
    uniform label noise; with ``quick``, a 32-unit MLP for 2 epochs."""
    overrides = {"num_epochs": 2, **QUICK_MLP} if quick else {"num_epochs": epochs}
    arg = f"opt=sgd,scheme=uniform,net=2048,noise={noise}"
    return RunRecipe(dir, "mnist_cg", arg, overrides, CG_SEED, subset=subset, eval_cap=eval_cap)


def mlp_sgd(cfg) -> str:
    """``MLP 2048 (ReLU), SGD lr 0.1, batch 100`` for a config."""
    hidden = "-".join(str(h) for h in cfg.model.hidden)
    return f"MLP {hidden} (ReLU), SGD lr {cfg.optimizer.learning_rate}, batch {cfg.batch_size}"


def cg_page(args, title: str, cfg, model: str, data: str, **fields) -> report.Page:
    """The page of single-seed CG MLP runs (:func:`cg_sgd`, seed :data:`CG_SEED`) on the MNIST
    IDX files: ``data`` tells what of them, ``model`` follows :func:`mlp_sgd` as the first
    of the facts ``extra``; ``fields``: the rest of the :class:`report.Page`."""
    extra = {"Model and optimizer": f"{mlp_sgd(cfg)}, {model}", **fields.pop("extra")}
    data = f"real MNIST IDX files ({args.mnist}); {data}"
    return report.Page(title=title, seeds=[CG_SEED], data=data, extra=extra, **fields)
