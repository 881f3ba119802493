"""Steps/s of trainer runs (``python -m cgh_jax.main``), read from their logs, as a table.

The trainer logs ``Training <model> with <optimizer>: T steps (S per epoch, E examples per
update) ...`` when a run starts and ``step t/T (epoch e) R steps/s, ETA ...`` every
``log_every_steps`` updates; a study logs ``Study run i/n: <name> -> <dir>`` before each of
its runs and ``Run <name> finished in W s.`` after it. ``R`` is measured between two such
lines with the evaluations left out (host input pipeline, step and checkpoints included).
The first report of a run also includes the compilation of the step, so the table gives the
median of the later reports (the first only when it is the only one, marked ``*``).

Usage, from the repository root (no jax needed)::

    python benchmarks/train_rates.py default=run.log cifar10=cifar.log [--output table.md]

Each argument is ``JOB=LOG``; the table is printed and, with ``--output``, appended to that
file (``benchmarks/gpu.sh`` appends it to the GPU table).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics

_STUDY_RUN = re.compile(r"Study run \d+/\d+: (\S+) -> ")
_TRAINING = re.compile(
    r"Training (\S+) with (\S+): (\d+) steps \((\d+) per epoch, (\d+) examples per update\)"
)
_PROGRESS = re.compile(r"step (\d+)/(\d+) \(epoch [0-9.]+\) ([0-9.]+|nan|inf) steps/s")
_FINISHED = re.compile(r"Run (\S+) finished in ([0-9.]+) s")


@dataclasses.dataclass
class Run:
    """What one run's log lines say."""

    job: str
    name: str
    model: str = "?"
    optimizer: str = "?"
    total_steps: int = 0
    examples_per_update: int = 0
    last_step: int = 0
    rates: list[float] = dataclasses.field(default_factory=list)
    wall_s: float | None = None

    @property
    def steps_per_s(self) -> tuple[float | None, bool]:
        """(median steps/s of the reports after the first, or the first alone; first only?)"""
        finite = [r for r in self.rates[1:] if r == r]
        if finite:
            return statistics.median(finite), False
        if self.rates and self.rates[0] == self.rates[0]:
            return self.rates[0], True
        return None, False


def parse_log(job: str, text: str) -> list[Run]:
    """The runs of one job's log, in order (one unnamed run named after the job when the
    log is a single training run, not a study)."""
    runs: list[Run] = []
    for line in text.splitlines():
        if m := _STUDY_RUN.search(line):
            runs.append(Run(job, m.group(1)))
        elif m := _TRAINING.search(line):
            if not runs or runs[-1].total_steps:  # a single run, or a study's next run
                runs.append(Run(job, job if not runs else f"{job}#{len(runs) + 1}"))
            run = runs[-1]
            run.model, run.optimizer = m.group(1), m.group(2)
            run.total_steps, run.examples_per_update = int(m.group(3)), int(m.group(5))
        elif (m := _PROGRESS.search(line)) and runs:
            runs[-1].last_step = int(m.group(1))
            runs[-1].rates.append(float(m.group(3)))
        elif (m := _FINISHED.search(line)) and runs:
            runs[-1].wall_s = float(m.group(2))
    return runs


HEADERS = (
    "job",
    "run",
    "model",
    "optimizer",
    "examples/update",
    "steps done",
    "steps/s",
    "examples/s",
    "reports",
    "run wall (s)",
)


def render(runs: list[Run], missing: dict[str, str]) -> str:
    """A markdown table of the runs; ``missing`` maps a job without runs to a note."""
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(" --- " for _ in HEADERS) + "|",
    ]
    for r in runs:
        rate, first_only = r.steps_per_s
        rate_text = "n/a" if rate is None else f"{rate:.1f}" + ("*" if first_only else "")
        examples = "n/a" if rate is None else f"{rate * r.examples_per_update:.0f}"
        wall = "n/a" if r.wall_s is None else f"{r.wall_s:.1f}"
        cells = (
            r.job,
            r.name,
            r.model,
            r.optimizer,
            r.examples_per_update,
            f"{r.last_step}/{r.total_steps}",
            rate_text,
            examples,
            len(r.rates),
            wall,
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for job, note in missing.items():
        lines.append(f"| {job} | - | - | - | - | - | - | - | - | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+", metavar="JOB=LOG")
    parser.add_argument("--output", default=None, help="markdown file to append the table to")
    args = parser.parse_args(argv)
    runs: list[Run] = []
    missing: dict[str, str] = {}
    for item in args.logs:
        job, sep, path = item.partition("=")
        if not sep:
            parser.error(f"expected JOB=LOG, got {item!r}")
        if not os.path.exists(path):
            missing[job] = f"no log ({path})"
            continue
        with open(path, errors="replace") as f:
            found = parse_log(job, f.read())
        if not found:
            missing[job] = f"no training in {os.path.basename(path)}"
        runs += found
    table = (
        "\nTrainer runs (`python -m cgh_jax.main`): steps/s = median of the progress reports "
        "after the first (evaluations excluded; * = the first report only, compilation "
        "included); steps done < total: stopped early (time limit or error, see the log).\n\n"
        + render(runs, missing)
    )
    print(table, flush=True)
    if args.output:
        with open(args.output, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
