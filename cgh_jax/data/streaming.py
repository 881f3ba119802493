"""Streaming path (``config.data.cache=False``): tf.data over TFDS files, for ImageNet scale.

Per-process split: process ``p`` of ``P`` reads ``tfds.even_splits(split, P)[p]`` (a disjoint
contiguous part; for datasets without split sizes in their metadata it falls back to
``ds.shard(P, p)`` over the record stream). With ``train_ids_file``/``test_ids_file`` every
process reads the whole split and keeps the sorted ids ``ids[p::P]``.

Training epoch ``e`` is a pure function of ``(shuffle_seed, e)``: the TFDS file order is
shuffled with a seed derived from both, records are interleaved deterministically, then pass
a seeded ``shuffle_buffer``-sized buffer. Labels are corrupted inside the pipeline by
:func:`cgh_jax.data.corruption.corrupt_labels_tf` (``uniform``/``uniform_other``; identical
to the numpy function). Resuming at ``start_batch`` skips ``start_batch * b`` records
*before* decoding: the skipped records are still read and pass through the shuffle buffer
(I/O cost of the skipped part of the epoch, no JPEG decoding).

Evaluation subsets: each process scans its part of the training split in file order and
keeps the first ``ceil(eval_subset_size / P)`` examples that are pristine / corrupt / any
(train_sample), so an evaluation reads only about ``eval_subset_size / fraction`` records.
The subset is fixed for a given prepared dataset and process count. Sizes above the
*expected* number of available examples raise a ``ValueError``; if a process's part holds
fewer matching examples than its share, the set is smaller and the mask says so.
``eval_subset_size = -1`` keeps every matching example (batches padded to the part size).
"""

from __future__ import annotations

import math

import numpy as np

from cgh_jax.data import corruption, preprocess, reader, sources
from cgh_jax.data import ids as ids_lib
from cgh_jax.data.hosts import EvalSet, Hosts, host_rows, num_eval_batches, per_host_batch_size
from cgh_jax.data.sources import image_folder
from cgh_jax.data.tfimport import tensorflow, tfds
from cgh_jax.spec.data import DataSpec

tf = tensorflow()  # this module is imported only for cache=False

_INT63 = (1 << 63) - 1


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = 0
    return options


class TfdsStream:
    """Records of a prepared TFDS dataset: per-process ``tfds.even_splits`` (or ``shard``)."""

    def __init__(self, spec: DataSpec):
        self.builder = reader.get_builder(spec)
        self.name = self.builder.name
        self.num_classes = reader.num_classes(self.builder)
        self.channels = reader.channels(self.builder)
        self.native_shape = reader.native_shape(self.builder)

    def num_examples(self, split: str) -> int:
        return reader.num_examples(self.builder, split)

    def _has_split_sizes(self, split: str) -> bool:
        try:
            return self.builder.info.splits[split].num_examples > 0
        except (KeyError, ValueError):
            return False

    def read(self, split: str, hosts: Hosts, whole: bool, shuffle_seed: int | None):
        read_config = tfds().ReadConfig(options=_options())
        if shuffle_seed is not None:
            read_config.shuffle_seed = shuffle_seed
        split_arg, shard = split, False
        if not whole and hosts.count > 1:
            if self._has_split_sizes(split):
                split_arg = tfds().even_splits(split, n=hosts.count)[hosts.index]
            else:
                shard = True
        ds = reader.open_split(
            self.builder,
            split_arg,
            shuffle_files=shuffle_seed is not None,
            read_config=read_config,
        )
        return ds.shard(hosts.count, hosts.index) if shard else ds


class OfflineStream:
    """Records of an offline source: the file listing (image folders: the encoded files are
    read in the pipeline) or the decoded arrays, split into contiguous per-process parts in
    id order; a seeded permutation of a process's part stands in for TFDS's file shuffling."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.name = f"{spec.source}:{spec.path}" if spec.path else spec.source
        self.num_classes = sources.num_classes(spec)
        self.channels = sources.channels(spec)
        if spec.source == "image_folder":
            self.native_shape = (None, None, 3)
        else:
            self.native_shape = tuple(sources.raw_arrays(spec, spec.train_split)[0].shape[1:])

    def num_examples(self, split: str) -> int:
        return sources.sizes(self.spec)[split]

    def read(self, split: str, hosts: Hosts, whole: bool, shuffle_seed: int | None):
        if self.spec.source == "image_folder":
            files = image_folder.listing(self.spec.path, split)
            ids = np.arange(len(files.paths), dtype=np.int64)
            columns = {"image": np.asarray(files.paths), "label": files.labels, "id": ids}
        else:
            images, labels, ids = sources.raw_arrays(self.spec, split)
            columns = {"image": images, "label": labels, "id": ids}
        rows = np.arange(len(ids))
        if not whole and hosts.count > 1:
            start, stop = host_rows(len(ids), hosts)
            rows = rows[start:stop]
        if shuffle_seed is not None:
            rows = np.random.default_rng(shuffle_seed).permutation(rows)
        ds = tf.data.Dataset.from_tensor_slices({k: v[rows] for k, v in columns.items()})
        if self.spec.source == "image_folder":
            ds = ds.map(
                lambda ex: {**ex, "image": tf.io.read_file(ex["image"])},
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return ds.with_options(_options())


class StreamingData:
    """All pipeline operations of the streaming path for one resolved spec."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.source = TfdsStream(spec) if spec.source == "tfds" else OfflineStream(spec)
        self.num_classes = self.source.num_classes
        self.channels = self.source.channels
        preprocess.check_normalization(spec.normalize, self.channels)
        if spec.noise > 0:
            corruption.validate_noise(spec.noise, spec.noise_scheme, self.num_classes)
        if spec.image_size > 0:
            self.image_shape = (spec.image_size, spec.image_size, self.channels)
        else:
            native = self.source.native_shape
            if None in native or spec.resize_size > 0:
                raise ValueError(
                    f"the images of {self.source.name!r} need a fixed output size: set "
                    "config.data.image_size (e.g. 224, with resize_size=256)."
                )
            self.image_shape = tuple(int(d) for d in native)
        self.train_ids = self._ids_file(spec.train_ids_file)
        self.test_ids = self._ids_file(spec.test_ids_file)
        if self.train_ids is not None:
            self.num_train = len(self.train_ids)
        else:
            self.num_train = self.source.num_examples(spec.train_split)

    @staticmethod
    def _ids_file(path):
        return None if path is None else np.unique(np.load(path).astype(np.int64).ravel())

    @property
    def num_test(self) -> int:
        if self.test_ids is not None:
            return len(self.test_ids)
        return self.source.num_examples(self.spec.test_split)

    # ------------------------------------------------------------------ reading

    def _read(self, split: str, hosts: Hosts, ids, *, shuffle_seed: int | None, noise=True):
        """This host's records of ``split`` (or of the ``ids`` listed), labels corrupted
        (``noisy``, ``is_corrupt``) unless ``noise`` is False."""
        ds = self.source.read(split, hosts, whole=ids is not None, shuffle_seed=shuffle_seed)
        if ids is not None:
            mine = tf.constant(ids[hosts.index :: hosts.count], tf.int64)
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(mine, tf.ones_like(mine)), default_value=0
            )
            ds = ds.filter(lambda ex: table.lookup(ex["id"]) > 0)
        if not noise:
            return ds
        return ds.map(self._add_noise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _add_noise(self, ex):
        spec = self.spec
        if spec.noise > 0:
            noisy, is_corrupt = corruption.corrupt_labels_tf(
                ex["id"],
                ex["label"],
                num_classes=self.num_classes,
                fraction=spec.noise,
                seed=spec.noise_seed,
                scheme=spec.noise_scheme,
            )
        else:
            noisy, is_corrupt = ex["label"], tf.constant(False)
        return {**ex, "noisy": noisy, "is_corrupt": is_corrupt}

    def _eval_image(self, image):
        spec = self.spec
        image = preprocess.decode_tf(image, self.channels)
        image = preprocess.eval_resize_tf(
            image, image_size=spec.image_size, resize_size=spec.resize_size
        )
        image = preprocess.normalize_tf(image, spec.normalize)
        image.set_shape(self.image_shape)
        return image

    # ------------------------------------------------------------------ training

    def train_batches(self, global_batch_size: int, epoch: int, start_batch: int, hosts: Hosts):
        spec = self.spec
        b = per_host_batch_size(global_batch_size, hosts)
        steps = self.num_train // global_batch_size
        if start_batch >= steps:
            return
        epoch_id = np.array([epoch], np.int64)
        file_seed = int(ids_lib.hash_bits_np(spec.shuffle_seed, epoch_id, ids_lib.STREAM_FILES)[0])
        buffer_seed = int(
            ids_lib.hash_bits_np(spec.shuffle_seed, epoch_id, ids_lib.STREAM_BUFFER)[0]
        )
        ds = self._read(
            spec.train_split,
            hosts,
            self.train_ids,
            shuffle_seed=file_seed % (2**31),
            noise=False,
        )
        buffer_seed &= _INT63
        ds = ds.shuffle(spec.shuffle_buffer, seed=buffer_seed, reshuffle_each_iteration=False)
        ds = ds.skip(start_batch * b)

        def prepare(ex):
            bits = ids_lib.hash_bits_tf(spec.shuffle_seed, ex["id"], ids_lib.STREAM_AUGMENT + epoch)
            seed = tf.bitcast(bits, tf.int32)
            if spec.augment == "inception_crop":
                image = preprocess.inception_crop_tf(
                    ex["image"], image_size=spec.image_size, seed=seed, channels=self.channels
                )
            else:
                image = preprocess.decode_tf(ex["image"], self.channels)
                image = preprocess.eval_resize_tf(
                    image, image_size=spec.image_size, resize_size=spec.resize_size
                )
                if spec.augment == "flip":
                    image = preprocess.flip_tf(image, seed)
            image = preprocess.normalize_tf(image, spec.normalize)
            image.set_shape(self.image_shape)
            return {"image": image, "label": ex["label"], "id": ex["id"]}

        def finish(batch):  # label corruption is elementwise: once per batch is cheaper
            batch = self._add_noise(batch)
            return {
                "image": batch["image"],
                "label": tf.cast(batch["noisy"], tf.int32),
                "true_label": tf.cast(batch["label"], tf.int32),
                "is_corrupt": tf.broadcast_to(batch["is_corrupt"], tf.shape(batch["label"])),
                "id": batch["id"],
            }

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(b, drop_remainder=True).take(steps - start_batch)
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    # ------------------------------------------------------------------ evaluation

    def _padded(self, name, ds, *, num_examples, num_batches, batch_size, label_key) -> EvalSet:
        def prepare(ex):
            return {
                "image": self._eval_image(ex["image"]),
                "label": tf.cast(ex[label_key], tf.int32),
                "true_label": tf.cast(ex["label"], tf.int32),
                "id": ex["id"],
                "mask": tf.constant(True),
            }

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        pad = {
            "image": tf.zeros(self.image_shape, tf.float32),
            "label": tf.constant(0, tf.int32),
            "true_label": tf.constant(0, tf.int32),
            "id": tf.constant(-1, tf.int64),
            "mask": tf.constant(False),
        }
        ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
        ds = ds.take(num_batches * batch_size).batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return EvalSet(
            name, ds.as_numpy_iterator, num_examples=num_examples, num_batches=num_batches
        )

    def _expected_count(self, which: str) -> float:
        spec = self.spec
        if spec.noise_scheme == "uniform":
            rate = spec.noise * (1 - 1 / self.num_classes)
        else:
            rate = spec.noise
        return self.num_train * {"pristine": 1 - rate, "corrupt": rate, "train_sample": 1.0}[which]

    def eval_datasets(self, global_batch_size: int, hosts: Hosts) -> dict[str, EvalSet]:
        spec = self.spec
        b = per_host_batch_size(global_batch_size, hosts)
        size = spec.eval_subset_size
        names = ["pristine"] + (["corrupt"] if spec.noise > 0 else []) + ["train_sample"]
        for name in names:
            expected = self._expected_count(name)
            if size != -1 and size > math.floor(expected):
                raise ValueError(
                    f"config.data.eval_subset_size={size} exceeds the ~{math.floor(expected)} "
                    f"{name} training examples expected; lower it or use -1 (all)."
                )
        out = {}
        predicates = {
            "pristine": lambda ex: tf.logical_not(ex["is_corrupt"]),
            "corrupt": lambda ex: ex["is_corrupt"],
            "train_sample": lambda ex: tf.constant(True),
        }
        for name in names:
            ds = self._read(spec.train_split, hosts, self.train_ids, shuffle_seed=None)
            ds = ds.filter(predicates[name])
            if size == -1:
                n_total = None if name != "train_sample" else self.num_train
                num_batches = num_eval_batches(self.num_train, hosts, b)
            else:
                start, stop = host_rows(size, hosts)
                ds = ds.take(stop - start)
                n_total = size
                num_batches = num_eval_batches(size, hosts, b)
            out[name] = self._padded(
                name,
                ds,
                num_examples=n_total,
                num_batches=num_batches,
                batch_size=b,
                label_key="noisy",
            )
        if self.test_ids is not None:
            test = self._read(spec.train_split, hosts, self.test_ids, shuffle_seed=None)
        else:
            test = self._read(spec.test_split, hosts, None, shuffle_seed=None)
        n_test = self.num_test
        out["test"] = self._padded(
            "test",
            test,
            num_examples=n_test,
            num_batches=num_eval_batches(n_test, hosts, b),
            batch_size=b,
            label_key="label",
        )
        return out

    def full_train(self, global_batch_size: int, hosts: Hosts) -> EvalSet:
        b = per_host_batch_size(global_batch_size, hosts)
        ds = self._read(self.spec.train_split, hosts, self.train_ids, shuffle_seed=None)
        return self._padded(
            "train",
            ds,
            num_examples=self.num_train,
            num_batches=num_eval_batches(self.num_train, hosts, b),
            batch_size=b,
            label_key="noisy",
        )
