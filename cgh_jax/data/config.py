"""The data config (``config.data``): defaults, validation and a frozen resolved view."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from cgh_jax import choices, configlib
from cgh_jax.data import corruption, preprocess
from cgh_jax.data.errors import DataNotFoundError

SOURCES = choices.DATA_SOURCES

DEFAULTS = configlib.data_config().to_dict()
"""Every data field's default: ``cgh_jax.configlib.data_config`` (the one place)."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Resolved, validated data config. Field meanings: see :mod:`cgh_jax.data`."""

    source: str
    name: str | None
    path: str | None
    data_dir: str | None
    train_split: str
    test_split: str
    image_size: int
    resize_size: int
    augment: str
    normalize: str
    noise: float
    noise_scheme: str
    noise_seed: int
    eval_subset_size: int
    shuffle_seed: int
    shuffle_buffer: int
    train_ids_file: str | None
    test_ids_file: str | None
    cache: bool

    @property
    def dataset_key(self) -> tuple:
        """Identifies the underlying TFDS dataset (not the preprocessing)."""
        return (self.source, self.name, self.path, self.data_dir)


def _get(cfg, key):
    """The field's value; its default only when the config lacks the field."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, DEFAULTS[key])
    return getattr(cfg, key, DEFAULTS[key])


def _nonneg_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"config.data.{name} must be a non-negative int, got {value!r}.")
    return value


def resolve(data_config) -> DataSpec:
    """Validates ``data_config`` (ConfigDict, dict or DataSpec) and fills in defaults.

    Raises:
      ValueError: on any invalid field, naming it and the accepted values. Nothing is read.
    """
    if isinstance(data_config, DataSpec):
        return data_config
    if data_config is None:
        raise ValueError("data config is None; pass config.data (an ml_collections.ConfigDict).")
    unknown = set(data_config.keys()) - set(DEFAULTS) if hasattr(data_config, "keys") else set()
    if unknown:
        raise ValueError(
            f"unknown config.data field(s) {sorted(unknown)}; valid fields: {sorted(DEFAULTS)}."
        )
    v = {k: _get(data_config, k) for k in DEFAULTS}
    if v["source"] not in SOURCES:
        raise ValueError(f"unknown config.data.source {v['source']!r}; expected one of {SOURCES}.")
    if v["source"] == "tfds" and not v["name"]:
        raise ValueError("source='tfds' needs config.data.name (e.g. 'mnist', 'imagenet2012').")
    if v["source"] in ("idx", "image_folder"):
        if not v["path"]:
            raise ValueError(f"source={v['source']!r} needs config.data.path (a directory).")
        if not os.path.isdir(v["path"]):
            raise DataNotFoundError(
                f"config.data.path {v['path']!r} is not a directory; point it at the "
                f"{v['source']} directory (see cgh_jax.data)."
            )
    if v["source"] == "npz":
        if not v["path"]:
            raise ValueError("source='npz' needs config.data.path (a .npz file).")
        if not os.path.isfile(v["path"]):
            raise DataNotFoundError(
                f"config.data.path {v['path']!r} is not a file; point it at a .npz with "
                "x_train, y_train, x_test, y_test (see cgh_jax.data.npz)."
            )
    for key in ("image_size", "resize_size", "noise_seed", "shuffle_seed"):
        _nonneg_int(key, v[key])
    if isinstance(v["shuffle_buffer"], bool) or not isinstance(v["shuffle_buffer"], int):
        raise ValueError(f"config.data.shuffle_buffer must be an int, got {v['shuffle_buffer']!r}.")
    if v["shuffle_buffer"] < 1:
        raise ValueError(f"config.data.shuffle_buffer must be >= 1, got {v['shuffle_buffer']}.")
    size = v["eval_subset_size"]
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
        raise ValueError(
            f"config.data.eval_subset_size must be a positive int or -1 (all), got {size!r}."
        )
    if v["augment"] not in preprocess.AUGMENTATIONS:
        raise ValueError(
            f"unknown config.data.augment {v['augment']!r}; expected one of "
            f"{preprocess.AUGMENTATIONS}."
        )
    if v["augment"] == "inception_crop" and v["image_size"] <= 0:
        raise ValueError("augment='inception_crop' needs config.data.image_size > 0 (e.g. 224).")
    if v["augment"] == "inception_crop" and v["cache"]:
        raise ValueError(
            "augment='inception_crop' crops the original images, which the in-memory path "
            "(config.data.cache=True) does not keep; set cache=False to stream from TFDS."
        )
    if v["normalize"] not in preprocess.NORMALIZATIONS:
        raise ValueError(
            f"unknown config.data.normalize {v['normalize']!r}; expected one of "
            f"{preprocess.NORMALIZATIONS}."
        )
    corruption.validate_noise(v["noise"], v["noise_scheme"])
    if not v["cache"] and v["noise"] > 0 and v["noise_scheme"] not in corruption.STREAMING_SCHEMES:
        raise ValueError(
            f"noise_scheme={v['noise_scheme']!r} needs every training label in memory; it is "
            "available with config.data.cache=True. The streaming path (cache=False) supports "
            f"{corruption.STREAMING_SCHEMES}."
        )
    for key in ("train_ids_file", "test_ids_file"):
        if v[key] is not None and not os.path.isfile(v[key]):
            raise FileNotFoundError(f"config.data.{key} {v[key]!r} does not exist.")
    v["noise"] = float(v["noise"])
    v["cache"] = bool(v["cache"])
    return DataSpec(**v)
