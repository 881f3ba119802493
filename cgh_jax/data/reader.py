"""Opening TFDS datasets with stable ids and fast failures (imports TensorFlow on use)."""

from __future__ import annotations

import functools

import numpy as np

from cgh_jax.data import ids as ids_lib
from cgh_jax.data.errors import DatasetNotPreparedError
from cgh_jax.data.tfimport import tensorflow, tfds
from cgh_jax.spec.data import DataSpec


def _not_prepared_message(name: str, data_dir: str) -> str:
    where = data_dir
    msg = (
        f"TFDS dataset {name!r} is not prepared in {where}, and nothing is downloaded at "
        f"training time. Prepare it once with `tfds build {name} --data_dir=<data_dir>` (or "
        f"`tfds.builder({name!r}, data_dir=<data_dir>).download_and_prepare()`) and set "
        "config.data.data_dir to that directory; it may be on GCS "
        "(gs://<bucket>/tensorflow_datasets)."
    )
    if name.startswith("imagenet2012"):
        msg += (
            " ImageNet is not downloadable: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in a manual dir and run `tfds build imagenet2012 "
            "--manual_dir=<manual_dir> --data_dir=<data_dir>` (in Python: "
            "download_and_prepare(download_config=tfds.download.DownloadConfig("
            "manual_dir=<manual_dir>)))."
        )
    return msg


@functools.lru_cache(maxsize=16)
def _builder(name: str, data_dir: str | None):
    tfds_ = tfds()
    try:
        return tfds_.builder(name, data_dir=data_dir)
    except tfds_.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"unknown TFDS dataset {name!r} (config.data.name); see "
            "https://www.tensorflow.org/datasets/catalog for the names."
        ) from e


def get_builder(spec: DataSpec):
    """The TFDS builder of ``spec`` (``source='tfds'``)."""
    if spec.source != "tfds":
        raise ValueError(f"source={spec.source!r} is not read through TFDS.")
    return _builder(spec.name, spec.data_dir)


def open_split(builder, split, *, shuffle_files=False, read_config=None):
    """``builder.as_dataset`` with undecoded images and ``tfds_id``; fails fast if unprepared.

    Returns:
      A ``tf.data.Dataset`` of dicts with ``image`` (encoded bytes or uint8 tensor), ``label``
      (int64) and ``id`` (int64, see :mod:`cgh_jax.data.ids`).
    """
    tf, tfds_ = tensorflow(), tfds()
    read_config = read_config or tfds_.ReadConfig()
    read_config.add_tfds_id = True
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(
                f"dataset {builder.name!r} has no {key!r} feature (features: "
                f"{list(features.keys())}); image classification datasets only."
            )
    decoders = {"image": tfds_.decode.SkipDecoding()}
    try:
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=read_config, decoders=decoders
        )
    except AssertionError as e:
        if "could not find data" in str(e):
            raise DatasetNotPreparedError(
                _not_prepared_message(builder.name, str(builder.data_dir))
            ) from None
        raise
    has_int_id = "id" in features and np.dtype(features["id"].np_dtype).kind in "iu"

    def standardize(ex):
        if has_int_id:
            example_id = tf.cast(ex["id"], tf.int64)
        else:
            example_id = ids_lib.tfds_id_to_int_tf(ex["tfds_id"])
        return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int64), "id": example_id}

    return ds.map(standardize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def num_classes(builder) -> int:
    return int(builder.info.features["label"].num_classes)


def channels(builder) -> int:
    shape = builder.info.features["image"].shape
    return int(shape[-1]) if shape and shape[-1] else 3


def native_shape(builder):
    """The stored image shape, with ``None`` for sizes that vary between examples."""
    return tuple(builder.info.features["image"].shape)


@functools.lru_cache(maxsize=64)
def _count(builder, split: str) -> int:
    tf = tensorflow()
    return int(open_split(builder, split).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def num_examples(builder, split: str) -> int:
    """Examples in ``split``: from the dataset info, or counted when the info lacks it."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        return _count(builder, split)
