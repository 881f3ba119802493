"""Every check of an experiment config that needs no JAX, TensorFlow or dataset.

The command line (``cgh_jax.main``) runs these before it imports anything heavy, so a
mistake is reported in a fraction of a second; the library (``train_and_evaluate``, the
optimizer builders) can call the same functions. This module imports only the standard
library and ``ml_collections``.

Every problem raises :class:`ConfigError` (a ``ValueError``) whose message has one form,
``<what is wrong>; <what to do>``, and names the field (``config.optimizer.name``), the
value and the accepted values.

* :func:`check_config` -- every field of a training or study config: types, ranges, names
  (models, optimizers, data sources), the data path and its files, batch sizes against
  groups and clipping, the optimizer against the model.
* :func:`check_optimizer` -- the complete optimizer-field rules.
* :func:`check_dataset_size`, :func:`check_devices` -- batch sizes against the numbers that
  are known only later (dataset size, device count); they take plain numbers.

The command line's own checks (the config file, its overrides, the work directory) are in
:mod:`cgh_jax.cli_checks`; the runs of a study config (and the overrides a study refuses) in
:mod:`cgh_jax.study`.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from cgh_jax import choices, configlib

_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_IMAGE_FOLDER_TEST_DIRS = ("test", "val", "validation")


class ConfigError(ValueError):
    """A mistake in the command line or the config: ``<what is wrong>; <what to do>``."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix


# ----------------------------------------------------------------------------- helpers


def _one_of(values: Iterable[str]) -> str:
    return ", ".join(str(v) for v in values)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(path: str, value: Any, accepted: Iterable[str]) -> None:
    accepted = tuple(accepted)
    if value not in accepted:
        hint = _suggest(value, accepted) if isinstance(value, str) else ""
        raise ConfigError(
            f"config.{path}={value!r} is not accepted{hint}",
            f"set it to one of {_one_of(accepted)}",
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(path: str, value: Any, *, low: int, extra: tuple[int, ...] = ()) -> int:
    if not _is_int(value) or (value < low and value not in extra):
        also = f" or {_one_of(extra)}" if extra else ""
        raise ConfigError(
            f"config.{path}={value!r} is not an integer >= {low}{also}",
            f"give config.{path} an integer >= {low}{also}",
        )
    return int(value)


def _number(path: str, value: Any, *, low: float, low_open: bool = False, high=None) -> float:
    """A finite real number in [low, high) (or (low, high) with ``low_open``)."""
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (
            f" and < {high:g}" if high is not None else ""
        )
        raise ConfigError(
            f"config.{path}={value!r} is not a finite number {bound}",
            f"give config.{path} a finite number {bound}",
        )
    return float(value)


def _bool(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(
            f"config.{path}={value!r} is not a boolean", f"set config.{path} to True or False"
        )


def _string(path: str, value: Any, *, optional: bool = False) -> None:
    if (value is None and optional) or (isinstance(value, str) and value):
        return
    raise ConfigError(
        f"config.{path}={value!r} is not a non-empty string",
        f"give config.{path} a name or path" + (" (or leave it unset)" if optional else ""),
    )


def _known_fields(path: str, cfg: Mapping[str, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    for key in cfg:
        if key not in known:
            raise ConfigError(
                f"config.{path}{key} is not a field the trainer reads{_suggest(key, known)}",
                f"remove it (fields of config{'.' + path.rstrip('.') if path else ''}: "
                f"{_one_of(sorted(known))})",
            )


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return cfg[key] if key in cfg else default


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _to_dict(cfg: Any) -> dict[str, Any]:
    """A deep, plain-dict copy of a ConfigDict or mapping (safe to change)."""
    return copy.deepcopy(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------- fields


def check_optimizer(cfg: Mapping[str, Any], *, prefix: str = "optimizer") -> None:
    """The complete rules for the optimizer fields (``config.optimizer``).

    Known fields only; ``name`` one of :data:`cgh_jax.choices.OPTIMIZERS`; a finite
    ``learning_rate > 0``; ``0 <= momentum < 1``; ``nesterov`` only with momentum; finite
    ``weight_decay >= 0``; ``num_groups`` a positive odd integer; ``m3_layout`` and
    ``schedule`` from their lists; ``num_clipped`` an integer >= 0; ``decay_epochs``
    increasing finite positive epochs; a finite ``decay_factor > 0``; finite
    ``warmup_epochs >= 0``. Fields absent from ``cfg`` take their defaults.

    Raises:
      ConfigError: naming the first field that breaks a rule.
    """
    p = f"{prefix}."
    defaults = configlib.optimizer_config()
    _known_fields(p, cfg, defaults.keys())

    def get(key):
        return _get(cfg, key, defaults[key])

    _choice(p + "name", get("name"), choices.OPTIMIZERS)
    _number(p + "learning_rate", get("learning_rate"), low=0.0, low_open=True)
    momentum = _number(p + "momentum", get("momentum"), low=0.0, high=1.0)
    _bool(p + "nesterov", get("nesterov"))
    if get("nesterov") and momentum == 0:
        raise ConfigError(
            f"config.{p}nesterov=True has no effect with momentum 0",
            f"set config.{p}momentum > 0 or nesterov=False",
        )
    _number(p + "weight_decay", get("weight_decay"), low=0.0)
    groups = get("num_groups")
    if not _is_int(groups) or groups < 1 or groups % 2 == 0:
        raise ConfigError(
            f"config.{p}num_groups={groups!r} is not a positive odd integer (the median of an "
            "even number of group means is not one of them)",
            "use an odd number of groups such as 3 or 5",
        )
    _choice(p + "m3_layout", get("m3_layout"), choices.M3_LAYOUTS)
    if get("name") in choices.GROUPED_OPTIMIZERS[1:] and get("m3_layout") in (
        choices.SHARDED_M3_LAYOUTS
    ):
        raise ConfigError(
            f"config.{p}m3_layout={get('m3_layout')!r} computes M3's median inside the step, "
            f"which {get('name')!r} does not use",
            f"set config.{p}m3_layout to 'auto', 'vmap' or 'loop'",
        )
    _choice(p + "m3_batch_stats", get("m3_batch_stats"), choices.M3_BATCH_STATS)
    _int(p + "num_clipped", get("num_clipped"), low=0)
    _choice(p + "schedule", get("schedule"), choices.SCHEDULES)
    epochs = get("decay_epochs")
    if (
        not isinstance(epochs, list | tuple)
        or not all(_is_number(e) and math.isfinite(e) and e > 0 for e in epochs)
        or any(b <= a for a, b in zip(epochs[:-1], epochs[1:], strict=True))
    ):
        raise ConfigError(
            f"config.{p}decay_epochs={epochs!r} is not a tuple of increasing positive epochs",
            f"give e.g. config.{p}decay_epochs='(30, 60)'",
        )
    _number(p + "decay_factor", get("decay_factor"), low=0.0, low_open=True)
    _number(p + "warmup_epochs", get("warmup_epochs"), low=0.0)


def _check_model(model: Any, optimizer: Mapping[str, Any]) -> None:
    if not isinstance(model, Mapping | ml_collections.ConfigDict):
        raise ConfigError(
            f"config.model={model!r} is not a group of fields",
            "set config.model = dict(name='mlp', dtype='float32', ...)",
        )
    _choice("model.name", _get(model, "name"), choices.MODELS)
    _choice("model.dtype", _get(model, "dtype", "float32"), choices.COMPUTE_DTYPES)
    name = model["name"]
    batch_norm = name in choices.BATCHNORM_MODELS or (
        name == "cnn" and bool(_get(model, "batch_norm", False))
    )
    opt = _get(optimizer, "name")
    if opt in choices.PER_EXAMPLE_OPTIMIZERS and batch_norm:
        raise ConfigError(
            f"config.optimizer.name={opt!r} needs per-example gradients, which the BatchNorm "
            f"model {name!r} does not have",
            "use a model without BatchNorm (mlp, cnn, vgg11..vgg19) or another optimizer",
        )


def _idx_file_exists(path: str, split: str, kind: str) -> bool:
    prefix, dims = _IDX_PREFIXES[split], ("idx3" if kind == "images" else "idx1")
    return any(
        os.path.isfile(os.path.join(path, f"{prefix}-{kind}{sep}{dims}-ubyte{ext}"))
        for sep in ("-", ".")
        for ext in ("", ".gz")
    )


def _check_data_path(source: str, path: Any) -> None:
    if not isinstance(path, str) or not path:
        raise ConfigError(
            f"config.data.source={source!r} needs config.data.path, which is not set",
            f"pass --config.data.path=<directory of the {source} files>",
        )
    if _is_remote(path):
        return
    if source == "npz":
        if not os.path.isfile(path):
            state = "is a directory" if os.path.isdir(path) else "does not exist"
            raise ConfigError(
                f"config.data.path={path!r} {state}",
                "give a .npz file with x_train, y_train, x_test and y_test",
            )
        return
    if not os.path.isdir(path):
        state = "is a file" if os.path.exists(path) else "does not exist"
        raise ConfigError(
            f"config.data.path={path!r} {state}", f"give the directory of the {source} files"
        )
    if source == "idx":
        missing = [
            f"{_IDX_PREFIXES[s]}-{k}"
            for s in ("train", "test")
            for k in ("images", "labels")
            if not _idx_file_exists(path, s, k)
        ]
        if missing:
            raise ConfigError(
                f"config.data.path={path!r} lacks the IDX files {_one_of(missing)}",
                "give a directory in the MNIST layout (train-images-idx3-ubyte[.gz], "
                "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                "t10k-labels-idx1-ubyte[.gz])",
            )
    else:  # image_folder
        train = os.path.join(path, "train")
        classes = (
            [d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d))]
            if os.path.isdir(train)
            else []
        )
        tests = [d for d in _IMAGE_FOLDER_TEST_DIRS if os.path.isdir(os.path.join(path, d))]
        if not classes or not tests:
            raise ConfigError(
                f"config.data.path={path!r} is not an image folder (no train/<class>/ or no "
                f"{'|'.join(_IMAGE_FOLDER_TEST_DIRS)}/<class>/ directories)",
                "give a directory with train/<class>/*.jpg and test/<class>/*.jpg",
            )


def check_data(data: Any) -> None:
    """The data fields (``config.data``): names, ranges, the path and the id files.

    Raises:
      ConfigError: naming the first field that is wrong.
    """
    if not isinstance(data, Mapping | ml_collections.ConfigDict):
        raise ConfigError(
            f"config.data={data!r} is not a group of fields", "use configlib.data_config(...)"
        )
    defaults = configlib.data_config()
    _known_fields("data.", data, defaults.keys())

    def get(key):
        return _get(data, key, defaults[key])

    source = get("source")
    _choice("data.source", source, choices.DATA_SOURCES)
    if source == "tfds":
        _string("data.name", get("name"))
        if get("path") is not None:
            raise ConfigError(
                f"config.data.path={get('path')!r} is set but source='tfds' reads the TFDS "
                "dataset config.data.name from config.data.data_dir",
                "remove the path, or use source='idx' or 'image_folder' for a directory",
            )
        data_dir = get("data_dir")
        _string("data.data_dir", data_dir, optional=True)
        if data_dir and not _is_remote(data_dir) and not os.path.isdir(data_dir):
            raise ConfigError(
                f"config.data.data_dir={data_dir!r} does not exist, so it holds no prepared "
                f"TFDS dataset {get('name')!r}",
                "give the TFDS data directory where the dataset was prepared",
            )
    elif source in ("idx", "image_folder"):
        _check_data_path(source, get("path"))
    for key in ("train_split", "test_split"):
        _string(f"data.{key}", get(key))
    for key in ("image_size", "resize_size", "noise_seed", "shuffle_seed"):
        _int(f"data.{key}", get(key), low=0)
    _int("data.shuffle_buffer", get("shuffle_buffer"), low=1)
    _int("data.eval_subset_size", get("eval_subset_size"), low=1, extra=(-1,))
    _choice("data.augment", get("augment"), choices.AUGMENTATIONS)
    _choice("data.normalize", get("normalize"), choices.NORMALIZATIONS)
    _number("data.noise", get("noise"), low=0.0)
    if get("noise") > 1:
        raise ConfigError(
            f"config.data.noise={get('noise')!r} is not a fraction in [0, 1]",
            "give e.g. 0.5 to redraw half of the training labels",
        )
    _choice("data.noise_scheme", get("noise_scheme"), choices.NOISE_SCHEMES)
    _bool("data.cache", get("cache"))
    if get("augment") == "inception_crop" and (get("image_size") <= 0 or get("cache")):
        raise ConfigError(
            "config.data.augment='inception_crop' crops the original images, which needs "
            "config.data.image_size > 0 and the streaming path",
            "set config.data.image_size (e.g. 224) and config.data.cache=False",
        )
    if (
        not get("cache")
        and get("noise") > 0
        and get("noise_scheme") not in (choices.STREAMING_NOISE_SCHEMES)
    ):
        raise ConfigError(
            f"config.data.noise_scheme={get('noise_scheme')!r} needs every training label in "
            "memory, but config.data.cache=False streams",
            f"set config.data.cache=True or use {_one_of(choices.STREAMING_NOISE_SCHEMES)}",
        )
    for key in ("train_ids_file", "test_ids_file"):
        value = get(key)
        if value is not None and not (isinstance(value, str) and os.path.isfile(value)):
            raise ConfigError(
                f"config.data.{key}={value!r} is not an existing file",
                "give the .npy file of example ids (cgh_jax.analysis.easy_hard writes them)",
            )


def _check_run(config: Mapping[str, Any], where: str = "") -> None:
    """A training config (one run): every field."""
    top = configlib.base_config()
    _known_fields("", {k: v for k, v in config.items() if k != "study"}, top.keys())
    missing = sorted(set(top.keys()) - set(config.keys()))
    if missing:
        raise ConfigError(
            f"{where}the config lacks the field(s) {_one_of(missing)}",
            "build it on configlib.base_config()",
        )
    _int("seed", config["seed"], low=0)
    for key in ("batch_size", "num_epochs", "eval_batch_size", "log_every_steps"):
        _int(key, config[key], low=1)
    _int("steps_per_dispatch", config["steps_per_dispatch"], low=1)
    _int("eval_every_epochs", config["eval_every_epochs"], low=1)
    _int("max_steps", config["max_steps"], low=1, extra=(-1,))
    _int("checkpoint_every_steps", config["checkpoint_every_steps"], low=0)
    _int("keep_checkpoints", config["keep_checkpoints"], low=1)
    epochs = config["per_example_epochs"]
    if not isinstance(epochs, list | tuple) or not all(
        _is_int(e) and 0 <= e <= config["num_epochs"] for e in epochs
    ):
        raise ConfigError(
            f"config.per_example_epochs={epochs!r} is not a tuple of epochs in "
            f"[0, num_epochs={config['num_epochs']}]",
            "give finished-epoch numbers, e.g. '(0, 2)'",
        )
    optimizer = config["optimizer"]
    check_optimizer(optimizer)
    warmup = _get(optimizer, "warmup_epochs", 0.0)
    if warmup > config["num_epochs"]:
        raise ConfigError(
            f"config.optimizer.warmup_epochs={warmup!r} is longer than the run "
            f"(num_epochs={config['num_epochs']})",
            "shorten the warmup or train for more epochs",
        )
    _check_model(config["model"], optimizer)
    check_data(config["data"])
    clipped = _get(optimizer, "num_clipped", 0)
    if optimizer["name"] == "winsorize" and 2 * clipped >= config["batch_size"]:
        raise ConfigError(
            f"config.optimizer.num_clipped={clipped} clips every value of a batch of "
            f"{config['batch_size']} (winsorize needs 2 * num_clipped < batch_size)",
            f"use num_clipped <= {(config['batch_size'] - 1) // 2} or a larger batch_size",
        )


def examples_per_update(config: Mapping[str, Any]) -> int:
    """Global examples of one update: ``num_groups * batch_size`` for M3 and its norm-matched
    controls (:data:`cgh_jax.choices.GROUPED_OPTIMIZERS`), else ``batch_size``."""
    opt = config["optimizer"]
    if opt["name"] in choices.GROUPED_OPTIMIZERS:
        return int(_get(opt, "num_groups", 3)) * int(config["batch_size"])
    return int(config["batch_size"])


# ----------------------------------------------------------------------------- everything


def check_config(config: Any) -> None:
    """Checks a training or study config completely (a study: each of its runs).

    Nothing is read but the directory listing of ``config.data.path`` and the existence of
    files the config names.

    Raises:
      ConfigError: the first problem, naming the field (and for a study, the run).
    """
    if not isinstance(config, Mapping | ml_collections.ConfigDict):
        raise ConfigError(
            f"the config is a {type(config).__name__}", "pass an ml_collections.ConfigDict"
        )
    from cgh_jax.study import is_study, study_runs  # cgh_jax.study imports this module

    if "study" not in config or not is_study(config):
        if "study" in config:
            raise ConfigError(
                "config.study.optimizers is empty", "list the runs, e.g. ('sgd', 'm3')"
            )
        _check_run(_to_dict(config))
        return
    shared = _to_dict(config)
    shared.pop("study")
    _check_run(shared)  # the fields every run shares, reported without a run name
    for name, run in study_runs(config).items():
        try:
            _check_run(run)
        except ConfigError as e:
            raise ConfigError(f"study run {name!r}: {e.what}", e.fix) from e


def _runs(config: Any) -> list[tuple[str, Mapping[str, Any]]]:
    from cgh_jax.study import is_study, study_runs  # cgh_jax.study imports this module

    if is_study(config):
        return [(f"study run {n!r}: ", r) for n, r in study_runs(config).items()]
    return [("", _to_dict(config))]


def check_dataset_size(config: Any, num_train: Any) -> None:
    """Refuses an update batch larger than the training split.

    ``num_train``: the split's size, or a function of a run's data config returning it
    (each run of a study may read other data); ``None`` (the size is not known without
    reading the data) checks nothing.
    """
    for where, run in _runs(config):
        size = num_train(run["data"]) if callable(num_train) else num_train
        need = examples_per_update(run)
        if size is not None and need > size:
            m3 = run["optimizer"]["name"] in choices.GROUPED_OPTIMIZERS
            detail = f" (num_groups x batch_size = {need})" if m3 else ""
            raise ConfigError(
                f"{where}one update needs {need} examples{detail}, more than the "
                f"{size} of the training split",
                f"lower config.batch_size to at most {size // (need // run['batch_size'])}",
            )


def check_devices(config: Any, num_devices: int, num_processes: int = 1) -> None:
    """Refuses batch sizes that do not split over ``num_devices`` devices (and processes).

    The update batch (``num_groups * batch_size`` for M3) and ``eval_batch_size`` must be
    multiples of the device count; a sharded M3 layout needs a multiple of
    ``devices * num_groups``.
    """
    for where, run in _runs(config):
        opt = run["optimizer"]
        grouped = opt["name"] in choices.GROUPED_OPTIMIZERS
        groups = int(_get(opt, "num_groups", 3)) if grouped else 1
        batches = (
            ("one update", examples_per_update(run), "batch_size", groups),
            ("one evaluation batch", run["eval_batch_size"], "eval_batch_size", 1),
        )
        for what, size, field, per_example in batches:
            for count, kind in ((num_devices, "devices"), (num_processes, "processes")):
                if size % count:
                    step = count // math.gcd(count, per_example)
                    detail = f" (num_groups {groups} x batch_size)" if per_example > 1 else ""
                    raise ConfigError(
                        f"{where}the {size} examples of {what}{detail} do not split evenly "
                        f"over {count} {kind}",
                        f"make config.{field} a multiple of {step}",
                    )
        layout, k = _get(opt, "m3_layout", "auto"), _get(opt, "num_groups", 3)
        if opt["name"] == "m3" and layout in choices.SHARDED_M3_LAYOUTS:
            size = examples_per_update(run)
            if size % (num_devices * k):
                raise ConfigError(
                    f"{where}config.optimizer.m3_layout={layout!r} needs the {size} examples of "
                    f"an update to be a multiple of devices x num_groups = {num_devices} x {k}",
                    "change config.batch_size or use m3_layout='auto'",
                )
            if layout in ("group_sharded", "group_aligned") and num_devices < k:
                raise ConfigError(
                    f"{where}config.optimizer.m3_layout={layout!r} needs at least "
                    f"num_groups={k} devices, found {num_devices}",
                    "use m3_layout='auto' or 'reduce_scatter'",
                )


__all__ = [
    "ConfigError",
    "check_config",
    "check_data",
    "check_dataset_size",
    "check_devices",
    "check_optimizer",
    "examples_per_update",
]
