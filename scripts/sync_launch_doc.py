"""Writes the dry-run output of ``scripts/tpu.sh`` into docs/launch.md.

  python scripts/sync_launch_doc.py          # rewrite the blocks
  python scripts/sync_launch_doc.py --check  # exit 1 if a block is out of date

Each block in docs/launch.md looks like::

    <!-- tpu.sh --name cgh-v4 --accelerator v4-8 ... [-- extra flags] -->
    ```bash
    ...
    ```
    <!-- /tpu.sh -->

and holds, for every step (create, setup, run, logs, delete), the line that runs the step
followed by exactly the commands ``bash scripts/tpu.sh --dry-run <options> <step>`` prints.
So the gcloud commands in the guide are the script's, never typed by hand.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "launch.md"
SCRIPT = ROOT / "scripts" / "tpu.sh"
STEPS = ("create", "setup", "run", "logs", "delete")
BLOCK = re.compile(r"<!-- tpu\.sh (?P<args>.*?) -->\n(?P<body>.*?)<!-- /tpu\.sh -->", re.S)


def split_args(args: str) -> tuple[list[str], list[str]]:
    """A marker's arguments: (options, extra flags after ``--``)."""
    words = shlex.split(args)
    if "--" in words:
        cut = words.index("--")
        return words[:cut], words[cut + 1 :]
    return words, []


def clean_environment() -> dict[str, str]:
    """The environment without tpu.sh's ``CGH_TPU_*`` defaults: options come from the doc."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CGH_TPU_")}


def dry_run(options: list[str], step: str, extra: list[str]) -> str:
    """What ``tpu.sh --dry-run`` prints for one step."""
    command = ["bash", str(SCRIPT), "--dry-run", *options, step]
    if extra:
        command += ["--", *extra]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env=clean_environment()
    )
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{result.stderr}")
    return result.stdout


def render(args: str) -> str:
    """The body of the block for the marker arguments ``args``."""
    options, extra = split_args(args)
    parts = ["```bash\n"]
    for step in STEPS:
        line = shlex.join(["bash", "scripts/tpu.sh", *options, step])
        if extra and step == "run":
            line += " -- " + shlex.join(extra)
        parts.append(f"# {step}: {line}\n")
        parts.append(dry_run(options, step, extra if step == "run" else []))
    parts.append("```\n")
    return "".join(parts)


def blocks(text: str) -> list[tuple[str, str]]:
    """``(marker arguments, current body)`` for every block of the document."""
    return [(m.group("args"), m.group("body")) for m in BLOCK.finditer(text)]


def synced(text: str) -> str:
    """The document with every block regenerated."""
    if not BLOCK.search(text):
        raise ValueError(f"{DOC} has no <!-- tpu.sh ... --> block")
    return BLOCK.sub(
        lambda m: f"<!-- tpu.sh {m.group('args')} -->\n{render(m.group('args'))}<!-- /tpu.sh -->",
        text,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    args = parser.parse_args()
    text = DOC.read_text()
    new = synced(text)
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/sync_launch_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
