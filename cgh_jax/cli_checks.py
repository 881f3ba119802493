"""The command line's own checks, run by ``cgh_jax.main`` before anything heavy is imported.

They raise :class:`cgh_jax.spec.fields.ConfigError` and import only the standard library
and ``ml_collections``.

* :func:`load_config_file` -- the ``--config=FILE[:ARGS]`` file and its arguments.
* :func:`check_override_names` -- ``--config.<field>`` names exist (with a suggestion).
* :func:`check_override_types` -- an override keeps the type of the field's value.
* :func:`check_workdir` -- the work directory exists as a folder or can be created, and is
  writable; nothing in it is changed.

A study refuses overrides its runs would replace: :func:`cgh_jax.study.check_study_overrides`.
"""

from __future__ import annotations

import os
import tempfile
import types
from collections.abc import Iterable
from typing import Any

import ml_collections

from cgh_jax.spec.fields import (
    ConfigError,
    flatten,
    is_int,
    is_number,
    is_remote,
    one_of,
    suggest,
    to_dict,
)

# ----------------------------------------------------------------------------- the file


def split_config_spec(spec: str) -> tuple[str, str | None]:
    """``"configs/x.py:a=1"`` -> ``("configs/x.py", "a=1")``; no colon -> ``(path, None)``."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config`` of the config file ``spec`` (``FILE[:ARGS]``) and returns its config.

    The file is executed as a fresh module, exactly as ``ml_collections.config_flags`` does;
    ``get_config(ARGS)`` is called with the text after the first colon (without a colon,
    ``get_config()``).

    Raises:
      ConfigError: no such file, a file that does not load or has no ``get_config``, an
        argument ``get_config`` refuses (unknown key, bad type or value), or a result that
        is not a ConfigDict.
    """
    path, arg = split_config_spec(spec)
    where = f"--config={spec}"
    if not path:
        raise ConfigError("--config names no file", "pass --config=configs/<name>.py[:ARGS]")
    if not os.path.isfile(path):
        state = "is a directory" if os.path.isdir(path) else "does not exist"
        folder = os.path.dirname(path) or "."
        found = (
            sorted(f for f in os.listdir(folder) if f.endswith(".py"))
            if os.path.isdir(folder)
            else []
        )
        hint = f"; config files in {folder}: {one_of(found)}" if found else ""
        raise ConfigError(
            f"config file {path!r} {state} (from {where}, relative to {os.getcwd()})",
            f"pass an existing config file{suggest(os.path.basename(path), found)}{hint}",
        )
    module = types.ModuleType("cgh_jax_config_file")
    module.__file__ = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        exec(code, module.__dict__)  # noqa: S102 - the user's own config file
    except Exception as e:  # any error while importing the file is the file's problem
        raise ConfigError(
            f"config file {path!r} failed to load: {type(e).__name__}: {e}",
            "fix the file (rerun with CGH_JAX_TRACEBACK=1 for the traceback)",
        ) from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(
            f"config file {path!r} defines no get_config function",
            "define get_config(arg=None) returning an ml_collections.ConfigDict",
        )
    try:
        config = get_config() if arg is None else get_config(arg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.what}", e.fix) from e
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        what, _, fix = " ".join(str(e).split()).rstrip(".").partition("; ")
        fix = fix or f"fix the arguments (the docstring of {path} lists them)"
        raise ConfigError(f"{where}: {what}", fix) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config of {path!r} returned {type(config).__name__}, not a ConfigDict",
            "return an ml_collections.ConfigDict (e.g. configlib.base_config())",
        )
    return config


def check_override_names(config: ml_collections.ConfigDict, names: Iterable[str]) -> None:
    """Checks that every ``--config.<name>`` override names an existing field.

    Raises:
      ConfigError: naming the unknown field, the closest existing one and the fields there.
    """
    for name in names:
        node: Any = config
        parts = name.split(".")
        for depth, part in enumerate(parts):
            at = ".".join(parts[:depth])
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(
                    f"--config.{name}: config.{at} is a value ({node!r}), not a group of fields",
                    f"override --config.{at} itself",
                )
            if part not in node:
                fields = sorted(node.keys())
                hint = suggest(part, fields)
                if at == "model" and part == "num_classes":
                    fix = "the number of classes comes from the dataset; remove the override"
                else:
                    fix = f"fields of config{'.' + at if at else ''}: {one_of(fields)}"
                raise ConfigError(
                    f"--config.{name}: config{'.' + at if at else ''} has no field {part!r}{hint}",
                    fix,
                )
            node = node[part]


# ----------------------------------------------------------------------------- overrides


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if is_int(old):
        return is_int(new)
    if is_number(old):
        return is_number(new)
    if isinstance(old, list | tuple):
        return isinstance(new, list | tuple) and (
            not old or all(_same_kind(old[0], v) for v in new)
        )
    return isinstance(new, type(old))


def _type_name(value: Any) -> str:
    if isinstance(value, list | tuple) and value:
        return f"a {type(value).__name__} of {type(value[0]).__name__}"
    return f"a {type(value).__name__}"


def check_override_types(final: Any, own: Any) -> None:
    """Refuses an override whose value has another type than the config file's own value.

    Integers may replace floats; a tuple's elements must have the type of the config's
    first element (``--config.model.hidden='(512, 512)'``, not ``abc``). Fields the config
    leaves unset (None) take any value.

    Raises:
      ConfigError: naming the field, the given value and the expected type.
    """
    new, old = flatten(to_dict(final)), flatten(to_dict(own))
    for field in sorted(new):
        before, after = old.get(field), new[field]
        if before is None or before == after or _same_kind(before, after):
            continue
        raise ConfigError(
            f"--config.{field}={after!r} is {_type_name(after)}, but the config's value "
            f"{before!r} is {_type_name(before)}",
            f"give a value like {before!r}",
        )


# ----------------------------------------------------------------------------- workdir


def check_workdir(workdir: Any) -> None:
    """Checks that ``workdir`` is, or can be created as, a writable directory.

    Nothing is left behind and no shared path is created or removed, so every process of a
    job may run it at once: an existing directory gets a probe directory with a name of
    its own (``tempfile``) that is removed at once; for a missing one, so does its nearest
    existing parent. Remote paths (``gs://...``) are not checked.

    Raises:
      ConfigError: no workdir, a file in the way, or a directory that cannot be written.
    """
    if not workdir or not isinstance(workdir, str | os.PathLike):
        raise ConfigError("--workdir is not set", "pass --workdir=DIR for checkpoints and metrics")
    path = os.path.abspath(os.fspath(workdir))
    if is_remote(workdir):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(
            f"--workdir={workdir} is a file, not a directory",
            "pass a new or existing directory",
        )
    if os.path.isdir(path):
        checkpoints = os.path.join(path, "checkpoints")
        if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
            raise ConfigError(
                f"--workdir={workdir} holds a file named checkpoints where the checkpoint "
                "directory goes",
                "move that file away or pass another --workdir",
            )
        _probe_writable(path, f"--workdir={workdir} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(
            f"--workdir={workdir} cannot be created: {parent} is a file",
            "pass a directory whose parent is a directory",
        )
    _probe_writable(parent, f"--workdir={workdir} cannot be created in {parent}")


def _probe_writable(directory: str, what: str) -> None:
    """Creates and removes a directory of this process's own in ``directory``."""
    try:
        probe = tempfile.mkdtemp(prefix=".cgh-jax-write-probe-", dir=directory)
    except OSError as e:
        raise ConfigError(
            f"{what}: {e.strerror}", "pass a directory in a location you can write to"
        ) from e
    os.rmdir(probe)


__all__ = [
    "check_override_names",
    "check_override_types",
    "check_workdir",
    "load_config_file",
    "split_config_spec",
]
