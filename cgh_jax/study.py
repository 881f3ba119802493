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
through :func:`cgh_jax.analysis.report.write_report` (process 0 only, after a barrier that
every process reaches when its last run has finished).

The config side (:func:`is_study`, :func:`study_runs`, :func:`check_study_overrides`) needs
no JAX and is checked before anything heavy is imported: this module imports the trainer and
the metrics writer only inside :func:`run_study`.

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

from cgh_jax import choices
from cgh_jax.cli_checks import split_config_spec
from cgh_jax.config_checks import (
    ConfigError,
    _flatten,
    _get,
    _known_fields,
    _one_of,
    _suggest,
    _to_dict,
    check_config,
)

RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
REPORT_BARRIER_TIMEOUT_S = 3600  # the processes end their last run within moments
_STUDY_FIELDS = ("optimizers", "variants", "title")

# ----------------------------------------------------------------------------- the runs


def is_study(config: Mapping[str, Any]) -> bool:
    """True if ``config`` describes a study (has a non-empty ``study.optimizers``)."""
    return "study" in config and bool(_get(config["study"], "optimizers"))


def _variants(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    variants = _get(config["study"], "variants") or {}
    if not isinstance(variants, Mapping | ml_collections.ConfigDict):
        raise ConfigError(
            f"config.study.variants={variants!r} is not a mapping",
            "give {run name: {field: value, ...}}",
        )
    out = {}
    for name, fields in _to_dict(variants).items():
        if not isinstance(fields, Mapping):
            raise ConfigError(
                f"config.study.variants[{name!r}]={fields!r} is not a mapping of fields",
                "give {field: value, ...}, e.g. {'batch_size': 300}",
            )
        out[str(name)] = dict(fields)
    return out


def _merge(cfg: dict[str, Any], fields: Mapping[str, Any], run: str, at: str = "") -> None:
    for key, value in fields.items():
        path = f"{at}{key}"
        if key not in cfg:
            raise ConfigError(
                f"config.study.variants[{run!r}] sets {path!r}, which is not a config field"
                f"{_suggest(key, cfg)}",
                f"fields here: {_one_of(sorted(cfg))}",
            )
        if isinstance(cfg[key], Mapping) and isinstance(value, Mapping):
            _merge(cfg[key], value, run, f"{path}.")
        else:
            cfg[key] = value


def study_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each run of a study config as a plain nested dict, without the ``study`` field.

    A run name is an optimizer name (``optimizer.name`` replaced) or a key of
    ``config.study.variants`` (its nested fields merged in).

    Raises:
      ConfigError: an empty, repeated, malformed or unknown run name, or a variant that sets
        a field the config lacks.
    """
    study = config["study"]
    _known_fields("study.", study, _STUDY_FIELDS)
    names = _get(study, "optimizers")
    if isinstance(names, str) or not isinstance(names, list | tuple) or not names:
        raise ConfigError(
            f"config.study.optimizers={names!r} is not a non-empty tuple of run names",
            "give e.g. ('sgd', 'm3')",
        )
    if len(set(names)) != len(names):
        raise ConfigError(
            f"config.study.optimizers={tuple(names)!r} repeats a run", "name each run once"
        )
    variants = _variants(config)
    base = _to_dict(config)
    base.pop("study")
    runs = {}
    for name in names:
        if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
            raise ConfigError(
                f"study run name {name!r} is not a directory name",
                "use only letters, digits, '_', '.' and '-'",
            )
        cfg = _to_dict(base)
        if name in variants:
            _merge(cfg, variants[name], name)
        elif name in choices.OPTIMIZERS:
            cfg["optimizer"]["name"] = name
        else:
            valid = (*choices.OPTIMIZERS, *variants)
            raise ConfigError(
                f"config.study.optimizers has {name!r}, which is neither an optimizer nor a "
                f"study variant{_suggest(name, valid)}",
                f"use one of {_one_of(valid)}",
            )
        runs[name] = cfg
    return runs


def _ignored_by(config: Mapping[str, Any], field: str) -> list[str]:
    """The runs of a study that replace ``field`` with their own value."""
    variants = _variants(config)
    runs = []
    for name in _get(config["study"], "optimizers"):
        if name in variants:
            set_fields = _flatten(variants[name])
            if any(field == f or field.startswith(f + ".") for f in set_fields):
                runs.append(name)
        elif field == "optimizer.name":
            runs.append(name)
    return runs


# ----------------------------------------------------------------------------- overrides


def check_study_overrides(final: Any, own: Any, spec: str) -> None:
    """Refuses command-line overrides of a study config that its runs would replace.

    Args:
      final: the config after the ``--config.<field>`` overrides.
      own: the config file's own result for the same ``:ARGS`` (no overrides).
      spec: the ``--config`` value, for the message.

    Raises:
      ConfigError: naming the overridden field and the runs that set their own value.
    """
    if not is_study(final):
        return
    new, old = _flatten(_to_dict(final)), _flatten(_to_dict(own))
    for field in sorted(new):
        if field.startswith("study.") or new[field] == old.get(field, new[field]):
            continue
        runs = _ignored_by(final, field)
        if runs:
            path, _ = split_config_spec(spec)
            how = (
                f"choose the runs with the config's argument instead, e.g. "
                f"--config={path}:opts=sgd+m3"
                if field == "optimizer.name"
                else f"set it through the config's arguments ({path} lists them) or "
                "--config.study.variants"
            )
            raise ConfigError(
                f"--config.{field}={new[field]!r} would be ignored: the study {path} sets "
                f"{field} itself in its run(s) {_one_of(runs)}",
                how,
            )


# ----------------------------------------------------------------------------- training


def run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of run ``name`` of the study (locked).

    ``name`` is an optimizer name (``optimizer.name`` replaced) or a key of
    ``config.study.variants`` (its nested field overrides merged into the config):
    :func:`study_runs`.

    Raises:
      ConfigError: ``name`` is not a run of the study, or a variant sets a field the config
        lacks.
    """
    runs = study_runs(config)
    if name not in runs:
        raise ConfigError(f"{name!r} is not a run of this study", f"use one of {', '.join(runs)}")
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
    from cgh_jax import metrics as metrics_lib  # JAX only when a study trains
    from cgh_jax import train

    check_config(config)  # every run, before the first one trains
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
        runs[name] = run_dir
        took, done, left = time.monotonic() - t0, time.monotonic() - start, len(names) - i - 1
        eta = f", ETA {metrics_lib.format_duration(done / (i + 1) * left)}" if left else ""
        logging.info(
            "Run %s finished in %.1f s; study: %d/%d runs in %s%s.",
            name,
            took,
            i + 1,
            len(names),
            metrics_lib.format_duration(done),
            eta,
        )

    # One writer: process 0 writes the report once every process has finished every run.
    from cgh_jax import distributed

    distributed.barrier("cgh_jax:study:report", REPORT_BARRIER_TIMEOUT_S)
    path = os.path.join(workdir, "report.md")
    if distributed.is_writer():
        from cgh_jax.analysis.report import write_report  # matplotlib only when reporting

        title = config.study.get("title") or "Optimizer comparison"
        path = write_report(workdir, runs, title=title)
    logging.info("Study finished in %.1f s; report: %s", time.monotonic() - start, path)
    return path
