"""The one error type of a bad config, and the checks every field rule is written with.

Every problem with the command line or a config raises :class:`ConfigError` (a
``ValueError``) whose message has one form, ``<what is wrong>; <what to do>``, and names the
field (``config.optimizer.name``), the value and what is accepted. Standard library only.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A mistake in the command line or the config: ``<what is wrong>; <what to do>``."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix


def one_of(values: Iterable[Any]) -> str:
    """``'a, b, c'``."""
    return ", ".join(str(v) for v in values)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``''``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_remote(path: Any) -> bool:
    """A URL such as ``gs://bucket/dir``."""
    return "://" in str(path)


def get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` when the config lacks the field."""
    return cfg[key] if key in cfg else default


def to_dict(cfg: Any) -> dict[str, Any]:
    """A deep, plain-dict copy of a ConfigDict or mapping (safe to change)."""
    return copy.deepcopy(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def choice(path: str, value: Any, accepted: Iterable[str]) -> Any:
    """``value`` is one of ``accepted``."""
    accepted = tuple(accepted)
    if value not in accepted:
        hint = suggest(value, accepted) if isinstance(value, str) else ""
        raise ConfigError(
            f"config.{path}={value!r} is not accepted{hint}",
            f"set it to one of {one_of(accepted)}",
        )
    return value


def integer(path: str, value: Any, *, low: int, extra: tuple[int, ...] = ()) -> int:
    """An integer >= ``low`` (or one of ``extra``, e.g. -1 for "all")."""
    if not is_int(value) or (value < low and value not in extra):
        also = f" or {one_of(extra)}" if extra else ""
        raise ConfigError(
            f"config.{path}={value!r} is not an integer >= {low}{also}",
            f"give config.{path} an integer >= {low}{also}",
        )
    return int(value)


def number(path: str, value: Any, *, low: float, low_open: bool = False, high=None) -> float:
    """A finite real number in [low, high) (or (low, high) with ``low_open``)."""
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (
            f" and < {high:g}" if high is not None else ""
        )
        raise ConfigError(
            f"config.{path}={value!r} is not a finite number {bound}",
            f"give config.{path} a finite number {bound}",
        )
    return float(value)


def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            f"config.{path}={value!r} is not a boolean", f"set config.{path} to True or False"
        )
    return value


def string(path: str, value: Any, *, optional: bool = False) -> str | None:
    """A non-empty string (or None when ``optional``)."""
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    raise ConfigError(
        f"config.{path}={value!r} is not a non-empty string",
        f"give config.{path} a name or path" + (" (or leave it unset)" if optional else ""),
    )


def known_fields(path: str, cfg: Mapping[str, Any], known: Iterable[str]) -> None:
    """Every key of ``cfg`` is a field the trainer reads (``path``: e.g. ``'data.'``)."""
    known = tuple(known)
    for key in cfg:
        if key not in known:
            raise ConfigError(
                f"config.{path}{key} is not a field the trainer reads{suggest(key, known)}",
                f"remove it (fields of config{'.' + path.rstrip('.') if path else ''}: "
                f"{one_of(sorted(known))})",
            )


def group(path: str, value: Any, fix: str) -> Mapping[str, Any]:
    """``config.<path>`` is a group of fields (a mapping or ConfigDict)."""
    if not (isinstance(value, Mapping) or hasattr(value, "to_dict")):
        raise ConfigError(f"config.{path}={value!r} is not a group of fields", fix)
    return value


__all__ = [
    "ConfigError",
    "boolean",
    "choice",
    "flatten",
    "get",
    "group",
    "integer",
    "is_int",
    "is_number",
    "is_remote",
    "known_fields",
    "number",
    "one_of",
    "string",
    "suggest",
    "to_dict",
]
