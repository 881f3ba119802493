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

The results pages of the studies (``python -m studies``) are built from the same pieces:
:class:`Page` (header facts, markdown body, ``results.json`` payload) with its
:func:`page_header`, accuracies over seeds as :func:`pct`, paired differences as
:func:`ci_text`, a finding's verdict as :func:`match` and the runs' wall time and
machines as :func:`trained_line`.

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

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cgh_jax.analysis.records import (  # noqa: F401  (the record helpers, for report users)
    ACCURACY_METRICS,
    DEFAULT_SETS,
    METRIC_LABELS,
    METRICS_FILENAME,
    MISSING,
    SET_LABELS,
    SHORT_SET_LABELS,
    Records,
    RunSpec,
    as_run_list,
    check_accuracy,
    final_metrics,
    first_epoch_at_least,
    load_metrics,
    run_finals,
    seed_curves,
    value_at_epoch,
)
from cgh_jax.analysis.stats import mean_std
from cgh_jax.formatting import format_seconds, markdown_table  # noqa: F401

REPORT_FILENAME = "report.md"
FIGURE_FILENAME = "accuracy_curves.png"


def _format_cell(values: list[float], scale: float, fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return MISSING
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
        run_dirs = as_run_list(spec)
        row: dict[str, Any] = {"name": name, "run_dirs": run_dirs, "num_runs": len(run_dirs)}
        keys = [f"{s}/{metric}" for s in sets] + ["epoch", "step", "wall_time_s"]
        for key in keys:
            row[key] = []
        for run_dir, final in zip(run_dirs, run_finals(run_dirs), strict=True):
            for key in keys:
                value = final.get(key)
                row[key].append(math.nan if value is None else check_accuracy(key, value, run_dir))
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
    is_accuracy = metric in ACCURACY_METRICS
    scale, fmt = (100.0, ".1f") if is_accuracy else (1.0, ".3f")
    unit = f"{METRIC_LABELS.get(metric, metric)} (%)" if is_accuracy else metric
    show_runs = any(row["num_runs"] > 1 for row in rows)

    header = ["run"] + [f"{SHORT_SET_LABELS.get(s, s)} {unit}" for s in sets]
    header += ["epochs", "wall time"]
    if show_runs:
        header.append("runs")
    table = []
    for row in rows:
        cells = [str(row["name"])]
        cells += [_format_cell(row[f"{s}/{metric}"], scale, fmt) for s in sets]
        epochs = [e for e in row["epoch"] if not math.isnan(e)]
        if not epochs:
            cells.append(MISSING)
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
            cells.append(MISSING)
        if show_runs:
            cells.append(str(row["num_runs"]))
        table.append(cells)
    return markdown_table(header, table)


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
    run_lists = {name: as_run_list(spec) for name, spec in runs.items()}
    records = {name: [load_metrics(d) for d in dirs] for name, dirs in run_lists.items()}

    all_dirs = [d for dirs in run_lists.values() for d in dirs]
    model = runs_model(all_dirs)
    if "{model}" in title:
        title = title.replace("{model}", model or "model not recorded")

    os.makedirs(study_workdir, exist_ok=True)
    table = results_table(run_lists, sets=sets, metric="top1")
    from cgh_jax.analysis.plots import plot_accuracy_curves  # matplotlib only when reporting

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


# --------------------------------------------------------------------------- results pages


@dataclasses.dataclass
class Page:
    """A results page: the header's facts (``data``: of the full-size runs), the body (markdown
    blocks) and the ``results.json`` payload (the command line adds ``study``, ``quick``,
    ``command``...)."""

    title: str
    seeds: Sequence[int]
    data: str
    body: list[str]
    payload: dict[str, Any]
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
    runs_wall_s: float | None = None


def page_header(
    page: Page,
    *,
    command: str,
    machine: str,
    wall_s: float,
    generated: str,
    smoke_data: str | None = None,
) -> str:
    """The top of a results page: what ran (``command``), where (``machine``, e.g.
    :func:`cgh_jax.study.machine`), how long, with which seeds.

    ``smoke_data`` (the data of a smoke run, e.g. ``"a few digits"``) marks the page as a
    smoke run whose numbers mean nothing, and replaces ``page.data``.
    """
    lines = [f"# {page.title}", ""]
    if smoke_data:
        lines += [
            f"> **Smoke run (`--quick`)**: a few steps on {smoke_data} to check that the study "
            "runs end to end. The numbers below mean nothing.",
            "",
        ]
    runs = f"{format_seconds(page.runs_wall_s)} in all" if page.runs_wall_s is not None else ""
    if runs:
        runs = f"; of the training runs, as recorded when each was trained: {runs} (a rerun of "
        runs += "the command reuses finished runs)"
    lines += [
        "Generated by the command below; every number on this page comes from it.",
        "",
        "```",
        command,
        "```",
        "",
        f"- Machine: {machine} (shared with other work; wall times are upper bounds).",
        f"- Wall time of this call: {format_seconds(wall_s)}{runs}.",
        f"- Seeds: {', '.join(str(s) for s in page.seeds)}.",
        f"- Data: {f'{smoke_data} (smoke run)' if smoke_data else page.data}",
        f"- Generated: {generated}.",
    ]
    return "\n".join(lines + [f"- {key}: {value}" for key, value in page.extra.items()]) + "\n"


def pct(values: Sequence[float] | float, digits: int = 1) -> str:
    """Accuracy fractions in percent: ``'93.1'`` or ``'93.1 ± 0.4'`` (mean ± sample std over
    the values that are not NaN; ``'—'`` if none is).

    Example:
      >>> pct(0.5), pct([0.5, 0.7]), pct([math.nan])
      ('50.0', '60.0 ± 14.1', '—')
    """
    values = [values] if isinstance(values, int | float) else list(values)
    values = [100.0 * v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else MISSING
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def ci_text(result: Mapping[str, float], scale: float = 100.0, digits: int = 1) -> str:
    """A paired difference with its interval, times ``scale`` (fractions in points by
    default) to ``digits`` decimals: ``'+1.2 (-0.3 to +2.7)'`` from ``d``, ``lo``, ``hi`` and
    the number of pairs ``n`` (with fewer than two pairs, the difference and ``n``; ``'—'``
    for none).

    Example:
      >>> ci_text(dict(d=0.012, lo=-0.003, hi=0.027, n=3)), ci_text(dict(d=0.01, n=1))
      ('+1.2 (-0.3 to +2.7)', '+1.0 (n = 1)')
      >>> ci_text(dict(d=0.391, lo=0.167, hi=0.613, n=4), scale=1, digits=2)
      '+0.39 (+0.17 to +0.61)'
    """
    d, lo, hi = (scale * result.get(k, math.nan) for k in ("d", "lo", "hi"))
    if result["n"] < 2:
        return f"{d:+.{digits}f} (n = {result['n']})" if result["n"] else MISSING
    return f"{d:+.{digits}f} ({lo:+.{digits}f} to {hi:+.{digits}f})"


def match(checks: Iterable[bool]) -> str:
    """Whether a finding matches its prediction, from the checks it makes: ``'yes'`` (all
    hold), ``'no'`` (none holds, or there is no check) or ``'partly'``.

    Example:
      >>> match([True, True]), match([True, False]), match([])
      ('yes', 'partly', 'no')
    """
    checks = list(checks)
    return "yes" if checks and all(checks) else ("no" if not any(checks) else "partly")


def trained_line(entries: Iterable[Mapping[str, Any]]) -> str:
    """A markdown item on finished runs (archive entries with ``wall_s`` and ``machine``,
    :func:`cgh_jax.study.archive_entry`): how many, their wall time and their machines."""
    entries = list(entries)
    walls, machines = [e["wall_s"] for e in entries], {e["machine"] for e in entries}
    return (
        f"- Trained: {len(walls)} runs, {format_seconds(sum(walls))} of wall time in all "
        f"(the longest {format_seconds(max(walls))}), on {'; '.join(sorted(machines))}."
    )
