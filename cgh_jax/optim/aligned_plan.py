"""Static bookkeeping of the ``group_aligned`` M3 layout: which device computes which examples.

The layout (:mod:`cgh_jax.optim.aligned`) needs every device to compute gradients of one
group only: a device holding examples of two groups must send two partial gradients, and
with collectives of equal size on every device that costs the busiest device half an
all-reduce more than SGD (the ``group_sharded`` layout's 1.5x). With ``k`` groups of
``g = B/k`` examples on ``D`` devices and ``k`` not dividing ``D`` this is only possible if
some devices compute more examples than others: group ``j`` gets ``n_j`` whole devices
(``floor(D/k)`` or ``ceil(D/k)``), each computing about ``g / n_j`` examples. The examples
move to the devices that compute them (a few example *inputs*, far fewer bytes than a
gradient), and every device runs the same program over ``c`` slots of ``s`` examples, its
unused slots weighted 0. The price is compute: every device evaluates ``c s`` examples
where an even split needs ``b = B/D``; at least ``D / (k floor(D/k))`` times as many
(4/3 at 8 devices, 16/15 at 16, 1.004 at 256) and more when slots are coarse.

Everything here is plain numpy on Python ints, fixed at trace time.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["AlignedPlan", "aligned_plan", "best_slot_size", "chunk_size_for"]


@dataclasses.dataclass(frozen=True)
class AlignedPlan:
    """Where every example of a batch is computed under the ``group_aligned`` layout.

    A device's ``b`` local examples are ``u = b/s`` local slots of ``s`` examples (local
    slot ``i`` of device ``e`` holds global examples ``e b + i s, ..., e b + i s + s - 1``).
    Each device computes ``slots_per_device`` (``c``) slots: its own first local slots,
    then slots received from other devices, then unused slots (weight 0). Examples move in
    rounds; in round ``r`` device ``src`` sends ``round_sizes[r]`` of its local slots to one
    device ``dst`` (one ``jax.lax.ppermute``).

    Attributes:
      num_devices, num_groups, slot_size: ``D``, ``k``, ``s``.
      local_slots: ``u``, local slots per device.
      slots_per_group: ``G = B / (k s)``.
      slots_per_device: ``c``, slots each device computes (real or not).
      device_group: ``[D]`` the group each device computes.
      real_slots: ``[D]`` the number of real slots of each device (the first ones).
      rounds: per round, the ``(src, dst)`` pairs.
      round_sizes: per round, slots sent per pair.
      send_index: per round, ``[D, round_sizes[r]]`` local slot indices each device sends
        (0 where it sends nothing or less).
      slot_source: ``[D, c]`` index of each computed slot in the device's pool: its ``u``
        local slots followed by the slots received in each round, in order (0 for unused
        slots).
      slot_examples: ``[D, c]`` the global index of the first example of each computed
        slot (-1 for unused slots).
    """

    num_devices: int
    num_groups: int
    slot_size: int
    local_slots: int
    slots_per_group: int
    slots_per_device: int
    device_group: np.ndarray
    real_slots: np.ndarray
    rounds: tuple[tuple[tuple[int, int], ...], ...]
    round_sizes: tuple[int, ...]
    send_index: tuple[np.ndarray, ...]
    slot_source: np.ndarray
    slot_examples: np.ndarray

    @property
    def slot_weight(self) -> np.ndarray:
        """``[D, c]`` 1.0 for real slots, 0.0 for unused ones."""
        c = self.slots_per_device
        return (np.arange(c)[None, :] < self.real_slots[:, None]).astype(np.float32)

    @property
    def compute_ratio(self) -> float:
        """Examples each device evaluates over the ``b`` of an even split: ``c s / b``."""
        return self.slots_per_device / self.local_slots

    def group_examples(self) -> np.ndarray:
        """``[k, g]`` global example indices of each group, in slot order (devices in
        order, then their slots)."""
        groups: list[list[int]] = [[] for _ in range(self.num_groups)]
        for d in range(self.num_devices):
            for t in range(int(self.real_slots[d])):
                first = int(self.slot_examples[d, t])
                groups[int(self.device_group[d])].extend(range(first, first + self.slot_size))
        return np.array(groups, dtype=np.int64)


def _group_sizes(num_devices: int, num_groups: int) -> list[int]:
    """Devices per group: the first ``D mod k`` groups get one more."""
    q, r = divmod(num_devices, num_groups)
    return [q + (1 if j < r else 0) for j in range(num_groups)]


def aligned_plan(batch_size: int, num_devices: int, num_groups: int, slot_size: int) -> AlignedPlan:
    """The :class:`AlignedPlan` of a global batch of ``batch_size`` examples.

    Groups own contiguous runs of devices (:func:`_group_sizes`); a group's ``G`` slots are
    spread as evenly as possible over its devices, the first devices of a group taking one
    more. Devices with fewer real slots than local ones send their surplus local slots, in
    device order, to devices with more; the transfers are packed into rounds in which every
    device sends to at most one device and receives from at most one.

    Raises:
      ValueError: fewer devices than groups, or a batch that does not split into whole
        slots on every device and in every group.
    """
    d, k, s = num_devices, num_groups, slot_size
    if d < k:
        raise ValueError(
            f"layout='group_aligned' needs at least as many devices as groups, got {k} groups "
            f"on {d} devices. Use layout='reduce_scatter' (or 'auto')."
        )
    if s < 1 or batch_size % (d * s) or batch_size % (k * s):
        raise ValueError(
            f"layout='group_aligned' with chunk_size={s}: the batch of {batch_size} examples "
            f"must split into chunks of {s} on each of the {d} devices and in each of the {k} "
            f"groups (a multiple of {math.lcm(d * s, k * s)}). Change the batch size or "
            "chunk_size."
        )
    u = batch_size // (d * s)
    big_g = batch_size // (k * s)
    sizes = _group_sizes(d, k)
    device_group = np.repeat(np.arange(k), sizes).astype(np.int32)
    real = np.zeros(d, np.int64)
    start = 0
    for n in sizes:
        base, extra = divmod(big_g, n)
        real[start : start + n] = base + (np.arange(n) < extra)
        start += n
    c = int(real.max())

    # Surplus local slots (device, local index) and the devices that need them.
    surplus = [(e, i) for e in range(d) for i in range(int(min(real[e], u)), u)]
    needs = [e for e in range(d) for _ in range(int(max(real[e] - u, 0)))]
    assert len(surplus) == len(needs)
    transfers: dict[tuple[int, int], list[int]] = {}
    for (src, i), dst in zip(surplus, needs, strict=True):
        transfers.setdefault((src, dst), []).append(i)

    # Pack the transfers into rounds (a partial permutation each).
    rounds: list[list[tuple[int, int]]] = []
    for pair in sorted(transfers, key=lambda p: -len(transfers[p])):
        for r in rounds:
            if all(pair[0] != a and pair[1] != b for a, b in r):
                r.append(pair)
                break
        else:
            rounds.append([pair])
    round_sizes = tuple(max(len(transfers[p]) for p in r) for r in rounds)

    send_index, slot_source = [], np.zeros((d, c), np.int32)
    slot_examples = np.full((d, c), -1, np.int64)
    b = u * s
    for e in range(d):
        mine = int(min(real[e], u))
        slot_source[e, :mine] = np.arange(mine)
        slot_examples[e, :mine] = e * b + np.arange(mine) * s
    filled = np.minimum(real, u).astype(np.int64)
    offset = u
    for r, size in zip(rounds, round_sizes, strict=True):
        index = np.zeros((d, size), np.int32)
        for src, dst in sorted(r):
            sent = transfers[(src, dst)]
            index[src, : len(sent)] = sent
            for pos, i in enumerate(sent):
                slot_source[dst, filled[dst]] = offset + pos
                slot_examples[dst, filled[dst]] = src * b + i * s
                filled[dst] += 1
        send_index.append(index)
        offset += size
    assert np.array_equal(filled, real)
    return AlignedPlan(
        num_devices=d,
        num_groups=k,
        slot_size=s,
        local_slots=u,
        slots_per_group=big_g,
        slots_per_device=c,
        device_group=device_group,
        real_slots=real.astype(np.int32),
        rounds=tuple(tuple(sorted(r)) for r in rounds),
        round_sizes=round_sizes,
        send_index=tuple(send_index),
        slot_source=slot_source,
        slot_examples=slot_examples,
    )


def best_slot_size(batch_size: int, num_devices: int, num_groups: int, largest: int) -> int:
    """The slot size up to ``largest`` that makes each device compute the fewest examples.

    For a model whose loss does not couple the examples of a batch (no BatchNorm) the slot
    size changes nothing but the padding: smaller slots pack the groups more tightly. Among
    the sizes that split the batch, this returns the one with the smallest ``c s`` (ties:
    the largest size, fewer and bigger loss calls).
    """
    best = None
    for s in range(1, largest + 1):
        if batch_size % (num_devices * s) or batch_size % (num_groups * s):
            continue
        plan = aligned_plan(batch_size, num_devices, num_groups, s)
        key = (plan.slots_per_device * s, -s)
        if best is None or key < best[0]:
            best = (key, s)
    if best is None:
        raise ValueError(
            f"No chunk size splits a batch of {batch_size} over {num_devices} devices and "
            f"{num_groups} groups; the batch must be a multiple of both."
        )
    return best[1]


def chunk_size_for(
    batch_size: int, num_devices: int, num_groups: int, *, independent_examples: bool
) -> int:
    """The slot size the trainer gives the ``group_aligned`` layout.

    ``B / (D k)``, the chunks of the other sharded layouts, when the loss couples the
    examples of a chunk (BatchNorm normalizes over it) or the slots are unrolled in a loop;
    otherwise the slot size with the fewest examples per device (:func:`best_slot_size`),
    which then changes nothing but the padding.
    """
    chunk = max(batch_size // (num_devices * num_groups), 1)
    if not independent_examples:
        return chunk
    return best_slot_size(batch_size, num_devices, num_groups, chunk)
