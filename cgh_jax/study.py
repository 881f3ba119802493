"""A comparison study: the same experiment trained with several optimizers, then a report.

A study config is a training config with a ``study`` field::

    config.study.optimizers = ("sgd", "m3", "rm3", "ra3")
    config.study.title = "..."

:func:`run_study` trains one run per optimizer into ``workdir/<optimizer>`` (each run a
plain :func:`cgh_jax.train.train_and_evaluate` with ``config.optimizer.name`` replaced) and
writes ``workdir/report.md`` with a PNG figure through
:func:`cgh_jax.analysis.report.write_report`.

Restarting a study with the same workdir resumes it: finished runs return at once from their
final checkpoint, an interrupted run resumes exactly, and the remaining runs follow.
"""

from __future__ import annotations

import os
import time

import ml_collections
from absl import logging

from cgh_jax import metrics as metrics_lib
from cgh_jax import train
from cgh_jax.optim import from_config


def is_study(config: ml_collections.ConfigDict) -> bool:
    """True if ``config`` describes a study (has a non-empty ``study.optimizers``)."""
    return "study" in config and bool(config.study.get("optimizers"))


def run_config(config: ml_collections.ConfigDict, optimizer: str) -> ml_collections.ConfigDict:
    """The training config of one run of the study: ``optimizer.name`` replaced."""
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.optimizer.name = optimizer
    cfg.lock()
    return cfg


def run_study(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Trains ``config`` once per optimizer of ``config.study`` and writes the report.

    Args:
      config: a study config (:func:`is_study`).
      workdir: the study directory; run ``name`` trains in ``workdir/name``.

    Returns:
      The path of ``report.md``, or None if a run was preempted (SIGTERM): its checkpoint
      is saved and restarting the same command resumes the study.

    Raises:
      ValueError: for an unknown or repeated optimizer name, before any training.
    """
    names = tuple(config.study.optimizers)
    for name in names:
        if name not in from_config.OPTIMIZERS:
            raise ValueError(
                f"config.study.optimizers has {name!r}; valid: {', '.join(from_config.OPTIMIZERS)}."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"config.study.optimizers repeats a name: {names}.")
    for name in names:  # Every run's config is checked before the first one trains.
        from_config.validate(run_config(config, name).optimizer)

    workdir = metrics_lib.resolve_dir(workdir)
    metrics_lib.make_dirs(workdir)
    runs: dict[str, str] = {}
    start = time.monotonic()
    for i, name in enumerate(names):
        run_dir = os.path.join(workdir, name)
        logging.info("Study run %d/%d: %s -> %s", i + 1, len(names), name, run_dir)
        t0 = time.monotonic()
        result = train.train_and_evaluate(run_config(config, name), run_dir)
        if result.get("preempted"):
            logging.warning("Study stopped by SIGTERM during %s; rerun to resume.", name)
            return None
        logging.info("Run %s finished in %.1f s.", name, time.monotonic() - t0)
        runs[name] = run_dir

    from cgh_jax.analysis.report import write_report  # matplotlib only when reporting

    title = config.study.get("title") or "Optimizer comparison"
    path = write_report(workdir, runs, title=title)
    logging.info("Study finished in %.1f s; report: %s", time.monotonic() - start, path)
    return path
