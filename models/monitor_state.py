"""The monitor's windowed state, kept exactly once over an at-least-once consumer (pure).

Faust delivers each record at least once: after a crash, records since the last committed offset
come again, and the table's changelog may already hold their effect. So every table value records
the input offset it reflects, and a record changes a key only when its offset is past that one.
Keys start with the input partition (``"<p>|..."``, :class:`storeml.connectors.faust_broker.
PartitionTable`), so all state derived from partition ``p`` lives in changelog partition ``p``,
whose writes Kafka keeps in order. A batch of partition ``p`` writes its keys in one fixed order
(accumulators, then entities, then the clock), each with the batch's last offset; a changelog that
ends anywhere in that sequence therefore holds, for every key, either all or none of the batch, and
replaying the batch finishes exactly the keys that miss it.

Keys and values (JSON lists; ``off`` is the offset of the last record applied):

* ``p|clock``                     ``[off, watermark_ms | None, events, late]`` (per partition)
* ``p|w|store``                   ``[off, last_event_ms, {"<window>|<version>": counts}]`` drift
  histograms: one flat vector per window and monitor version (:class:`~storeml.models.monitor.
  Monitor`)
* ``p|c|store|customer``          ``[off, pending]``: the customer's last served propensity
* ``p|q|store``                   ``[off, {"<window>|<role>|<version>": BinaryCounts}]``
* ``p|u|store|product``           ``[off, [top5, version, shadow_top5, shadow_version]]``
* ``p|k|store``                   ``[off, {"<window>|<role>|<version>": TopKCounts}]``

Lateness is decided per partition and only from the partition's own records: a record is late when
its window ended ``grace`` before the partition's watermark (the highest event time it delivered
before that record). That is a function of the log, so a restarted monitor decides the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Clock",
    "Record",
    "PartitionBatch",
    "window_start",
    "drift_key",
    "parse_key",
    "iter_kind",
    "drop_windows",
]

Table = MutableMapping[str, Any]


def window_start(t_ms: int, window_ms: int) -> int:
    """Start (epoch ms) of the tumbling window holding ``t_ms``."""
    return int(t_ms) - int(t_ms) % int(window_ms)


def drift_key(partition: int, store_id: str) -> str:
    return f"{partition}|w|{store_id}"


def parse_key(key: str) -> tuple[int, str, list[str]]:
    """``(partition, kind, rest)`` of a state key."""
    head, kind, *rest = key.split("|")
    return int(head), kind, rest


def iter_kind(table: Table, kind: str) -> Iterator[tuple[int, list[str], Any]]:
    """``(partition, rest, value)`` of every key of ``kind`` (``"w"``, ``"q"``...)."""
    for key, value in list(table.items()):
        parts = key.split("|")
        if len(parts) > 1 and parts[1] == kind and value is not None:
            yield int(parts[0]), parts[2:], value


@dataclass
class Clock:
    """A partition's progress: last offset applied, watermark, records seen and late ones."""

    offset: int = -1
    watermark: int | None = None
    events: int = 0
    late: int = 0

    @classmethod
    def from_value(cls, value: Any) -> Clock:
        if not value:
            return cls()
        return cls(int(value[0]), None if value[1] is None else int(value[1]), *map(int, value[2:]))

    def to_value(self) -> list[Any]:
        return [self.offset, self.watermark, self.events, self.late]


@dataclass(frozen=True)
class Record:
    """One decoded input record with its position."""

    offset: int
    event_time: int
    store_id: str
    value: dict[str, Any]


@dataclass
class PartitionBatch:
    """The changes one batch of one partition makes, applied to ``table`` by :meth:`commit`.

    Use: ``batch = PartitionBatch(table, p, window_ms, grace_ms)``; for each record in offset order
    ``if batch.admit(record): ...`` then the ``add_*`` / ``set_entity`` calls; finally
    :meth:`commit`. ``admit`` advances the watermark and says whether the record is new and on time.
    """

    table: Table
    partition: int
    window_ms: int
    grace_ms: int
    clock_name: str = "clock"
    clock: Clock = field(init=False)
    last_offset: int = field(init=False, default=-1)
    _acc: dict[str, Any] = field(init=False, default_factory=dict)
    _entities: dict[str, Any] = field(init=False, default_factory=dict)
    _deleted: set[str] = field(init=False, default_factory=set)
    _closed_before: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.clock = Clock.from_value(self.table.get(f"{self.partition}|{self.clock_name}"))
        self._start_offset = self.clock.offset

    # --- records ---------------------------------------------------------------------------
    def admit(self, record: Record, closed_before: int | None = None) -> bool:
        """Whether ``record`` changes state: not yet applied, and its window still open.

        ``closed_before``: windows starting before it were evaluated already (never reopened).
        """
        if record.offset <= self._start_offset:
            return False  # a replay the clock (and so every key) already holds
        self.last_offset = max(self.last_offset, record.offset)
        self.clock.offset = record.offset
        self.clock.events += 1
        wm = self.clock.watermark
        start = window_start(record.event_time, self.window_ms)
        late = wm is not None and start + self.window_ms + self.grace_ms <= wm
        if closed_before is not None and start < closed_before:
            late = True
        if wm is None or record.event_time > wm:
            self.clock.watermark = record.event_time
        if late:
            self.clock.late += 1
        return not late

    def _current(self, key: str) -> Any:
        if key in self._acc:
            return self._acc[key]
        if key in self._entities:
            return self._entities[key]
        if key in self._deleted:
            return None
        return self.table.get(key)

    def _fresh(self, key: str, offset: int) -> bool:
        """Whether record ``offset`` is past what key ``key`` holds (else a replay for it)."""
        value = self.table.get(key)
        return value is None or offset > int(value[0])

    # --- accumulators ------------------------------------------------------------------------
    def add_counts(
        self, kind: str, store_id: str, slot: str, counts: np.ndarray, offset: int, *, t: int
    ) -> None:
        """Add ``counts`` to accumulator ``p|kind|store`` under ``slot`` (e.g. ``"<w>|<ver>"``)."""
        arr = np.asarray(counts)

        def add(old: Any | None) -> Any:
            return (
                arr.tolist() if old is None else (np.asarray(old, dtype=arr.dtype) + arr).tolist()
            )

        self.merge_into(kind, store_id, slot, offset, add, t=t)

    def merge_into(
        self,
        kind: str,
        store_id: str,
        slot: str,
        offset: int,
        merge: Callable[[Any | None], Any],
        *,
        t: int,
    ) -> None:
        """Replace slot ``slot`` of accumulator ``p|kind|store`` by ``merge(old)``."""
        key = f"{self.partition}|{kind}|{store_id}"
        if not self._fresh(key, offset):
            return
        value = self._current(key)
        if value is None:
            value = [offset, t, {}]
        elif key not in self._acc:
            value = [value[0], value[1], dict(value[2])]
        value[2][slot] = merge(value[2].get(slot))
        value[1] = max(int(value[1]), int(t))
        self._acc[key] = value

    # --- entities ------------------------------------------------------------------------------
    def entity(self, kind: str, *ids: str) -> tuple[str, Any]:
        """``(key, payload or None)`` of entity ``p|kind|ids...`` as this batch sees it."""
        key = "|".join((str(self.partition), kind, *ids))
        value = self._current(key)
        return key, None if value is None else value[1]

    def fresh(self, key: str, offset: int) -> bool:
        """Whether record ``offset`` is past what ``key`` holds in the table (a new record for it)."""
        return self._fresh(key, offset)

    def set_entity(self, key: str, payload: Any, offset: int) -> None:
        if self._fresh(key, offset):
            self._deleted.discard(key)
            self._entities[key] = [offset, payload]

    def delete_entity(self, key: str, offset: int) -> None:
        if self._fresh(key, offset) or key in self._entities:
            self._entities.pop(key, None)
            self._deleted.add(key)

    # --- commit ---------------------------------------------------------------------------------
    def commit(self) -> int:
        """Write the batch: accumulators, entities, deletions, then the clock; returns the writes."""
        if self.last_offset < 0:
            return 0
        off = self.last_offset
        writes = 0
        for key, value in self._acc.items():
            value[0] = off
            self.table[key] = value
            writes += 1
        for key, value in self._entities.items():
            value[0] = off
            self.table[key] = value
            writes += 1
        for key in self._deleted:
            if key in self.table:
                del self.table[key]
                writes += 1
        self.table[f"{self.partition}|{self.clock_name}"] = self.clock.to_value()
        return writes + 1


def drop_windows(table: Table, kind: str, before: int, keys: Iterable[str] | None = None) -> int:
    """Remove slots of windows starting before ``before`` from accumulators of ``kind``."""
    dropped = 0
    for key in list(keys if keys is not None else table.keys()):
        parts = key.split("|")
        if len(parts) < 3 or parts[1] != kind:
            continue
        value = table.get(key)
        if not value:
            continue
        slots = value[2]
        keep = {s: c for s, c in slots.items() if int(s.split("|", 1)[0]) >= before}
        if len(keep) != len(slots):
            table[key] = [value[0], value[1], keep]
            dropped += len(slots) - len(keep)
    return dropped
