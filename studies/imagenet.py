r"""The studies at ImageNet scale: ``imagenet.md`` from the full-scale configs' docstrings and
the papers' run matrix; ``--smoke`` runs each config's ``runlocal`` form on mock ImageNet::

  python -m studies imagenet --out docs/results --smoke
"""

from __future__ import annotations

import ast
import math
import shutil
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

from cgh_jax.formatting import format_seconds, markdown_table
from cgh_jax.study import machine
from cgh_jax.study_cli import REPO, load_config, say

CONFIGS = {
    "imagenet_resnet18": "ResNet-18",
    "imagenet_vgg13bn": "VGG-13-BN",
    "imagenet_inception_v3": "Inception-V3 (no auxiliary head)",
}
OPTIMIZERS = ("sgd", "m3", "rm3", "ra3")
NOISE_LEVELS = (0.0, 0.5)
SMOKE_HELP = "run each config's runlocal form on mock ImageNet"
ARGS = [(("--smoke",), dict(action="store_true", help=SMOKE_HELP))]
SMOKE_ARGS = {
    "imagenet_resnet18": ["opt=sgd,noise=0.5,runlocal", "opt=m3,noise=0.5,runlocal"],
    "imagenet_vgg13bn": ["opt=rm3,noise=0.5,runlocal"],
    "imagenet_inception_v3": ["opt=ra3,noise=0.5,runlocal"],
    "easy_hard": ["stage=probe,dataset=imagenet,runlocal"],
}
MOCK_EXAMPLES = 64
FACTS = ("Hardware and time", "Expected result", "Arguments")


def docstring_parts(name: str) -> tuple[str, list[str], list[str]]:
    """A config docstring's summary, its command blocks (after ``::``) and its facts
    (the paragraphs that start with one of :data:`FACTS`, as markdown items)."""
    source = (REPO / "configs" / f"{name}.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    commands, block = [], None
    for line in [*doc.splitlines(), "END"]:
        if block is not None and (not line.strip() or line.startswith(" ")):
            block.append(line)
            continue
        if block is not None and (text := textwrap.dedent("\n".join(block)).strip()):
            commands.append(text)
        block = [] if line.rstrip().endswith("::") else None
    paragraphs = [" ".join(x.strip() for x in p.splitlines()) for p in doc.split("\n\n")]
    facts = {key: p for p in paragraphs for key in FACTS if p.startswith(key)}
    items = [
        f"- **{head}**:{rest}"
        for head, _, rest in (facts[k].partition(":") for k in FACTS if k in facts)
    ]
    return doc.split("\n\n")[0].strip(), commands, items


def head(name: str, title: str) -> tuple[list[str], list[str]]:
    """A section's heading, summary and facts from the config's docstring, and its commands."""
    summary, commands, facts = docstring_parts(name)
    return [f"## {title}: `configs/{name}.py`", "", summary, "", *facts, ""], commands


def bash(blocks) -> list[str]:
    return [line for block in blocks for line in ("```bash", block, "```", "")]


def config_section(name: str, title: str) -> str:
    lines, commands = head(name, title)
    lines += ["Launch command from the config's docstring:", "", *bash(commands)]
    lines += [
        "The run matrix of the paper (one workdir per run; on a pod slice run each command "
        "on every worker, see [docs/launch.md](../launch.md)):",
        "",
        "```bash",
    ]
    for noise in NOISE_LEVELS:
        for opt in OPTIMIZERS:
            tag = f"{name.removeprefix('imagenet_')}_{opt}_noise{round(noise * 100):02d}"
            lines.append(
                f"python -m cgh_jax.main --config=configs/{name}.py:opt={opt},noise={noise} "
                f"--workdir=gs://BUCKET/cgh/{tag} "
                "--config.data.data_dir=gs://BUCKET/tensorflow_datasets"
            )
    return "\n".join([*lines, "```", ""])


def easy_hard_section() -> str:
    lines, commands = head("easy_hard", "Easy and hard examples on ImageNet")
    lines += [
        "The three stages with the paper's split sizes (500,000 train and 100,000 test "
        "examples per side):",
        "",
        "```bash",
        "python -m cgh_jax.main --config=configs/easy_hard.py:stage=probe,dataset=imagenet \\",
        "    --workdir=gs://BUCKET/cgh/easy_hard/probe \\",
        "    --config.data.data_dir=gs://BUCKET/tensorflow_datasets",
        'python -c "from cgh_jax.analysis.easy_hard import make_easy_hard_splits as m; '
        "m('gs://BUCKET/cgh/easy_hard/probe/per_example/epoch_002.npz', "
        "'gs://BUCKET/cgh/easy_hard/ids', train_size=500_000, test_size=100_000, seed=0)\"",
        "for side in easy hard; do",
        "  python -m cgh_jax.main \\",
        "      --config=configs/easy_hard.py:stage=$side,dataset=imagenet,"
        "ids=gs://BUCKET/cgh/easy_hard/ids \\",
        "      --workdir=gs://BUCKET/cgh/easy_hard/$side \\",
        "      --config.data.data_dir=gs://BUCKET/tensorflow_datasets",
        "done",
        "```",
        "",
        "The commands in the config's docstring (MNIST form):",
        "",
    ]
    return "\n".join(lines + bash(commands))


def smoke_runs() -> list[list[str]]:
    """Runs every config's ``runlocal`` form on mock ImageNet; one table row per run."""
    import tensorflow_datasets as tfds

    from cgh_jax.train import train_and_evaluate

    rows = []
    for name, arg in ((name, arg) for name, args in SMOKE_ARGS.items() for arg in args):
        workdir, model, seconds = Path(tempfile.mkdtemp(prefix="cgh_smoke_")), "?", math.nan
        start = time.monotonic()
        try:
            cfg = load_config(name, arg)
            model = cfg.model.name
            with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
                record = train_and_evaluate(cfg, str(workdir))
            seconds = time.monotonic() - start
            sets = ", ".join(sorted({k.split("/")[0] for k in record if "/" in k}))
            outcome = f"ok: {record['step']} steps, evaluation keys {sets}"
        except Exception as e:  # the page reports any failure verbatim
            outcome = f"**failed**: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            traceback.print_exc()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"smoke {name}:{arg}: {outcome}")
        cell = f"`configs/{name}.py:{arg}`"
        rows.append([cell, f"`{model}`", format_seconds(seconds), outcome])
    return rows


def write(args) -> dict[str, str]:
    for name in [*CONFIGS, "easy_hard"]:
        ast.parse((REPO / "configs" / f"{name}.py").read_text())  # fail early if absent
    text = [
        "# The studies at ImageNet scale: launch commands",
        "",
        "The three studies of Zielinski, Krishnan & Chatterjee (2020) at full scale: label "
        "noise with SGD / M3 / RM3 / RA3 on ResNet-18, VGG-13-BN and Inception-V3, and the "
        "easy/hard split with 500K/100K examples per side. Nothing here was run at full scale "
        "in this repository (it needs accelerators and the ImageNet TFDS data); the "
        "descriptions, hardware and wall-time estimates below are taken verbatim from the "
        "configs' docstrings by",
        "",
        "```",
        args.command,
        "```",
        "",
        "Preparing ImageNet for TFDS (`imagenet2012`, manual download of "
        "`ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar`), Cloud TPU VMs, pod slices "
        "and GPU hosts: [docs/launch.md](../launch.md). Every run writes `metrics.jsonl` "
        "(pristine, corrupt-noisy, corrupt-true, train-sample and test accuracy before each "
        "epoch); `cgh_jax.analysis.report.write_report` turns a set of runs into the table and "
        "figure of the small-scale pages.",
        "",
    ]
    text += [config_section(name, title) for name, title in CONFIGS.items()]
    text.append(easy_hard_section())
    if args.smoke:
        start = time.monotonic()
        rows = smoke_runs()
        text += [
            "## Smoke runs of these configs on this machine",
            "",
            f"Each config's `runlocal` form (tiny model variant, 3 steps, an evaluation, a "
            f"checkpoint) on `tfds.testing.mock_data` ImageNet ({MOCK_EXAMPLES} mock examples "
            f"per split), on {machine()}; {format_seconds(time.monotonic() - start)} in all.",
            "",
            markdown_table(["config", "model", "wall time", "outcome"], rows, "llrl"),
            "",
        ]
    return {"imagenet.md": "\n".join(text)}
