"""A comparison study: the same experiment trained with several optimizers, then a report.

A study config is a training config with a ``study`` field::

    config.study.optimizers = ("sgd", "m3", "rm3", "ra3", "sgd_b300")
    config.study.variants = {"sgd_b300": {"optimizer": {"name": "sgd"}, "batch_size": 300}}
    config.study.title = "..."

Each entry of ``study.optimizers`` names one run: an optimizer name (the config with
``optimizer.name`` replaced) or a key of ``study.variants``, whose value is a nested mapping of
config fields to the values that run uses instead (e.g. a control run of SGD at M3's examples per
update). :func:`run_study` trains each run into ``workdir/<name>`` with
:func:`cgh_jax.train.train_and_evaluate` and writes ``workdir/report.md`` with a PNG figure
through :func:`cgh_jax.analysis.report.write_report`.

Restarting a study with the same workdir resumes it: finished runs return at once from their
final checkpoint, an interrupted run resumes exactly, and the remaining runs follow.
"""

from __future__ import annotations

import os
import time

import ml_collections
from absl import logging

from cgh_jax import config_checks, train
from cgh_jax import metrics as metrics_lib


def is_study(config: ml_collections.ConfigDict) -> bool:
    """True if ``config`` describes a study (has a non-empty ``study.optimizers``)."""
    return config_checks.is_study(config)


def run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of run ``name`` of the study (locked).

    ``name`` is an optimizer name (``optimizer.name`` replaced) or a key of
    ``config.study.variants`` (its nested field overrides merged into the config):
    :func:`cgh_jax.config_checks.study_runs`.

    Raises:
      ConfigError: ``name`` is not a run of the study, or a variant sets a field the config
        lacks.
    """
    runs = config_checks.study_runs(config)
    if name not in runs:
        raise config_checks.ConfigError(
            f"{name!r} is not a run of this study", f"use one of {', '.join(runs)}"
        )
    cfg = ml_collections.ConfigDict(runs[name])
    cfg.lock()
    return cfg


def run_study(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Trains each run of ``config.study`` and writes the report.

    Args:
      config: a study config (:func:`is_study`).
      workdir: the study directory; run ``name`` trains in ``workdir/name``.

    Returns:
      The path of ``report.md``, or None if a run was preempted (SIGTERM): its checkpoint
      is saved and restarting the same command resumes the study.

    Raises:
      ValueError: for an unknown or repeated run name or an invalid run config, before any
        training.
    """
    config_checks.check_config(config)  # every run, before the first one trains
    names = tuple(config.study.optimizers)

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
