"""Splitting global batches and evaluation sets between processes (hosts)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple


class Hosts(NamedTuple):
    """This process's index and the process count."""

    index: int
    count: int


def resolve_hosts(process_index: int | None, process_count: int | None) -> Hosts:
    """``(process_index, process_count)``, defaulting to ``jax.process_index()/count()``."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not (isinstance(process_count, int) and process_count >= 1):
        raise ValueError(f"process_count must be a positive int, got {process_count!r}.")
    if not (isinstance(process_index, int) and 0 <= process_index < process_count):
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}.")
    return Hosts(process_index, process_count)


def per_host_batch_size(global_batch_size: int, hosts: Hosts) -> int:
    """``global_batch_size / process_count``; raises unless it divides evenly."""
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise ValueError(f"global_batch_size must be an int, got {global_batch_size!r}.")
    if global_batch_size < 1 or global_batch_size % hosts.count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the "
            f"process count {hosts.count}."
        )
    return global_batch_size // hosts.count


def host_rows(num_examples: int, hosts: Hosts) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of an ``num_examples``-row set owned by this host.

    Every host owns ``ceil(n / count)`` rows except the last ones, which own the rest.
    """
    share = math.ceil(num_examples / hosts.count)
    start = min(hosts.index * share, num_examples)
    return start, min(start + share, num_examples)


def num_eval_batches(num_examples: int, hosts: Hosts, batch_size: int) -> int:
    """Batches every host yields for an exact evaluation of ``num_examples`` examples."""
    return math.ceil(math.ceil(num_examples / hosts.count) / batch_size)


class EvalSet:
    """A re-iterable evaluation set of padded per-host batches.

    Iterating (or calling) yields ``len(self)`` dicts with ``image``, ``label``,
    ``true_label``, ``id`` (-1 for padding) and ``mask`` (``True`` for real examples). Every
    host yields the same number of batches; over all hosts every example of the set appears
    exactly once with ``mask = True``.

    Attributes:
      name: the set's name (``pristine``, ``corrupt``, ``train_sample``, ``test``, ``train``).
      num_examples: real examples over all hosts (the sum of all masks); None where it is
        only known after reading (streaming path, ``eval_subset_size=-1`` on the pristine or
        corrupt subset).
      num_batches: batches per host (also ``len(self)``).
    """

    def __init__(
        self,
        name: str,
        make_iterator: Callable[[], Iterator[dict]],
        *,
        num_examples: int | None,
        num_batches: int,
    ):
        self.name = name
        self._make_iterator = make_iterator
        self.num_examples = num_examples
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[dict]:
        return iter(self._make_iterator())

    def __call__(self) -> Iterator[dict]:
        return iter(self)

    def __len__(self) -> int:
        return self.num_batches

    def __repr__(self) -> str:
        return (
            f"EvalSet(name={self.name!r}, num_examples={self.num_examples}, "
            f"num_batches={self.num_batches})"
        )
