"""The monitor's exactly-once state over at-least-once delivery, attacked with plain dicts as tables.

No broker: a table is a dict; a crash is a dict rebuilt from a prefix of the writes a batch made
(what a changelog cut there would recover, values passed through JSON as Faust's changelog does),
after which the partition is replayed from the last committed offset with other batch boundaries.
Every run must end in exactly the state of one uninterrupted run, whatever the boundaries.

Also: lateness and closed windows, the delayed-label join against a pandas computation of the
same definition (and sklearn's AUC/Brier), and closing windows (``models/monitor_eval.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from itertools import cycle
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from storeml.models.alerting import AlertState
from storeml.models.monitor import Monitor
from storeml.models.monitor_eval import (
    alert_key,
    alert_messages,
    closable,
    drift_window,
    gather,
    known_windows,
    performance_windows,
)
from storeml.models.monitor_ingest import (
    ExpiryIndex,
    IngestConfig,
    ingest_customers,
    ingest_drift,
    ingest_products,
)
from storeml.models.monitor_reference import (
    customer_rows,
    fit_monitor,
    order_rows,
    product_rows,
)
from storeml.models.monitor_state import Clock, PartitionBatch, Record, drop_windows
from storeml.models.performance import SCORE_BINS, BinaryCounts, TopKCounts, binary_metrics

W, G, H = 1_000, 500, 6_000  # window, grace, horizon (ms)
CFG = IngestConfig(window_ms=W, grace_ms=G, horizon_ms=H)
T0 = 1_000_000
STORES = ("s1", "s2")
CATEGORIES = [f"cat{i}" for i in range(8)]


# --- tables ------------------------------------------------------------------------------------
class RecordingTable(dict):  # type: ignore[type-arg]
    """A dict that logs every write as a changelog would hold it (JSON), in order."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.log: list[tuple[str, str, str | None]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append(("set", key, json.dumps(value)))  # fails on numpy scalars, as Faust would
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append(("del", key, None))
        super().__delitem__(key)


def norm(table: dict[str, Any]) -> dict[str, Any]:
    """The table as its changelog would recover it."""
    return json.loads(json.dumps(table))


def content(table: dict[str, Any]) -> dict[str, Any]:
    """``norm(table)`` without the offsets that state keys record (the last offset of the batch
    that wrote them, so they depend on batch boundaries and on nothing else); clocks stay whole.
    """
    out = norm(table)
    for key, value in out.items():
        if not key.endswith("|clock") and isinstance(value, list):
            out[key] = [None, *value[1:]]
    return out


def recover(before: dict[str, Any], log: Sequence[tuple[str, str, str | None]]) -> dict[str, Any]:
    """``before`` plus the writes of ``log``: the table after a changelog cut at ``len(log)``."""
    table = norm(before)
    for op, key, value in log:
        if op == "set":
            assert value is not None
            table[key] = json.loads(value)
        else:
            table.pop(key, None)
    return table


def batches(records: Sequence[Record], sizes: Sequence[int]) -> Iterator[list[Record]]:
    i = 0
    for size in cycle(sizes):
        if i >= len(records):
            return
        yield list(records[i : i + size])
        i += size


# --- synthetic records -------------------------------------------------------------------------
def _times(rng: np.random.Generator, n: int, step: int = 60) -> np.ndarray:
    """Event times: rising ``step`` ms per record, jitter within grace, some late stragglers."""
    t = T0 + np.arange(n) * step + rng.integers(-150, 150, n)
    late = rng.random(n) < 0.04
    t[late] -= 3 * W
    return t


def _lines(rng: np.random.Generator, store: str) -> list[dict[str, Any]]:
    scale = 300 if store == "s1" else 900
    return [
        {
            "product_id": f"p{int(rng.integers(50))}",
            "category": None if rng.random() < 0.1 else str(rng.choice(CATEGORIES)),
            "quantity": int(1 + rng.poisson(1)),
            "unit_price_minor": int(rng.integers(scale // 2, scale * 2)),
        }
        for _ in range(int(1 + rng.poisson(1.5)))
    ]


def order_values(rng: np.random.Generator, n: int, times: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        store = str(rng.choice(STORES))
        out.append(
            {
                "store_id": store,
                "customer_id": f"c{int(rng.integers(20))}",
                "order_id": f"o{i}",
                "event_time": int(times[i]),
                "currency": "EUR",
                "lines": _lines(rng, store),
                "channel": str(rng.choice(["web", "app", "store"])),
            }
        )
    return out


def orders(seed: int, n: int = 150) -> list[Record]:
    rng = np.random.default_rng(seed)
    values = order_values(rng, n, _times(rng, n))
    return [Record(i, v["event_time"], v["store_id"], v) for i, v in enumerate(values)]


def customer_profiles(seed: int, n: int = 260) -> list[dict[str, Any]]:
    """Enriched CustomerProfile (v2) records in publication order.

    A few customers are busy, the rest come back rarely (so horizons run out); some orders are
    dated in the window before the profile; about 8% of records are verbatim replays of the
    customer's last profile (the stream's at-least-once output); some profiles are unscored;
    half carry a challenger score; the served version changes half way.
    """
    rng = np.random.default_rng(seed)
    times = _times(rng, n)
    customers = [(s, f"c{i}") for s in STORES for i in range(8)]
    weight = np.array([8.0 if i % 8 < 2 else 1.0 for i in range(len(customers))])
    state: dict[tuple[str, str], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for i in range(n):
        t = int(times[i])
        if out and rng.random() < 0.08:
            last = out[-1]
            out.append(dict(last))  # a replay: same profile_version
            continue
        store, customer = customers[int(rng.choice(len(customers), p=weight / weight.sum()))]
        prev = state.get((store, customer))
        version = 1 if prev is None else prev["profile_version"] + int(rng.integers(1, 4))
        orders_ = 0 if prev is None else prev["order_count"]
        last_order = None if prev is None else prev["last_order_time"]
        if prev is None or rng.random() < 0.45:
            orders_ += 1
            last_order = t - int(rng.integers(0, 700))  # often in the previous window
        score = None if rng.random() < 0.07 else round(float(rng.beta(2, 2)), 6)
        shadow = None
        if rng.random() < 0.5:
            shadow = {
                "model": {"name": "propensity", "version": "4", "scope": "store"},
                "propensity": None if rng.random() < 0.1 else float(rng.random()),
            }
        profile = {
            "store_id": store,
            "customer_id": customer,
            "profile_version": version,
            "order_count": orders_,
            "total_spend_minor": 1000 * orders_,
            "avg_order_value_minor": 1000.0,
            "first_order_time": T0,
            "last_order_time": last_order,
            "last_event_time": t,
            "days_since_last_order": None if last_order is None else (t - last_order) / 86_400_000,
            "top_categories": [],
            "product_views": int(rng.integers(0, 30)),
            "propensity": score,
            "model": {
                "name": "propensity",
                "version": "3" if i < n // 2 else "5",
                "scope": "store",
            },
            "source": [{"topic": "orders", "partition": 0, "first_offset": i, "last_offset": i}],
            "shadow": shadow,
        }
        state[(store, customer)] = profile
        out.append(profile)
    return out


def customers(seed: int, n: int = 260) -> list[Record]:
    return [
        Record(i, v["last_event_time"], v["store_id"], v)
        for i, v in enumerate(customer_profiles(seed, n))
    ]


def _predictions(rng: np.random.Generator) -> list[dict[str, Any]]:
    cats = rng.permutation(CATEGORIES)[:5]
    probs = np.sort(rng.dirichlet(np.ones(5)))[::-1]
    return [
        {"category": str(c), "probability": float(p), "rank": r}
        for r, (c, p) in enumerate(zip(cats, probs, strict=True))
    ]


def products(seed: int, n: int = 160) -> list[Record]:
    """Enriched ProductProfile records: uncategorised ones with a top-5, later categorised."""
    rng = np.random.default_rng(seed)
    times = _times(rng, n)
    out = []
    for i in range(n):
        store = str(rng.choice(STORES))
        categorised = rng.random() < 0.4
        shadow = None
        if rng.random() < 0.5:
            shadow = {
                "model": {"name": "category", "version": "8", "scope": "global"},
                "predicted_categories": _predictions(rng),
            }
        value = {
            "store_id": store,
            "product_id": f"p{int(rng.integers(12))}",
            "profile_version": i + 1,
            "category": str(rng.choice(CATEGORIES)) if categorised else None,
            "last_event_time": int(times[i]),
            "predicted_categories": [] if categorised else _predictions(rng),
            "model": {"name": "category", "version": "7", "scope": "global"},
            "shadow": shadow,
        }
        out.append(Record(i, value["last_event_time"], store, value))
    return out


# --- monitors ----------------------------------------------------------------------------------
@cache
def monitors() -> dict[str, Monitor]:
    rng = np.random.default_rng(99)
    n = 600
    ref_orders = order_values(rng, n, T0 + np.arange(n))
    ref_customers = customer_profiles(98, 400)
    ref_products = [r.value for r in products(97, 400)]
    common = {"bootstrap": 20, "min_rows": 5, "model_name": "propensity"}
    return {
        "orders": fit_monitor("orders", order_rows(ref_orders), version="3", **common),
        "customer": fit_monitor("customer", customer_rows(ref_customers), version="3", **common),
        "product": fit_monitor(
            "product", product_rows(ref_products), version="7", bootstrap=20, min_rows=5
        ),
    }


def ingest(kind: str, table: Any, p: int, batch: list[Record], expiry: ExpiryIndex, **kw: Any):
    m = monitors()
    if kind == "orders":
        mon = m["orders"]
        return ingest_drift(
            table, p, batch, order_rows, lambda v: mon, lambda v: None, CFG, kw.get("closed")
        )
    if kind == "customer":
        mon = m["customer"]
        return ingest_customers(
            table, p, batch, customer_rows, lambda v: mon, CFG, expiry, kw.get("closed")
        )
    mon = m["product"]
    return ingest_products(table, p, batch, product_rows, lambda v: mon, CFG, kw.get("closed"))


STREAMS: dict[str, Callable[[int], list[Record]]] = {
    "orders": orders,
    "customer": customers,
    "product": products,
}


def run(
    kind: str,
    records: Sequence[Record],
    sizes: Sequence[int],
    table: dict[str, Any] | None = None,
    expiry: ExpiryIndex | None = None,
    p: int = 0,
) -> dict[str, Any]:
    table = {} if table is None else table
    if expiry is None:
        expiry = ExpiryIndex()
        expiry.rebuild(table, H)
    for batch in batches(records, sizes):
        ingest(kind, table, p, batch, expiry)
    return table


@cache
def uninterrupted(kind: str, seed: int) -> dict[str, Any]:
    return norm(run(kind, STREAMS[kind](seed), [10]))


# --- 1. replays and batch boundaries -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["orders", "customer", "product"])
def test_state_does_not_depend_on_batch_boundaries(kind: str) -> None:
    records = STREAMS[kind](1)
    expected = uninterrupted(kind, 1)
    assert expected["0|clock"][0] == len(records) - 1
    for sizes in ([1], [3, 17], [len(records)]):
        assert content(run(kind, records, sizes)) == content(expected), sizes


@pytest.mark.parametrize("kind", ["orders", "customer", "product"])
@pytest.mark.parametrize("restart", [False, True])
def test_replaying_an_overlapping_suffix_changes_nothing(kind: str, restart: bool) -> None:
    records = STREAMS[kind](1)
    expected = uninterrupted(kind, 1)
    for stop, back in ((40, 25), (97, 60), (len(records), 33)):
        expiry = ExpiryIndex()
        table = run(kind, records[:stop], [5], expiry=expiry)
        if restart:  # the table as the changelog recovers it, the expiry index rebuilt from it
            table, expiry = norm(table), ExpiryIndex()
            expiry.rebuild(table, H)
        run(kind, records[stop - back :], [3, 11], table=table, expiry=expiry)
        assert content(table) == content(expected), (stop, back)


# --- 2. a changelog cut at every write of every batch ------------------------------------------
@pytest.mark.parametrize("kind", ["orders", "customer", "product"])
def test_a_changelog_cut_anywhere_in_a_batch_replays_to_the_same_state(kind: str) -> None:
    records = STREAMS[kind](2)
    expected = uninterrupted(kind, 2)
    table: dict[str, Any] = {}
    expiry = ExpiryIndex()
    cuts = 0
    for batch in batches(records, [10]):
        before = norm(table)
        recording = RecordingTable(table)
        ingest(kind, recording, 0, batch, expiry)
        table = dict(recording)
        assert recover(before, recording.log) == norm(table)  # the log is the whole change
        committed = Clock.from_value(before.get("0|clock")).offset
        for cut in range(len(recording.log)):
            crashed = recover(before, recording.log[:cut])
            rebuilt = ExpiryIndex()
            rebuilt.rebuild(crashed, H)
            # Faust resumes at or before the committed offset; replay with other boundaries
            start = max(0, committed + 1 - 4 * (cut % 2))
            for sizes in ([10], [2, 13], [len(records)]):
                again = norm(crashed)
                index = ExpiryIndex()
                index.rebuild(again, H)
                run(kind, records[start:], sizes, table=again, expiry=index)
                where = (batch[0].offset, cut, recording.log[cut][:2], sizes, start)
                if sizes == [10] and start == committed + 1:  # the original boundaries
                    assert norm(again) == expected, where
                assert content(again) == content(expected), where
            cuts += 1
    assert cuts > 20


def test_the_changelog_of_a_batch_writes_accumulators_entities_then_the_clock() -> None:
    records = customers(3)
    table: dict[str, Any] = {}
    expiry = ExpiryIndex()
    for batch in batches(records, [25]):
        recording = RecordingTable(table)
        ingest("customer", recording, 0, batch, expiry)
        kinds = [key.split("|")[1] for _, key, _ in recording.log]
        assert kinds[-1] == "clock" and kinds.count("clock") == 1
        rank = {"q": 0, "w": 0, "c": 1}
        ops = [rank[k] for k in kinds[:-1]]
        assert ops == sorted(ops), kinds
        assert len({key for _, key, _ in recording.log}) == len(recording.log)  # once per key
        table = dict(recording)


# --- 3. lateness and closed windows ------------------------------------------------------------
def _order(offset: int, t: int, store: str = "s1") -> Record:
    value = {
        "store_id": store,
        "customer_id": "c",
        "order_id": f"o{offset}",
        "event_time": t,
        "currency": "EUR",
        "lines": [{"product_id": "p", "category": "cat1", "quantity": 1, "unit_price_minor": 500}],
        "channel": "web",
    }
    return Record(offset, t, store, value)


def _rows(table: dict[str, Any], key: str) -> dict[str, int]:
    """Rows counted per slot of drift key ``key`` (from the first column's bins)."""
    mon = monitors()["orders"]
    first = mon.layout[mon.columns[0].name]
    return {slot: int(sum(v[first])) for slot, v in table.get(key, [0, 0, {}])[2].items()}


def test_late_records_are_counted_late_and_not_added() -> None:
    table: dict[str, Any] = {}
    ingest("orders", table, 0, [_order(0, T0 + 100), _order(1, T0 + 5_600)], ExpiryIndex())
    # window T0 ended at T0+1000; +grace = T0+1500 <= watermark T0+5600: late
    ingest(
        "orders",
        table,
        0,
        [_order(2, T0 + 900), _order(3, T0 + 4_100), _order(4, T0 + 4_000)],
        ExpiryIndex(),
    )
    # T0+900: window T0 ended T0+1000, +grace T0+1500 <= watermark T0+5600: late. T0+4100 and
    # T0+4000: window T0+4000 ended T0+5000, +grace T0+5500 <= T0+5600: late as well
    assert Clock.from_value(table["0|clock"]) == Clock(4, T0 + 5_600, 5, 3)
    assert _rows(table, "0|w|s1") == {f"{T0}|3": 1, f"{T0 + 5000}|3": 1}
    for mark, on_time in ((T0 + 5_500, False), (T0 + 5_499, True)):  # the boundary
        table = {}
        ingest("orders", table, 0, [_order(0, mark), _order(1, T0 + 4_999)], ExpiryIndex())
        assert (f"{T0 + 4000}|3" in _rows(table, "0|w|s1")) is on_time
        assert Clock.from_value(table["0|clock"]).late == int(not on_time)


def test_lateness_is_per_partition() -> None:
    table: dict[str, Any] = {}
    ingest("orders", table, 0, [_order(0, T0 + 9_000)], ExpiryIndex())
    ingest("orders", table, 1, [_order(0, T0 + 100)], ExpiryIndex())
    assert _rows(table, "1|w|s1") == {f"{T0}|3": 1}
    assert Clock.from_value(table["1|clock"]).late == 0


def _slots_before(table: dict[str, Any], before: int) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        parts = key.split("|")
        if len(parts) == 3 and parts[1] in "wqk" and value:
            out[key] = {s: c for s, c in value[2].items() if int(s.split("|")[0]) < before}
    return out


@pytest.mark.parametrize("kind", ["orders", "customer", "product"])
def test_closed_windows_are_never_reopened(kind: str) -> None:
    records = STREAMS[kind](4)
    table: dict[str, Any] = {}
    expiry = ExpiryIndex()
    run(kind, records[:120], [10], table=table, expiry=expiry)
    closed = Clock.from_value(table["0|clock"]).watermark + 2 * W  # as if other partitions ran on
    closed -= closed % W
    frozen = _slots_before(table, closed)
    late_before = Clock.from_value(table["0|clock"]).late
    for batch in batches(records[120:], [7]):
        ingest(kind, table, 0, batch, expiry, closed=closed)
        assert _slots_before(table, closed) == frozen
    clock = Clock.from_value(table["0|clock"])
    rest = [r for r in records[120:] if r.event_time - r.event_time % W < closed]
    assert clock.late - late_before >= len(rest) > 0


def test_refutations_of_an_idle_partition_do_not_reopen_closed_windows() -> None:
    """Partition 0 sat idle while others closed windows; its next record expires a prediction
    whose horizon ended in a closed window: that window must stay as it was evaluated."""
    profiles = customer_profiles(5, 3)
    first = dict(profiles[0], last_event_time=T0, store_id="s1", customer_id="a")
    table: dict[str, Any] = {}
    expiry = ExpiryIndex()
    ingest("customer", table, 0, [Record(0, T0, "s1", first)], expiry)
    closed = T0 + H + 3 * W  # the window of T0+H was evaluated meanwhile
    later = dict(profiles[1], last_event_time=closed + 10, store_id="s1", customer_id="b")
    frozen = _slots_before(table, closed)
    assert not any(k.split("|")[1] == "q" for k in frozen)
    ingest("customer", table, 0, [Record(1, closed + 10, "s1", later)], expiry, closed=closed)
    assert _slots_before(table, closed) == frozen  # nothing written into a closed window
    assert "0|c|s1|a" not in table  # the expired prediction is gone all the same


def test_a_refutation_waits_for_the_grace_and_belongs_to_the_record_that_passed_it() -> None:
    """Customer a's prediction is not refuted while a profile up to ``grace`` late may still
    confirm it; once b's record moves the watermark past horizon + grace it is refuted, and a's
    next profile then finds nothing to confirm, whatever the batch boundaries."""
    base = customer_profiles(9, 1)[0]

    def profile(customer: str, version: int, t: int, orders: int, ordered: int) -> Record:
        value = dict(base, customer_id=customer, profile_version=version, last_event_time=t)
        value.update(order_count=orders, last_order_time=ordered, store_id="s1", propensity=0.8)
        value.update(shadow=None, model={"name": "propensity", "version": "3", "scope": "store"})
        return Record(0, t, "s1", value)

    def outcomes(stream: list[Record]) -> dict[str, Any]:
        records = [Record(i, r.event_time, r.store_id, r.value) for i, r in enumerate(stream)]
        results = []
        for sizes in ([1], [len(records)], [1, 3]):
            table = run("customer", records, sizes)
            q = gather(table, "q", known_windows(table, "q"))
            results.append({slot: {s: c.to_list() for s, c in v.items()} for slot, v in q.items()})
            assert table["0|c|s1|a"][1][-1] == 2  # a's newest profile waits
        assert results[0] == results[1] == results[2]
        return results[0]

    # b moves the watermark past a's horizon, but not past horizon + grace: a is confirmed
    ((slot, stores),) = outcomes(
        [
            profile("a", 1, T0, 1, T0),
            profile("b", 1, T0 + H + 100, 1, T0 + H + 100),
            profile("a", 2, T0 + H + 150, 2, T0 + H - 50),
            profile("b", 2, T0 + H + 200, 1, T0 + H + 100),
        ]
    ).items()
    t = T0 + H + 150
    assert slot == f"{t - t % W}|champion|3" and stores["s1"][0] == 1
    assert stores["s1"][2][0][1:] == [1, 0]  # a positive
    # past horizon + grace: a is refuted by b's record, and its late order confirms nothing
    ((slot, stores),) = outcomes(
        [
            profile("a", 1, T0, 1, T0),
            profile("b", 1, T0 + H + G + 100, 1, T0 + H + G + 100),
            profile("a", 2, T0 + H + G + 150, 2, T0 + H - 50),
            profile("b", 2, T0 + H + G + 200, 1, T0 + H + G + 100),
        ]
    ).items()
    assert slot == f"{T0 + H - (T0 + H) % W}|champion|3" and stores["s1"][0] == 1  # refuted
    assert stores["s1"][2][0][1:] == [0, 1]  # a negative


# --- 4. the label join against pandas ----------------------------------------------------------
def reference_outcomes(records: Sequence[Record]) -> pd.DataFrame:
    """Labels of the served propensities, from the definition, computed over a DataFrame.

    A record is late when its window ended ``grace`` before the watermark (the highest event
    time of the records before it). Per customer, on-time profiles are considered in offset
    order; one prediction is pending at a time. Before each of the customer's profiles, the
    pending one is refuted (label 0, at its horizon's end) when the partition's watermark after
    an earlier record passed ``event_time + horizon + grace`` (a profile up to grace late may
    still confirm it). A profile at or below the pending one's
    profile_version changes nothing; a newer one whose order_count grew confirms it (label 1,
    counted at the confirming profile's event time) when its last order came within the
    horizon, else refutes it; a newer one without an order but dated after the horizon refutes
    it; either way it becomes the pending prediction. At the end, pending ones the final
    watermark passed are refuted.
    """
    df = pd.DataFrame(
        {
            "offset": [r.offset for r in records],
            "t": [r.event_time for r in records],
            "store": [r.store_id for r in records],
            "customer": [r.value["customer_id"] for r in records],
            "version": [r.value["profile_version"] for r in records],
            "orders": [r.value["order_count"] for r in records],
            "ordered": [r.value["last_order_time"] for r in records],
            "score": [r.value["propensity"] for r in records],
            "model": [r.value["model"]["version"] for r in records],
            "shadow_score": [(r.value["shadow"] or {}).get("propensity") for r in records],
            "shadow_model": [
                ((r.value["shadow"] or {}).get("model") or {}).get("version") for r in records
            ],
        }
    ).sort_values("offset")
    df["wm_after"] = df["t"].cummax()
    wm_before = df["wm_after"].shift(1)
    start = df["t"] - df["t"] % W
    df = df[~(start + W + G <= wm_before)]  # on time only
    wm_after = df["wm_after"].to_numpy()
    offsets = df["offset"].to_numpy()

    def expired_at(pending: pd.Series) -> int | None:
        """Offset of the first record whose watermark passed the pending horizon."""
        i = int(np.searchsorted(wm_after, pending.t + H + G, side="right"))
        return int(offsets[i]) if i < len(offsets) else None

    rows = []

    def emit(pending: pd.Series, label: int, at: int) -> None:
        rows.append((pending.store, pending.score, pending.model, label, at, "champion"))
        rows.append(
            (pending.store, pending.shadow_score, pending.shadow_model, label, at, "challenger")
        )

    for _, group in df.groupby(["store", "customer"], sort=False):
        pending = None
        for _, row in group.iterrows():
            if pending is not None:
                gone = expired_at(pending)
                if gone is not None and gone < row.offset:
                    emit(pending, 0, pending.t + H)
                    pending = None
            if pending is None:
                pending = row
                continue
            if row.version <= pending.version:
                continue
            if row.orders > pending.orders:
                label = int(row.ordered - pending.t <= H)
                emit(pending, label, row.t if label else pending.t + H)
            elif row.t > pending.t + H:
                emit(pending, 0, pending.t + H)
            pending = row
        if pending is not None and expired_at(pending) is not None:
            emit(pending, 0, pending.t + H)
    out = pd.DataFrame(rows, columns=["store", "score", "version", "label", "at", "role"])
    out = out[out["score"].notna() & out["version"].notna()].copy()
    out["window"] = out["at"] - out["at"] % W
    return out


def test_label_join_equals_pandas_sklearn_and_merges_over_partitions() -> None:
    parts = {0: customers(6), 1: customers(7)}
    table: dict[str, Any] = {}
    expiry = ExpiryIndex()
    for p, records in parts.items():
        run("customer", records, [9], table=table, expiry=expiry, p=p)
    expected = pd.concat([reference_outcomes(r) for r in parts.values()], ignore_index=True)
    assert len(expected) > 100 and set(expected["label"]) == {0, 1}
    assert set(expected["role"]) == {"champion", "challenger"}
    windows = known_windows(table, "q")
    gathered = gather(table, "q", windows)
    want: dict[str, dict[str, Any]] = {}
    for (ws, role, version, store), g in expected.groupby(["window", "role", "version", "store"]):
        counts = BinaryCounts()
        counts.add(g["score"].to_numpy(dtype=float), g["label"].to_numpy())
        want.setdefault(f"{ws}|{role}|{version}", {})[store] = counts
    got = gathered
    assert {s: sorted(v) for s, v in got.items()} == {s: sorted(v) for s, v in want.items()}
    for slot, stores in want.items():
        for store, counts in stores.items():
            mine = got[slot][store]
            assert (mine.n, list(mine.pos), list(mine.neg)) == (
                counts.n,
                list(counts.pos),
                list(counts.neg),
            )
            assert mine.brier_sum == pytest.approx(counts.brier_sum, abs=1e-9)
    # whole-run metrics per role and version against sklearn
    for (role, version), g in expected.groupby(["role", "version"]):
        total = BinaryCounts()
        for slot, stores in got.items():
            if slot.split("|")[1:] == [role, version]:
                for counts in stores.values():
                    total = total.merge(counts)
        m = binary_metrics(total, 0.5)
        binned = np.minimum(np.floor(g["score"] * SCORE_BINS), SCORE_BINS - 1)
        assert m["n"] == len(g) and m["positives"] == int(g["label"].sum())
        if g["label"].nunique() == 2:
            assert m["auc"] == pytest.approx(roc_auc_score(g["label"], binned), abs=1e-12)
        assert m["brier"] == pytest.approx(brier_score_loss(g["label"], g["score"]), abs=1e-12)
        predicted = g["score"] >= 0.5
        if predicted.any():
            tp = int((predicted & (g["label"] == 1)).sum())
            assert m["precision"] == pytest.approx(tp / int(predicted.sum()))


def test_hit_at_k_equals_pandas() -> None:
    records = products(8)
    table = run("product", records, [6])
    served: dict[tuple[str, str], tuple[list[str], list[str] | None]] = {}
    rows = []
    wm = None
    for r in records:
        start = r.event_time - r.event_time % W
        late = wm is not None and start + W + G <= wm
        wm = r.event_time if wm is None else max(wm, r.event_time)
        if late:
            continue
        v, key = r.value, (r.store_id, r.value["product_id"])
        if v["category"] is None:
            shadow = v["shadow"]
            served[key] = (
                [c["category"] for c in v["predicted_categories"]],
                None if shadow is None else [c["category"] for c in shadow["predicted_categories"]],
            )
        elif key in served:
            top5, shadow5 = served.pop(key)
            for role, ver, ranked in (("champion", "7", top5), ("challenger", "8", shadow5)):
                if ranked:
                    rows.append((start, role, ver, r.store_id, ranked[0] == v["category"],
                                 v["category"] in ranked[:5]))  # fmt: skip
    df = pd.DataFrame(rows, columns=["window", "role", "version", "store", "hit1", "hit5"])
    expected = {
        (f"{w}|{role}|{ver}", s): [len(g), int(g.hit1.sum()), int(g.hit5.sum())]
        for (w, role, ver, s), g in df.groupby(["window", "role", "version", "store"])
    }
    got = gather(table, "k", known_windows(table, "k"))
    flat = {(slot, s): c.to_list() for slot, stores in got.items() for s, c in stores.items()}
    assert len(expected) > 10 and flat == expected


# --- 5. closing windows -----------------------------------------------------------------------
def test_closable_waits_for_every_partition_that_is_not_idle() -> None:
    clocks = {0: Clock(9, T0 + 10_000), 1: Clock(3, T0 + 3_000), 2: Clock()}
    known = [T0 + i * W for i in range(12)]
    # partition 2 has delivered nothing yet: it holds every window back until it is idle
    assert closable(clocks, [], W, G, None, known) == []
    assert closable(clocks, [2], W, G, None, known) == [T0, T0 + 1000]
    assert closable(clocks, [1, 2], W, G, None, known) == known[:9]  # T0+8000+1500 <= T0+10000
    assert closable(clocks, [1, 2], W, G, T0 + 5000, known) == known[5:9]
    assert closable(clocks, [0, 1, 2], W, G, None, known) == []  # all idle: nothing closes
    assert closable({0: Clock(1, T0 + W + G - 1)}, [], W, G, None, known) == []


def test_gather_merges_partitions_per_slot() -> None:
    a, b = BinaryCounts(), BinaryCounts()
    a.add(np.array([0.1, 0.9]), np.array([0, 1]))
    b.add(np.array([0.95, 0.2, 0.4]), np.array([1, 1, 0]))
    table = {
        "0|w|s1": [5, T0, {f"{T0}|3": [1, 2, 0], f"{T0 + W}|3": [0, 1, 1]}],
        "1|w|s1": [7, T0, {f"{T0}|3": [4, 0, 1]}],
        "1|w|s2": [7, T0, {f"{T0}|3": [0, 0, 9]}],
        "0|q|s1": [5, T0, {f"{T0}|champion|3": a.to_list()}],
        "1|q|s1": [7, T0, {f"{T0}|champion|3": b.to_list(), f"{T0}|challenger|4": b.to_list()}],
        "0|k|s1": [5, T0, {f"{T0}|champion|7": [3, 1, 2]}],
        "1|k|s1": [5, T0, {f"{T0}|champion|7": [2, 2, 2]}],
        "0|clock": [5, T0, 1, 0],
        "0|c|s1|x": [5, [T0, 0.5, "3", None, None, 1, 1]],
    }
    drift = gather(table, "w", [T0])
    assert {s: {k: v.tolist() for k, v in d.items()} for s, d in drift.items()} == {
        f"{T0}|3": {"s1": [5, 2, 1], "s2": [0, 0, 9]}
    }
    q = gather(table, "q", [T0])
    assert q[f"{T0}|champion|3"]["s1"] == a.merge(b)
    assert q[f"{T0}|challenger|4"]["s1"] == b
    k = gather(table, "k", [T0, T0 + W])
    assert k[f"{T0}|champion|7"]["s1"] == TopKCounts(5, 3, 4)
    assert known_windows(table, "w") == {T0, T0 + W}
    windows = performance_windows("m", "q", q, W, threshold=0.5)
    assert [(pw.role, pw.model_version) for pw in windows] == [
        ("challenger", "4"),
        ("champion", "3"),
    ]
    champion = windows[1]
    merged = binary_metrics(a.merge(b), 0.5)
    assert champion.overall.n == 5 and champion.overall.auc == pytest.approx(merged["auc"])
    assert champion.overall.brier == pytest.approx(merged["brier"])
    assert [s.store_id for s in champion.stores] == ["s1"]
    topk = performance_windows("m", "k", k, W)
    assert topk[0].overall.hit1 == pytest.approx(3 / 5) and topk[0].overall.hit5 == 0.8


def test_drop_windows_keeps_offsets_and_later_slots() -> None:
    table = {
        "0|w|s1": [5, T0, {f"{T0}|3": [1], f"{T0 + W}|3": [2]}],
        "0|q|s1": [5, T0, {f"{T0}|champion|3": [0, 0.0, []]}],
        "0|clock": [5, T0, 1, 0],
    }
    assert drop_windows(table, "w", T0 + W) == 1
    assert table["0|w|s1"] == [5, T0, {f"{T0 + W}|3": [2]}]
    assert table["0|q|s1"][2] != {}


def _drift_counts(mon: Monitor, store: str, n: int, shift: float, seed: int) -> np.ndarray:
    """A window of ``n`` orders of ``store`` like its reference, prices scaled by ``shift``."""
    rng = np.random.default_rng(seed)
    values = order_values(rng, n, T0 + np.arange(n))
    for v in values:
        v["store_id"] = store
        v["lines"] = _lines(rng, store)
        for line in v["lines"]:
            line["unit_price_minor"] = int(line["unit_price_minor"] * shift)
    _, counts = mon.counts(order_rows(values))
    return counts[0]


def test_drift_windows_fire_remind_after_the_cooldown_and_resolve() -> None:
    mon = monitors()["orders"]
    drifted = {
        "s1": _drift_counts(mon, "s1", 300, 8.0, 1),
        "s2": _drift_counts(mon, "s2", 300, 1.0, 2),
    }
    calm = {"s1": _drift_counts(mon, "s1", 300, 1.0, 3)}
    states: dict[str, AlertState] = {}
    sent = []
    plan = [(0, drifted), (1, drifted), (2, drifted), (3, drifted), (4, calm), (4, calm)]
    plan.insert(2, (1, drifted))  # a replayed window sends nothing
    for i, counts in plan:
        window = drift_window(mon, "orders", T0 + i * W, W, counts)
        assert window.model_version == "3" and window.window_end == T0 + (i + 1) * W
        assert [s.store_id for s in window.stores] == sorted(counts)
        messages, changed = alert_messages(
            window, states, cooldown_ms=3 * W, link="http://x/dashboard/", detected_at=7
        )
        states.update(changed)
        sent.extend((i, m) for m in messages)
    s1 = [(i, m["status"], m["column"]) for i, m in sent if m["store_id"] == "s1"]
    assert sent and all(m["store_id"] == "s1" for _, m in sent)  # s2 never drifted
    fired = {c for _, status, c in s1 if status == "firing"}
    assert "order_value_minor" in fired
    timeline = [(i, status) for i, status, c in s1 if c == "order_value_minor"]
    assert timeline == [(0, "firing"), (3, "firing"), (4, "resolved")]
    msg = next(m for i, m in sent if m["column"] == "order_value_minor")
    assert msg["alert_id"] == f"s1|orders|g_test|order_value_minor|{T0}|firing"
    assert msg["link"] == "http://x/dashboard/stores/s1" and msg["rows"] == 300
    assert msg["value"] < msg["threshold"] and msg["model"] == {
        "name": "propensity",
        "version": "3",
    }
    key = alert_key("s1", "orders", "g_test", "order_value_minor")
    assert states[key].firing is False and states[key].last_sent_ms == T0 + 5 * W


def test_drift_window_of_no_store_is_empty() -> None:
    window = drift_window(monitors()["orders"], "orders", T0, W, {})
    assert window.stores == ()
    assert alert_messages(window, {}, cooldown_ms=1, link="l", detected_at=0) == ([], {})


def test_topk_counts_are_mergeable_lists() -> None:
    t = TopKCounts()
    t.add([["a", "b"]], ["b"])
    assert t.to_list() == [1, 0, 1]


def test_an_order_without_lines_neither_crashes_nor_shifts_other_stores() -> None:
    empty = _order(1, T0 + 200, "s2")
    empty = Record(1, empty.event_time, "s2", dict(empty.value, lines=[]))
    table: dict[str, Any] = {}
    batch = [_order(0, T0 + 100, "s1"), empty, _order(2, T0 + 300, "s1")]
    ingest("orders", table, 0, batch, ExpiryIndex())
    assert _rows(table, "0|w|s1") == {f"{T0}|3": 2}
    assert "0|w|s2" not in table
    assert Clock.from_value(table["0|clock"]).offset == 2


def test_partition_batch_is_a_no_op_for_a_fully_replayed_batch() -> None:
    table: dict[str, Any] = {}
    ingest("orders", table, 0, [_order(0, T0), _order(1, T0 + 10)], ExpiryIndex())
    before = norm(table)
    recording = RecordingTable(table)
    batch = PartitionBatch(recording, 0, W, G)
    assert not any(batch.admit(r) for r in [_order(0, T0), _order(1, T0 + 10)])
    assert batch.commit() == 0 and recording.log == [] and norm(recording) == before
