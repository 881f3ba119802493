r"""Suppressing weak gradient directions at 50% label noise (W&S §3; CG §5).

SGD (momentum 0 and 0.9) and RA3 follow the mean gradient; M3, RM3 and winsorized SGD
suppress weak directions, and CGH predicts they memorize the corrupt labels much less. Four
groups (``GROUPS``), each a table, a figure and verdicts. Winsorized SGD and convolutions are
slow on 2 CPU cores: train those groups on an accelerator host with the same command (first
line), copy ``<workdir>/<group>/`` back, and write the page here (second line)::

  python -m studies suppression --out docs/results/suppression --groups mlp3x256,cnn_cifar10
  python -m studies suppression --out docs/results/suppression
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from cgh_jax import study
from cgh_jax import study_cli as S
from cgh_jax.analysis import fixed_epoch as F
from cgh_jax.analysis import plots, report
from cgh_jax.analysis.stats import mean
from studies.common import CNN, QUICK_MLP

NOISE, EVAL_CAP, CONV_LR = 0.5, 1_000, 0.05
B300 = F.B300


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of a table: a name, a run key and the optimizer's fields."""

    name: str
    key: str
    opt: str
    momentum: float = 0.0
    batch: int = 100
    clip: int = 0


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs sharing data, model and epochs, compared in one table by ``pairs``; the summary
    row checks that each ``checks`` pair memorizes less, as CGH's ``prediction`` says."""

    key: str
    title: str
    description: str
    net: str  # "2048" | "3x256" (MNIST MLPs) | "cnn" (CIFAR-10)
    settings: tuple[Setting, ...]
    pairs: tuple[tuple[str, str], ...]
    checks: tuple[tuple[str, str], ...] = ()  # () : the pairs
    prediction: str = "M3, RM3 memorize much less than SGD and RA3"
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 60
    subset: int = 2_000
    heldout: int = 2_000


SGD, M3 = Setting("SGD", "sgd", "sgd"), Setting("M3", "m3", "m3")
SGD_B300 = Setting(B300, "sgd_b300", "sgd", batch=300)
RM3, RA3 = Setting("RM3", "rm3", "rm3"), Setting("RA3", "ra3", "ra3")
WINSOR = tuple(
    Setting(f"winsorized SGD, c = {c}", f"winsorize_c{c}", "winsorize", clip=c)
    for c in (1, 2, 4, 8)
)
MEDIAN_PAIRS = (("M3", "SGD"), ("RM3", "SGD"), ("RA3", "SGD"), ("M3", B300), ("RM3", "RA3"))
MEDIAN_CHECKS = (("M3", "SGD"), ("RM3", "SGD"), ("RM3", "RA3"))

GROUPS = (
    Group(
        "mlp2048",
        "MNIST, MLP 784-2048-10",
        "The CG net of §3, lr 0.1, batch 100 (M3: 3 x 100 examples per update), trained by "
        "`cgh_jax.train`.",
        "2048",
        (SGD, Setting("SGD, momentum 0.9", "sgd_m09", "sgd", momentum=0.9), SGD_B300, M3, RM3, RA3),
        pairs=(*MEDIAN_PAIRS, ("SGD, momentum 0.9", "SGD")),
        checks=MEDIAN_CHECKS,
    ),
    Group(
        "mlp3x256",
        "MNIST, MLP 784-256-256-256-10, winsorized SGD",
        "The CG net of the winsorization experiments, lr 0.1, batch 100; winsorized SGD "
        "clips each coordinate of the 100 per-example gradients to their c-th smallest and "
        "largest values before averaging.",
        "3x256",
        (SGD, *WINSOR),
        pairs=tuple((s.name, "SGD") for s in WINSOR),
        prediction="winsorized SGD memorizes less than SGD",
    ),
    Group(
        "cnn_cifar10",
        "CIFAR-10 JPEGs, small CNN (conv 32-64, dense 128)",
        f"CIFAR-10 from the JPEG image-folder tree, no augmentation, lr {CONV_LR}, batch 100 "
        "(M3: 3 x 100), constant learning rate.",
        "cnn",
        (SGD, SGD_B300, M3, RM3, RA3),
        pairs=MEDIAN_PAIRS,
        checks=MEDIAN_CHECKS,
        epochs=40,
        subset=10_000,
    ),
    Group(
        "mlp2048_long",
        "MNIST, MLP 784-2048-10, equal updates: M3 vs SGD at batch 300",
        "The control of the first group run three times longer: M3 and SGD at batch 300 make "
        "the same number of updates from the same number of examples, so any difference is "
        "the median's. lr 0.1, trained by `cgh_jax.train`.",
        "2048",
        (SGD_B300, M3),
        pairs=(("M3", B300),),
        prediction="M3 memorizes less than SGD with the same updates and examples",
        seeds=(0, 1),
        epochs=180,
    ),
)
QUICK = zip(GROUPS[:3], ((SGD, M3), (WINSOR[0],), (M3,)), (600, 300, 600), strict=True)
QUICK_GROUPS = tuple(
    dataclasses.replace(g, settings=s, seeds=(0,), epochs=1, subset=n, heldout=200)
    for g, s, n in QUICK
)
QUICK_MODELS = {"2048": {"model.hidden": (32,)}, "3x256": {"model.hidden": (16, 16, 16)}}
QUICK_MODELS["cnn"] = {"model": dict(name="cnn", features=(4, 8), hidden=16, dtype="float32")}


def group_runs(group: Group, s: Setting, quick: bool) -> list[S.RunRecipe]:
    """The runs of one table row, one per seed, in ``<group>/<setting>/seed<k>``."""
    noise, config, mnist = f"noise={NOISE}", "mnist_cg", True
    overrides = {"data.noise_seed": 0, "log_every_steps": 50, "num_epochs": group.epochs}
    arg = f"opt={s.opt},{noise},scheme=uniform"
    if group.net != "cnn":
        arg = f"opt={s.opt},clip={s.clip},{noise},scheme=uniform,net={group.net},"
        arg += f"momentum={s.momentum},batch={s.batch}"
    elif not quick:
        config, arg, mnist = "cifar10_resnet18", f"opt={s.opt},{noise},path={{cifar10}}", False
        arg += f",batch={s.batch}"
        overrides.update({**CNN, "optimizer.learning_rate": CONV_LR})
    if quick:
        overrides.update({**QUICK_MODELS[group.net], "batch_size": QUICK_MLP["batch_size"]})
    subset = (group.subset, group.heldout)
    run = S.RunRecipe(f"{group.key}/{s.key}", config, arg, overrides, mnist=mnist, subset=subset)
    return S.seeded(dataclasses.replace(run, subset_dir=group.key, eval_cap=EVAL_CAP), group.seeds)


GROUPS_ARG = S.names_arg([g.key for g in GROUPS], "groups")
ARGS = [(("--groups",), dict(default=(), type=GROUPS_ARG, help="comma-separated groups to run"))]


def selected(args) -> list[Group]:
    groups = QUICK_GROUPS if args.quick else GROUPS
    if not (groups := [g for g in groups if g.key in (args.groups or [g.key])]):
        raise SystemExit(f"--groups {','.join(args.groups)}: none of them runs with --quick.")
    return groups


def train(args) -> dict[str, dict[str, list[Path]]]:
    """Trains every setting x seed of the selected groups; group -> name -> finished dirs."""
    from cgh_jax.train import NonFiniteError

    found = {g.key: {s.name: [] for s in g.settings} for g in selected(args)}
    for group in selected(args):
        for setting in group.settings:
            dirs = found[group.key][setting.name]
            for run in group_runs(group, setting, args.quick):
                try:
                    dirs.append(S.train(run, args)[0])
                except NonFiniteError as e:
                    S.say(f"{run.dir} diverged: {e}")
                    (Path(args.workdir) / run.dir / "diverged.txt").write_text(str(e))
    return found


def run_machines(runs: dict[str, list[Path]]) -> list[str]:
    """Where the finished runs of a group were trained (from their markers)."""
    infos = [study.run_info(d) for dirs in runs.values() for d in dirs]
    runner = "cgh_jax.train"
    found = [f"{i.get('runner', runner)} on {i.get('machine', study.machine())}" for i in infos]
    return list(dict.fromkeys(found))


def group_rows(group: Group, runs: dict[str, list[Path]]) -> list[dict]:
    return [
        F.setting_row(
            s.name,
            s.key,
            runs[s.name],
            len(group.seeds),
            [study.run_wall_s(d) for d in runs[s.name]],
        )
        for s in group.settings
    ]


def summary_item(group: Group, rows: list[dict]) -> dict[str, str]:
    """The README summary row of one group (computed from its table)."""
    checks = [F.less(rows, a, b) for a, b in group.checks or group.pairs]
    match = report.match(c for c in checks if c is not None)
    if F.less(rows, "M3", "SGD") and F.same(rows, "M3", B300):
        match += "; but SGD with M3's number of updates memorizes as little as M3"
    measured = ", ".join(
        f"{r['name'].split(' (')[0]} {report.pct(r['corrupt_noisy'])}" for r in rows if r["runs"]
    )
    epochs = next((mean(r["epochs"]) for r in rows if r["runs"]), math.nan)
    return {
        "study": "Suppression at 50% noise (W&S §3, CG §5)",
        "setting": group.title,
        "measured": f"memorization (corrupt, noisy label, %) after {epochs:g} epochs: {measured}",
        "prediction": group.prediction,
        "match": match,
    }


def group_section(args, group: Group, runs: dict[str, list[Path]]) -> tuple[list[str], dict]:
    rows = group_rows(group, runs)
    finished = {name: dirs for name, dirs in runs.items() if dirs}
    figure = f"curves_{group.key}.png"
    if finished:
        path, title = Path(args.out) / figure, f"{group.title}, {NOISE:.0%} label noise"
        plots.plot_accuracy_curves(finished, sets=report.DEFAULT_SETS, path=path, title=title)
    data = (
        f"training on a seeded random subset of {group.subset:,} training examples, tested on "
        f"{group.heldout:,} other examples of the training split held out (true labels)"
    )
    verdicts = [F.compare(rows, a, b) for a, b in group.pairs] + F.interpretation(rows)
    verdicts = [f"- {line}" for line in verdicts if line]
    lines = [
        f"## {group.title}",
        f"{group.description} {NOISE:.0%} label noise (W&S `uniform` scheme, noise seed 0), "
        f"{data}; epochs: {group.epochs}; seeds {', '.join(map(str, group.seeds))} (mean ± "
        "sample std over seeds where there are several).",
        "Trained by " + "; ".join(run_machines(finished)) + "." if finished else "",
        "Final top-1 accuracy in %:",
        report.markdown_table(F.COLUMNS, [F.table_row(r) for r in rows]),
        f"![{group.title}]({figure})" if finished else "(no finished run)",
        *(["\n".join(verdicts)] if verdicts else []),
    ]
    result = dict(title=group.title, epochs=group.epochs, subset=group.subset, rows=rows)
    return lines, {**result, "seeds": list(group.seeds), "verdicts": verdicts}


def page(args, trained) -> report.Page:
    groups = selected(args)
    sections, results = [], {}
    for group in groups:
        lines, results[group.key] = group_section(args, group, trained[group.key])
        sections += lines
    data = (
        f"real MNIST IDX files ({args.mnist}) and the CIFAR-10 JPEG tree "
        f"(../shared/data/cifar10/{S.CIFAR10_TARBALL.name}, extracted into ~/.cache/cgh_jax); "
        f"per group one seeded permutation of the training split (numpy "
        f"default_rng({S.SUBSET_SEED})) cut into a training subset and held-out test examples "
        "(sizes in each section)"
    )
    body = [
        "One M3 update consumes 3 x 100 examples (the authors' protocol), so per epoch M3 "
        "makes a third as many updates as SGD; the *SGD, batch 300* row has M3's number of "
        "updates and separates the effect of the median from that of fewer updates. RA3 "
        "averages the same three gradients RM3 takes the median of, and separates the "
        "median from the staleness of the gradients.",
        *sections,
        "Runs: `" + os.path.relpath(args.workdir, S.REPO) + "/<group>/<optimizer>/seed<k>/`.",
    ]
    return report.Page(
        title=f"Suppressing weak directions at {NOISE:.0%} label noise (W&S §3, CG §5)",
        seeds=sorted({s for g in groups for s in g.seeds}),
        data=data,
        body=body,
        runs_wall_s=sum(w for info in results.values() for r in info["rows"] for w in r["wall_s"]),
        extra={
            "Evaluation": f"before each epoch and after the last, on up to {EVAL_CAP:,} pristine "
            f"and {EVAL_CAP:,} corrupt training examples, a training sample of the same size, "
            "and the held-out test examples",
            "What CGH predicts": "much less memorization (corrupt, noisy label) for M3, RM3 "
            "and winsorized SGD than for SGD and RA3, with pristine and test accuracy close",
        },
        payload={
            "machines": {g.key: run_machines(trained[g.key]) for g in groups},
            "noise": NOISE,
            "groups": results,
            "summary": [summary_item(g, results[g.key]["rows"]) for g in groups],
        },
    )
