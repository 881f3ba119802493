"""Execute the notebooks in notebooks/ top to bottom and store them with their outputs.

The committed notebooks carry the outputs (figures included) of a full-size run, so they
read on GitHub without running anything. After changing a notebook, re-execute it:

    .venv/bin/python scripts/execute_notebooks.py                 # all, full size, in place
    .venv/bin/python scripts/execute_notebooks.py quickstart      # one notebook
    .venv/bin/python scripts/execute_notebooks.py --size ci --check   # CI size, nothing written

Each notebook runs in a fresh kernel of this interpreter with CGH_NOTEBOOK_SIZE set to the
requested size and CGH_NOTEBOOK_WORKDIR pointing to a scratch directory, so training runs
start from scratch and leave nothing in the repository. tests/test_notebooks.py uses
`execute_notebook` from this file to run the notebooks in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SIZES = ("full", "ci")
# The only notebook metadata kept: everything else (widgets, Colab state, timings) is noise.
CLEAN_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def list_notebooks(names: list[str] | None = None) -> list[Path]:
    """Paths of the named notebooks (stem or file name), or of all of them."""
    available = {p.stem: p for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))}
    if not names:
        return list(available.values())
    paths = []
    for name in names:
        stem = Path(name).stem
        if stem not in available:
            raise ValueError(
                f"No notebook named {name!r} in {NOTEBOOK_DIR}; choose from {sorted(available)}."
            )
        paths.append(available[stem])
    return paths


def kernel_env(size: str, workdir: str | os.PathLike) -> dict[str, str]:
    """Environment of the notebook kernel: size switch, scratch workdir, real devices.

    The test suite's fake-device flag (8 host devices for sharding tests) is removed: the
    notebooks run on the machine's real devices, which is also what a reader gets.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    env = dict(os.environ)
    env["CGH_NOTEBOOK_SIZE"] = size
    env["CGH_NOTEBOOK_WORKDIR"] = os.fspath(workdir)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    flags = " ".join(flags.split())
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def execute_notebook(
    path: str | os.PathLike,
    *,
    size: str,
    workdir: str | os.PathLike,
    timeout: int = 900,
) -> nbformat.NotebookNode:
    """Runs one notebook top to bottom in a fresh kernel and returns it with its outputs.

    Args:
      path: the .ipynb file.
      size: 'full' or 'ci' (the notebooks' CGH_NOTEBOOK_SIZE switch).
      workdir: scratch directory for the notebook's training runs (CGH_NOTEBOOK_WORKDIR).
      timeout: seconds allowed for any one cell.

    Returns:
      The executed notebook (not written anywhere).

    Raises:
      nbclient.exceptions.CellExecutionError: a cell raised; the message holds its traceback.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",  # jupyter_client starts it with this interpreter
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env(size, workdir))
    return nb


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drops notebook and cell metadata that only records where and when it ran."""
    nb.metadata = nbformat.from_dict(CLEAN_METADATA)
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict(
            {k: v for k, v in cell.metadata.items() if k in ("tags", "id")}
        )
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument(
        "--check", action="store_true", help="execute only; do not write the notebooks"
    )
    args = parser.parse_args(argv)
    paths = list_notebooks(args.notebooks)
    for path in paths:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"cgh_{path.stem}_") as workdir:
            nb = execute_notebook(path, size=args.size, workdir=workdir, timeout=args.timeout)
        if not args.check:
            nbformat.write(clean(nb), path)
        action = "checked" if args.check else "executed and saved"
        print(f"{path.name}: {action} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
