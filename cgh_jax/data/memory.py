"""In-memory path (``config.data.cache=True``): decoded splits held as numpy arrays.

For datasets that fit in host memory (all offline sources, MNIST, CIFAR, ...). Each split is
read once, decoded, resized (if ``image_size``/``resize_size`` ask for it; the result is
rounded back to uint8) and sorted by example id: offline sources straight into numpy
(:mod:`cgh_jax.data.sources`), TFDS datasets through their array cache
(:mod:`cgh_jax.data.sources.tfds_arrays`); no TensorFlow once that cache exists. Every process holds
the whole split, so the global batch sequence does not depend on the number of processes:

* epoch order: examples sorted by ``hash_bits(shuffle_seed, id, STREAM_EPOCH + epoch)``, a
  pure function of ``(shuffle_seed, epoch)``; global batch ``s`` is
  ``order[s * G : (s + 1) * G]`` and process ``p`` takes its ``p``-th slice of size
  ``G / process_count``. The last incomplete batch is dropped. Resuming at ``start_batch`` is
  exact and costs nothing.
* evaluation subsets: the ``eval_subset_size`` examples with the smallest
  ``hash_bits(noise_seed, id, STREAM_SUBSET + k)`` among the non-corrupt (pristine, k=0),
  corrupt (k=1) and all (train_sample, k=2) training examples, in id order.
"""

from __future__ import annotations

import numpy as np

from cgh_jax.data import corruption, preprocess, sources
from cgh_jax.data import ids as ids_lib
from cgh_jax.data.errors import DataError
from cgh_jax.data.hosts import EvalSet, Hosts, host_rows, num_eval_batches, per_host_batch_size
from cgh_jax.data.sources import tfds_arrays
from cgh_jax.data.table import Table
from cgh_jax.spec.data import DataSpec

_TABLES: dict[tuple, Table] = {}


def clear_cache() -> None:
    _TABLES.clear()
    sources.clear_cache()


def load_table(spec: DataSpec, split: str) -> Table:
    """Reads, decodes and caches one split (sorted by id)."""
    key = (spec.dataset_key, split, spec.image_size, spec.resize_size)
    if key not in _TABLES:
        if spec.source == "tfds":
            _TABLES[key] = tfds_arrays.load_table(spec, split)
        else:
            _TABLES[key] = sources.load_table(spec, split)
    return _TABLES[key]


def num_classes_and_channels(spec: DataSpec) -> tuple[int, int]:
    if spec.source == "tfds":
        meta = tfds_arrays.meta(spec)
        return int(meta["num_classes"]), int(meta["channels"])
    return sources.num_classes(spec), sources.channels(spec)


def select_ids(table: Table, ids_file: str, what: str) -> Table:
    """The rows of ``table`` whose id is listed in the ``.npy`` file ``ids_file``."""
    wanted = np.unique(np.load(ids_file).astype(np.int64).ravel())
    pos = np.searchsorted(table.ids, wanted)
    found = (pos < len(table.ids)) & (table.ids[np.minimum(pos, len(table.ids) - 1)] == wanted)
    if not found.all():
        raise DataError(
            f"{what} {ids_file!r}: {int((~found).sum())} of {len(wanted)} ids are not in the "
            f"training split (e.g. {wanted[~found][:5].tolist()})."
        )
    return Table(table.images[pos], table.labels[pos], table.ids[pos])


def choose_subset(ids: np.ndarray, rows: np.ndarray, size: int, seed: int, k: int, name: str):
    """``size`` rows (all for -1) with the smallest subset hashes, in id order."""
    if size == -1:
        return rows
    if size > len(rows):
        raise ValueError(
            f"config.data.eval_subset_size={size} exceeds the {len(rows)} available {name} "
            "training examples; lower it or use -1 (all)."
        )
    keys = ids_lib.hash_bits_np(seed, ids[rows], ids_lib.STREAM_SUBSET + k)
    chosen = rows[np.argsort(keys, kind="stable")[:size]]
    return np.sort(chosen)


class InMemoryData:
    """All pipeline operations of the in-memory path for one resolved spec."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.num_classes, self.channels = num_classes_and_channels(spec)
        preprocess.check_normalization(spec.normalize, self.channels)
        if spec.noise > 0:
            corruption.validate_noise(spec.noise, spec.noise_scheme, self.num_classes)
        train = load_table(spec, spec.train_split)
        if spec.train_ids_file:
            train = select_ids(train, spec.train_ids_file, "train_ids_file")
        self.train = train
        self.noisy, self.is_corrupt = corruption.corrupt_labels(
            train.ids,
            train.labels,
            num_classes=self.num_classes,
            fraction=spec.noise,
            seed=spec.noise_seed,
            scheme=spec.noise_scheme,
        )

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    def test_table(self) -> Table:
        spec = self.spec
        if spec.test_ids_file:
            full = load_table(spec, spec.train_split)
            return select_ids(full, spec.test_ids_file, "test_ids_file")
        return load_table(spec, spec.test_split)

    # ------------------------------------------------------------------ training

    def epoch_order(self, epoch: int) -> np.ndarray:
        keys = ids_lib.hash_bits_np(
            self.spec.shuffle_seed, self.train.ids, ids_lib.STREAM_EPOCH + epoch
        )
        return np.argsort(keys, kind="stable")

    def train_batches(self, global_batch_size: int, epoch: int, start_batch: int, hosts: Hosts):
        b = per_host_batch_size(global_batch_size, hosts)
        steps = len(self.train.ids) // global_batch_size
        order = self.epoch_order(epoch)
        spec = self.spec
        for step in range(start_batch, steps):
            begin = step * global_batch_size + hosts.index * b
            rows = order[begin : begin + b]
            ids = self.train.ids[rows]
            images = self.train.images[rows]
            if spec.augment == "flip":
                bits = ids_lib.hash_bits_np(spec.shuffle_seed, ids, ids_lib.STREAM_AUGMENT + epoch)
                images = preprocess.flip_np(images, ids_lib.bernoulli_np(bits, 0.5))
            yield {
                "image": preprocess.normalize_np(images, spec.normalize),
                "label": self.noisy[rows].astype(np.int32),
                "true_label": self.train.labels[rows].astype(np.int32),
                "is_corrupt": self.is_corrupt[rows],
                "id": ids,
            }

    # ------------------------------------------------------------------ evaluation

    def eval_set(self, name, table, rows, noisy, global_batch_size, hosts) -> EvalSet:
        """Padded per-host batches of ``table[rows]`` (labels ``noisy[rows]``)."""
        b = per_host_batch_size(global_batch_size, hosts)
        n = len(rows)
        start, stop = host_rows(n, hosts)
        mine = rows[start:stop]
        num_batches = num_eval_batches(n, hosts, b)
        normalize = self.spec.normalize

        def iterate():
            for i in range(num_batches):
                chunk = mine[i * b : (i + 1) * b]
                real = len(chunk)
                pad = b - real
                image = preprocess.normalize_np(table.images[chunk], normalize)
                batch = {
                    "image": image,
                    "label": noisy[chunk].astype(np.int32),
                    "true_label": table.labels[chunk].astype(np.int32),
                    "id": table.ids[chunk],
                    "mask": np.ones(real, bool),
                }
                if pad:
                    batch = {
                        k: np.concatenate([v, np.full((pad, *v.shape[1:]), fill, v.dtype)])
                        for (k, v), fill in zip(batch.items(), (0, 0, 0, -1, False), strict=True)
                    }
                yield batch

        return EvalSet(name, iterate, num_examples=n, num_batches=num_batches)

    def eval_datasets(self, global_batch_size: int, hosts: Hosts) -> dict[str, EvalSet]:
        spec = self.spec
        ids = self.train.ids
        size = spec.eval_subset_size
        corrupt_rows = np.flatnonzero(self.is_corrupt)
        subsets = {
            "pristine": choose_subset(
                ids, np.flatnonzero(~self.is_corrupt), size, spec.noise_seed, 0, "pristine"
            ),
        }
        if len(corrupt_rows):
            subsets["corrupt"] = choose_subset(
                ids, corrupt_rows, size, spec.noise_seed, 1, "corrupt"
            )
        subsets["train_sample"] = choose_subset(
            ids, np.arange(len(ids)), size, spec.noise_seed, 2, "train"
        )
        test = self.test_table()
        per_host_batch_size(global_batch_size, hosts)
        out = {
            name: self.eval_set(name, self.train, rows, self.noisy, global_batch_size, hosts)
            for name, rows in subsets.items()
        }
        out["test"] = self.eval_set(
            "test", test, np.arange(len(test.ids)), test.labels, global_batch_size, hosts
        )
        return out

    def full_train(self, global_batch_size: int, hosts: Hosts) -> EvalSet:
        rows = np.arange(len(self.train.ids))
        return self.eval_set("train", self.train, rows, self.noisy, global_batch_size, hosts)
