"""The project's two text formats: durations and markdown tables. Standard library only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def format_seconds(seconds: float) -> str:
    """``'1h 02m'``, ``'3m 05s'`` or ``'42s'`` (``'—'`` for NaN or infinity).

    Example:
      >>> format_seconds(185), format_seconds(3725), format_seconds(float("nan"))
      ('3m 05s', '1h 02m', '—')
    """
    if not math.isfinite(seconds):
        return "—"
    seconds = int(round(seconds))
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` gives one of ``l``/``r`` per column (default l, then r).

    Example:
      >>> print(markdown_table(["run", "top-1"], [["sgd", 98.3]]))
      | run | top-1 |
      |---|---:|
      | sgd | 98.3 |
    """
    align = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(str(h) for h in header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["format_seconds", "markdown_table"]
