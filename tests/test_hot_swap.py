"""A running stream follows registry aliases: hot swap of the champion, shadow scoring of the challenger.

Real broker, Spark, MLflow (SQLite) and Redis. The champion is the built-in per-store models; the
challenger is trained from the example model packages (``examples/packages``, one with a custom
predictor class whose code travels inside the store files to the Spark workers). One streaming
query runs through the whole test (no restart) while a data scientist's plain ``MlflowClient`` call
moves ``champion`` to the challenger's version and drops ``challenger``.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.redis_sink import FeatureStore
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.models.events import ORDER
from storeml.schemas.codec import get_codec
from storeml.settings import Settings
from tests.reference import assert_profiles_match, reference_profiles
from tests.test_stream_e2e import input_events

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "packages"


def _package(tmp_path: Path, example: str, name: str) -> Path:
    """A copy of an example package registering under ``name``."""
    folder = shutil.copytree(EXAMPLES / example, tmp_path / example)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["name"] = name
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _wait(condition: Callable[[], bool], what: str, query: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert query.exception() is None, query.exception()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _records(settings: Settings, topic: str, schema: str) -> list[tuple[dict, dict]]:
    codec = get_codec(schema)
    method = watermark_method_for(settings.kafka_flavor)
    return [
        (codec.decode(r.value), {k: v.decode() for k, v in r.headers})
        for r in read_all(settings.kafka_config(), topic, method)
    ]


def _ends(settings: Settings) -> dict[tuple[str, int], int]:
    """Next offset per input partition (what phase one produced)."""
    method = watermark_method_for(settings.kafka_flavor)
    ends: dict[tuple[str, int], int] = {}
    for topic in (settings.topic_orders, settings.topic_products):
        for r in read_all(settings.kafka_config(), topic, method):
            ends[(topic, r.partition)] = max(ends.get((topic, r.partition), 0), r.offset + 1)
    return ends


def _phase(record: dict[str, Any], ends: dict[tuple[str, int], int]) -> int:
    """1 when every folded event was produced before the alias move, 2 when every one after."""
    phases = {
        1 if s["last_offset"] < ends.get((s["topic"], s["partition"]), 0) else 2
        for s in record["source"]
    }
    assert len(phases) == 1, f"a micro-batch mixed events from before and after the move: {record}"
    return phases.pop()


def test_alias_move_is_served_next_batch_without_restart_and_challenger_shadows(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from storeml.batch.history import synthetic_facts, train_on_synthetic
    from storeml.batch.train import train_package
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 1_000})
    old = train_on_synthetic(settings, stores=5, events=4_000, seed=3)  # -> @champion
    facts, cutoff = synthetic_facts(stores=5, events=4_000, seed=4)
    new = {
        kind: train_package(
            settings,
            _package(tmp_path, example, getattr(settings, f"{kind}_model")),
            facts,
            cutoff,
            alias="challenger",
        )
        for kind, example in (("customer", "customer_propensity"), ("product", "product_category"))
    }
    names = {kind: handle.name for kind, handle in old.items()}
    ensure_topics(settings.kafka_config(), settings.topics, 2)
    events = list(generate(GeneratorConfig(stores=5, events=5_000, seed=8)))
    first, second = events[:2_500], events[2_500:]

    seen: list[Any] = []
    query, handler = start_enrichment(spark, settings, on_batch=seen.append)
    try:
        produce_events(
            settings.kafka_config(), first, settings.topic_orders, settings.topic_products
        )
        _wait(lambda: sum(r.events for r in seen) >= len(first), "the first events", query)
        ends = _ends(settings)
        moved_at = len(seen)

        client = MlflowClient(tracking_uri=settings.tracking_uri)  # as a data scientist would
        for kind, name in names.items():
            client.set_registered_model_alias(name, "champion", new[kind].version)
            client.delete_registered_model_alias(name, "challenger")
        produce_events(
            settings.kafka_config(), second, settings.topic_orders, settings.topic_products
        )
        _wait(lambda: sum(r.events for r in seen) >= len(events), "the second events", query)
    finally:
        query.stop()
    assert query.exception() is None
    assert sum(r.events for r in seen) == len(events)  # nothing read twice, nothing skipped

    label = {
        kind: {v: f"{names[kind]}:{h[kind].version}" for v, h in ((1, old), (2, new))}
        for kind in names
    }
    for report in seen[:moved_at]:
        assert report.models == {
            "customer": label["customer"][1],
            "product": label["product"][1],
            "customer.shadow": label["customer"][2],
            "product.shadow": label["product"][2],
        }
    for report in seen[moved_at:]:  # the very first batch after the move serves the new version
        assert report.models == {"customer": label["customer"][2], "product": label["product"][2]}
    assert all(
        0 <= r.model_cache["hit_rate"] <= 1 and r.model_cache["processes"] >= 1 for r in seen
    )

    for kind, topic, schema, field in (
        ("customer", settings.topic_customer_profiles, "customer_profile", "propensity"),
        ("product", settings.topic_product_profiles, "product_profile", "predicted_categories"),
    ):
        phases: Counter[int] = Counter()
        versions: Counter[tuple[str, int]] = Counter()
        for record, headers in _records(settings, topic, schema):
            phase = _phase(record, ends)
            phases[phase] += 1
            served = old if phase == 1 else new
            assert record["model"]["version"] == served[kind].version
            assert headers["storeml.model"] == label[kind][phase]
            if phase == 1:  # the challenger scored in shadow, beside (not in) the served field
                assert record["shadow"]["model"]["version"] == new[kind].version
                assert headers["storeml.shadow_model"] == label[kind][2]
                assert field in record["shadow"]
            else:
                assert record["shadow"] is None and "storeml.shadow_model" not in headers
            key = record["store_id"], record[f"{kind}_id"]
            versions[(f"{key}", record["profile_version"])] += 1
        assert phases[1] > 0 and phases[2] > 0, phases
        assert max(versions.values()) == 1, "a profile version was published twice"

    # nothing lost: the final profiles are those of all events, as a plain pandas fold says
    good, bad = input_events(settings)
    assert not bad and len(good) == len(events)
    want_c, want_p = reference_profiles(good)
    got_c: dict[tuple[str, str], dict] = {}
    for record, _ in _records(settings, settings.topic_customer_profiles, "customer_profile"):
        got_c[(record["store_id"], record["customer_id"])] = record
    assert_profiles_match(got_c, want_c)
    assert any(kind == ORDER for kind, *_ in good)

    # Redis serves the new version's scores and keeps the shadow field out of served ones
    lookup = FeatureStore(settings.redis_url, settings.redis_prefix)
    store, customer = next(iter(want_c))
    profile = lookup.customer(store, customer)
    assert profile is not None
    assert int(profile["profile_version"]) == want_c[(store, customer)]["profile_version"]
    last = got_c[(store, customer)]
    assert profile["model"] == last["model"]
    assert profile.get("shadow") == last["shadow"]


def test_a_deleted_alias_and_a_locked_registry_mid_run_keep_serving_the_last_version(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    """One running query: the champion alias is deleted, then the SQLite registry is locked."""
    import sqlite3

    from mlflow import MlflowClient

    from storeml.batch.history import train_on_synthetic
    from storeml.stack import init_mlflow
    from storeml.streams.enrich import start_enrichment

    db = tmp_path / "registry.db"
    root = (tmp_path / "artifacts").as_uri()
    init_mlflow(f"sqlite:///{db}", root)
    settings = settings.model_copy(
        update={
            "mlflow_tracking_uri": f"sqlite:///{db}",
            "mlflow_registry_uri": None,
            "mlflow_artifact_root": root,
            "mlflow_timeout_seconds": 1.0,
            "shadow_alias": "",
            "max_records_per_batch": 1_000,
        }
    )
    served = train_on_synthetic(settings, stores=4, events=3_000, seed=3)  # -> @champion
    ensure_topics(settings.kafka_config(), settings.topics, 2)
    events = list(generate(GeneratorConfig(stores=4, events=3_000, seed=9)))
    phases = [events[:1_000], events[1_000:2_000], events[2_000:]]

    seen: list[Any] = []
    marks: list[int] = []
    lock = sqlite3.connect(db, isolation_level=None)
    query, handler = start_enrichment(spark, settings, on_batch=seen.append)
    try:
        for phase, batch in enumerate(phases):
            if phase == 1:  # the customer model's alias is deleted (the registry still answers)
                MlflowClient(tracking_uri=settings.tracking_uri).delete_registered_model_alias(
                    settings.customer_model, "champion"
                )
            if phase == 2:  # then the registry stops answering: SQLite locked by another writer
                lock.execute("BEGIN EXCLUSIVE")
            marks.append(len(seen))
            produce_events(
                settings.kafka_config(), batch, settings.topic_orders, settings.topic_products
            )
            done = sum(len(p) for p in phases[: phase + 1])
            _wait(lambda done=done: sum(r.events for r in seen) >= done, f"phase {phase}", query)
    finally:
        query.stop()
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert query.exception() is None
    assert sum(r.events for r in seen) == len(events)

    label = {kind: f"{h.name}:{h.version}" for kind, h in served.items()}
    assert all(r.models == label for r in seen), [r.models for r in seen]
    deleted, locked = seen[marks[1] : marks[2]], seen[marks[2] :]
    assert any(r.registry["missing"] >= 1 for r in deleted)
    assert all(r.registry["failures"] == 0 for r in deleted)
    assert any(r.registry["failures"] >= 1 and r.registry["stale"] >= 2 for r in locked)
    assert max(r.stages["resolve_models_s"] for r in locked) < 3.0
    for kind, topic, schema in (
        ("customer", settings.topic_customer_profiles, "customer_profile"),
        ("product", settings.topic_product_profiles, "product_profile"),
    ):
        records = _records(settings, topic, schema)
        assert records and all(
            record["model"]["version"] == served[kind].version for record, _ in records
        )
