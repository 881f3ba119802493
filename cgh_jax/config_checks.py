"""Every check of an experiment config that needs no JAX, TensorFlow or dataset.

The command line (``cgh_jax.main``) runs these before it imports anything heavy, so a
mistake is reported in a fraction of a second; the library (``train_and_evaluate``, the
optimizer builders) can call the same functions. This module imports only the standard
library and ``ml_collections``.

Every problem raises :class:`ConfigError` (a ``ValueError``) whose message has one form,
``<what is wrong>; <what to do>``, and names the field (``config.optimizer.name``), the
value and the accepted values.

* :func:`load_config_file` -- the ``--config=FILE[:ARGS]`` file and its arguments.
* :func:`check_override_names` -- ``--config.<field>`` names exist (with a suggestion).
* :func:`check_config` -- every field of a training or study config: types, ranges, names
  (models, optimizers, data sources), the data path and its files, batch sizes against
  groups and clipping, the optimizer against the model.
* :func:`check_optimizer` -- the complete optimizer-field rules.
* :func:`check_override_types` -- an override keeps the type of the field's value.
* :func:`check_study_overrides` -- a study refuses overrides its runs would replace.
* :func:`check_workdir` -- the work directory exists as a folder or can be created, and is
  writable; nothing in it is changed.
* :func:`check_dataset_size`, :func:`check_devices` -- batch sizes against the numbers that
  are known only later (dataset size, device count); they take plain numbers.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import os
import re
import types
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from cgh_jax import choices, configlib

RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_STUDY_FIELDS = ("optimizers", "variants", "title")
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


# ----------------------------------------------------------------------------- the file


def split_config_spec(spec: str) -> tuple[str, str | None]:
    """``"configs/x.py:a=1"`` -> ``("configs/x.py", "a=1")``; no colon -> ``(path, None)``."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config`` of the config file ``spec`` (``FILE[:ARGS]``) and returns its config.

    The file is executed as a fresh module, exactly as ``ml_collections.config_flags`` does;
    ``get_config(ARGS)`` is called with the text after the first colon (without a colon,
    ``get_config()``).

    Raises:
      ConfigError: no such file, a file that does not load or has no ``get_config``, an
        argument ``get_config`` refuses (unknown key, bad type or value), or a result that
        is not a ConfigDict.
    """
    path, arg = split_config_spec(spec)
    where = f"--config={spec}"
    if not path:
        raise ConfigError("--config names no file", "pass --config=configs/<name>.py[:ARGS]")
    if not os.path.isfile(path):
        state = "is a directory" if os.path.isdir(path) else "does not exist"
        folder = os.path.dirname(path) or "."
        found = (
            sorted(f for f in os.listdir(folder) if f.endswith(".py"))
            if os.path.isdir(folder)
            else []
        )
        hint = f"; config files in {folder}: {_one_of(found)}" if found else ""
        raise ConfigError(
            f"config file {path!r} {state} (from {where}, relative to {os.getcwd()})",
            f"pass an existing config file{_suggest(os.path.basename(path), found)}{hint}",
        )
    module = types.ModuleType("cgh_jax_config_file")
    module.__file__ = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        exec(code, module.__dict__)  # noqa: S102 - the user's own config file
    except Exception as e:  # any error while importing the file is the file's problem
        raise ConfigError(
            f"config file {path!r} failed to load: {type(e).__name__}: {e}",
            "fix the file (rerun with CGH_JAX_TRACEBACK=1 for the traceback)",
        ) from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(
            f"config file {path!r} defines no get_config function",
            "define get_config(arg=None) returning an ml_collections.ConfigDict",
        )
    try:
        config = get_config() if arg is None else get_config(arg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.what}", e.fix) from e
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        what, _, fix = " ".join(str(e).split()).rstrip(".").partition("; ")
        fix = fix or f"fix the arguments (the docstring of {path} lists them)"
        raise ConfigError(f"{where}: {what}", fix) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config of {path!r} returned {type(config).__name__}, not a ConfigDict",
            "return an ml_collections.ConfigDict (e.g. configlib.base_config())",
        )
    return config


def check_override_names(config: ml_collections.ConfigDict, names: Iterable[str]) -> None:
    """Checks that every ``--config.<name>`` override names an existing field.

    Raises:
      ConfigError: naming the unknown field, the closest existing one and the fields there.
    """
    for name in names:
        node: Any = config
        parts = name.split(".")
        for depth, part in enumerate(parts):
            at = ".".join(parts[:depth])
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(
                    f"--config.{name}: config.{at} is a value ({node!r}), not a group of fields",
                    f"override --config.{at} itself",
                )
            if part not in node:
                fields = sorted(node.keys())
                hint = _suggest(part, fields)
                if at == "model" and part == "num_classes":
                    fix = "the number of classes comes from the dataset; remove the override"
                else:
                    fix = f"fields of config{'.' + at if at else ''}: {_one_of(fields)}"
                raise ConfigError(
                    f"--config.{name}: config{'.' + at if at else ''} has no field {part!r}{hint}",
                    fix,
                )
            node = node[part]


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
    """Global examples of one update: ``num_groups * batch_size`` for M3, else ``batch_size``."""
    opt = config["optimizer"]
    if opt["name"] == "m3":
        return int(_get(opt, "num_groups", 3)) * int(config["batch_size"])
    return int(config["batch_size"])


# ----------------------------------------------------------------------------- studies


def is_study(config: Mapping[str, Any]) -> bool:
    """True if ``config`` has a non-empty ``study.optimizers``."""
    return "study" in config and bool(_get(config["study"], "optimizers"))


def _variants(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    variants = _get(config["study"], "variants") or {}
    if not isinstance(variants, Mapping | ml_collections.ConfigDict):
        raise ConfigError(
            f"config.study.variants={variants!r} is not a mapping",
            "give {run name: {field: value, ...}}",
        )
    out = {}
    for name, fields in _to_dict(variants).items():
        if not isinstance(fields, Mapping):
            raise ConfigError(
                f"config.study.variants[{name!r}]={fields!r} is not a mapping of fields",
                "give {field: value, ...}, e.g. {'batch_size': 300}",
            )
        out[str(name)] = dict(fields)
    return out


def _merge(cfg: dict[str, Any], fields: Mapping[str, Any], run: str, at: str = "") -> None:
    for key, value in fields.items():
        path = f"{at}{key}"
        if key not in cfg:
            raise ConfigError(
                f"config.study.variants[{run!r}] sets {path!r}, which is not a config field"
                f"{_suggest(key, cfg)}",
                f"fields here: {_one_of(sorted(cfg))}",
            )
        if isinstance(cfg[key], Mapping) and isinstance(value, Mapping):
            _merge(cfg[key], value, run, f"{path}.")
        else:
            cfg[key] = value


def study_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each run of a study config as a plain nested dict, without the ``study`` field.

    A run name is an optimizer name (``optimizer.name`` replaced) or a key of
    ``config.study.variants`` (its nested fields merged in), as in ``cgh_jax.study``.

    Raises:
      ConfigError: an empty, repeated, malformed or unknown run name, or a variant that sets
        a field the config lacks.
    """
    study = config["study"]
    _known_fields("study.", study, _STUDY_FIELDS)
    names = _get(study, "optimizers")
    if isinstance(names, str) or not isinstance(names, list | tuple) or not names:
        raise ConfigError(
            f"config.study.optimizers={names!r} is not a non-empty tuple of run names",
            "give e.g. ('sgd', 'm3')",
        )
    if len(set(names)) != len(names):
        raise ConfigError(
            f"config.study.optimizers={tuple(names)!r} repeats a run", "name each run once"
        )
    variants = _variants(config)
    base = _to_dict(config)
    base.pop("study")
    runs = {}
    for name in names:
        if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
            raise ConfigError(
                f"study run name {name!r} is not a directory name",
                "use only letters, digits, '_', '.' and '-'",
            )
        cfg = _to_dict(base)
        if name in variants:
            _merge(cfg, variants[name], name)
        elif name in choices.OPTIMIZERS:
            cfg["optimizer"]["name"] = name
        else:
            valid = (*choices.OPTIMIZERS, *variants)
            raise ConfigError(
                f"config.study.optimizers has {name!r}, which is neither an optimizer nor a "
                f"study variant{_suggest(name, valid)}",
                f"use one of {_one_of(valid)}",
            )
        runs[name] = cfg
    return runs


def _ignored_by(config: Mapping[str, Any], field: str) -> list[str]:
    """The runs of a study that replace ``field`` with their own value."""
    variants = _variants(config)
    runs = []
    for name in _get(config["study"], "optimizers"):
        if name in variants:
            set_fields = _flatten(variants[name])
            if any(field == f or field.startswith(f + ".") for f in set_fields):
                runs.append(name)
        elif field == "optimizer.name":
            runs.append(name)
    return runs


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if _is_int(old):
        return _is_int(new)
    if _is_number(old):
        return _is_number(new)
    if isinstance(old, list | tuple):
        return isinstance(new, list | tuple) and (
            not old or all(_same_kind(old[0], v) for v in new)
        )
    return isinstance(new, type(old))


def _type_name(value: Any) -> str:
    if isinstance(value, list | tuple) and value:
        return f"a {type(value).__name__} of {type(value[0]).__name__}"
    return f"a {type(value).__name__}"


def check_override_types(final: Any, own: Any) -> None:
    """Refuses an override whose value has another type than the config file's own value.

    Integers may replace floats; a tuple's elements must have the type of the config's
    first element (``--config.model.hidden='(512, 512)'``, not ``abc``). Fields the config
    leaves unset (None) take any value.

    Raises:
      ConfigError: naming the field, the given value and the expected type.
    """
    new, old = _flatten(_to_dict(final)), _flatten(_to_dict(own))
    for field in sorted(new):
        before, after = old.get(field), new[field]
        if before is None or before == after or _same_kind(before, after):
            continue
        raise ConfigError(
            f"--config.{field}={after!r} is {_type_name(after)}, but the config's value "
            f"{before!r} is {_type_name(before)}",
            f"give a value like {before!r}",
        )


def check_study_overrides(final: Any, own: Any, spec: str) -> None:
    """Refuses command-line overrides of a study config that its runs would replace.

    Args:
      final: the config after the ``--config.<field>`` overrides.
      own: the config file's own result for the same ``:ARGS`` (no overrides).
      spec: the ``--config`` value, for the message.

    Raises:
      ConfigError: naming the overridden field and the runs that set their own value.
    """
    if not is_study(final):
        return
    new, old = _flatten(_to_dict(final)), _flatten(_to_dict(own))
    for field in sorted(new):
        if field.startswith("study.") or new[field] == old.get(field, new[field]):
            continue
        runs = _ignored_by(final, field)
        if runs:
            path, _ = split_config_spec(spec)
            how = (
                f"choose the runs with the config's argument instead, e.g. "
                f"--config={path}:opts=sgd+m3"
                if field == "optimizer.name"
                else f"set it through the config's arguments ({path} lists them) or "
                "--config.study.variants"
            )
            raise ConfigError(
                f"--config.{field}={new[field]!r} would be ignored: the study {path} sets "
                f"{field} itself in its run(s) {_one_of(runs)}",
                how,
            )


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
    if is_study(config):
        return [(f"study run {n!r}: ", r) for n, r in study_runs(config).items()]
    return [("", _to_dict(config))]


def check_dataset_size(config: Any, num_train: int | None) -> None:
    """Refuses an update batch larger than the training split (``num_train`` examples).

    ``num_train=None`` (the size is not known without reading the data) checks nothing.
    """
    if num_train is None:
        return
    for where, run in _runs(config):
        need = examples_per_update(run)
        if need > num_train:
            m3 = run["optimizer"]["name"] == "m3"
            detail = f" (num_groups x batch_size = {need})" if m3 else ""
            raise ConfigError(
                f"{where}one update needs {need} examples{detail}, more than the "
                f"{num_train} of the training split",
                f"lower config.batch_size to at most {num_train // (need // run['batch_size'])}",
            )


def check_devices(config: Any, num_devices: int, num_processes: int = 1) -> None:
    """Refuses batch sizes that do not split over ``num_devices`` devices (and processes).

    The update batch (``num_groups * batch_size`` for M3) and ``eval_batch_size`` must be
    multiples of the device count; a sharded M3 layout needs a multiple of
    ``devices * num_groups``.
    """
    for where, run in _runs(config):
        opt = run["optimizer"]
        groups = int(_get(opt, "num_groups", 3)) if opt["name"] == "m3" else 1
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
            if layout == "group_sharded" and num_devices < k:
                raise ConfigError(
                    f"{where}config.optimizer.m3_layout='group_sharded' needs at least "
                    f"num_groups={k} devices, found {num_devices}",
                    "use m3_layout='auto' or 'reduce_scatter'",
                )


# ----------------------------------------------------------------------------- workdir


def check_workdir(workdir: Any) -> None:
    """Checks that ``workdir`` is, or can be created as, a writable directory.

    Nothing is left behind: an existing directory gets a probe file that is removed at
    once; a missing one is created and removed again (its missing parents too). Remote
    paths (``gs://...``) are not checked.

    Raises:
      ConfigError: no workdir, a file in the way, or a directory that cannot be written.
    """
    if not workdir or not isinstance(workdir, str | os.PathLike):
        raise ConfigError("--workdir is not set", "pass --workdir=DIR for checkpoints and metrics")
    path = os.path.abspath(os.fspath(workdir))
    if _is_remote(workdir):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(
            f"--workdir={workdir} is a file, not a directory",
            "pass a new or existing directory",
        )
    if os.path.isdir(path):
        checkpoints = os.path.join(path, "checkpoints")
        if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
            raise ConfigError(
                f"--workdir={workdir} holds a file named checkpoints where the checkpoint "
                "directory goes",
                "move that file away or pass another --workdir",
            )
        _probe_writable(path, workdir)
        return
    # The topmost missing directory: create and remove it to prove that it can be made.
    top = path
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    parent = os.path.dirname(top)
    if not os.path.isdir(parent):
        raise ConfigError(
            f"--workdir={workdir} cannot be created: {parent} is a file",
            "pass a directory whose parent is a directory",
        )
    try:
        os.mkdir(top)
    except OSError as e:
        raise ConfigError(
            f"--workdir={workdir} cannot be created in {parent}: {e.strerror}",
            "pass a directory in a writable location",
        ) from e
    try:
        _probe_writable(top, workdir)
    finally:
        os.rmdir(top)


def _probe_writable(directory: str, workdir: Any) -> None:
    probe = os.path.join(directory, f".cgh-jax-write-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as e:
        raise ConfigError(
            f"--workdir={workdir} is not writable: {e.strerror}",
            "pass a directory you can write to",
        ) from e
    os.close(fd)
    os.unlink(probe)


__all__ = [
    "ConfigError",
    "check_config",
    "check_data",
    "check_dataset_size",
    "check_devices",
    "check_optimizer",
    "check_override_names",
    "check_override_types",
    "check_study_overrides",
    "check_workdir",
    "examples_per_update",
    "is_study",
    "load_config_file",
    "split_config_spec",
    "study_runs",
]
