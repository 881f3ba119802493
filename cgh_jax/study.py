"""Studies: named runs (a training config each) trained, or reused, by one runner.

A study is data: a list of :class:`Run` (a directory name and a training config) and the
comparisons drawn from their finished records. :func:`train_run` trains one run with
:func:`cgh_jax.train.train_and_evaluate` in ``<workdir>/<name>`` and leaves a marker
(:data:`MARKER`: wall time, machine); a run that finished there before is reused, after
its checkpoint's own config check. :func:`train_all` trains a list, with the study's
progress and ETA. The ``studies/`` package (``python -m studies <study>``) builds its runs
and pages on these; :func:`archive_entry` and :func:`fingerprint` keep finished runs in a
page's ``results.json`` so that another checkout reuses them.

The default job is a study config: a training config with a ``study`` field::

    config.study.optimizers = ("sgd", "m3", "rm3", "ra3", "sgd_b300")
    config.study.variants = {"sgd_b300": {"optimizer": {"name": "sgd"}, "batch_size": 300}}
    config.study.title = "..."

Each entry of ``study.optimizers`` names one run: an optimizer name (the config with
``optimizer.name`` replaced) or a key of ``study.variants``, whose value is a nested mapping of
config fields to the values that run uses instead (e.g. a control run of SGD at M3's examples per
update). :func:`run_study` trains each run into ``workdir/<name>``, prints the results table
and writes ``workdir/report.md`` with a PNG figure through
:func:`cgh_jax.analysis.report.write_report` (process 0 alone, after a barrier that every
process reaches when its last run has finished).

The config side (:func:`is_study`, :func:`study_runs`, :func:`check_study_overrides`) needs
no JAX and is checked before anything heavy is imported: this module imports the trainer
only inside :func:`train_run`.

Restarting a study with the same workdir resumes it: finished runs are reused, an
interrupted run resumes exactly, and the remaining runs follow.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from cgh_jax import choices
from cgh_jax.cli_checks import split_config_spec
from cgh_jax.formatting import format_seconds
from cgh_jax.spec import experiment
from cgh_jax.spec.fields import ConfigError, flatten, get, known_fields, one_of, suggest, to_dict

RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
REPORT_BARRIER_TIMEOUT_S = 3600  # the processes end their last run within moments
_STUDY_FIELDS = ("optimizers", "variants", "title")

# ----------------------------------------------------------------------------- the runs


def is_study(config: Mapping[str, Any]) -> bool:
    """True if ``config`` describes a study (has a non-empty ``study.optimizers``)."""
    return "study" in config and bool(get(config["study"], "optimizers"))


def _variants(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    variants = get(config["study"], "variants") or {}
    if not isinstance(variants, Mapping | ml_collections.ConfigDict):
        raise ConfigError(
            f"config.study.variants={variants!r} is not a mapping",
            "give {run name: {field: value, ...}}",
        )
    out = {}
    for name, fields in to_dict(variants).items():
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
                f"{suggest(key, cfg)}",
                f"fields here: {one_of(sorted(cfg))}",
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
    known_fields("study.", study, _STUDY_FIELDS)
    names = get(study, "optimizers")
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
    base = to_dict(config)
    base.pop("study")
    runs = {}
    for name in names:
        if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
            raise ConfigError(
                f"study run name {name!r} is not a directory name",
                "use only letters, digits, '_', '.' and '-'",
            )
        cfg = to_dict(base)
        if name in variants:
            _merge(cfg, variants[name], name)
        elif name in choices.OPTIMIZERS:
            cfg["optimizer"]["name"] = name
        else:
            valid = (*choices.OPTIMIZERS, *variants)
            raise ConfigError(
                f"config.study.optimizers has {name!r}, which is neither an optimizer nor a "
                f"study variant{suggest(name, valid)}",
                f"use one of {one_of(valid)}",
            )
        runs[name] = cfg
    return runs


def _ignored_by(config: Mapping[str, Any], field: str) -> list[str]:
    """The runs of a study that replace ``field`` with their own value."""
    variants = _variants(config)
    runs = []
    for name in get(config["study"], "optimizers"):
        if name in variants:
            set_fields = flatten(variants[name])
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
    new, old = flatten(to_dict(final)), flatten(to_dict(own))
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
                f"{field} itself in its run(s) {one_of(runs)}",
                how,
            )


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a study: its directory under the study's workdir and its training config."""

    name: str
    config: Any


def config_runs(config: ml_collections.ConfigDict) -> list[Run]:
    """The runs of a study config (:func:`study_runs`), each a locked ConfigDict."""
    runs = []
    for name, fields in study_runs(config).items():
        cfg = ml_collections.ConfigDict(fields)
        cfg.lock()
        runs.append(Run(name, cfg))
    return runs


def run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of run ``name`` of a study config (locked).

    Raises:
      ConfigError: ``name`` is not a run of the study, or a variant sets a field the config
        lacks.
    """
    runs = {run.name: run.config for run in config_runs(config)}
    if name not in runs:
        raise ConfigError(f"{name!r} is not a run of this study", f"use one of {one_of(runs)}")
    return runs[name]


MARKER = "study_run.json"
"""Left beside ``metrics.jsonl`` by a finished run: wall time, finish time, machine."""


@dataclasses.dataclass(frozen=True)
class Finished:
    """A finished run: its directory, final evaluation record and marker."""

    name: str
    workdir: str
    record: dict[str, Any]
    info: dict[str, Any]

    @property
    def wall_s(self) -> float:
        return float(self.info.get("wall_s", math.nan))


def run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The :data:`MARKER` of a run directory (``wall_s``, ``finished``, ``runner``,
    ``machine``), or {} if the run has not finished there."""
    marker = Path(run_dir) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else {}


def run_wall_s(run_dir: str | os.PathLike) -> float:
    """The recorded wall time of a finished run (NaN if not recorded)."""
    return float(run_info(run_dir).get("wall_s", math.nan))


def machine() -> str:
    """A one-line description of the machine this process runs on."""
    import jax

    devices, cores = jax.devices(), os.cpu_count()
    where = f"{len(devices)} x {devices[0].device_kind} + {cores} CPU cores"
    if devices[0].platform == "cpu":
        where = f"{cores} CPU cores ({platform.processor() or platform.machine()}), no accelerator"
    return f"{where}; Python {platform.python_version()}, jax {jax.__version__}"


def finished_run(run: experiment.RunConfig, workdir: str | os.PathLike) -> Finished | None:
    """The run in ``workdir`` if it finished with this config, else None.

    A finished run left :data:`MARKER`; its checkpoint's own config check
    (:meth:`cgh_jax.checkpointing.Checkpointer.check_config`) decides whether it is this
    run (ConfigMismatchError names the differing fields otherwise; nothing is deleted).
    """
    from cgh_jax import checkpointing, configlib
    from cgh_jax.analysis import records

    workdir = Path(workdir)
    if not (workdir / MARKER).exists():
        return None
    checkpoints = checkpointing.Checkpointer(
        os.fspath(workdir / "checkpoints"), config=run.config, defaults=configlib.base_config()
    )
    try:
        checkpoints.check_config()
    finally:
        checkpoints.close()
    final = records.final_metrics(records.load_metrics(workdir))
    return Finished(workdir.name, os.fspath(workdir), final, run_info(workdir))


def train_run(run: Run, workdir: str | os.PathLike, hooks: Sequence[Any] = ()) -> Finished | None:
    """Trains ``run`` in ``<workdir>/<run.name>``, or reuses it if it finished there.

    Returns None if the run was preempted (SIGTERM; rerun to resume).
    """
    from cgh_jax import train

    parsed = experiment.parse(run.config)  # once: the trainer takes the checked config
    run_dir = Path(workdir) / run.name
    done = finished_run(parsed, run_dir)
    if done is not None:
        logging.info("%s finished before: reused.", run_dir)
        return dataclasses.replace(done, name=run.name)
    start = time.monotonic()
    record = train.train_and_evaluate(parsed, os.fspath(run_dir), hooks=hooks)
    if record.get("preempted"):
        return None
    info = dict(
        wall_s=round(time.monotonic() - start, 1),
        finished=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        runner="cgh_jax.train",
        machine=machine(),
    )
    import jax

    if jax.process_index() == 0:
        (run_dir / MARKER).write_text(json.dumps(info))
    return Finished(run.name, os.fspath(run_dir), record, info)


def parse_runs(runs: Sequence[Run], shared: Any = None) -> dict[str, experiment.RunConfig]:
    """Every run's config checked, once (:func:`cgh_jax.spec.experiment.parse`).

    Raises:
      ConfigError: for the first run that breaks a rule, naming the run, unless ``shared``
        (the fields every run shares) breaks it too, which is then reported alone.
    """
    parsed = {}
    for run in runs:
        try:
            parsed[run.name] = experiment.parse(run.config)
        except ConfigError as e:
            if shared is not None:
                experiment.parse(shared)  # the shared fields' own error, without a run name
            raise ConfigError(f"study run {run.name!r}: {e.what}", e.fix) from e
    return parsed


def shared_config(config: Any) -> dict[str, Any]:
    """A study config's fields without ``study``: what every run starts from."""
    shared = to_dict(config)
    shared.pop("study", None)
    return shared


def train_all(
    runs: Sequence[Run],
    workdir: str | os.PathLike,
    *,
    parsed: Mapping[str, experiment.RunConfig] | None = None,
    say: Callable[[str], None] = logging.info,
) -> dict[str, Finished] | None:
    """Trains (or reuses) each run in order, saying the study's progress and ETA after
    each; None if one was preempted. Every run's config is checked (:func:`parse_runs`,
    unless ``parsed`` holds them) before the first trains."""
    parsed = parse_runs(runs) if parsed is None else parsed
    finished: dict[str, Finished] = {}
    start = time.monotonic()
    for i, run in enumerate(runs):
        say(f"Study run {i + 1}/{len(runs)}: {run.name} -> {Path(workdir) / run.name}")
        t0 = time.monotonic()
        try:
            done = train_run(dataclasses.replace(run, config=parsed[run.name]), workdir)
        except ConfigError as e:  # a rule that needed the devices or the data
            raise ConfigError(f"study run {run.name!r}: {e.what}", e.fix) from e
        if done is None:
            logging.warning("Study stopped by SIGTERM during %s; rerun to resume.", run.name)
            return None
        finished[run.name] = done
        took, left = time.monotonic() - start, len(runs) - i - 1
        eta = f", ETA {format_seconds(took / (i + 1) * left)}" if left else ""
        say(
            f"Run {run.name} finished in {time.monotonic() - t0:.1f} s; study: {i + 1}/"
            f"{len(runs)} runs in {format_seconds(took)}{eta}."
        )
    return finished


# ----------------------------------------------------------------------------- archive
# A study's results.json can keep every finished run's curve with the fingerprint of its
# config, so that another checkout regenerates the page and trains only what is missing.

CURVE_SETS = ("pristine", "corrupt_noisy", "corrupt_true", "test")
CURVE_KEYS = ("step", "epoch", "wall_time_s") + tuple(
    f"{s}/{m}" for s in CURVE_SETS for m in ("top1", "loss")
)
PATH_FIELDS = ("data.path", "data.train_ids_file", "data.test_ids_file")


def portable_config(config: Any) -> dict[str, Any]:
    """The fields a checkpoint fingerprints (``{"a.b": value}``), path fields reduced to file
    names: the same run on another machine or checkout has the same portable config."""
    from cgh_jax import checkpointing

    flat = checkpointing.fingerprinted_config(config)
    return {k: (Path(v).name if k in PATH_FIELDS and v else v) for k, v in flat.items()}


def fingerprint(config: Any) -> str:
    """A short hash of :func:`portable_config`."""
    text = json.dumps(portable_config(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def archive_mismatch(entry: Mapping[str, Any], config: Any) -> list[str]:
    """How ``config`` differs from an archived run's, as a checkpoint's own check says it
    (:func:`cgh_jax.checkpointing.describe_mismatch`: a field added to the code since, at
    its default value, is no difference)."""
    from cgh_jax import checkpointing, configlib

    defaults = portable_config(configlib.base_config())
    return checkpointing.describe_mismatch(entry["config"], portable_config(config), defaults)


def archive_entry(done: Finished, config: Any) -> dict[str, Any]:
    """A finished run as an archive entry: fingerprint, wall time, machine and its curve
    (:data:`CURVE_KEYS` as columns, in step order)."""
    from cgh_jax.analysis import records

    rows = records.load_metrics(done.workdir)
    return dict(
        fingerprint=fingerprint(config),
        config=portable_config(config),
        wall_s=done.wall_s,
        machine=done.info.get("machine", "not recorded"),
        curve={k: [r.get(k, math.nan) for r in rows] for k in CURVE_KEYS},
    )


def load_archive(results_json: str | os.PathLike) -> dict[str, dict]:
    """The archived runs (``runs``: run name -> :func:`archive_entry`) of a page's
    ``results.json``, or {} if there is none."""
    path = Path(results_json)
    return json.loads(path.read_text()).get("runs", {}) if path.exists() else {}


def archived_or_trained(
    run: Run, workdir: str | os.PathLike, archive: Mapping[str, dict], *, train_missing: bool
) -> dict[str, Any] | None:
    """``run``'s archive entry: from its run directory if it finished there, else from
    ``archive`` if its config is the archived one (:func:`archive_mismatch`), else trained now
    (``train_missing``) or None (not trained, nothing archived)."""
    old = archive.get(run.name)
    if not (Path(workdir) / run.name / MARKER).exists():
        differ = archive_mismatch(old, run.config) if old else []
        if old and not differ:
            return old
        if old:
            logging.warning("%s: archived with another config (%s)", run.name, "; ".join(differ))
        if not train_missing:
            return None
    done = train_run(run, workdir)
    if done is None:
        raise SystemExit(f"{run.name}: stopped by SIGTERM; rerun the same command to resume.")
    return archive_entry(done, run.config)


# ----------------------------------------------------------------------------- default job


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    parsed: Mapping[str, experiment.RunConfig] | None = None,
) -> str | None:
    """Trains each run of a study config (the default job) and writes ``report.md`` with
    its figure; prints the results table.

    Args:
      config: the study config.
      workdir: the study's directory; run ``name`` trains in ``workdir/name``.
      parsed: the runs' checked configs (:func:`parse_runs`), if already checked.

    Returns:
      The path of ``report.md``, or None if a run was preempted (SIGTERM): its checkpoint
      is saved and restarting the same command resumes the study.
    """
    from cgh_jax import distributed
    from cgh_jax.analysis import report  # matplotlib only when reporting

    runs = config_runs(config)
    if parsed is None:
        parsed = parse_runs(runs, shared_config(config))
    finished = train_all(runs, workdir, parsed=parsed)
    if finished is None:
        return None
    # One writer: process 0 writes the report once every process has finished every run.
    distributed.barrier("cgh_jax:study:report", REPORT_BARRIER_TIMEOUT_S)
    path = os.path.join(workdir, "report.md")
    if distributed.is_writer():
        run_dirs = {name: done.workdir for name, done in finished.items()}
        title = config.study.get("title") or "Optimizer comparison"
        path = report.write_report(workdir, run_dirs, title=title)
        logging.info("Report: %s", path)
        print(report.results_table(run_dirs), flush=True)  # the console ends with the table
    return path


__all__ = [
    "CURVE_KEYS",
    "Finished",
    "MARKER",
    "Run",
    "archive_entry",
    "archive_mismatch",
    "archived_or_trained",
    "check_study_overrides",
    "config_runs",
    "fingerprint",
    "finished_run",
    "is_study",
    "load_archive",
    "machine",
    "parse_runs",
    "portable_config",
    "run_config",
    "run_study",
    "shared_config",
    "study_runs",
    "train_all",
    "train_run",
]
