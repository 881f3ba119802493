"""In-memory path (``config.data.cache=True``): decoded splits held as numpy arrays.

For datasets that fit in host memory (all offline sources, MNIST, CIFAR, ...). Each split is
read once through TFDS, decoded, resized (if ``image_size``/``resize_size`` ask for it; the
result is rounded back to uint8) and sorted by example id. Every process holds the whole
split, so the global batch sequence does not depend on the number of processes:

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

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from cgh_jax.data import corruption, preprocess, reader
from cgh_jax.data import ids as ids_lib
from cgh_jax.data.config import DataSpec
from cgh_jax.data.hosts import EvalSet, Hosts, host_rows, num_eval_batches, per_host_batch_size


class Table(NamedTuple):
    """A decoded split: uint8 images [N, H, W, C], int64 labels [N], int64 ids [N]."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


_TABLES: dict[tuple, Table] = {}
MAX_IN_MEMORY_BYTES = 32 * 2**30


def clear_cache() -> None:
    _TABLES.clear()


def _needs_resize(spec: DataSpec, native: tuple) -> bool:
    if spec.resize_size > 0:
        return True
    return spec.image_size > 0 and tuple(native[:2]) != (spec.image_size, spec.image_size)


def _check_fits_in_memory(builder, split, spec, native, channels) -> None:
    """Refuses (before reading) splits whose decoded images exceed ``MAX_IN_MEMORY_BYTES``."""
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        return  # unknown size (e.g. mocked data): nothing to check cheaply
    if spec.image_size > 0:
        height = width = spec.image_size
    elif None in native[:2]:
        return  # variable native sizes are rejected after decoding
    else:
        height, width = native[:2]
    needed = n * height * width * channels
    if needed > MAX_IN_MEMORY_BYTES:
        raise ValueError(
            f"split {split!r} of {builder.name!r} needs {needed / 2**30:.0f} GiB as decoded "
            f"uint8 images (limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); stream it with "
            "config.data.cache=False."
        )


def load_table(spec: DataSpec, split: str) -> Table:
    """Reads, decodes and caches one split (sorted by id)."""
    key = (spec.dataset_key, split, spec.image_size, spec.resize_size)
    if key in _TABLES:
        return _TABLES[key]
    builder = reader.get_builder(spec)
    channels = reader.channels(builder)
    native = reader.native_shape(builder)
    resize = _needs_resize(spec, native)
    _check_fits_in_memory(builder, split, spec, native, channels)

    def decode(ex):
        image = preprocess.decode_tf(ex["image"], channels)
        if resize:
            image = preprocess.eval_resize_tf(
                image, image_size=spec.image_size, resize_size=spec.resize_size
            )
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return image, tf.shape(image), ex["label"], ex["id"]

    ds = reader.open_split(builder, split).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    # Stored sizes may vary (image folders): pad per batch, then insist that none was needed.
    fixed = resize or None not in native
    ds = ds.batch(4096) if fixed else ds.padded_batch(4096)
    parts = list(ds.prefetch(2).as_numpy_iterator())
    if not parts:
        raise ValueError(f"split {split!r} of {builder.name!r} is empty.")
    shapes = np.concatenate([p[1] for p in parts])
    if np.any(shapes != shapes[0]):
        raise ValueError(
            f"the images of {builder.name!r} vary in size (e.g. {tuple(shapes.min(0))} and "
            f"{tuple(shapes.max(0))}); set config.data.image_size (and resize_size) to hold "
            "them in memory, or stream them with cache=False."
        )
    images = np.concatenate([p[0][:, : shapes[0][0], : shapes[0][1]] for p in parts])
    labels, ids = (np.concatenate([p[i] for p in parts]) for i in (2, 3))
    order = np.argsort(ids, kind="stable")
    table = Table(images[order], labels[order].astype(np.int64), ids[order].astype(np.int64))
    if np.any(table.ids[1:] == table.ids[:-1]):
        raise ValueError(f"split {split!r} of {builder.name!r} has duplicate example ids.")
    _TABLES[key] = table
    return table


def select_ids(table: Table, ids_file: str, what: str) -> Table:
    """The rows of ``table`` whose id is listed in the ``.npy`` file ``ids_file``."""
    wanted = np.unique(np.load(ids_file).astype(np.int64).ravel())
    pos = np.searchsorted(table.ids, wanted)
    found = (pos < len(table.ids)) & (table.ids[np.minimum(pos, len(table.ids) - 1)] == wanted)
    if not found.all():
        raise ValueError(
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
        builder = reader.get_builder(spec)
        self.num_classes = reader.num_classes(builder)
        self.channels = reader.channels(builder)
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
