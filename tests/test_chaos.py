"""The chaos run, small: kill -9 the stream (the CLI's process group) 3 times, restart it, compare.

``bench/chaos.py`` is the full run (12 kills over 40+ micro-batches); this test runs the same code
with 3 kills aimed at a Redis write, the state commit (its manifest) and a lake compaction, over
2 production steps, and requires the killed run to equal an uninterrupted one: Redis hashes, the
enriched topics after the header dedupe, the lake (every accepted event exactly once) and the
dead letters. The comparison itself is checked first on hand-made outputs, so that a difference
of each kind is known to be caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos import ChaosConfig, ChaosWorld, format_report, run_chaos
from bench.chaos_compare import RunOutputs, compare_runs


def _outputs(**changes: Any) -> RunOutputs:
    header = (("storeml.profile_version", b"2"),)
    base = {
        "redis": {":{s1}:customer:c1": {"profile_version": "2", "order_count": "2"}},
        "topics": {
            "customer": {b"s1|c1": [(1, b"v1", header), (2, b"v2", header)]},
            "product": {},
        },
        "lake_rows": [(("orders", 0, 0), b"k", b"a", "s1"), (("orders", 0, 1), b"k", b"b", "s1")],
        "lake_incoming": [],
        "dead_letters": [("orders", 0, 2)],
    }
    return RunOutputs(**{**base, **changes})


INPUTS = {
    ("orders", 0, 0): (b"k", b"a"),
    ("orders", 0, 1): (b"k", b"b"),
    ("orders", 0, 2): (b"k", b"?"),
}


def test_the_comparison_catches_each_kind_of_difference() -> None:
    clean = _outputs()
    assert compare_runs(_outputs(), clean, INPUTS).ok

    redis = compare_runs(
        _outputs(redis={":{s1}:customer:c1": {"profile_version": "2", "order_count": "3"}}),
        clean,
        INPUTS,
    )
    assert not redis.ok and redis.redis_differing == [":{s1}:customer:c1"]

    header = (("storeml.profile_version", b"2"),)
    replayed = _outputs(
        topics={
            "customer": {b"s1|c1": [(1, b"v1", header), (2, b"v2", header), (2, b"v2", header)]},
            "product": {},
        }
    )
    ok = compare_runs(replayed, clean, INPUTS)
    assert ok.ok and ok.topic_replayed == 1  # a replay repeating a version is fine
    skipped = _outputs(topics={"customer": {b"s1|c1": [(2, b"v2", header)]}, "product": {}})
    assert compare_runs(skipped, clean, INPUTS).topic_versions_lost == 1
    changed = _outputs(
        topics={"customer": {b"s1|c1": [(1, b"v1", header), (2, b"v3", header)]}, "product": {}}
    )
    assert compare_runs(changed, clean, INPUTS).differing_keys == 1

    lost = compare_runs(_outputs(lake_rows=clean.lake_rows[:1]), clean, INPUTS)
    assert lost.lake_lost == 1 and lost.lost == 1 and not lost.ok
    twice = compare_runs(_outputs(lake_rows=clean.lake_rows + clean.lake_rows[:1]), clean, INPUTS)
    assert twice.duplicated == 1 and not twice.ok
    pending = compare_runs(
        _outputs(lake_rows=clean.lake_rows[:1], lake_incoming=clean.lake_rows), clean, INPUTS
    )
    assert pending.ok and pending.lake_incoming_left == 2  # readers drop the compacted repeat

    dead = compare_runs(_outputs(dead_letters=[]), clean, INPUTS)
    assert dead.dead_letters_lost == 1 and not dead.ok


@pytest.mark.slow(minutes=7)
def test_three_kills_then_restarts_equal_an_uninterrupted_run(
    kafka_bootstrap: str, mlflow_uris: Any, tmp_path: Path
) -> None:
    from storeml.stack import RedisServer

    redis_server = RedisServer(workdir=tmp_path / "redis")  # ours: the run turns notifications on
    redis_server.start()
    try:
        world = ChaosWorld(
            workdir=tmp_path,
            kafka_bootstrap=kafka_bootstrap,
            redis_url=redis_server.url,
            tracking_uri=mlflow_uris.tracking_uri,
            artifact_root=mlflow_uris.artifact_root,
        )
        config = ChaosConfig(
            stores=40,
            events=3_000,
            steps=3,  # one kill per step: a step of ~4 batches leaves room to aim
            kills=3,
            kinds=("redis", "manifest", "compaction"),
            max_records=250,
            train_events=4_000,
            patience=3,
            seed=3,
        )
        result = run_chaos(world, config)
    finally:
        redis_server.stop()
    report = format_report(result)
    print(report)
    assert result.error is None, report
    assert not result.crashes, report
    assert len(result.kills) >= 3, report
    assert result.batches_killed_run >= 10, report
    assert result.ok, report
