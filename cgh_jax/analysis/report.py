"""Study reports: final-accuracy tables, and the report that adds the figure.

A run directory written by :func:`cgh_jax.train.train_and_evaluate` holds
``metrics.jsonl``: one JSON object per evaluation with the keys ``step``,
``epoch`` and ``<set>/<metric>`` (sets ``pristine``, ``corrupt_noisy``,
``corrupt_true``, ``train_sample``, ``test``; metrics ``top1``, ``top5``,
``loss``), and optionally ``wall_time_s`` (seconds since the run started).
Accuracies are fractions in ``[0, 1]``; reports show them in percent.

The sets tell the label-noise story of the papers:

* ``pristine``: training examples whose label was not corrupted (true label);
* ``corrupt_noisy``: corrupted training examples scored against the *noisy*
  label they were trained on -- this is memorization;
* ``corrupt_true``: the same examples scored against their true label;
* ``test``: the test split (never corrupted) -- generalization.

Typical use::

  from cgh_jax.analysis import report
  path = report.write_report(
      "workdirs/noise50", {"SGD": "workdirs/noise50/sgd", "M3": "workdirs/noise50/m3"},
      title="MNIST, 50% label noise")

A run may also be a list of run directories (several seeds): tables then show
``mean ± std`` over seeds and figures the mean curve with a ``± std`` band
(:func:`seed_curves`). The figure itself is drawn by
:func:`cgh_jax.analysis.plots.plot_accuracy_curves`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgh_jax.analysis.stats import mean_std

METRICS_FILENAME = "metrics.jsonl"
REPORT_FILENAME = "report.md"
FIGURE_FILENAME = "accuracy_curves.png"

#: The sets shown by default in tables and figures, in display order.
DEFAULT_SETS = ("pristine", "corrupt_noisy", "corrupt_true", "test")

#: Human-readable names of the evaluation sets.
SET_LABELS = {
    "pristine": "pristine",
    "corrupt_noisy": "corrupt, noisy label (memorization)",
    "corrupt_true": "corrupt, true label",
    "train_sample": "train sample",
    "test": "test",
}

_SHORT_SET_LABELS = {
    "pristine": "pristine",
    "corrupt_noisy": "corrupt/noisy",
    "corrupt_true": "corrupt/true",
    "train_sample": "train sample",
    "test": "test",
}

_METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "loss": "loss"}

_ACCURACY_METRICS = ("top1", "top5")
_MISSING = "—"

Records = list[dict[str, Any]]
RunSpec = str | os.PathLike | Sequence[str | os.PathLike]


# --------------------------------------------------------------------------- loading


def _metrics_path(run_dir: str | os.PathLike) -> str:
    path = os.fspath(run_dir)
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No metrics file at {path!r}: pass a run directory written by "
            f"cgh_jax.train.train_and_evaluate (it holds {METRICS_FILENAME}) or the "
            "path of a metrics.jsonl file."
        )
    return path


def load_metrics(run_dir: str | os.PathLike) -> Records:
    """Reads the evaluation records of one run.

    Args:
      run_dir: a run directory holding ``metrics.jsonl``, or the path of such a file.

    Returns:
      The records sorted by ``step``. When a step appears more than once (a run
      resumed from a checkpoint evaluates the restored step again), the record
      written last wins.

    Raises:
      FileNotFoundError: if there is no metrics file.
      ValueError: on a line that is not a JSON object with an integer ``step``,
        or on a file without records.
    """
    path = _metrics_path(run_dir)
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {record!r}.")
            step = record.get("step")
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(f"{path}:{lineno}: every record needs an integer 'step'.")
            record["step"] = step
            by_step[step] = record
    if not by_step:
        raise ValueError(f"{path} holds no evaluation records.")
    return [by_step[s] for s in sorted(by_step)]


def _as_run_list(spec: RunSpec) -> list[str]:
    if isinstance(spec, str | os.PathLike):
        return [os.fspath(spec)]
    runs = [os.fspath(s) for s in spec]
    if not runs:
        raise ValueError("A run entry is an empty list: give at least one run directory.")
    return runs


# --------------------------------------------------------------------------- final values


def final_metrics(records: Records) -> dict[str, Any]:
    """The values at the end of a run.

    Args:
      records: the output of :func:`load_metrics` (sorted by step).

    Returns:
      The last record, plus ``wall_time_s`` from the latest record that has it
      when the last one does not.
    """
    if not records:
        raise ValueError("final_metrics needs at least one record.")
    final = dict(records[-1])
    if "wall_time_s" not in final:
        for record in reversed(records):
            if "wall_time_s" in record:
                final["wall_time_s"] = record["wall_time_s"]
                break
    return final


def run_finals(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The final values (:func:`final_metrics`) of each run directory, in order."""
    return [final_metrics(load_metrics(d)) for d in run_dirs]


def first_epoch_at_least(records: Records, key: str, level: float) -> float:
    """The first evaluated epoch at which ``key`` reaches ``level`` (NaN if never)."""
    for record in records:
        if record.get(key) is not None and record[key] >= level:
            return float(record["epoch"])
    return math.nan


def value_at_epoch(records: Records, key: str, epoch: float) -> float:
    """The value of ``key`` at the evaluation of ``epoch`` (NaN if not evaluated)."""
    for record in records:
        if abs(float(record["epoch"]) - epoch) < 1e-9 and record.get(key) is not None:
            return float(record[key])
    return math.nan


def _check_accuracy(key: str, value: Any, where: str) -> float:
    value = float(value)
    if key.rsplit("/", 1)[-1] in _ACCURACY_METRICS and not (
        math.isnan(value) or 0.0 <= value <= 1.0
    ):
        raise ValueError(
            f"{where}: {key}={value} is not a fraction in [0, 1]. metrics.jsonl stores "
            "accuracies as fractions; reports convert them to percent."
        )
    return value


def format_seconds(seconds: float) -> str:
    """``'1h 02m'``, ``'3m 05s'`` or ``'42s'`` (``'—'`` for NaN)."""
    if math.isnan(seconds):
        return "—"
    seconds = int(round(seconds))
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _format_cell(values: list[float], scale: float, fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return _MISSING
    mean, std = mean_std([v * scale for v in values])
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def summarize_runs(
    runs: Mapping[str, RunSpec],
    *,
    sets: Sequence[str] = DEFAULT_SETS,
    metric: str = "top1",
) -> list[dict[str, Any]]:
    """Final values of each named run (or group of seed runs).

    Args:
      runs: name (e.g. the optimizer) -> run directory, or list of run
        directories to aggregate (seeds).
      sets: evaluation sets to collect.
      metric: metric to collect for each set (``top1``, ``top5`` or ``loss``).

    Returns:
      One dict per name, in order, with ``name``, ``run_dirs``, ``num_runs`` and,
      per run, lists of final values: ``<set>/<metric>`` (NaN where a run lacks
      the set, e.g. no corrupt sets at noise 0), ``epoch``, ``step`` and
      ``wall_time_s`` (NaN when not recorded).
    """
    if not runs:
        raise ValueError("No runs given: pass a mapping name -> run directory.")
    rows = []
    for name, spec in runs.items():
        run_dirs = _as_run_list(spec)
        row: dict[str, Any] = {"name": name, "run_dirs": run_dirs, "num_runs": len(run_dirs)}
        keys = [f"{s}/{metric}" for s in sets] + ["epoch", "step", "wall_time_s"]
        for key in keys:
            row[key] = []
        for run_dir, final in zip(run_dirs, run_finals(run_dirs), strict=True):
            for key in keys:
                value = final.get(key)
                row[key].append(math.nan if value is None else _check_accuracy(key, value, run_dir))
        rows.append(row)
    return rows


def results_table(
    runs: Mapping[str, RunSpec],
    *,
    sets: Sequence[str] = DEFAULT_SETS,
    metric: str = "top1",
) -> str:
    """A markdown table of final values, one row per name, ``mean ± std`` over seeds.

    Accuracies are shown in percent with one decimal, loss with three. Columns
    ``epochs`` and ``wall time`` follow; a ``runs`` column appears when some
    name aggregates more than one run. Missing values show as ``—``.

    Args:
      runs: name -> run directory or list of run directories (see
        :func:`summarize_runs`).
      sets: evaluation sets, one column each.
      metric: ``top1``, ``top5`` or ``loss``.

    Returns:
      The table as markdown text (no trailing newline).
    """
    rows = summarize_runs(runs, sets=sets, metric=metric)
    is_accuracy = metric in _ACCURACY_METRICS
    scale, fmt = (100.0, ".1f") if is_accuracy else (1.0, ".3f")
    unit = f"{_METRIC_LABELS.get(metric, metric)} (%)" if is_accuracy else metric
    show_runs = any(row["num_runs"] > 1 for row in rows)

    header = ["run"] + [f"{_SHORT_SET_LABELS.get(s, s)} {unit}" for s in sets]
    header += ["epochs", "wall time"]
    if show_runs:
        header.append("runs")
    table = []
    for row in rows:
        cells = [str(row["name"])]
        cells += [_format_cell(row[f"{s}/{metric}"], scale, fmt) for s in sets]
        epochs = [e for e in row["epoch"] if not math.isnan(e)]
        if not epochs:
            cells.append(_MISSING)
        elif len(set(epochs)) == 1:
            cells.append(f"{epochs[0]:g}")
        else:
            cells.append(_format_cell(epochs, 1.0, ".1f"))
        times = [t for t in row["wall_time_s"] if not math.isnan(t)]
        if times:
            mean, std = mean_std(times)
            cell = format_seconds(mean)
            cells.append(cell if len(times) == 1 else f"{cell} ± {format_seconds(std)}")
        else:
            cells.append(_MISSING)
        if show_runs:
            cells.append(str(row["num_runs"]))
        table.append(cells)
    return markdown_table(header, table)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` gives one of ``l``/``r`` per column (default l, then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(str(h) for h in header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- curves


def _curve(records: Records, key: str, x_key: str) -> dict[float, float]:
    return {float(r[x_key]): float(r[key]) for r in records if r.get(key) is not None}


def seed_curves(
    records_per_seed: Sequence[Records], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mean and sample std of one metric over seeds, on the x values all seeds share.

    Args:
      records_per_seed: one :func:`load_metrics` output per seed.
      key: ``<set>/<metric>``.

    Returns:
      ``(x, mean, std, x_key)``: ``x_key`` is ``'epoch'``, or ``'step'`` when a
      record lacks ``epoch``; ``std`` is the sample std (``ddof=1``, zeros for
      one seed). Empty arrays when no seed has the key.
    """
    all_records = [r for records in records_per_seed for r in records]
    x_key = "epoch" if all("epoch" in r for r in all_records) else "step"
    curves = [_curve(records, key, x_key) for records in records_per_seed]
    curves = [c for c in curves if c]
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty, x_key
    common = sorted(set.intersection(*(set(c) for c in curves)))
    stacked = np.asarray([[c[x] for x in common] for c in curves], dtype=np.float64)
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
    return np.asarray(common, dtype=np.float64), mean, std, x_key


def _as_seed_list(value: Any) -> list[Records]:
    if isinstance(value, str | os.PathLike):
        return [load_metrics(value)]
    value = list(value)
    if not value:
        raise ValueError("Empty run entry: give records, a run directory, or a list of them.")
    if isinstance(value[0], dict):
        return [value]
    return [load_metrics(v) if isinstance(v, str | os.PathLike) else list(v) for v in value]


# --------------------------------------------------------------------------- model


CONFIG_FILENAME = "config.json"

_MODEL_NAMES = (
    (re.compile(r"resnet(\d+)"), lambda m: f"ResNet-{m[1]}"),
    (re.compile(r"vgg(\d+)_bn"), lambda m: f"VGG-{m[1]}-BN"),
    (re.compile(r"vgg(\d+)"), lambda m: f"VGG-{m[1]}"),
    (re.compile(r"inception_v3"), lambda m: "Inception-V3"),
    (re.compile(r"mlp"), lambda m: "MLP"),
    (re.compile(r"cnn"), lambda m: "CNN"),
)


def describe_model(model: Mapping[str, Any]) -> str:
    """A short human name for a run's ``config.model``.

    Example:
      >>> describe_model({"name": "mlp", "hidden": [32], "dtype": "float32"})
      'MLP 32'
      >>> describe_model({"name": "resnet18", "width": 16, "dtype": "bfloat16"})
      'ResNet-18 (width 16), bfloat16'
    """
    name = str(model.get("name", "model"))
    text = name
    for pattern, label in _MODEL_NAMES:
        match = pattern.fullmatch(name)
        if match:
            text = label(match)
            break
    hidden = model.get("hidden")
    if name == "mlp" and hidden:
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        text += " " + "-".join(str(h) for h in hidden)
    if model.get("width") is not None:
        text += f" (width {model['width']})"
    dtype = model.get("dtype")
    if dtype and str(dtype) != "float32":
        text += f", {dtype}"
    return text


def runs_model(run_dirs: Sequence[str | os.PathLike]) -> str | None:
    """The model of the runs, from their ``config.json`` (``' / '`` between different
    ones), or None if no run directory holds a config."""
    names: list[str] = []
    for run_dir in run_dirs:
        path = os.path.join(os.fspath(run_dir), CONFIG_FILENAME)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            model = json.load(f).get("model")
        if isinstance(model, Mapping):
            text = describe_model(model)
            if text not in names:
                names.append(text)
    return " / ".join(names) if names else None


# --------------------------------------------------------------------------- report


def write_report(
    study_workdir: str | os.PathLike,
    runs: Mapping[str, RunSpec],
    *,
    title: str,
    sets: Sequence[str] = DEFAULT_SETS,
) -> str:
    """Writes ``report.md`` and ``accuracy_curves.png`` for a study.

    The report has a table of the final top-1 accuracies (pristine, corrupt
    against the noisy label -- memorization --, corrupt against the true label,
    test) in percent, with epochs and wall time, and a figure of those
    accuracies against epochs, one panel per run.

    Args:
      study_workdir: directory for the report (created if missing).
      runs: name (e.g. optimizer) -> run directory, or list of run directories
        (seeds, shown as ``mean ± std``).
      title: the report's heading; ``{model}`` in it is replaced by the runs' model as
        their ``config.json`` records it (:func:`describe_model`, e.g. ``MLP 32``), so a
        title never names another model than the one trained.
      sets: evaluation sets to show.

    Returns:
      The path of ``report.md``.

    Example:
      >>> write_report("workdirs/study", {"SGD": "workdirs/study/sgd"},
      ...              title="MNIST")  # doctest: +SKIP
      'workdirs/study/report.md'
    """
    if not runs:
        raise ValueError("No runs given: pass a mapping name -> run directory.")
    run_lists = {name: _as_run_list(spec) for name, spec in runs.items()}
    records = {name: [load_metrics(d) for d in dirs] for name, dirs in run_lists.items()}

    all_dirs = [d for dirs in run_lists.values() for d in dirs]
    model = runs_model(all_dirs)
    if "{model}" in title:
        title = title.replace("{model}", model or "model not recorded")

    os.makedirs(study_workdir, exist_ok=True)
    table = results_table(run_lists, sets=sets, metric="top1")
    from cgh_jax.analysis.plots import plot_accuracy_curves  # imports this module

    fig = plot_accuracy_curves(
        records, sets=sets, metric="top1", path=os.path.join(study_workdir, FIGURE_FILENAME)
    )
    del fig

    lines = [f"# {title}", ""]
    if model is not None:
        lines += [f"Model: {model}.", ""]
    lines += [
        "Final top-1 accuracy (%) on each evaluation set. *pristine*: training examples "
        "whose label was not corrupted; *corrupt/noisy*: training examples whose label was "
        "corrupted, scored against the noisy label they were trained on (memorization); "
        "*corrupt/true*: the same examples scored against their true label; *test*: the "
        "test split. Several runs per row give mean ± std (sample std over seeds).",
        "",
        table,
        "",
        f"![Top-1 accuracy against epochs]({FIGURE_FILENAME})",
        "",
        "## Runs",
        "",
    ]
    for name, dirs in run_lists.items():
        lines.append(f"- {name}: " + ", ".join(f"`{d}`" for d in dirs))
    lines.append("")
    path = os.path.join(os.fspath(study_workdir), REPORT_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
