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
import re
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from cgh_jax import metrics as metrics_lib
from cgh_jax import train
from cgh_jax.optim import spec as spec_lib

_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def is_study(config: ml_collections.ConfigDict) -> bool:
    """True if ``config`` describes a study (has a non-empty ``study.optimizers``)."""
    return "study" in config and bool(config.study.get("optimizers"))


def _variants(config: ml_collections.ConfigDict) -> dict[str, Mapping[str, Any]]:
    variants = config.study.get("variants") or {}
    if isinstance(variants, ml_collections.ConfigDict):
        variants = variants.to_dict()
    return {str(k): dict(v) for k, v in dict(variants).items()}


def _merge(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any], run: str, at=""):
    """Sets the fields of the nested mapping ``overrides`` in ``cfg`` (existing fields only)."""
    for key, value in overrides.items():
        path = f"{at}{key}"
        if key not in cfg:
            raise ValueError(
                f"config.study.variants[{run!r}] sets {path!r}, which is not a config field; "
                f"fields here: {', '.join(sorted(cfg))}."
            )
        if isinstance(cfg[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
            _merge(cfg[key], value, run, f"{path}.")
        else:
            cfg[key] = value


def run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of run ``name`` of the study.

    ``name`` is an optimizer name (``optimizer.name`` replaced) or a key of
    ``config.study.variants`` (its nested field overrides merged into the config).

    Raises:
      ValueError: ``name`` is neither, or a variant sets a field the config lacks.
    """
    cfg = ml_collections.ConfigDict(config.to_dict())
    variants = _variants(config)
    if name in variants:
        _merge(cfg, variants[name], name)
    elif name in spec_lib.OPTIMIZERS:
        cfg.optimizer.name = name
    else:
        valid = (*spec_lib.OPTIMIZERS, *variants)
        raise ValueError(
            f"config.study.optimizers has {name!r}, which is neither an optimizer nor a key "
            f"of config.study.variants; valid: {', '.join(valid)}."
        )
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
    names = tuple(config.study.optimizers)
    if len(set(names)) != len(names):
        raise ValueError(f"config.study.optimizers repeats a name: {names}.")
    for name in names:  # Every run's config is checked before the first one trains.
        if not _RUN_NAME.fullmatch(name):
            raise ValueError(
                f"Study run name {name!r} must use only letters, digits, '_', '.' and '-' "
                "(it names the run's directory)."
            )
        cfg = run_config(config, name)
        spec_lib.resolve(cfg.optimizer, batch_size=cfg.batch_size)

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
