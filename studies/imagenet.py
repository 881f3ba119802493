r"""The ImageNet versions of the studies: launch commands, hardware and expected wall times.

Writes ``docs/results/imagenet.md`` from the docstrings of the full-scale configs
(``configs/imagenet_resnet18.py``, ``configs/imagenet_vgg13bn.py``,
``configs/imagenet_inception_v3.py``, ``configs/easy_hard.py``), so the page never drifts
from them, and lists the run matrix of the papers (SGD / M3 / RM3 / RA3 at each noise level)
as ready-to-paste commands. With ``--smoke`` it also runs every config's ``runlocal`` form
(a tiny model variant, a few steps) on ``tfds.testing.mock_data`` ImageNet and records the
outcome on the page.

Command::

  python studies/imagenet.py --out docs/results --smoke
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CONFIGS = {
    "imagenet_resnet18": "ResNet-18",
    "imagenet_vgg13bn": "VGG-13-BN",
    "imagenet_inception_v3": "Inception-V3 (no auxiliary head)",
}
OPTIMIZERS = ("sgd", "m3", "rm3", "ra3")
NOISE_LEVELS = (0.0, 0.5)
SMOKE_ARGS = {
    "imagenet_resnet18": ["opt=sgd,noise=0.5,runlocal", "opt=m3,noise=0.5,runlocal"],
    "imagenet_vgg13bn": ["opt=rm3,noise=0.5,runlocal"],
    "imagenet_inception_v3": ["opt=ra3,noise=0.5,runlocal"],
    "easy_hard": ["stage=probe,dataset=imagenet,runlocal"],
}
MOCK_EXAMPLES = 64


def docstring_parts(name: str) -> dict[str, object]:
    """Splits a config docstring into its summary, command blocks and named paragraphs."""
    doc = common.config_docstring(name)
    paragraphs = [p for p in doc.split("\n\n")]
    parts: dict[str, object] = {"summary": paragraphs[0].strip(), "commands": [], "doc": doc}
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            text = textwrap.dedent("\n".join(block)).strip()
            if text:
                parts["commands"].append(text)
            continue
        i += 1
    for paragraph in paragraphs:
        flat = " ".join(line.strip() for line in paragraph.splitlines())
        for key in ("Hardware and time", "Expected result", "Arguments"):
            if flat.startswith(key):
                parts[key] = flat
    return parts


def config_section(name: str, title: str) -> str:
    parts = docstring_parts(name)
    lines = [f"## {title}: `configs/{name}.py`", "", parts["summary"], ""]
    for key in ("Hardware and time", "Expected result", "Arguments"):
        if key in parts:
            head, _, rest = parts[key].partition(":")
            lines += [f"- **{head}**:{rest}"]
    lines += ["", "Launch command from the config's docstring:", ""]
    for block in parts["commands"]:
        lines += ["```bash", block, "```", ""]
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
    lines += ["```", ""]
    return "\n".join(lines)


def easy_hard_section() -> str:
    parts = docstring_parts("easy_hard")
    lines = [
        "## Easy and hard examples on ImageNet: `configs/easy_hard.py`",
        "",
        parts["summary"],
        "",
    ]
    for key in ("Hardware and time", "Expected result", "Arguments"):
        if key in parts:
            head, _, rest = parts[key].partition(":")
            lines += [f"- **{head}**:{rest}"]
    lines += [
        "",
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
    for block in parts["commands"]:
        lines += ["```bash", block, "```", ""]
    return "\n".join(lines)


def smoke_runs() -> list[list[str]]:
    """Runs every config's ``runlocal`` form on mock ImageNet; one table row per run."""
    import tensorflow_datasets as tfds

    rows = []
    for name, arg_list in SMOKE_ARGS.items():
        for arg in arg_list:
            workdir = Path(tempfile.mkdtemp(prefix="cgh_smoke_"))
            try:
                cfg = common.load_config(name, arg)
                with common.stopwatch() as t, tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
                    record = common.run_training(cfg, workdir)
                outcome = (
                    f"ok: {record['step']} steps, evaluation keys "
                    f"{', '.join(sorted({k.split('/')[0] for k in record if '/' in k}))}"
                )
            except Exception as e:  # the page reports any failure verbatim
                outcome = f"**failed**: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                traceback.print_exc()
                t = {"s": float("nan")}
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            common.say(f"smoke {name}:{arg}: {outcome}")
            model = cfg.model.name if "cfg" in locals() else "?"
            rows.append(
                [f"`configs/{name}.py:{arg}`", f"`{model}`", common.format_seconds(t["s"]), outcome]
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory of imagenet.md")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run each config's runlocal form on tfds.testing.mock_data and report it",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    command = common.command_line("imagenet", argv)
    common.quiet_logs(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in [*CONFIGS, "easy_hard"]:
        ast.parse((common.REPO / "configs" / f"{name}.py").read_text())  # fail early if absent

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
        command,
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
    for name, title in CONFIGS.items():
        text.append(config_section(name, title))
    text.append(easy_hard_section())
    if args.smoke:
        with common.stopwatch() as total:
            rows = smoke_runs()
        text += [
            "## Smoke runs of these configs on this machine",
            "",
            f"Each config's `runlocal` form (tiny model variant, 3 steps, an evaluation, a "
            f"checkpoint) on `tfds.testing.mock_data` ImageNet ({MOCK_EXAMPLES} mock examples "
            f"per split), on {common.machine()}; {common.format_seconds(total['s'])} in all.",
            "",
            common.markdown_table(["config", "model", "wall time", "outcome"], rows, "llrl"),
            "",
        ]
    path = out / "imagenet.md"
    path.write_text("\n".join(text).rstrip() + "\n", encoding="utf-8")
    common.say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
