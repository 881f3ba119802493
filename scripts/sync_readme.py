"""Copies generated tables into README.md between its marker comments.

  python scripts/sync_readme.py [--default-report workdirs/default/report.md]

- ``<!-- results-summary -->``: the table of ``docs/results/summary.md`` (written by
  ``python -m studies summary --out docs/results``), links rebased to the README.
- ``<!-- default-job-results -->``: the table of the default job's ``report.md`` (written by
  ``bash run.sh``), when ``--default-report`` is given.

So the README quotes generated numbers only; nothing in those blocks is typed by hand.
"""

from __future__ import annotations

import argparse
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _table(markdown: str) -> str:
    """The first markdown table of a document (its consecutive ``|`` lines)."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
            inside = True
        elif inside:
            break
    if not lines:
        raise ValueError("no markdown table found")
    return "\n".join(lines)


def _replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no <!-- {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default-report", type=pathlib.Path, default=None)
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()

    summary = (ROOT / "docs/results/summary.md").read_text()
    table = re.sub(r"\]\((?!https?:)([^)]+)\)", r"](docs/results/\1)", _table(summary))
    text = _replace_block(text, "results-summary", table)

    if args.default_report is not None:
        report = args.default_report.read_text()
        intro = (
            "Measured by `bash run.sh` on 2 CPU cores (final top-1 in %; *corrupt (noisy "
            "label)* is agreement with the wrong label an example was trained on, i.e. "
            "memorization):\n\n"
        )
        text = _replace_block(text, "default-job-results", intro + _table(report))

    readme.write_text(text)


if __name__ == "__main__":
    main()
