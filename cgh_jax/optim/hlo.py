"""Communication of a compiled program: the collectives of its HLO text and their bytes.

The measure used to compare the M3 layouts of :mod:`cgh_jax.optim.sharded` (and SGD):
:func:`hlo_collective_traffic` lists each collective of a compiled, SPMD-partitioned HLO
module (``jax.jit(f).lower(...).compile().as_text()``) with its operand and result bytes
and the bytes one device sends under ring algorithms; :func:`summarize_traffic` adds them
up. Pure text parsing (and numpy): no JAX needed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["CollectiveOp", "hlo_collective_traffic", "replica_groups", "summarize_traffic"]

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


def _iota(dims: Sequence[int], perm: Sequence[int] | None) -> np.ndarray:
    """``iota(prod(dims)).reshape(dims).transpose(perm)``: XLA's iota device list."""
    ids = np.arange(math.prod(dims)).reshape(dims)
    return ids if perm is None else ids.transpose(perm)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


_IOTA_RE = re.compile(r"\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?")
_MESH_RE = re.compile(
    r"mesh\[(?P<axes>[^\]]*)\]"
    r"(?:,\s*device_ids=\((?P<ids>[^)]*\)?)\))?"
    r"\s*\{(?P<group>[^}]*)\}"
)
_AXIS_RE = re.compile(r"'?([^'=,]+)'?=(\d+)")
_GROUP_AXIS_RE = re.compile(r"'?([^':,]+)'?(?::\((\d+)\)(\d+))?")


def _mesh_groups(m: re.Match) -> np.ndarray:
    """Groups of ``replica_groups=mesh['a'=4,'b'=2][, device_ids=(...)] {'a'}``.

    The mesh's devices (iota, or ``device_ids``: ``[dims]T(perm)`` or an explicit list)
    laid out on the mesh axes; a group is the devices that differ only along the listed
    axes (sub-axes ``'a':(pre)size`` split an axis ``[pre, size, rest]``)."""
    axes = [(name.strip(), int(size)) for name, size in _AXIS_RE.findall(m.group("axes"))]
    sizes = [size for _, size in axes]
    total = math.prod(sizes)
    ids_text = (m.group("ids") or "").strip()
    if not ids_text:
        ids = np.arange(total)
    else:
        tiled = re.fullmatch(r"\[([0-9,]+)\](?:T\(([0-9,]+)\))?", ids_text)
        if tiled:
            perm = _ints(tiled.group(2)) if tiled.group(2) else None
            ids = _iota(_ints(tiled.group(1)), perm).reshape(-1)
        else:
            ids = np.array(_ints(re.sub(r"[\[\]()]", "", ids_text)))
    # Split every axis into [pre, size, rest] pieces for the sub-axes the groups use.
    names = [name for name, _ in axes]
    pieces: dict[int, list[tuple[int, int]]] = {}
    grouped: list[tuple[int, int]] = []  # (axis index, pre size) in listed order
    for name, pre, size in _GROUP_AXIS_RE.findall(m.group("group")):
        name = name.strip()
        if not name:
            continue
        i = names.index(name)
        pre, size = (int(pre), int(size)) if size else (1, sizes[i])
        pieces.setdefault(i, []).append((pre, size))
        grouped.append((i, pre))
    dims, where = [], {}
    for i, full in enumerate(sizes):
        done = 1
        for pre, size in sorted(pieces.get(i, [])):
            if pre != done:
                dims.append(pre // done)
                done = pre
            where[(i, pre)] = len(dims)
            dims.append(size)
            done *= size
        if done != full or not pieces.get(i):
            dims.append(full // done)
    array = ids.reshape(dims)
    group_dims = [where[key] for key in grouped]
    rest = [x for x in range(len(dims)) if x not in group_dims]
    size = math.prod(dims[x] for x in group_dims)
    return array.transpose(rest + group_dims).reshape(-1, size)


def replica_groups(line: str, num_devices: int) -> np.ndarray:
    """The replica groups of one collective instruction, ``[groups, group size]``.

    Reads the three ways XLA prints them: explicit lists (``{{0,2},{1,3}}``; ``{}`` is one
    group of all ``num_devices``), iota lists (``[2,4]<=[4,2]T(1,0)``) and mesh axes
    (``mesh['axis_0'=4,'axis_1'=2][, device_ids=(...)] {'axis_0'}``). An instruction
    without replica groups (e.g. a collective-permute) is one group of all devices.
    """
    at = line.find("replica_groups=")
    if at < 0:
        return np.arange(num_devices)[None, :]
    text = line[at + len("replica_groups=") :]
    if text.startswith("mesh["):
        m = _MESH_RE.match(text)
        if m is None:
            raise ValueError(f"Cannot read the replica groups of: {line.strip()[:200]}")
        return _mesh_groups(m)
    m = _IOTA_RE.match(text)
    if m:
        shape = _ints(m.group(1))
        perm = _ints(m.group(3)) if m.group(3) else None
        return _iota(_ints(m.group(2)), perm).reshape(shape)
    m = re.match(r"\{((?:\{[0-9,]*\},?)*)\}", text)
    if m is None:
        raise ValueError(f"Cannot read the replica groups of: {line.strip()[:200]}")
    groups = [_ints(g) for g in re.findall(r"\{([0-9,]*)\}", m.group(1))]
    if not groups or not groups[0]:
        return np.arange(num_devices)[None, :]
    if len({len(g) for g in groups}) != 1:
        raise ValueError(f"Replica groups of unequal sizes: {line.strip()[:200]}")
    return np.array(groups)


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
    """One collective of a compiled HLO module and its cost.

    Attributes:
      op: ``all-reduce``, ``reduce-scatter``, ``all-gather``, ``all-to-all`` or
        ``collective-permute``.
      operand_bytes: bytes of its operand(s) on one device.
      result_bytes: bytes of its result(s) on one device.
      group_size: ``n``, devices per replica group.
      device_bytes: bytes each device sends under ring algorithms, indexed by device id: a
        member of a replica group sends all-reduce ``2(n-1)/n S``, reduce-scatter
        ``(n-1)/n S_in``, all-gather ``(n-1)/n S_out``, all-to-all ``(n-1)/n S``; each
        source of a collective-permute sends ``S``.
    """

    op: str
    operand_bytes: int
    result_bytes: int
    group_size: int
    device_bytes: tuple[float, ...]

    @property
    def ring_bytes(self) -> float:
        """Bytes one device sends, averaged over the devices."""
        return float(np.mean(self.device_bytes))

    @property
    def max_ring_bytes(self) -> float:
        """Bytes the busiest device sends in this op."""
        return float(np.max(self.device_bytes))


def _permute_sources(line: str) -> list[int]:
    pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
    if pairs is None:
        return []
    return [int(src) for src, _ in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))]


def hlo_collective_traffic(hlo_text: str, num_devices: int) -> list[CollectiveOp]:
    """Lists the collectives of an HLO module (e.g. ``jit(f).lower(...).compile()
    .as_text()``) with their bytes, the measure used to compare M3 layouts.

    Asynchronous pairs (``*-start``/``*-done``) are counted once, from the start. Compiled
    HLO names operands without their shapes, so operand sizes are derived from the result
    and the op (reduce-scatter: ``n`` times the result, all-gather: ``1/n``, others: equal).
    Replica groups are read in all of XLA's notations (:func:`replica_groups`), so ops over
    one axis of a multi-axis mesh get their true group size. Collectives inside loops are
    counted once per appearance in the text, not per iteration.

    Args:
      hlo_text: the text of a compiled (SPMD-partitioned, per-device) HLO module.
      num_devices: devices of the program (one group of all of them when an op lists no
        groups).

    Returns:
      One :class:`CollectiveOp` per collective instruction.
    """
    ops = []
    for line in hlo_text.splitlines():
        m = _OP_RE.search(line)
        if not m:
            continue
        op = m.group("op")
        result = _shape_bytes(m.group("result"))
        if m.group("start") and op in ("all-gather", "collective-permute"):
            # These async starts return (operand(s), result(s)[, u32[] contexts]).
            shapes = [x for x in _SHAPE_RE.findall(m.group("result")) if x[1]]
            result = _shape_bytes(" ".join(f"{t}[{d}]" for t, d in shapes[len(shapes) // 2 :]))
        sent = np.zeros(num_devices)
        if op == "collective-permute":
            n = 2
            operand = result
            for src in _permute_sources(line):
                sent = _grow(sent, src)
                sent[src] += operand
        else:
            groups = replica_groups(line, num_devices)
            n = groups.shape[1]
            # Compiled HLO names operands without their shapes; derive them from the result.
            operand = {"reduce-scatter": result * n, "all-gather": result // n}.get(op, result)
            frac = (n - 1) / n
            per_member = {
                "all-reduce": 2 * frac * operand,
                "reduce-scatter": frac * operand,
                "all-to-all": frac * operand,
                "all-gather": frac * result,
            }[op]
            sent = _grow(sent, int(groups.max()))
            sent[groups.reshape(-1)] += per_member
        ops.append(CollectiveOp(op, operand, result, n, tuple(float(x) for x in sent)))
    return ops


def _grow(vec: np.ndarray, index: int) -> np.ndarray:
    """``vec`` padded with zeros to hold ``index`` (device ids beyond ``num_devices``)."""
    return vec if index < len(vec) else np.pad(vec, (0, index + 1 - len(vec)))


def summarize_traffic(ops: Sequence[CollectiveOp]) -> dict[str, float]:
    """Totals of :func:`hlo_collective_traffic`: op count, operand+result bytes, ring bytes
    per device: the average over devices and the busiest device's total."""
    size = max((len(o.device_bytes) for o in ops), default=1)
    per_device = np.zeros(size)
    for o in ops:
        per_device[: len(o.device_bytes)] += o.device_bytes
    return {
        "num_ops": len(ops),
        "hlo_bytes": float(sum(o.operand_bytes + o.result_bytes for o in ops)),
        "ring_bytes": float(sum(o.ring_bytes for o in ops)),
        "max_ring_bytes": float(per_device.max()) if ops else 0.0,
    }
