"""Shared pieces of the experiment configs in ``configs/``.

Every config file defines ``get_config(arg)``; ``arg`` is the text after the colon of
``--config=configs/X.py:arg``: comma-separated ``key=value`` pairs and bare flags, e.g.
``opt=m3,noise=0.5,runlocal``. :func:`parse_arg` turns it into a typed ConfigDict (unknown
keys are an error, so a typo fails at once), :func:`base_config` holds the fields every
training config has, and :func:`apply_runlocal` shrinks any config to a CPU smoke run.

Training config fields (``train_and_evaluate`` reads exactly these):

=========================  =================================================================
``seed``                   int: parameter init and dropout RNG.
``data``                   the data config (fields: ``cgh_jax.data`` docstring).
``model.name``             a ``cgh_jax.models.get_model`` name; every other ``model`` field
                           is passed to it as a keyword (``dtype`` as a string, e.g.
                           ``'bfloat16'`` for the compute dtype).
``optimizer.name``         ``sgd`` | ``m3`` | ``rm3`` | ``ra3`` | ``winsorize``.
``optimizer.*``            learning rate, schedule, momentum, ``m3_layout`` (how M3's median
                           of group means is computed: ``auto``, ``vmap``, ``loop``,
                           ``chunked``, ``reduce_scatter``, ``group_sharded``,
                           ``group_aligned``), ... (fields: ``cgh_jax.spec.optimizer``).
``batch_size``             the SGD-sized (group) batch, global over all hosts. One M3 update
                           consumes ``num_groups * batch_size`` examples, as the authors did.
``num_epochs``             epochs of the training split; durations (schedule boundaries,
                           warmup) are given in epochs and converted to steps in one place.
``max_steps``              stop after this many updates (-1: ``num_epochs`` full epochs).
``eval_batch_size``        global batch size of the evaluations.
``eval_every_epochs``      evaluate before every this-many-th epoch (1: before each epoch)
                           and always at the end; larger values save time on long runs
                           whose curve is not needed at every epoch.
``log_every_steps``        train metrics (loss and top1 of every step, the norms of one
                           step) and progress are written every this many steps; non-finite
                           values are checked at least this often.
``steps_per_dispatch``     train steps per dispatch (``jax.lax.scan`` over that many batches
                           sent to the devices at once; 1: one step per dispatch). Same
                           updates; fewer dispatches and transfers for small models. Logs,
                           hooks, checkpoints and preemption happen between dispatches.
``checkpoint_every_steps`` periodic checkpoints (0: only at the end and on SIGTERM).
``keep_checkpoints``       how many checkpoints Orbax keeps.
``per_example_epochs``     after these numbers of finished epochs, write per-example records.
``study.*``                only in study configs (the default job): ``optimizers`` (the run
                           names: optimizer names or keys of ``variants``), ``variants``
                           (run name -> nested field overrides) and the report ``title``
                           (``cgh_jax.study``).
=========================  =================================================================
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config argument string such as ``"opt=m3,noise=0.5,runlocal"``.

    Each ``key=value`` takes the type of its default: ``int``, ``float``, ``bool``
    (``1/0/true/false/yes/no``), ``str``, or a tuple (``hidden=512+512``). A bare ``key``
    sets a boolean default to True.

    Args:
      arg: the text after the colon of ``--config=file.py:arg`` (None or ``""``: defaults).
      **defaults: every accepted key with its default value (and thereby its type).

    Returns:
      A locked-key ConfigDict with the defaults overridden by ``arg``.

    Raises:
      ValueError: for an unknown key, a value that does not parse as the default's type,
        or a bare key whose default is not a boolean. The message reads
        ``<what is wrong>; <what to do>`` and names the key and the accepted keys or values.
    """
    result = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown config argument {key!r}{hint}; accepted arguments: "
                f"{', '.join(sorted(defaults))}"
            )
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(
                    f"config argument {key!r} has no value; write {key}=<{_kind(default)}> "
                    "(only boolean arguments can be a bare flag)"
                )
            result[key] = True
            continue
        result[key] = _parse_value(key, text.strip(), default)
    return ml_collections.ConfigDict(result)


def _parse_value(key: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            parts = [p for p in text.split("+") if p]
            if default and isinstance(default[0], int):
                return tuple(int(p) for p in parts)
            return tuple(parts)
        if default is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    except ValueError as e:
        raise ValueError(
            f"config argument {key}={text!r} is not {_kind(default)}; write e.g. "
            f"{key}={_example(default)}"
        ) from e


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (true/false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, tuple):
        return "a '+'-separated list" + (
            " of integers" if default and isinstance(default[0], int) else ""
        )
    return "a value"


def _example(default: Any) -> str:
    if isinstance(default, bool):
        return "true"
    if isinstance(default, tuple):
        return "+".join(str(v) for v in default) or "a+b"
    return str(default)


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The data config with every field of the data contract (see ``cgh_jax.data``)."""
    cfg = ml_collections.ConfigDict()
    cfg.source = "tfds"
    cfg.name = "mnist"
    cfg.path = config_dict.placeholder(str)
    cfg.data_dir = config_dict.placeholder(str)
    cfg.train_split = "train"
    cfg.test_split = "test"
    cfg.image_size = 0
    cfg.resize_size = 0
    cfg.augment = "none"
    cfg.normalize = "unit"
    cfg.noise = 0.0
    cfg.noise_scheme = "uniform"
    cfg.noise_seed = 0
    cfg.eval_subset_size = -1
    cfg.shuffle_seed = 0
    cfg.shuffle_buffer = 10_000
    cfg.train_ids_file = config_dict.placeholder(str)
    cfg.test_ids_file = config_dict.placeholder(str)
    cfg.cache = True
    _update(cfg, overrides)
    return cfg


def imagenet_data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """TFDS ImageNet as the authors read it: resize 256, center crop 224, no augmentation.

    Test split ``validation``, ImageNet mean/std, 50,000-example eval subsets, streamed (not
    cached). Inception-V3 passes ``image_size=299, resize_size=342``.
    """
    defaults = dict(
        source="tfds",
        name="imagenet2012",
        test_split="validation",
        image_size=224,
        resize_size=256,
        normalize="imagenet",
        eval_subset_size=50_000,
        shuffle_buffer=16_384,
        cache=False,
    )
    return data_config(**{**defaults, **overrides})


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The optimizer config (fields: ``cgh_jax.spec.optimizer``)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "sgd"
    cfg.learning_rate = 0.1
    cfg.momentum = 0.0
    cfg.nesterov = False
    cfg.weight_decay = 0.0
    cfg.num_groups = 3
    cfg.m3_layout = "auto"
    cfg.m3_batch_stats = "sequential"
    cfg.num_clipped = 0
    cfg.schedule = "constant"
    cfg.decay_epochs = (30, 60)
    cfg.decay_factor = 0.1
    cfg.warmup_epochs = 0.0
    _update(cfg, overrides)
    return cfg


AUTHORS_MOMENTUM = {"sgd": 0.9}
"""The authors' trainer defaults to momentum 0.9: their SGD baselines ran with it, their
M3/RM3 commands set momentum 0 explicitly ("causes instability" otherwise). RA3 (the
control) and winsorized SGD (ICLR 2020) run without momentum too."""


def imagenet_config(
    arg: str | None,
    *,
    model: str,
    tiny: str,
    optimizer: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """The W&S ImageNet experiment of one model, as every ImageNet config builds it.

    Batch 256 (M3: 3 x 256 per update), 90 epochs, bfloat16 compute, learning rate 0.1
    with ``optimizer``'s schedule, the authors' momentum (:data:`AUTHORS_MOMENTUM`: 0.9 for
    SGD, 0 otherwise, unless ``momentum=`` is given), ImageNet data
    (:func:`imagenet_data_config` with ``data``), and :func:`common_args`; ``runlocal``
    swaps in the ``tiny`` model.

    Returns:
      ``(config, args)``: the config and its parsed arguments.
    """
    # momentum < 0 (the default): the authors' setting for the optimizer.
    args = parse_arg(arg, **common_args(momentum=-1.0))
    if args.momentum < 0:
        args.momentum = AUTHORS_MOMENTUM.get(args.opt, 0.0)
    cfg = base_config(
        data=imagenet_data_config(**(data or {})),
        model=dict(name=model, dtype="bfloat16"),
        optimizer=optimizer_config(learning_rate=0.1, **optimizer),
        batch_size=256,
        num_epochs=90,
        eval_batch_size=1024,
        log_every_steps=100,
        checkpoint_every_steps=2_000,
    )
    return apply_common_args(cfg, args, tiny={"name": tiny, "dtype": "float32"}), args


def base_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Fields every training config has, with neutral defaults (``overrides``: any of its
    top-level fields, e.g. ``batch_size=128`` or ``data=data_config(...)``)."""
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.data = data_config()
    cfg.model = ml_collections.ConfigDict({"name": "mlp", "dtype": "float32"})
    cfg.optimizer = optimizer_config()
    cfg.batch_size = 100
    cfg.num_epochs = 1
    cfg.max_steps = -1
    cfg.eval_batch_size = 1000
    cfg.eval_every_epochs = 1
    cfg.log_every_steps = 50
    cfg.steps_per_dispatch = 1
    cfg.checkpoint_every_steps = 0
    cfg.keep_checkpoints = 2
    cfg.per_example_epochs = ()
    # Multi-process jobs (cgh_jax.supervisor): seconds for all processes to join, and of
    # silence before a process counts as lost. The flags --init_timeout and
    # --heartbeat_timeout override them.
    cfg.init_timeout_s = 60
    cfg.heartbeat_timeout_s = 60
    _update(cfg, overrides)
    return cfg


def apply_runlocal(cfg: ml_collections.ConfigDict, *, model: Mapping[str, Any] | None = None):
    """Shrinks ``cfg`` in place to a CPU smoke run of a few steps.

    Small batches, at most 3 updates, 64 examples per evaluation subset, 28x28 (or the
    native size of small datasets) images, and optionally a tiny model variant.

    Args:
      cfg: a training config from :func:`base_config`.
      model: replaces ``cfg.model`` (e.g. ``{"name": "resnet_tiny"}``); keeps it if None.

    Returns:
      ``cfg``.
    """
    if model is not None:
        dtype = cfg.model.get("dtype", "float32")
        cfg.model = ml_collections.ConfigDict({"dtype": dtype, **dict(model)})
    cfg.batch_size = 8
    cfg.eval_batch_size = 32
    cfg.num_epochs = 3  # enough epochs that max_steps binds even at 1 step per epoch
    cfg.max_steps = 3
    cfg.log_every_steps = 1
    cfg.checkpoint_every_steps = 2
    cfg.data.eval_subset_size = 16
    cfg.data.shuffle_buffer = 64
    if cfg.data.image_size > 32:
        cfg.data.image_size = 32
        cfg.data.resize_size = 36 if cfg.data.resize_size else 0
    return cfg


def _update(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"Unknown field {key!r}; valid fields: {', '.join(sorted(cfg))}.")
        setattr(cfg, key, value)


def common_args(*, without: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """Arguments every experiment config accepts, with their defaults.

    ``opt`` (an optimizer name), ``noise`` (label-noise fraction), ``epochs``, ``lr``,
    ``batch`` (the SGD-sized batch), ``momentum``, ``seed``, ``data_dir`` (TFDS data dir,
    e.g. ``gs://bucket/tensorflow_datasets``) and ``runlocal``; ``without`` drops those a
    config does not take, ``extra`` adds more or changes a default.
    """
    common = dict(
        opt="sgd",
        noise=0.0,
        epochs=0,
        lr=0.0,
        batch=0,
        momentum=0.0,
        seed=0,
        data_dir="",
        runlocal=False,
    )
    return {k: v for k, v in common.items() if k not in without} | extra


def apply_common_args(
    cfg: ml_collections.ConfigDict,
    args: ml_collections.ConfigDict,
    *,
    tiny: Mapping[str, Any] | None = None,
):
    """Applies :func:`common_args` values to ``cfg`` (0 / "" keep the config's default;
    arguments the config does not take are skipped), then with ``runlocal`` and a ``tiny``
    model :func:`apply_runlocal`; returns ``cfg``."""
    if "opt" in args:
        cfg.optimizer.name = args.opt
    if "noise" in args:
        cfg.data.noise = args.noise
    cfg.seed = args.seed
    cfg.optimizer.momentum = args.momentum
    if args.epochs:
        cfg.num_epochs = args.epochs
    if args.lr:
        cfg.optimizer.learning_rate = args.lr
    if args.batch:
        cfg.batch_size = args.batch
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    if tiny is not None and args.runlocal:
        apply_runlocal(cfg, model=tiny)
    return cfg
