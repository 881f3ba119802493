"""Coherent Gradients optimizers as optax transforms.

Aggregators (put them first in a chain):

- :func:`median_of_means`, :func:`m3`: median of group-mean gradients (leading group axis).
- :func:`winsorize`: winsorized mean of per-example gradients (leading example axis).
- :func:`rm3`, :func:`ra3`: running median / mean of the last three gradients.
- :func:`mean_at_median_norm`, :func:`median_at_mean_norm`: norm-matched controls of the
  median of means (one's direction at the other's per-tensor norm; leading group axis).

Optimizers: :func:`m3_sgd`, :func:`rm3_sgd`, :func:`ra3_sgd`, :func:`winsorized_sgd`.
Gradient helpers: :func:`grouped_grads`, :func:`per_example_grads`.
Data-parallel M3 with little communication: :func:`sharded_median_of_means_grads`.
The median of many groups without their full gradients: :func:`chunked_aggregate_grads`.
"""

from cgh_jax.optim.alias import (
    m3_sgd,
    mean_at_median_norm_sgd,
    median_at_mean_norm_sgd,
    ra3_sgd,
    rm3_sgd,
    winsorized_sgd,
)
from cgh_jax.optim.chunked import chunked_aggregate_grads
from cgh_jax.optim.grads import GroupedGrads, group_batch, grouped_grads, per_example_grads
from cgh_jax.optim.hlo import hlo_collective_traffic, summarize_traffic
from cgh_jax.optim.median import (
    MedianOfMeansState,
    coordinate_median,
    m3,
    median3,
    median_of_means,
)
from cgh_jax.optim.norm_match import (
    NormMatchState,
    mean_at_median_norm,
    median_at_mean_norm,
)
from cgh_jax.optim.running import (
    RunningBufferState,
    RunningMeanState,
    RunningMedianState,
    ra3,
    rm3,
)
from cgh_jax.optim.sharded import (
    LAYOUTS,
    MedianGrads,
    resolve_layout,
    sharded_median_of_means_grads,
)
from cgh_jax.optim.winsorize import WinsorizeState, winsorize, winsorized_mean

__all__ = [
    "LAYOUTS",
    "chunked_aggregate_grads",
    "MedianGrads",
    "GroupedGrads",
    "MedianOfMeansState",
    "NormMatchState",
    "RunningBufferState",
    "RunningMeanState",
    "RunningMedianState",
    "WinsorizeState",
    "coordinate_median",
    "group_batch",
    "grouped_grads",
    "hlo_collective_traffic",
    "m3",
    "m3_sgd",
    "mean_at_median_norm",
    "mean_at_median_norm_sgd",
    "median3",
    "median_at_mean_norm",
    "median_at_mean_norm_sgd",
    "median_of_means",
    "per_example_grads",
    "ra3",
    "resolve_layout",
    "ra3_sgd",
    "rm3",
    "rm3_sgd",
    "sharded_median_of_means_grads",
    "summarize_traffic",
    "winsorize",
    "winsorized_mean",
    "winsorized_sgd",
]
