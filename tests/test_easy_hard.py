"""Tests for cgh_jax.analysis.easy_hard (easy/hard train/test id splits)."""

import json
import os

import numpy as np
import pytest

from cgh_jax.analysis import easy_hard
from cgh_jax.analysis.easy_hard import load_records, make_easy_hard_splits, split_easy_hard


def _write_records(path, *, n=400, accuracy=0.6, seed=0, num_classes=10):
    """Synthetic per-example records with shuffled, non-contiguous ids."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 7 + 1000)
    correct = rng.random(n) < accuracy
    true_label = rng.integers(0, num_classes, size=n).astype(np.int32)
    label = np.where(correct, true_label, (true_label + 1) % num_classes).astype(np.int32)
    loss = np.where(correct, 0.1, 2.0).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, id=ids, correct=correct, loss=loss, label=label, true_label=true_label)
    return ids, correct, true_label


def _load_split_files(out_dir):
    return {name: np.load(os.path.join(out_dir, f"{name}.npy")) for name in easy_hard.SPLIT_NAMES}


def test_splits_are_disjoint_sized_balanced_and_on_the_right_side(tmp_path):
    records = str(tmp_path / "per_example" / "epoch_002.npz")
    ids, correct, true_label = _write_records(records)
    easy_ids, hard_ids = set(ids[correct]), set(ids[~correct])
    summary = make_easy_hard_splits(records, tmp_path / "out", train_size=100, test_size=40, seed=3)
    splits = _load_split_files(tmp_path / "out")

    # Sizes, equal on both sides (balance).
    assert {k: len(v) for k, v in splits.items()} == {
        "easy_train": 100,
        "easy_test": 40,
        "hard_train": 100,
        "hard_test": 40,
    }
    # Every id on its side, sorted, int64, no duplicates, and all four sets disjoint.
    for name, arr in splits.items():
        assert arr.dtype == np.int64
        assert np.all(np.diff(arr) > 0)
        assert set(arr) <= (easy_ids if name.startswith("easy") else hard_ids)
    union = np.concatenate(list(splits.values()))
    assert np.unique(union).size == union.size == 280

    # The summary on disk matches the files and the records.
    on_disk = json.load(open(tmp_path / "out" / easy_hard.SUMMARY_FILENAME))
    assert on_disk == summary
    assert summary["sizes"] == {k: len(v) for k, v in splits.items()}
    assert summary["num_easy"] == int(correct.sum())
    assert summary["num_hard"] == int((~correct).sum())
    np.testing.assert_allclose(summary["accuracy"], correct.mean())
    assert summary["seed"] == 3
    assert summary["num_noisy_labels"] == int((~correct).sum())  # _write_records' labels
    for name in easy_hard.SPLIT_NAMES:
        counts = summary["class_counts"][name]
        assert sum(counts.values()) == len(splits[name])
        chosen = true_label[np.isin(ids, splits[name])]
        assert counts == {str(c): int(np.sum(chosen == c)) for c in np.unique(chosen)}
        assert os.path.isfile(summary["files"][name])


def test_deterministic_in_seed_and_independent_of_record_order(tmp_path):
    records = str(tmp_path / "a.npz")
    ids, correct, _ = _write_records(records, seed=1)
    first = make_easy_hard_splits(records, tmp_path / "o1", train_size=50, test_size=20, seed=7)
    again = make_easy_hard_splits(records, tmp_path / "o2", train_size=50, test_size=20, seed=7)
    assert first["sizes"] == again["sizes"]
    s1, s2 = _load_split_files(tmp_path / "o1"), _load_split_files(tmp_path / "o2")
    for name in easy_hard.SPLIT_NAMES:
        np.testing.assert_array_equal(s1[name], s2[name])

    # The same records in another order give the same split.
    perm = np.random.default_rng(9).permutation(len(ids))
    shuffled = split_easy_hard(ids[perm], correct[perm], train_size=50, test_size=20, seed=7)
    for name in easy_hard.SPLIT_NAMES:
        np.testing.assert_array_equal(shuffled[name], s1[name])

    # Another seed gives another split of the same sizes.
    other = split_easy_hard(ids, correct, train_size=50, test_size=20, seed=8)
    assert not np.array_equal(other["easy_train"], s1["easy_train"])
    assert all(len(other[k]) == len(s1[k]) for k in easy_hard.SPLIT_NAMES)


def test_fractions_are_of_the_smaller_side():
    ids = np.arange(100)
    correct = ids < 70  # 70 easy, 30 hard
    out = split_easy_hard(ids, correct, train_size=0.8, test_size=0.2, seed=0)
    assert [len(out[k]) for k in easy_hard.SPLIT_NAMES] == [24, 6, 24, 6]
    # Fractions whose product is not exact in binary (0.29 * 100 = 28.999...) still give 29.
    out29 = split_easy_hard(
        np.arange(200), np.arange(200) < 100, train_size=0.29, test_size=0.7, seed=0
    )
    assert len(out29["easy_train"]) == 29 and len(out29["hard_test"]) == 70
    # The hard side is used entirely.
    np.testing.assert_array_equal(
        np.sort(np.r_[out["hard_train"], out["hard_test"]]), np.arange(70, 100)
    )


def test_a_side_too_small_is_a_clear_error_and_writes_nothing(tmp_path):
    records = str(tmp_path / "r.npz")
    _, correct, _ = _write_records(records, n=100, accuracy=0.9, seed=2)
    n_hard = int((~correct).sum())
    with pytest.raises(ValueError, match=rf"hard side has {n_hard} examples.*fractions"):
        make_easy_hard_splits(records, tmp_path / "out", train_size=n_hard, test_size=1, seed=0)
    assert not os.path.exists(tmp_path / "out")
    # Exactly enough is fine.
    out = split_easy_hard(np.arange(100), correct, train_size=n_hard - 1, test_size=1, seed=0)
    assert len(out["hard_train"]) == n_hard - 1


@pytest.mark.parametrize(
    "train_size, test_size, match",
    [(-1, 5, ">= 0"), (1.5, 0.1, r"\[0, 1\]"), ("10", 5, "int count"), (True, 5, "int count")],
)
def test_bad_sizes(train_size, test_size, match):
    with pytest.raises(ValueError, match=match):
        split_easy_hard(
            np.arange(10), np.arange(10) < 5, train_size=train_size, test_size=test_size, seed=0
        )


def test_bad_records(tmp_path):
    with pytest.raises(FileNotFoundError, match="per_example"):
        load_records(tmp_path / "missing.npz")
    np.savez(tmp_path / "nocorrect.npz", id=np.arange(3))
    with pytest.raises(ValueError, match=r"lacks the arrays \['correct'\]"):
        load_records(tmp_path / "nocorrect.npz")
    np.savez(tmp_path / "dup.npz", id=np.array([1, 2, 2]), correct=np.ones(3, bool))
    with pytest.raises(ValueError, match="duplicates"):
        load_records(tmp_path / "dup.npz")
    np.savez(tmp_path / "len.npz", id=np.arange(3), correct=np.ones(4, bool))
    with pytest.raises(ValueError, match="'correct' has shape"):
        load_records(tmp_path / "len.npz")
    np.savez(tmp_path / "float.npz", id=np.arange(3.0), correct=np.ones(3, bool))
    with pytest.raises(ValueError, match="integers"):
        load_records(tmp_path / "float.npz")
    with pytest.raises(ValueError, match="duplicates"):
        split_easy_hard(
            np.array([1, 1]), np.array([True, False]), train_size=0, test_size=0, seed=0
        )


def test_records_without_labels_have_no_class_counts(tmp_path):
    np.savez(tmp_path / "r.npz", id=np.arange(20), correct=np.arange(20) % 2 == 0)
    summary = make_easy_hard_splits(
        tmp_path / "r.npz", tmp_path / "o", train_size=6, test_size=4, seed=0
    )
    assert "class_counts" not in summary and "num_noisy_labels" not in summary
    assert summary["sizes"]["easy_test"] == 4
