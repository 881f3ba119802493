"""Analysis: m-coherence of per-example gradients, study reports and figures, statistics over
seeds, easy/hard splits."""

from cgh_jax.analysis.coherence import (
    CoherenceHook,
    CoherenceStats,
    coherence_from_grads,
    m_coherence,
)
from cgh_jax.analysis.easy_hard import load_records, make_easy_hard_splits, split_easy_hard
from cgh_jax.analysis.plots import plot_accuracy_curves
from cgh_jax.analysis.report import (
    final_metrics,
    load_metrics,
    results_table,
    summarize_runs,
    write_report,
)
from cgh_jax.analysis.stats import mean_std, paired_difference

__all__ = [
    "CoherenceHook",
    "CoherenceStats",
    "coherence_from_grads",
    "final_metrics",
    "load_metrics",
    "load_records",
    "m_coherence",
    "make_easy_hard_splits",
    "mean_std",
    "paired_difference",
    "plot_accuracy_curves",
    "results_table",
    "split_easy_hard",
    "summarize_runs",
    "write_report",
]
