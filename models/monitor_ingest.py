"""What the monitor does with one batch of one input partition (pure; tables are mappings).

Each function takes the partition's records in offset order, decides with
:class:`~storeml.models.monitor_state.PartitionBatch` which are new and on time, and adds them to
the windowed state: drift histograms for every monitor kind, and for the enriched topics the
delayed-label join (``models/label_join.py``) feeding the performance counts. The Faust agents in
``streams/monitor_app.py`` only decode, call these and let the table write its changelog.

Outcomes are counted in the window of the time they became known: a confirmed propensity in the
window of the profile that confirmed it, a refuted one in the window where its horizon ran out, a
product's top-5 in the window of the record that brought its category.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from storeml.models.label_join import Pending, expire, on_profile, product_outcome
from storeml.models.monitor_state import PartitionBatch, Record, Table, window_start
from storeml.models.performance import BinaryCounts, TopKCounts

__all__ = ["IngestConfig", "ingest_drift", "ingest_customers", "ingest_products", "ExpiryIndex"]

#: Looks up the monitor of (version) for a kind; None when it is not (yet) loaded.
MonitorFor = Callable[[str | None], Any | None]


@dataclass(frozen=True)
class IngestConfig:
    window_ms: int
    grace_ms: int
    horizon_ms: int


@dataclass
class ExpiryIndex:
    """Pending predictions by expiry time, per partition (memory only; rebuilt from the table)."""

    heaps: dict[int, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))

    def push(self, partition: int, expires_at: int, key: str) -> None:
        heapq.heappush(self.heaps[partition], (expires_at, key))

    def due(self, partition: int, watermark: int) -> list[tuple[int, str]]:
        heap = self.heaps[partition]
        out = []
        while heap and heap[0][0] < watermark:
            out.append(heapq.heappop(heap))
        return out

    def rebuild(self, table: Table, horizon_ms: int) -> None:
        self.heaps.clear()
        for key, value in list(table.items()):
            parts = key.split("|")
            if len(parts) == 4 and parts[1] == "c" and value:
                pending = Pending.from_list(value[1])
                self.push(int(parts[0]), pending.event_time + horizon_ms, key)


def _admit(
    batch: PartitionBatch, records: Sequence[Record], closed_before: int | None
) -> list[Record]:
    return [r for r in records if batch.admit(r, closed_before)]


def _add_drift(
    batch: PartitionBatch,
    records: Sequence[Record],
    rows: pd.DataFrame,
    versions: Sequence[str | None],
    monitor_for: MonitorFor,
    window_ms: int,
) -> int:
    """Histogram ``rows`` (one per record) into ``p|w|store`` by window and monitor version."""
    if not records:
        return 0
    added = 0
    groups: dict[tuple[int, str | None], list[int]] = defaultdict(list)
    for i, (record, version) in enumerate(zip(records, versions, strict=True)):
        key = f"{batch.partition}|w|{record.store_id}"
        if batch.fresh(key, record.offset):
            groups[(window_start(record.event_time, window_ms), version)].append(i)
    for (ws, version), idx in groups.items():
        monitor = monitor_for(version)
        if monitor is None:
            continue
        sub = rows.iloc[idx]
        stores, counts = monitor.counts(sub)
        last_t: dict[str, int] = {}
        last_off: dict[str, int] = {}
        for i in idx:
            r = records[i]
            last_t[r.store_id] = max(last_t.get(r.store_id, r.event_time), r.event_time)
            last_off[r.store_id] = max(last_off.get(r.store_id, r.offset), r.offset)
        for store, vector in zip(stores, counts, strict=True):
            batch.add_counts(
                "w",
                str(store),
                f"{ws}|{monitor.version}",
                vector,
                last_off[str(store)],
                t=last_t[str(store)],
            )
        added += len(idx)
    return added


def ingest_drift(
    table: Table,
    partition: int,
    records: Sequence[Record],
    to_rows: Callable[[list[dict[str, Any]]], pd.DataFrame],
    monitor_for: MonitorFor,
    version_of: Callable[[dict[str, Any]], str | None],
    config: IngestConfig,
    closed_before: int | None = None,
) -> int:
    """Drift histograms of an input topic (orders); returns the records counted.

    ``to_rows`` may give no row for a record (an order without lines, which the input topic can
    hold: validation happens downstream); such records are left out, not misaligned.
    """
    batch = PartitionBatch(table, partition, config.window_ms, config.grace_ms)
    admitted = _admit(batch, records, closed_before)
    rows = to_rows([r.value for r in admitted]) if admitted else pd.DataFrame()
    if len(rows) != len(admitted):
        admitted = [r for r in admitted if len(to_rows([r.value]))]
        rows = to_rows([r.value for r in admitted]) if admitted else pd.DataFrame()
    added = _add_drift(
        batch,
        admitted,
        rows,
        [version_of(r.value) for r in admitted],
        monitor_for,
        config.window_ms,
    )
    batch.commit()
    return added


def _version(value: dict[str, Any]) -> str | None:
    model = value.get("model") or {}
    return model.get("version")


def _shadow(value: dict[str, Any]) -> dict[str, Any] | None:
    return value.get("shadow")


def _binary_merge(score: float, label: int) -> Callable[[Any | None], Any]:
    def merge(old: Any | None) -> Any:
        counts = BinaryCounts() if old is None else BinaryCounts.from_list(old)
        counts.add(np.array([score], dtype=float), np.array([label], dtype=np.int64))
        return counts.to_list()

    return merge


def _count_outcome(
    batch: PartitionBatch,
    store: str,
    outcome: Any,
    offset: int,
    ws: int,
    t: int,
    closed_before: int | None = None,
) -> None:
    if closed_before is not None and ws < closed_before:
        return  # its window was evaluated already (an idle partition's late refutation)
    if outcome.score is not None and outcome.version is not None:
        batch.merge_into(
            "q",
            store,
            f"{ws}|champion|{outcome.version}",
            offset,
            _binary_merge(outcome.score, outcome.label),
            t=t,
        )
    if outcome.shadow_score is not None and outcome.shadow_version is not None:
        batch.merge_into(
            "q",
            store,
            f"{ws}|challenger|{outcome.shadow_version}",
            offset,
            _binary_merge(outcome.shadow_score, outcome.label),
            t=t,
        )


def _expire_due(
    batch: PartitionBatch,
    expiry: ExpiryIndex,
    watermark: int,
    offset: int,
    config: IngestConfig,
    closed_before: int | None,
) -> None:
    """Refute the predictions whose horizon ``watermark`` (the partition's, less the grace)
    passed with record ``offset``."""
    for expires_at, key in expiry.due(batch.partition, watermark):
        _, payload = batch.entity("c", *key.split("|")[2:])
        if payload is None:
            continue
        pending = Pending.from_list(payload)
        if pending.event_time + config.horizon_ms != expires_at:
            continue  # superseded by a newer prediction with its own entry
        outcome = expire(pending, watermark, config.horizon_ms)
        if outcome is None:
            continue
        store = key.split("|")[2]
        ws = window_start(expires_at, config.window_ms)
        _count_outcome(batch, store, outcome, offset, ws, expires_at, closed_before)
        batch.delete_entity(key, offset)


def ingest_customers(
    table: Table,
    partition: int,
    records: Sequence[Record],
    to_rows: Callable[[list[dict[str, Any]]], pd.DataFrame],
    monitor_for: MonitorFor,
    config: IngestConfig,
    expiry: ExpiryIndex,
    closed_before: int | None = None,
) -> int:
    """Enriched customer profiles: score/feature drift and the propensity label join.

    Records are joined one at a time, each followed by the refutations its watermark makes due,
    which count with that record's offset. So the labels, and which offsets guard them on a
    replay, are the same whatever the batch boundaries (a refutation counted with the batch's
    last offset would be counted again by a replay whose batch ends later).
    """
    batch = PartitionBatch(table, partition, config.window_ms, config.grace_ms)
    start = batch.clock.offset
    steps: list[tuple[Record, bool, int | None]] = []  # past the clock: (record, on time, wm)
    for r in records:
        on_time = batch.admit(r, closed_before)
        if r.offset > start:
            steps.append((r, on_time, batch.clock.watermark))
    admitted = [r for r, on_time, _ in steps if on_time]
    rows = to_rows([r.value for r in admitted]) if admitted else pd.DataFrame()
    added = _add_drift(
        batch, admitted, rows, [_version(r.value) for r in admitted], monitor_for, config.window_ms
    )
    for r, on_time, wm in steps:
        value = r.value
        key, payload = batch.entity("c", r.store_id, value["customer_id"])
        if on_time and batch.fresh(key, r.offset):
            pending = None if payload is None else Pending.from_list(payload)
            outcomes, new = on_profile(pending, value, config.horizon_ms)
            for outcome in outcomes:
                t = outcome_time(outcome, value, config.horizon_ms)
                ws = window_start(t, config.window_ms)
                _count_outcome(batch, r.store_id, outcome, r.offset, ws, t, closed_before)
            if new is not None:
                batch.set_entity(key, new.to_list(), r.offset)
                expiry.push(partition, new.event_time + config.horizon_ms, key)
        if wm is not None:
            # a profile up to `grace` late may still confirm: refute only past horizon + grace
            _expire_due(batch, expiry, wm - config.grace_ms, r.offset, config, closed_before)
    batch.commit()
    return added


def outcome_time(outcome: Any, profile: dict[str, Any], horizon_ms: int) -> int:
    """When an outcome became known: the profile that confirmed it, or the end of the horizon.

    A confirmation counts at the confirming profile's event time (not its order's, which a
    micro-batch may date earlier, into a window that already closed).
    """
    if outcome.label == 1:
        return int(profile["last_event_time"])
    return int(outcome.event_time) + horizon_ms


def _topk_merge(predicted: list[str], actual: str) -> Callable[[Any | None], Any]:
    def merge(old: Any | None) -> Any:
        counts = TopKCounts() if old is None else TopKCounts.from_list(old)
        counts.add([predicted], [actual])
        return counts.to_list()

    return merge


def _names(predictions: list[dict[str, Any]] | None) -> list[str]:
    ordered = sorted(predictions or [], key=lambda p: p.get("rank", 0))
    return [p["category"] for p in ordered]


def ingest_products(
    table: Table,
    partition: int,
    records: Sequence[Record],
    to_rows: Callable[[list[dict[str, Any]]], pd.DataFrame],
    monitor_for: MonitorFor,
    config: IngestConfig,
    closed_before: int | None = None,
) -> int:
    """Enriched product profiles: prediction drift and the hit@1/hit@5 check."""
    batch = PartitionBatch(table, partition, config.window_ms, config.grace_ms)
    admitted = _admit(batch, records, closed_before)
    predicted = [
        r
        for r in admitted
        if r.value.get("category") is None and r.value.get("predicted_categories")
    ]
    rows = to_rows([r.value for r in predicted]) if predicted else pd.DataFrame()
    added = _add_drift(
        batch,
        predicted,
        rows,
        [_version(r.value) for r in predicted],
        monitor_for,
        config.window_ms,
    )
    for r in admitted:
        value = r.value
        key, payload = batch.entity("u", r.store_id, value["product_id"])
        if not batch.fresh(key, r.offset):
            continue
        if value.get("category") is None:
            if value.get("predicted_categories"):
                shadow = _shadow(value)
                batch.set_entity(
                    key,
                    [
                        _names(value["predicted_categories"]),
                        _version(value),
                        None if shadow is None else _names(shadow.get("predicted_categories")),
                        None if shadow is None else (shadow.get("model") or {}).get("version"),
                    ],
                    r.offset,
                )
            continue
        if payload is None:
            continue
        top5, version, shadow_top5, shadow_version = payload
        ws = window_start(r.event_time, config.window_ms)
        checked = product_outcome(
            [{"category": c, "rank": i} for i, c in enumerate(top5)], value["category"]
        )
        if checked is not None and version is not None:
            batch.merge_into(
                "k",
                r.store_id,
                f"{ws}|champion|{version}",
                r.offset,
                _topk_merge(*checked),
                t=r.event_time,
            )
        if shadow_top5 and shadow_version is not None:
            shadow_checked = product_outcome(
                [{"category": c, "rank": i} for i, c in enumerate(shadow_top5)], value["category"]
            )
            if shadow_checked is not None:
                batch.merge_into(
                    "k",
                    r.store_id,
                    f"{ws}|challenger|{shadow_version}",
                    r.offset,
                    _topk_merge(*shadow_checked),
                    t=r.event_time,
                )
        batch.delete_entity(key, r.offset)
    batch.commit()
    return added
