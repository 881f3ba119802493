"""Input pipelines on tfds.testing.mock_data: fields, hosts, exact evaluation, resume, errors."""

import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cgh_jax import data
from cgh_jax.data import DatasetNotPreparedError

NUM = 64  # examples per mocked split
BATCH = 8


def cfg(**kw):
    base = dict(source="tfds", noise=0.4, noise_seed=3, eval_subset_size=-1, shuffle_buffer=64)
    base.update(kw)
    return ml_collections.ConfigDict(base)


DATASETS = {
    "mnist": dict(name="mnist"),
    "cifar10": dict(name="cifar10"),
    "imagenet2012": dict(
        name="imagenet2012",
        image_size=24,
        resize_size=28,
        normalize="imagenet",
        test_split="validation",
    ),
}
CASES = [
    ("mnist", True),
    ("cifar10", True),
    ("imagenet2012", True),
    ("cifar10", False),
    ("imagenet2012", False),
]


@pytest.fixture
def mock():
    with tfds.testing.mock_data(num_examples=NUM):
        data.clear_caches()
        yield
    data.clear_caches()


def collect(batches):
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, len(batches)


def hosts_run(fn, count):
    return [fn(process_index=p, process_count=count) for p in range(count)]


@pytest.mark.parametrize("name,cache", CASES)
def test_fields_hosts_and_exact_eval(mock, name, cache):
    c = cfg(cache=cache, **DATASETS[name])
    info = data.get_dataset_info(c)
    assert info.num_train == NUM and info.num_test == NUM
    assert info.num_classes == {"mnist": 10, "cifar10": 10, "imagenet2012": 1000}[name]
    assert data.steps_per_epoch(c, BATCH) == NUM // BATCH

    # Training batches: fields, dtypes, ranges, noisy labels equal to the numpy reference.
    full, n = collect(data.train_batches(c, global_batch_size=BATCH, epoch=0))
    assert n == NUM // BATCH
    assert full["image"].shape == (NUM, *info.image_shape) and full["image"].dtype == np.float32
    if c.get("normalize", "unit") == "unit":
        assert full["image"].min() >= 0.0 and full["image"].max() <= 1.0
    else:
        assert -2.2 < full["image"].min() < full["image"].max() < 2.7
    assert full["label"].dtype == full["true_label"].dtype == np.int32
    assert full["is_corrupt"].dtype == bool and full["id"].dtype == np.int64
    noisy, bad = data.corrupt_labels(
        full["id"], full["true_label"], num_classes=info.num_classes, fraction=0.4, seed=3
    )
    np.testing.assert_array_equal(full["label"], noisy)
    np.testing.assert_array_equal(full["is_corrupt"], bad)
    assert len(np.unique(full["id"])) == NUM

    # Per-host split: disjoint parts whose union is the whole split.
    for count in (2, 4):
        parts = hosts_run(
            lambda **h: collect(data.train_batches(c, global_batch_size=BATCH, epoch=0, **h)),
            count,
        )
        assert all(nb == NUM // BATCH for _, nb in parts)
        ids = np.concatenate([p["id"] for p, _ in parts])
        assert all(len(p["id"]) == NUM // count for p, _ in parts)
        assert len(np.unique(ids)) == NUM and set(ids) == set(full["id"])

    # Exact evaluation: same number of batches everywhere, each example counted once; a
    # global batch of 12 leaves padding for every host count (64 is no multiple of 12).
    for count in (1, 2, 3, 4) if cache else (1, 3):
        sets = hosts_run(lambda **h: data.eval_datasets(c, global_batch_size=12, **h), count)
        assert set(sets[0]) == {"pristine", "corrupt", "train_sample", "test"}
        for key in sets[0]:
            assert len({len(s[key]) for s in sets}) == 1
            got = [collect(s[key])[0] for s in sets]
            mask = np.concatenate([g["mask"] for g in got])
            real = {
                k: np.concatenate([g[k] for g in got])[mask] for k in ("id", "label", "true_label")
            }
            assert len(np.unique(real["id"])) == len(real["id"])
            assert np.all(np.concatenate([g["id"] for g in got])[~mask] == -1)
            if key == "pristine":
                assert set(real["id"]) == set(full["id"][~full["is_corrupt"]])
                np.testing.assert_array_equal(real["label"], real["true_label"])
            elif key == "corrupt":
                assert set(real["id"]) == set(full["id"][full["is_corrupt"]])
                assert np.all(real["label"] != real["true_label"])
            elif key == "train_sample":
                assert set(real["id"]) == set(full["id"])
            else:
                assert len(real["id"]) == NUM
                np.testing.assert_array_equal(real["label"], real["true_label"])
    whole = hosts_run(lambda **h: data.full_train_eval_batches(c, global_batch_size=12, **h), 3)
    assert len({len(w) for w in whole}) == 1
    got = [collect(w)[0] for w in whole]
    ids = np.concatenate([g["id"][g["mask"]] for g in got])
    assert len(ids) == NUM and set(ids) == set(full["id"])


@pytest.mark.parametrize("cache", [True, False])
def test_epoch_order_is_reproducible_and_resumes_exactly(mock, cache):
    c = cfg(cache=cache, augment="flip", **DATASETS["cifar10"])
    first, _ = collect(data.train_batches(c, global_batch_size=BATCH, epoch=0))
    again, _ = collect(data.train_batches(c, global_batch_size=BATCH, epoch=0))
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    other, _ = collect(data.train_batches(c, global_batch_size=BATCH, epoch=1))
    assert not np.array_equal(first["id"], other["id"])
    assert set(first["id"]) == set(other["id"])
    tail, n = collect(data.train_batches(c, global_batch_size=BATCH, epoch=0, start_batch=3))
    assert n == NUM // BATCH - 3
    for k in first:
        np.testing.assert_array_equal(tail[k], first[k][3 * BATCH :])
    assert list(data.train_batches(c, global_batch_size=BATCH, epoch=0, start_batch=99)) == []


def test_in_memory_global_batches_do_not_depend_on_host_count(mock):
    c = cfg(**DATASETS["mnist"])
    one, _ = collect(data.train_batches(c, global_batch_size=BATCH, epoch=2))
    parts = hosts_run(
        lambda **h: list(data.train_batches(c, global_batch_size=BATCH, epoch=2, **h)), 4
    )
    stitched = np.concatenate(
        [np.concatenate([p[s]["id"] for p in parts]) for s in range(NUM // BATCH)]
    )
    np.testing.assert_array_equal(stitched, one["id"])


def test_inception_crop_streaming(mock):
    c = cfg(cache=False, augment="inception_crop", **DATASETS["imagenet2012"])
    a, _ = collect(data.train_batches(c, global_batch_size=BATCH, epoch=0))
    b, _ = collect(data.train_batches(c, global_batch_size=BATCH, epoch=0))
    assert a["image"].shape == (NUM, 24, 24, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    assert np.all(a["image"] >= (-mean / std).min() - 1e-5)
    assert np.all(a["image"] <= ((1 - mean) / std).max() + 1e-5)


def test_eval_subset_size_and_noise_free_sets(mock):
    c = cfg(eval_subset_size=10, **DATASETS["mnist"])
    sets = data.eval_datasets(c, global_batch_size=BATCH)
    assert [sets[k].num_examples for k in ("pristine", "corrupt", "train_sample")] == [10] * 3
    again = data.eval_datasets(c, global_batch_size=BATCH)
    np.testing.assert_array_equal(
        collect(sets["pristine"])[0]["id"], collect(again["pristine"])[0]["id"]
    )
    clean = data.eval_datasets(cfg(noise=0.0, **DATASETS["mnist"]), global_batch_size=BATCH)
    assert set(clean) == {"pristine", "train_sample", "test"}


@pytest.mark.parametrize("cache", [True, False])
def test_eval_subset_too_large_fails_before_work(mock, cache):
    c = cfg(cache=cache, eval_subset_size=NUM + 1, **DATASETS["cifar10"])
    with pytest.raises(ValueError, match="eval_subset_size"):
        data.eval_datasets(c, global_batch_size=BATCH)


def test_unprepared_dataset_fails_fast_with_instructions(tmp_path):
    data.clear_caches()
    for name, extra in (
        ("mnist", "tfds build mnist"),
        ("imagenet2012", "ILSVRC2012_img_train.tar"),
    ):
        start = time.monotonic()
        with pytest.raises(DatasetNotPreparedError, match=extra) as err:
            data.get_dataset_info(
                cfg(name=name, data_dir=str(tmp_path), cache=name == "mnist", image_size=8)
            )
        assert time.monotonic() - start < 5
        assert "download_and_prepare" in str(err.value)
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        data.get_dataset_info(cfg(name="no_such_dataset_xyz", data_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(noise=1.5), "noise=1.5 is not a fraction"),
        (dict(noise=-0.1), "noise=-0.1 is not a fraction"),
        (dict(noise_scheme="swap"), "noise_scheme='swap' is not accepted"),
        (dict(augment="mixup"), "augment"),
        (dict(normalize="zscore"), "normalize"),
        (dict(eval_subset_size=0), "eval_subset_size"),
        (dict(source="hdf5"), "source"),
        (dict(name=None), "data.name=None is not a non-empty string"),
        (dict(augment="inception_crop", image_size=8), "cache=False"),
        (dict(cache=False, noise_scheme="permute"), "permute"),
        (dict(bogus_field=1), "bogus_field is not a field the trainer reads"),
        (dict(image_size=-1), "image_size"),
    ],
)
def test_bad_config_fails_clearly(kw, match):
    base = dict(source="tfds", name="mnist", noise=0.2)
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        data.resolve(ml_collections.ConfigDict(base))


def test_bad_batch_arguments(mock):
    c = cfg(**DATASETS["mnist"])
    with pytest.raises(ValueError, match="multiple of the process count"):
        data.train_batches(c, global_batch_size=6, epoch=0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="exceeds"):
        data.train_batches(c, global_batch_size=NUM * 2, epoch=0)
    with pytest.raises(ValueError, match="epoch"):
        data.train_batches(c, global_batch_size=BATCH, epoch=-1)
    with pytest.raises(ValueError, match="process_index"):
        data.eval_datasets(c, global_batch_size=BATCH, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="imagenet"):
        data.get_dataset_info(cfg(normalize="imagenet", **DATASETS["mnist"]))
