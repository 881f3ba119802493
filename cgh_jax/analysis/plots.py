"""Figures of study runs: accuracy against epochs (:func:`plot_accuracy_curves`, one panel per
run plus an overlay panel; :func:`plot_memorization_rates`), training paths such as
memorization against fit, one line per run (:func:`plot_paths`) and m-coherence against steps
(:func:`plot_coherence_curves`).

The runs are given as :mod:`cgh_jax.analysis.records` records (``metrics.jsonl``), run
directories, or lists of either (seeds: the mean curve with a ``± std`` band)::

  from cgh_jax.analysis import plots
  plots.plot_accuracy_curves({"SGD": "workdirs/noise50/sgd", "M3": "workdirs/noise50/m3"})

Matplotlib is imported only inside the plotting functions, and through its
object-oriented API (``matplotlib.figure.Figure`` with the Agg canvas), so
nothing here changes the global pyplot backend of a notebook or script.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cgh_jax.analysis.records import (
    ACCURACY_METRICS,
    DEFAULT_SETS,
    METRIC_LABELS,
    SET_LABELS,
    SHORT_SET_LABELS,
    Records,
    as_seed_list,
    seed_curves,
)

_SET_COLORS = {
    "pristine": "tab:blue",
    "corrupt_noisy": "tab:red",
    "corrupt_true": "tab:orange",
    "train_sample": "tab:gray",
    "test": "tab:green",
}


#: Colors of the runs in the overlay panel (distinct from the sets' colors).
_RUN_COLORS = (
    "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black", "tab:gray",
    "tab:blue", "tab:orange", "tab:green",
)  # fmt: skip

#: Panels per row of the multi-panel figures.
MAX_PANELS_PER_ROW = 3


def _panel_grid(fig, n: int):
    """``n`` axes in rows of at most MAX_PANELS_PER_ROW, sharing x and y; extras removed."""
    ncols = min(MAX_PANELS_PER_ROW, n)
    nrows = -(-n // ncols)
    grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for extra in grid[n:]:
        extra.remove()
    axes = list(grid[:n])
    for ax in axes:  # x tick labels on every panel: a removed neighbour may leave a gap.
        ax.tick_params(labelbottom=True)
    return axes


def plot_accuracy_curves(
    metrics_by_run: Mapping[str, Any],
    *,
    sets: Sequence[str] = DEFAULT_SETS,
    metric: str = "top1",
    path: str | os.PathLike | None = None,
    ax: Any = None,
    title: str | None = None,
    overlay: str | None = "corrupt_noisy",
):
    """Accuracy against epochs, one panel per run, plus an overlay of memorization.

    Each run's panel draws one line per set (pristine, memorization of the corrupt set,
    corrupt set against the true label, test), as in the figures of Zielinski et al.
    (2020); several seeds per run give the mean with a ``± std`` band. Panels come at most
    three a row with shared axes and one legend outside them, to their right. A last
    panel overlays the ``overlay`` set (memorization: the corrupt examples against their
    noisy label) of every run, so that optimizers compare on one axis; it is drawn when
    that set is among ``sets`` and at least two runs have it.

    Args:
      metrics_by_run: name -> records (a :func:`load_metrics` output), a run
        directory, or a list of either (seeds).
      sets: the sets to draw; sets a run lacks are skipped.
      metric: ``top1`` (default), ``top5`` or ``loss``; accuracies in percent.
      path: if given, the figure is saved there (PNG by extension).
      ax: an existing Axes (for one run) or a sequence of Axes (one per run)
        to draw into (no overlay panel then); by default a new figure.
      title: optional figure title.
      overlay: the set to overlay across runs, or None for no overlay panel.

    Returns:
      The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not metrics_by_run:
        raise ValueError("metrics_by_run is empty: give at least one run.")
    runs = {name: as_seed_list(value) for name, value in metrics_by_run.items()}
    n = len(runs)
    overlay_key = f"{overlay}/{metric}"
    overlaid = []
    if ax is None and overlay in sets:
        overlaid = [name for name, seeds in runs.items() if seed_curves(seeds, overlay_key)[0].size]
    with_overlay = len(overlaid) >= 2
    if ax is None:
        panels = n + with_overlay
        ncols = min(MAX_PANELS_PER_ROW, panels)
        nrows = -(-panels // ncols)
        fig = Figure(figsize=(3.6 * ncols + 2.6, 3.0 * nrows + 0.4), layout="constrained")
        axes = _panel_grid(fig, panels)
    else:
        axes = list(ax) if isinstance(ax, Sequence | np.ndarray) else [ax]
        if len(axes) != n:
            raise ValueError(f"Got {len(axes)} Axes for {n} runs: pass one Axes per run.")
        fig = axes[0].figure
    is_accuracy = metric in ACCURACY_METRICS
    scale = 100.0 if is_accuracy else 1.0
    metric_label = METRIC_LABELS.get(metric, metric)
    y_label = f"{metric_label} (%)" if is_accuracy else metric_label
    x_label = "epoch"
    for panel, (name, seeds) in zip(axes, runs.items(), strict=False):
        for s in sets:
            x, mean, std, x_label = seed_curves(seeds, f"{s}/{metric}")
            if not x.size:
                continue
            color = _SET_COLORS.get(s)
            panel.plot(x, mean * scale, marker=".", label=SET_LABELS.get(s, s), color=color)
            if len(seeds) > 1:
                panel.fill_between(
                    x, (mean - std) * scale, (mean + std) * scale, color=color, alpha=0.2
                )
        panel.set_title(name)
    if with_overlay:
        panel = axes[n]
        for i, name in enumerate(overlaid):
            x, mean, std, x_label = seed_curves(runs[name], overlay_key)
            color = _RUN_COLORS[i % len(_RUN_COLORS)]
            panel.plot(x, mean * scale, marker=".", color=color, label=f"{name} (overlay)")
            if len(runs[name]) > 1:
                panel.fill_between(
                    x, (mean - std) * scale, (mean + std) * scale, color=color, alpha=0.2
                )
        panel.set_title(f"{SHORT_SET_LABELS.get(overlay, overlay)}: all runs")
    for panel in axes:
        panel.set_xlabel(x_label)
        panel.grid(True, alpha=0.3)
        panel.xaxis.set_major_locator(MaxNLocator(nbins=5))
    columns = MAX_PANELS_PER_ROW if ax is None else len(axes)
    for i, panel in enumerate(axes):
        if i % columns == 0:
            panel.set_ylabel(y_label)
    if is_accuracy and ax is None:
        axes[0].set_ylim(-2, 102)
    handles, labels = [], []
    for panel in axes:
        for h, lab in zip(*panel.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles and ax is None:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    elif handles:
        axes[-1].legend(handles, labels, fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig


#: Colors of the lines of :func:`plot_memorization_rates`, one per run, in order.
_RATE_COLORS = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")


def plot_memorization_rates(metrics_by_run: Mapping[str, Records], path: str | os.PathLike):
    """Pristine and memorized-corrupt top-1 accuracy against epochs, one line per run.

    Two panels sharing the y axis: the pristine training examples, and the corrupt ones
    scored against their noisy label (memorization); each run (e.g. one per noise level) is
    one line, in the colors of :data:`_RATE_COLORS` (runs beyond six are not drawn).

    Args:
      metrics_by_run: the legend label of a run -> its records (:func:`load_metrics`).
      path: where the figure is saved (PNG by extension).

    Returns:
      The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for (name, records), color in zip(metrics_by_run.items(), _RATE_COLORS, strict=False):
        epochs = [r["epoch"] for r in records]
        for ax, key in zip(axes, ("pristine/top1", "corrupt_noisy/top1"), strict=True):
            values = [100 * r[key] if r.get(key) is not None else math.nan for r in records]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, marker=".", color=color, label=name)
    axes[0].set_title("pristine training examples")
    axes[1].set_title("corrupt training examples, noisy label (memorization)")
    for ax in axes:
        ax.set(xlabel="epoch", ylim=(-2, 102))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def plot_paths(
    panels: Sequence[Mapping[str, Any]],
    arms: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    path: str | os.PathLike,
    *,
    title: str,
    colors: Mapping[str, str] | None = None,
):
    """Training paths, one line per run, one color per arm, in one panel per measure pair.

    Args:
      panels: one mapping per panel: ``index`` (which of a run's (x, y) pairs it draws),
        ``xlabel``, ``ylabel``, optional ``level`` (a vertical line: the matched level),
        ``xlim``, ``xlog``, ``invert_x`` and ``invert_y``; values are fractions, drawn in % when
        ``percent_x`` / ``percent_y``.
      arms: arm label -> its runs (one per seed), each a sequence of ``(x, y)`` pairs, one
        pair per panel: ``x`` and ``y`` are the run's values at each evaluation.
      path: where the figure is saved (PNG by extension).
      title: the figure's title.
      colors: arm label -> color (default: matplotlib's cycle).

    Returns:
      The matplotlib ``Figure``; the legend names each arm once, below the panels.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(panels), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for i, (label, runs) in enumerate(arms.items()):
        color = (colors or {}).get(label, f"C{i % 10}")
        for j, run in enumerate(runs):
            for ax, panel in zip(axes, panels, strict=True):
                x, y = run[panel["index"]]
                x = 100 * np.asarray(x, float) if panel.get("percent_x") else np.asarray(x)
                y = 100 * np.asarray(y, float) if panel.get("percent_y") else np.asarray(y)
                ax.plot(x, y, color=color, lw=1.0, alpha=0.8, label=label if j == 0 else None)
    for ax, panel in zip(axes, panels, strict=True):
        if panel.get("level") is not None:
            level = panel["level"] * (100 if panel.get("percent_x") else 1)
            ax.axvline(level, color="gray", lw=0.8, ls="--")
        ax.set(xlabel=panel["xlabel"], ylabel=panel["ylabel"])
        if panel.get("xlim") is not None:
            ax.set_xlim(*panel["xlim"])
        if panel.get("xlog"):
            ax.set_xscale("log")
        if panel.get("invert_x"):  # e.g. a loss: fitting moves to the right as in accuracy
            ax.invert_xaxis()
        if panel.get("invert_y"):  # e.g. a loss on the noisy labels: memorizing moves up
            ax.invert_yaxis()
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize="small")
    fig.savefig(path, dpi=110)
    return fig


#: Colors of the runs of :func:`plot_coherence_curves`, in order.
_COHERENCE_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange")


def plot_coherence_curves(
    points_by_run: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, *, m: int
):
    """m-coherence and the fit of the measured sample against steps, one line per run.

    Args:
      points_by_run: run name -> the points of a :class:`cgh_jax.analysis.CoherenceHook`
        (``step``, ``alpha``, ``accuracy``); colors in order of :data:`_COHERENCE_COLORS`.
      path: where the figure is saved (PNG by extension).
      m: the sample size, for the axis label.

    Returns:
      The matplotlib ``Figure``: α (log scale, with the orthogonal-gradients level 1) and
      the accuracy on the sample with its trained labels, both against the step (log scale,
      step 0 drawn at 0.5).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_alpha, ax_acc = fig.subplots(1, 2)
    for i, (name, points) in enumerate(points_by_run.items()):
        color = _COHERENCE_COLORS[i % len(_COHERENCE_COLORS)]
        x = [max(p["step"], 0.5) for p in points]
        ax_alpha.plot(x, [p["alpha"] for p in points], marker=".", color=color, label=name)
        acc = [100 * p["accuracy"] for p in points]
        ax_acc.plot(x, acc, marker=".", color=color, label=name)
    ax_alpha.axhline(1.0, color="gray", lw=0.8, ls="--", label="orthogonal gradients (1)")
    ax_alpha.set(yscale="log", ylabel=f"m-coherence α (m = {m:,})")
    ax_alpha.set_title("m-coherence of per-example gradients")
    ax_acc.set(ylabel="accuracy on the sample (%), trained labels", ylim=(-2, 102))
    ax_acc.set_title("fit of the sample")
    for ax in (ax_alpha, ax_acc):
        ax.set(xscale="log", xlabel="step (step 0 drawn at 0.5)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig
