"""Communication of a compiled program: the collectives of its HLO text and their bytes.

The measure used to compare the M3 layouts of :mod:`cgh_jax.optim.sharded` (and SGD):
:func:`hlo_collective_traffic` lists each collective of a compiled, SPMD-partitioned HLO
module (``jax.jit(f).lower(...).compile().as_text()``) with its operand and result bytes
and the bytes one device sends under ring algorithms; :func:`summarize_traffic` adds them
up. Pure text parsing: no JAX needed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

__all__ = ["CollectiveOp", "hlo_collective_traffic", "summarize_traffic"]

_COLLECTIVES = (
    "all-reduce",
    "reduce-scatter",
    "all-gather",
    "all-to-all",
    "collective-permute",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_SHAPE_RE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_OP_RE = re.compile(
    r"=\s*(?P<result>.*?)\s(?P<op>" + "|".join(_COLLECTIVES) + r")(?P<start>-start)?\("
)


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE_RE.findall(text):
        n = math.prod(int(x) for x in dims.split(",") if x) if dims else 1
        total += n * _DTYPE_BYTES[dtype]
    return total


def _group_size(line: str, num_devices: int) -> int:
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if m and m.group(1):
        return len(m.group(1).split(","))
    return num_devices


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
    """One collective of a compiled HLO module and its cost.

    Attributes:
      op: ``all-reduce``, ``reduce-scatter``, ``all-gather``, ``all-to-all`` or
        ``collective-permute``.
      operand_bytes: bytes of its operand(s) on one device.
      result_bytes: bytes of its result(s) on one device.
      group_size: ``n``, devices per replica group.
      ring_bytes: bytes one device sends, averaged over the devices, under ring
        algorithms: all-reduce ``2(n-1)/n S``, reduce-scatter ``(n-1)/n S_in``,
        all-gather ``(n-1)/n S_out``, all-to-all ``(n-1)/n S``; a collective-permute sends
        ``S`` from each source, i.e. ``pairs/D * S`` on average.
      max_ring_bytes: the same for the busiest device (differs only for permutes; summed
        over ops it is an upper bound for any one device).
    """

    op: str
    operand_bytes: int
    result_bytes: int
    group_size: int
    ring_bytes: float
    max_ring_bytes: float


def hlo_collective_traffic(hlo_text: str, num_devices: int) -> list[CollectiveOp]:
    """Lists the collectives of an HLO module (e.g. ``jit(f).lower(...).compile()
    .as_text()``) with their bytes, the measure used to compare M3 layouts.

    Asynchronous pairs (``*-start``/``*-done``) are counted once, from the start. Compiled
    HLO names operands without their shapes, so operand sizes are derived from the result
    and the op (reduce-scatter: ``n`` times the result, all-gather: ``1/n``, others: equal).
    Collectives inside loops are counted once per appearance in the text, not per
    iteration.

    Args:
      hlo_text: the text of a compiled (SPMD-partitioned, per-device) HLO module.
      num_devices: devices taking part (the group size when an op lists no groups).

    Returns:
      One :class:`CollectiveOp` per collective instruction.
    """
    ops = []
    for line in hlo_text.splitlines():
        m = _OP_RE.search(line)
        if not m:
            continue
        op = m.group("op")
        n = _group_size(line, num_devices)
        result = _shape_bytes(m.group("result"))
        if m.group("start") and op in ("all-gather", "collective-permute"):
            # These async starts return (operand(s), result(s)[, u32[] contexts]).
            shapes = [x for x in _SHAPE_RE.findall(m.group("result")) if x[1]]
            result = _shape_bytes(" ".join(f"{t}[{d}]" for t, d in shapes[len(shapes) // 2 :]))
        # Compiled HLO names operands without their shapes; derive them from the result.
        operand = {"reduce-scatter": result * n, "all-gather": result // n}.get(op, result)
        frac = (n - 1) / n
        if op == "all-reduce":
            ring = max_ring = 2 * frac * operand
        elif op in ("reduce-scatter", "all-to-all"):
            ring = max_ring = frac * operand
        elif op == "all-gather":
            ring = max_ring = frac * result
        else:  # collective-permute: each source sends its operand once.
            pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
            num_pairs = 0 if pairs is None else pairs.group(1).count("{")
            ring = operand * num_pairs / num_devices
            max_ring = float(operand) if num_pairs else 0.0
        ops.append(CollectiveOp(op, operand, result, n, ring, max_ring))
    return ops


def summarize_traffic(ops: Sequence[CollectiveOp]) -> dict[str, float]:
    """Totals of :func:`hlo_collective_traffic`: op count, operand+result bytes, ring bytes
    per device (average and busiest device)."""
    return {
        "num_ops": len(ops),
        "hlo_bytes": float(sum(o.operand_bytes + o.result_bytes for o in ops)),
        "ring_bytes": float(sum(o.ring_bytes for o in ops)),
        "max_ring_bytes": float(sum(o.max_ring_bytes for o in ops)),
    }
