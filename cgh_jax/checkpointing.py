"""Orbax checkpoints that resume exactly, refuse a changed config and never delete.

Each checkpoint step directory holds two items: ``state`` (the train state pytree, restored
into the same shardings) and ``meta`` (JSON: the step, the config fingerprint, the
fingerprinted config itself, and bookkeeping such as the accumulated training time).

Resuming is refused with :class:`ConfigMismatchError` when the fingerprint of the new config
differs from the checkpoint's. The fingerprint covers every config field except those in
:data:`MUTABLE_FIELDS`, which change how a run is observed or where files live, but not its
trajectory (parameters and metrics):

* ``checkpoint_every_steps``, ``keep_checkpoints``, ``log_every_steps``: bookkeeping;
* ``eval_batch_size``: evaluation is exact (padding + mask) at any batch size;
* ``per_example_epochs``: which epochs write per-example records;
* ``max_steps``: where to stop; raise it to continue a shortened run;
* ``data.data_dir``, ``data.cache``: where the prepared data lives and whether it is cached;
* ``study.*``: the list of runs of a study;
* ``init_timeout_s``, ``heartbeat_timeout_s``: how a multi-process job starts and notices a
  lost process.

``num_epochs`` is fingerprinted: it is the period of cosine schedules and the length of the
step schedule's run.

A field added to the code after a checkpoint was written is absent from its stored config;
it does not block resuming when the new run keeps that field's default (the defaults given
to :class:`Checkpointer`), so a code upgrade that adds an option still resumes old runs.

A checkpoint that cannot be read raises :class:`CheckpointError` naming the step directory
and what to do; nothing is ever deleted by a failed restore.

Only committed checkpoints are restored (:func:`cgh_jax.supervisor.committed_steps` lists
them without Orbax): Orbax writes a step into
``<step>.orbax-checkpoint-tmp-<time>/`` and renames it to ``<step>/`` (on object stores:
writes ``commit_success.txt``) after every process has written its part, so a step
half-written when a process died is never listed, restored or counted as the newest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from cgh_jax import supervisor

MUTABLE_FIELDS = (
    "checkpoint_every_steps",
    "keep_checkpoints",
    "log_every_steps",
    "eval_batch_size",
    "per_example_epochs",
    "max_steps",
    "data.data_dir",
    "data.cache",
    "study",
    "init_timeout_s",
    "heartbeat_timeout_s",
)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; nothing was deleted."""


class ConfigMismatchError(CheckpointError):
    """The workdir's checkpoint was written by a run with a different config."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def fingerprinted_config(config: Any) -> dict[str, Any]:
    """The flat ``{"a.b": value}`` view of ``config`` that the fingerprint covers."""
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    flat = _flatten(_jsonable(tree))

    def mutable(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in MUTABLE_FIELDS)

    return {k: v for k, v in sorted(flat.items()) if not mutable(k)}


def config_fingerprint(config: Any) -> str:
    """SHA-256 of the fingerprinted fields of ``config`` (see :data:`MUTABLE_FIELDS`)."""
    text = json.dumps(fingerprinted_config(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def describe_mismatch(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Lines ``key: checkpoint=... now=...`` for every differing fingerprinted field.

    A field the checkpoint does not have (added to the code after it was written) is not a
    difference when its current value is its value in ``defaults`` (the flat
    :func:`fingerprinted_config` of the default config): the run it describes is the one
    the checkpoint continues.
    """
    defaults = defaults or {}
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if key not in saved and key in defaults and new == defaults[key]:
            continue
        if old != new:
            lines.append(f"{key}: checkpoint={old!r} now={new!r}")
    return lines


class Checkpointer:
    """A CheckpointManager for one run: ``workdir/checkpoints/<step>/{state,meta}``.

    Saves are asynchronous (Orbax copies device arrays to host before :meth:`save` returns,
    so the caller may donate or overwrite them). All processes call every method; Orbax
    writes the JSON metadata on the primary process.

    Args:
      directory: the checkpoint directory (created if absent).

    Raises:
      CheckpointError: ``directory`` exists and is a file.
      config: the run's config; its fingerprint goes into each checkpoint's metadata.
      defaults: the default config (e.g. ``configlib.base_config()``); a checkpoint written
        before one of its fields existed resumes when this run keeps that field's default.
      max_to_keep: checkpoints kept on disk (older ones are removed after a new save).
      asynchronous: write in a background thread.
    """

    def __init__(
        self,
        directory: str,
        *,
        config: Any,
        defaults: Any = None,
        max_to_keep: int = 2,
        asynchronous: bool = True,
    ):
        directory = os.fspath(directory)
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"The checkpoint directory {self.directory} is a file; move it away or use "
                "a new --workdir."
            )
        self._config = fingerprinted_config(config)
        self._defaults = {} if defaults is None else fingerprinted_config(defaults)
        self._fingerprint = config_fingerprint(config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(1, int(max_to_keep)),
            create=True,
            enable_async_checkpointing=asynchronous,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )
        supervisor.note("checkpoints", directory=self.directory)  # for a lost-peer report

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _damaged(self, step: int, error: BaseException) -> CheckpointError:
        older = [s for s in self.all_steps() if s < step]
        if older:
            hint = (
                f"to resume from the previous checkpoint (step {older[-1]}), move "
                f"{self._step_dir(step)} out of the checkpoint directory"
            )
        else:
            hint = "there is no older checkpoint to fall back to"
        return CheckpointError(
            f"The checkpoint at {self._step_dir(step)} (step {step}) cannot be read: "
            f"{type(error).__name__}: {error}. Nothing was deleted. Either {hint}, or start "
            "afresh with a new --workdir."
        )

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step``; CheckpointError if unreadable."""
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            meta = restored.meta
        except Exception as e:  # Orbax raises many types for unreadable files.
            raise self._damaged(step, e) from e
        if not isinstance(meta, dict) or "fingerprint" not in meta:
            raise self._damaged(step, ValueError("metadata without a config fingerprint"))
        return meta

    def check_config(self, step: int | None = None) -> dict[str, Any] | None:
        """Checks the newest (or given) checkpoint's config against this run's config.

        Returns:
          The checkpoint's metadata, or None when there is no checkpoint.

        Raises:
          ConfigMismatchError: naming every differing field.
          CheckpointError: if the metadata cannot be read.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        meta = self.read_meta(step)
        if meta["fingerprint"] == self._fingerprint:
            return meta
        saved = meta.get("config") or {}
        lines = describe_mismatch(saved, self._config, self._defaults) if saved else []
        if lines or not saved:
            raise ConfigMismatchError(
                f"The checkpoint in {self.directory} (step {step}) was written with a "
                "different config; resuming would mix two experiments. Differing fields:\n  "
                + "\n  ".join(lines or ["<unknown: the checkpoint stores no config>"])
                + "\nNothing was deleted. Use a new --workdir, or restore the original config "
                "(fields that may change between restarts: " + ", ".join(MUTABLE_FIELDS) + ")."
            )
        return meta

    def restore(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest checkpoint into the structure and shardings of ``target``.

        Args:
          target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings).

        Returns:
          ``(state, meta)``, or None when the directory holds no checkpoint.

        Raises:
          ConfigMismatchError, CheckpointError: see :meth:`check_config`.
        """
        step = self.latest_step()
        if step is None:
            return None
        meta = self.check_config(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
        except Exception as e:  # noqa: BLE001 - reported with the path and what to do.
            raise self._damaged(step, e) from e
        return restored.state, meta

    def save(self, step: int, state: Any, **meta: Any) -> None:
        """Saves ``state`` at ``step`` with the fingerprint and ``meta`` (JSON-able).

        A step that already has a checkpoint is left as it is (saving the same step twice,
        e.g. a periodic step that is also the last step, writes once).
        """
        if int(step) in self._manager.all_steps():
            return
        meta = {
            **_jsonable(meta),
            "step": int(step),
            "fingerprint": self._fingerprint,
            "config": self._config,
        }
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
