"""Public input-pipeline functions; they dispatch to the in-memory or the streaming path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from cgh_jax.data import memory, reader
from cgh_jax.data.hosts import EvalSet, per_host_batch_size, resolve_hosts
from cgh_jax.spec import data as data_spec


class DatasetInfo(NamedTuple):
    """Static facts about the configured data.

    Attributes:
      num_classes: number of classes.
      num_train: training examples (after ``train_ids_file`` filtering).
      num_test: test examples (the ``test_ids_file`` ids when given).
      image_shape: ``(H, W, C)`` of the images fed to the model.
    """

    num_classes: int
    num_train: int
    num_test: int
    image_shape: tuple[int, int, int]


_BACKENDS: dict = {}


def clear_caches() -> None:
    """Forgets every decoded split and opened dataset of this process."""
    _BACKENDS.clear()
    memory.clear_cache()
    reader._builder.cache_clear()
    reader._count.cache_clear()


def _backend(data_config):
    spec = data_spec.parse(data_config)
    if spec not in _BACKENDS:
        if spec.cache:
            _BACKENDS[spec] = memory.InMemoryData(spec)
        else:
            from cgh_jax.data import streaming

            _BACKENDS[spec] = streaming.StreamingData(spec)
    return _BACKENDS[spec]


def get_dataset_info(data_config) -> DatasetInfo:
    """Returns :class:`DatasetInfo` (reads the splits of the in-memory path on first use)."""
    data = _backend(data_config)
    if isinstance(data, memory.InMemoryData):
        num_test = len(data.test_table().ids)
        num_train = len(data.train.ids)
    else:
        num_test, num_train = data.num_test, data.num_train
    return DatasetInfo(data.num_classes, num_train, num_test, tuple(data.image_shape))


def steps_per_epoch(data_config, global_batch_size: int) -> int:
    """Training batches per epoch: ``num_train // global_batch_size`` (remainder dropped)."""
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise ValueError(f"global_batch_size must be an int, got {global_batch_size!r}.")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
    return get_dataset_info(data_config).num_train // global_batch_size


def train_batches(
    data_config,
    *,
    global_batch_size: int,
    epoch: int,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict]:
    """One epoch of training batches for this process.

    Args:
      data_config: ``config.data`` (see :mod:`cgh_jax.data` for the fields).
      global_batch_size: examples per step over all processes; a multiple of the process
        count.
      epoch: non-negative epoch index; the order is a pure function of
        ``(shuffle_seed, epoch)``.
      start_batch: first batch index to yield (exact resume); ``steps_per_epoch`` or more
        yields nothing.
      process_index, process_count: default ``jax.process_index()`` / ``process_count()``.

    Returns:
      An iterator of ``steps_per_epoch - start_batch`` dicts of numpy arrays with
      ``b = global_batch_size / process_count`` rows: ``image`` float32 ``[b, H, W, C]``,
      ``label`` int32 (the possibly corrupted training label), ``true_label`` int32,
      ``is_corrupt`` bool and ``id`` int64.
    """
    hosts = resolve_hosts(process_index, process_count)
    for name, value in (("epoch", epoch), ("start_batch", start_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    data = _backend(data_config)
    per_host_batch_size(global_batch_size, hosts)
    num_train = len(data.train.ids) if isinstance(data, memory.InMemoryData) else data.num_train
    if num_train < global_batch_size:
        raise ValueError(
            f"global_batch_size={global_batch_size} exceeds the {num_train} training examples."
        )
    return data.train_batches(global_batch_size, epoch, start_batch, hosts)


def eval_datasets(
    data_config,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, EvalSet]:
    """The evaluation sets: ``pristine``, ``corrupt`` (only when noise > 0), ``train_sample``
    and ``test``.

    Each value is a re-iterable :class:`cgh_jax.data.EvalSet` of padded per-host batches
    (``image``, ``label``, ``true_label``, ``id``, ``mask``); every host yields the same
    number of batches and every example of a set is counted exactly once over all hosts.
    ``label`` is the training label (noisy on ``corrupt``); ``test`` is never corrupted.
    Subset sizes are checked here, before any batch is produced.
    """
    hosts = resolve_hosts(process_index, process_count)
    return _backend(data_config).eval_datasets(global_batch_size, hosts)


def full_train_eval_batches(
    data_config,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> EvalSet:
    """Every training example exactly once, padded + masked, with ``id``, ``label`` (noisy)
    and ``true_label``: the input of per-example records (easy/hard)."""
    hosts = resolve_hosts(process_index, process_count)
    return _backend(data_config).full_train(global_batch_size, hosts)


__all__ = [
    "DatasetInfo",
    "EvalSet",
    "clear_caches",
    "eval_datasets",
    "full_train_eval_batches",
    "get_dataset_info",
    "steps_per_epoch",
    "train_batches",
]
