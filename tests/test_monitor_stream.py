"""The monitor behind a real Spark stream: live performance from delayed labels found in the
enriched topics equals a pandas computation over the same records, and stopping the stream raises
the staleness alert. Broker, Spark, Redis and MLflow are all real; so is the worker.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from storeml.connectors.kafka_admin import read_all, watermark_method_for
from storeml.connectors.monitor_store import MonitorStore
from storeml.schemas.codec import get_codec
from storeml.settings import Settings
from storeml.stack import free_port
from tests.monitor_worker import start_monitor, wait_for
from tests.test_monitor_app import (
    DAY_MS,
    LIVE_MS,
    alerts_on_topic,
    monitor_settings,
    produce_live,
    train_and_produce_live,
    world,
)

pytestmark = pytest.mark.slow(minutes=2)

HORIZON_DAYS = 4
CHUNK_DAYS = 3
WINDOW_MS = 2 * DAY_MS


def _window(t: int) -> int:
    return t - t % WINDOW_MS


def decoded(settings: Settings, topic: str, schema: str) -> list[dict[str, Any]]:
    codec = get_codec(schema)
    method = watermark_method_for(settings.kafka_flavor)
    return [codec.decode(r.value) for r in read_all(settings.kafka_config(), topic, method)]


def customer_outcomes(profiles: list[dict[str, Any]], horizon_ms: int) -> pd.DataFrame:
    """Every judged prediction, computed directly: one row per (window, role, version, score, label).

    A customer's profiles in profile_version order; each is a prediction judged by the next one:
    confirmed when the next brings an order within the horizon (counted when the next arrives),
    refuted when the next brings a later order or comes after the horizon, or when nothing comes
    (both counted at the end of the horizon). Replays (profile_version not higher) are dropped.
    """
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for p in profiles:
        seq = by_key[(p["store_id"], p["customer_id"])]
        if not seq or p["profile_version"] > seq[-1]["profile_version"]:
            seq.append(p)
    rows = []
    for seq in by_key.values():
        for i, prev in enumerate(seq):
            t = prev["last_event_time"]
            nxt = seq[i + 1] if i + 1 < len(seq) else None
            if nxt is None:
                label, at = 0, t + horizon_ms
            elif nxt["order_count"] > prev["order_count"]:
                ordered = nxt["last_order_time"]
                label = int(ordered - t <= horizon_ms)
                at = nxt["last_event_time"] if label else t + horizon_ms
            elif nxt["last_event_time"] > t + horizon_ms:
                label, at = 0, t + horizon_ms
            else:
                continue
            served = [("champion", prev["model"]["version"], prev["propensity"])]
            if prev.get("shadow"):
                shadow = prev["shadow"]
                served.append(("challenger", shadow["model"]["version"], shadow["propensity"]))
            for role, version, score in served:
                if score is not None and version is not None:
                    rows.append(
                        {
                            "store_id": prev["store_id"],
                            "window_start": _window(at),
                            "role": role,
                            "version": version,
                            "score": float(score),
                            "label": label,
                        }
                    )
    return pd.DataFrame(rows)


def product_outcomes(profiles: list[dict[str, Any]]) -> pd.DataFrame:
    """hit@1 / hit@5 computed directly: an uncategorised product's last served top-5, checked by
    the first later profile that carries a category (counted at that profile's event time)."""
    pending: dict[tuple[str, str], tuple[list[str], str | None]] = {}
    rows = []
    for p in profiles:
        key = (p["store_id"], p["product_id"])
        if p["category"] is None:
            if p["predicted_categories"]:
                ranked = sorted(p["predicted_categories"], key=lambda c: c["rank"])
                pending[key] = ([c["category"] for c in ranked], p["model"]["version"])
            continue
        if key in pending:
            top5, version = pending.pop(key)
            rows.append(
                {
                    "window_start": _window(p["last_event_time"]),
                    "version": version,
                    "hit1": int(top5[0] == p["category"]),
                    "hit5": int(p["category"] in top5[:5]),
                }
            )
    return pd.DataFrame(rows)


def test_live_performance_equals_pandas_and_a_stopped_stream_alerts(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    from storeml.streams.enrich import start_enrichment

    settings = monitor_settings(
        settings,
        monitor_horizon_days=float(HORIZON_DAYS),
        monitor_stale_seconds=20.0,
        # The stream catches up one chunk of CHUNK_DAYS at a time, as one micro-batch, whose
        # profiles carry event times from the chunk's whole range: the grace covers it. (A backlog
        # read in small micro-batches would not do: the source shares each batch's records fairly
        # over partitions, so the orders partitions run days ahead of the products ones.)
        monitor_grace_seconds=(CHUNK_DAYS + 0.5) * 86_400.0,
        max_records_per_batch=50_000,
        monitor_web_port=free_port(),
    )
    live = train_and_produce_live(
        settings,
        world(
            late_category_share=1.0,
            late_category_from_ms=LIVE_MS + 10 * DAY_MS,  # first seen with text, uncategorised
            update_share=0.2,
        ),
    )
    worker = start_monitor(settings, tmp_path / "monitor.log")
    try:
        for day in range(0, 30, CHUNK_DAYS):
            lo, hi = LIVE_MS + day * DAY_MS, LIVE_MS + (day + CHUNK_DAYS) * DAY_MS
            produce_live(settings, [e for e in live if lo <= e.record["event_time"] < hi])
            query, _ = start_enrichment(spark, settings, available_now=True)
            query.awaitTermination(600)
            assert query.exception() is None
        store = MonitorStore.from_settings(settings)
        store.setup()
        last = LIVE_MS + 20 * DAY_MS

        def evaluated() -> list[dict[str, Any]]:
            rows = store.performance_series(settings.customer_model)
            done = [r for r in rows if int(r["window_start"]) >= last]
            return rows if done else []

        rows = wait_for(evaluated, 240, "customer performance windows up to day 20")
        product_rows = store.performance_series(settings.product_model)

        def stale() -> list[dict[str, Any]]:
            return [
                a
                for a in alerts_on_topic(settings)
                if a["statistic"] == "staleness_seconds" and a["status"] == "firing"
            ]

        stale_alerts = wait_for(stale, 120, "the staleness alert")
        metrics = httpx.get(f"http://127.0.0.1:{settings.monitor_web_port}/metrics", timeout=10)
    finally:
        worker.stop()
    late = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("storeml_monitor_late_records")
    ]
    assert late and all(line.endswith(" 0.0") for line in late), late
    assert stale_alerts[0]["store_id"] == "*" and stale_alerts[0]["value"] > 20.0

    profiles = decoded(settings, settings.topic_customer_profiles, "customer_profile")
    expected = customer_outcomes(profiles, HORIZON_DAYS * DAY_MS)
    assert len(expected) > 200
    checked = 0
    for row in rows:
        overall = row.get("overall", row)
        sel = expected[
            (expected["window_start"] == int(row["window_start"]))
            & (expected["role"] == row["role"])
            & (expected["version"] == row["model_version"])
        ]
        assert int(overall["n"]) == len(sel), (row, len(sel))
        assert int(overall["positives"]) == int(sel["label"].sum())
        if len(sel):
            brier = float(((sel["score"] - sel["label"]) ** 2).mean())
            assert overall["brier"] == pytest.approx(brier, rel=1e-9, abs=1e-12)
        if sel["label"].nunique() == 2:
            binned = np.minimum(np.floor(sel["score"] * 1000), 999)
            assert overall["auc"] == pytest.approx(roc_auc_score(sel["label"], binned), abs=1e-9)
            assert abs(overall["auc"] - roc_auc_score(sel["label"], sel["score"])) < 0.02
            checked += 1
    assert checked >= 3, rows

    products = decoded(settings, settings.topic_product_profiles, "product_profile")
    checks = product_outcomes(products)
    assert len(checks) > 10, "no late categorisation reached the monitor"
    compared = 0
    for row in product_rows:
        if row["role"] != "champion":
            continue
        sel = checks[
            (checks["window_start"] == int(row["window_start"]))
            & (checks["version"] == row["model_version"])
        ]
        assert int(row["n"]) == len(sel), (row, len(sel))
        if len(sel):
            assert row["hit1"] == pytest.approx(sel["hit1"].mean())
            assert row["hit5"] == pytest.approx(sel["hit5"].mean())
            compared += len(sel)
    assert compared >= 5, product_rows
