"""A checkpoint reset keeps Redis and consumers updating: the new checkpoint's profiles carry a
higher generation in their ``profile_version``. Real Redis, broker and Spark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storeml.connectors.redis_sink import FeatureStore
from storeml.connectors.synthetic import GeneratorConfig
from storeml.settings import Settings
from storeml.streams.checkpoint import (
    GENERATION_STEP,
    check_checkpoint,
    read_checkpoint_meta,
    reset_checkpoint,
)
from tests.reference import assert_profiles_match, reference_profiles
from tests.test_stream_e2e import _env, input_events, latest_from_topic, produce


def test_new_checkpoints_and_resets_move_the_generation_up(
    settings: Settings, tmp_path: Path
) -> None:
    first = check_checkpoint(tmp_path / "a", settings)
    assert first.generation == 0 and first.version_base == 0
    assert check_checkpoint(tmp_path / "a", settings) == first  # an existing one is kept
    # a checkpoint deleted by hand (a new folder) still starts above what Redis has seen
    second = check_checkpoint(tmp_path / "b", settings)
    assert second.generation == 1 and second.state_id != first.state_id

    at_a = settings.model_copy(update={"checkpoint_dir": tmp_path / "a"})
    done = reset_checkpoint(at_a)
    assert done.old_generation == 0 and done.meta.generation == 2  # above Redis' record (1)
    assert done.moved_to is not None and (done.moved_to / "storeml.json").exists()
    assert read_checkpoint_meta(tmp_path / "a") == done.meta
    assert reset_checkpoint(at_a, delete=True).meta.generation == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("a.reset-")] == [
        done.moved_to.name
    ]

    # a checkpoint written before generations existed keeps generation 0
    old = tmp_path / "old"
    old.mkdir()
    (old / "storeml.json").write_text(json.dumps({"state_buckets": settings.state_buckets}))
    legacy = check_checkpoint(old, settings)
    assert legacy.generation == 0 and legacy.state_id


@pytest.mark.slow
def test_stream_reset_keeps_redis_and_consumers_updating(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(
        update={"max_records_per_batch": 3_000, "serving_alias": "", "shadow_alias": ""}
    )
    produce(settings, GeneratorConfig(stores=4, events=3_000, seed=21))

    def run() -> None:
        query, _ = start_enrichment(spark, settings, available_now=True)
        query.awaitTermination(600)
        assert query.exception() is None

    run()
    lookups = FeatureStore(settings.redis, settings.redis_prefix)
    before = {
        key: int(lookups.get("customer", *key)["profile_version"])  # type: ignore[index]
        for key in latest_from_topic(
            settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
        )
    }
    assert max(before.values()) < GENERATION_STEP

    # the operator's command, as documented
    reset = subprocess.run(
        [sys.executable, "-m", "storeml.cli", "stream", "reset", "--yes"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reset.returncode == 0, reset.stderr
    assert "generation 1 (was 0)" in reset.stdout

    produce(settings, GeneratorConfig(stores=4, events=2_000, seed=22))
    run()  # the new checkpoint re-reads the topics from the earliest offset

    good, _ = input_events(settings)
    want_c, _ = reference_profiles(good)
    got_c = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    # consumers keeping the highest version per key took the new generation's records ...
    assert all(r["profile_version"] >= GENERATION_STEP for r in got_c.values())
    rebased = {
        key: {**record, "profile_version": record["profile_version"] - GENERATION_STEP}
        for key, record in got_c.items()
    }
    assert_profiles_match(rebased, want_c)  # ... which hold every event the topics hold
    # ... and Redis took them too: no write was refused as "older"
    for key, record in got_c.items():
        stored = lookups.get("customer", *key)
        assert stored is not None
        assert int(stored["profile_version"]) == record["profile_version"] > before.get(key, -1)
        assert int(stored["order_count"]) == record["order_count"]
    lookups.close()


def test_a_replayed_batch_is_scored_with_the_versions_of_its_first_attempt(
    settings: Settings, tmp_path: Path
) -> None:
    """The versions each batch used are recorded before it runs: a replay uses them even when the
    alias moved in between, and a driver restarted while the registry is down uses the last."""
    import dataclasses

    from storeml.batch.history import train_on_synthetic
    from storeml.connectors.mlflow_registry import set_alias
    from storeml.errors import ConnectorError
    from storeml.streams.context import job_context
    from storeml.streams.enrich import EnrichBatch

    first = train_on_synthetic(settings, stores=3, events=1_500, seed=3)
    second = train_on_synthetic(settings, stores=3, events=1_500, seed=4, alias="next")
    root = tmp_path / "checkpoint"
    ctx = dataclasses.replace(
        job_context(settings, str(root)), shadow_alias=""
    )  # the state root is <checkpoint>/profile-state
    batch = EnrichBatch(ctx)
    served, _ = batch._batch_models(7)  # noqa: SLF001 - the driver's step before a batch runs
    assert served["customer"].version == first["customer"].version
    set_alias(
        settings.tracking_uri, None, settings.customer_model, "champion", second["customer"].version
    )
    again = EnrichBatch(ctx)  # a restarted driver replays batch 7, then runs batch 8
    assert again._batch_models(7)[0]["customer"] == served["customer"]  # noqa: SLF001
    assert again._batch_models(8)[0]["customer"].version == second["customer"].version  # noqa: SLF001

    # the registry goes away; a driver restarted now serves what batch 8 used
    down = dataclasses.replace(
        ctx,
        tracking_uri="http://127.0.0.1:9",
        registry_uri="http://127.0.0.1:9",
        registry_timeout_s=1.0,
    )
    restarted = EnrichBatch(down)
    assert restarted._batch_models(9)[0]["customer"].version == second["customer"].version  # noqa: SLF001
    # with no batch recorded at all it fails fast, naming the registry
    fresh = EnrichBatch(
        dataclasses.replace(down, state_root=str(tmp_path / "other" / "profile-state"))
    )
    with pytest.raises(ConnectorError):
        fresh._batch_models(0)  # noqa: SLF001
