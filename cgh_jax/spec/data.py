"""The data fields of an experiment (``config.data``): their rules and the frozen
:class:`DataSpec`. Field meanings: :mod:`cgh_jax.data`. Standard library only, so the command
line checks them before anything heavy is imported; the data package reads a
:class:`DataSpec`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from cgh_jax import choices, configlib
from cgh_jax.spec import fields as F

DEFAULTS = configlib.data_config().to_dict()
"""Every data field's default: ``cgh_jax.configlib.data_config`` (the one place)."""
IDX_PREFIXES = {"train": "train", "test": "t10k"}
IMAGE_FOLDER_TEST_DIRS = ("test", "val", "validation")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The validated data config (:func:`parse`). Field meanings: see :mod:`cgh_jax.data`."""

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
        """Identifies the underlying dataset (not the preprocessing)."""
        return (self.source, self.name, self.path, self.data_dir)


def check_noise(fraction: Any, scheme: Any, where: str = "") -> None:
    """The label-noise rule: a fraction in [0, 1] and a known scheme.

    Raises:
      ConfigError: naming ``<where>noise`` or ``<where>noise_scheme``.
    """
    if not (F.is_number(fraction) and math.isfinite(fraction) and 0 <= fraction <= 1):
        raise F.ConfigError(
            f"{where}noise={fraction!r} is not a fraction in [0, 1]",
            "give e.g. 0.5 to redraw half of the training labels",
        )
    if scheme not in choices.NOISE_SCHEMES:
        raise F.ConfigError(
            f"{where}noise_scheme={scheme!r} is not accepted"
            f"{F.suggest(str(scheme), choices.NOISE_SCHEMES)}",
            f"set it to one of {F.one_of(choices.NOISE_SCHEMES)}",
        )


IDX_KINDS = {"images": "idx3", "labels": "idx1"}
IDX_LAYOUT = (
    "a directory in the MNIST layout (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte"
    "[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
)


def idx_file(path: str, split: str, kind: str) -> str | None:
    """The file of ``split`` (``train``/``test``) and ``kind`` (``images``/``labels``) in an
    IDX directory (``-`` or ``.`` before ``idx``, optionally gzipped), or None."""
    prefix, dims = IDX_PREFIXES[split], IDX_KINDS[kind]
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = os.path.join(path, f"{prefix}-{kind}{sep}{dims}-ubyte{ext}")
            if os.path.isfile(candidate):
                return candidate
    return None


def idx_files(path: str, where: str = "config.data.path") -> dict[tuple[str, str], str]:
    """``{(split, kind): file}`` of an IDX directory.

    Raises:
      ConfigError: naming the missing files.
    """
    found = {(s, k): idx_file(path, s, k) for s in IDX_PREFIXES for k in IDX_KINDS}
    if missing := [f"{IDX_PREFIXES[s]}-{k}" for (s, k), f in found.items() if f is None]:
        raise F.ConfigError(
            f"{where}={path!r} lacks the IDX files {F.one_of(missing)}", f"give {IDX_LAYOUT}"
        )
    return found


def _check_data_path(source: str, path: Any) -> None:
    if not isinstance(path, str) or not path:
        raise F.ConfigError(
            f"config.data.source={source!r} needs config.data.path, which is not set",
            f"pass --config.data.path=<directory of the {source} files>",
        )
    if F.is_remote(path):
        return
    if source == "npz":
        if not os.path.isfile(path):
            state = "is a directory" if os.path.isdir(path) else "does not exist"
            raise F.ConfigError(
                f"config.data.path={path!r} {state}",
                "give a .npz file with x_train, y_train, x_test and y_test",
            )
        return
    if not os.path.isdir(path):
        state = "is a file" if os.path.exists(path) else "does not exist"
        raise F.ConfigError(
            f"config.data.path={path!r} {state}", f"give the directory of the {source} files"
        )
    if source == "idx":
        idx_files(path)
    else:  # image_folder
        train = os.path.join(path, "train")
        classes = (
            [d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d))]
            if os.path.isdir(train)
            else []
        )
        tests = [d for d in IMAGE_FOLDER_TEST_DIRS if os.path.isdir(os.path.join(path, d))]
        if not classes or not tests:
            raise F.ConfigError(
                f"config.data.path={path!r} is not an image folder (no train/<class>/ or no "
                f"{'|'.join(IMAGE_FOLDER_TEST_DIRS)}/<class>/ directories)",
                "give a directory with train/<class>/*.jpg and test/<class>/*.jpg",
            )


def parse(data: Any) -> DataSpec:
    """Every rule of the data fields (``config.data``), once: names, ranges, the path and
    its files, the id files. Nothing is read but directory listings.

    Args:
      data: the data config (a ConfigDict or mapping; missing fields take
        :data:`DEFAULTS`), or a :class:`DataSpec` (returned as it is).

    Returns:
      The :class:`DataSpec`.

    Raises:
      ConfigError: naming the first field that is wrong.
    """
    if isinstance(data, DataSpec):
        return data
    F.group("data", data, "use configlib.data_config(...)")
    F.known_fields("data.", data, DEFAULTS.keys())

    def get(key):
        return F.get(data, key, DEFAULTS[key])

    source = get("source")
    F.choice("data.source", source, choices.DATA_SOURCES)
    if source == "tfds":
        F.string("data.name", get("name"))
        if get("path") is not None:
            raise F.ConfigError(
                f"config.data.path={get('path')!r} is set but source='tfds' reads the TFDS "
                "dataset config.data.name from config.data.data_dir",
                "remove the path, or use source='idx' or 'image_folder' for a directory",
            )
        data_dir = get("data_dir")
        F.string("data.data_dir", data_dir, optional=True)
        if data_dir and not F.is_remote(data_dir) and not os.path.isdir(data_dir):
            raise F.ConfigError(
                f"config.data.data_dir={data_dir!r} does not exist, so it holds no prepared "
                f"TFDS dataset {get('name')!r}",
                "give the TFDS data directory where the dataset was prepared",
            )
    elif source in ("idx", "image_folder", "npz"):
        _check_data_path(source, get("path"))
    for key in ("train_split", "test_split"):
        F.string(f"data.{key}", get(key))
    for key in ("image_size", "resize_size", "noise_seed", "shuffle_seed"):
        F.integer(f"data.{key}", get(key), low=0)
    F.integer("data.shuffle_buffer", get("shuffle_buffer"), low=1)
    F.integer("data.eval_subset_size", get("eval_subset_size"), low=1, extra=(-1,))
    F.choice("data.augment", get("augment"), choices.AUGMENTATIONS)
    F.choice("data.normalize", get("normalize"), choices.NORMALIZATIONS)
    check_noise(get("noise"), get("noise_scheme"), "config.data.")
    F.boolean("data.cache", get("cache"))
    if get("augment") == "inception_crop" and (get("image_size") <= 0 or get("cache")):
        raise F.ConfigError(
            "config.data.augment='inception_crop' crops the original images, which needs "
            "config.data.image_size > 0 and the streaming path",
            "set config.data.image_size (e.g. 224) and config.data.cache=False",
        )
    if (
        not get("cache")
        and get("noise") > 0
        and get("noise_scheme") not in (choices.STREAMING_NOISE_SCHEMES)
    ):
        raise F.ConfigError(
            f"config.data.noise_scheme={get('noise_scheme')!r} needs every training label in "
            "memory, but config.data.cache=False streams",
            f"set config.data.cache=True or use {F.one_of(choices.STREAMING_NOISE_SCHEMES)}",
        )
    for key in ("train_ids_file", "test_ids_file"):
        value = get(key)
        if value is not None and not (isinstance(value, str) and os.path.isfile(value)):
            raise F.ConfigError(
                f"config.data.{key}={value!r} is not an existing file",
                "give the .npy file of example ids (cgh_jax.analysis.easy_hard writes them)",
            )
    values = {k: get(k) for k in DEFAULTS}
    values |= {"noise": float(values["noise"]), "cache": bool(values["cache"])}
    return DataSpec(**values)


__all__ = ["DEFAULTS", "DataSpec", "check_noise", "idx_file", "idx_files", "parse"]
