"""Faults stay with their tenant: a failing store model, global model or challenger, and a Redis
outage. Scoring is pure (no services); the Redis tests use real redis-server processes."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storeml.connectors.mlflow_registry import ModelHandle
from storeml.connectors.redis_sink import FeatureStore, RedisProfileSink
from storeml.errors import ConnectorError, ModelError
from storeml.models.features import CUSTOMER_FEATURES
from storeml.models.scoring import ScoringFault, score_customers, score_products
from storeml.models.serving import Fault, Scorer, score_kind
from storeml.models.store_models import StoreModelBundle, write_bundle
from storeml.stack import free_port, redis_answers
from tests.test_models import CountingEstimator, _customer_rows


class RaisingEstimator(CountingEstimator):
    """predict_proba raises, as a model trained on other features does."""

    def predict_proba(self, x: Any) -> np.ndarray:
        raise ValueError(f"X has {np.shape(x)[-1]} features, but the model expects 3")


def _bundle(tmp_path: Path, name: str, stores: dict[str, Any], global_model: Any) -> Path:
    return write_bundle(
        tmp_path / name,
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=stores,
        global_model=global_model,
        linear=False,
    )


def _handle(name: str, version: str, folder: Path) -> ModelHandle:
    return ModelHandle(name, version, None, folder.as_uri())


def test_a_failing_store_model_falls_back_to_global_and_other_stores_are_unaffected(
    tmp_path: Path,
) -> None:
    profiles = _customer_rows({"a": 3, "bad": 2, "c": 4})
    good = _bundle(
        tmp_path,
        "good",
        {"a": CountingEstimator("a", first=0.2), "bad": CountingEstimator("bad", first=0.4)},
        CountingEstimator("global", first=0.6),
    )
    broken = _bundle(
        tmp_path,
        "broken",
        {"a": CountingEstimator("a", first=0.2), "bad": RaisingEstimator("bad")},
        CountingEstimator("global", first=0.6),
    )
    reference = score_customers(profiles, StoreModelBundle(good), _handle("m", "1", good))
    faults: list[ScoringFault] = []
    scored = score_customers(
        profiles, StoreModelBundle(broken), _handle("m", "2", broken), faults=faults
    )

    others = scored["store_id"] != "bad"
    assert list(scored.loc[others, "propensity"]) == list(reference.loc[others, "propensity"])
    bad = scored.loc[~others]
    assert {m["scope"] for m in bad["model"]} == {"global"}
    assert list(bad["propensity"]) == pytest.approx([0.4, 0.4])  # 1 - first of the global model
    assert [(f.store_id, f.model, f.version, f.rows) for f in faults] == [("bad", "m", "2", 2)]
    assert "expects 3" in faults[0].error

    # without a faults list the failure raises, naming the store (batch jobs that prefer to stop)
    with pytest.raises(ModelError, match="store 'bad'"):
        score_customers(profiles, StoreModelBundle(broken), _handle("m", "2", broken))


def test_a_failing_global_model_leaves_only_its_rows_unavailable(tmp_path: Path) -> None:
    profiles = _customer_rows({"a": 2, "nomodel": 3})
    folder = _bundle(
        tmp_path, "b", {"a": CountingEstimator("a", first=0.2)}, RaisingEstimator("global")
    )
    faults: list[ScoringFault] = []
    scored = score_customers(
        profiles, StoreModelBundle(folder), None, model_name="m", faults=faults
    )
    scopes = dict(zip(scored["store_id"], (m["scope"] for m in scored["model"]), strict=False))
    assert scopes == {"a": "store", "nomodel": "unavailable"}
    assert scored.loc[scored["store_id"] == "nomodel", "propensity"].isna().all()
    assert [(f.store_id, f.rows) for f in faults] == [(None, 3)]


def test_a_version_that_cannot_be_opened_publishes_unavailable_not_none(tmp_path: Path) -> None:
    customers = _customer_rows({"a": 2})
    handle = ModelHandle("m", "7", None, (tmp_path / "gone").as_uri())
    faults: list[Fault] = []
    scored = score_kind(
        "customer",
        customers,
        Scorer(None, handle, "ModelError: cannot download"),
        None,
        model_name="m",
        faults=faults,
    )
    assert {m["scope"] for m in scored["model"]} == {"unavailable"}
    assert [(f.kind, f.role, f.fault.version, f.fault.error) for f in faults] == [
        ("customer", "served", "7", "ModelError: cannot download")
    ]
    # no handle at all (nothing registered) stays "none" and is not a fault
    plain = score_customers(customers, None, None, model_name="m")
    assert {m["scope"] for m in plain["model"]} == {"none"}

    import pandas as pd

    products = pd.DataFrame(
        {
            "store_id": ["a", "a"],
            "product_id": ["p1", "p2"],
            "title": ["red shoe", "blue hat"],
            "description": [None, None],
            "category": [None, "hats"],
        }
    )
    out = score_products(products, None, handle)
    assert [m["scope"] for m in out["model"]] == ["unavailable", "none"]  # p2 has its category


def test_a_failing_challenger_disables_shadow_for_the_call_only(tmp_path: Path) -> None:
    profiles = _customer_rows({"a": 3, "b": 2})
    champion_folder = _bundle(
        tmp_path, "champion", {"a": CountingEstimator("a", first=0.2)}, CountingEstimator("g")
    )
    challenger_folder = _bundle(
        tmp_path, "challenger", {"a": RaisingEstimator("a")}, CountingEstimator("g2")
    )
    champion = Scorer(StoreModelBundle(champion_folder), _handle("m", "1", champion_folder))
    challenger = Scorer(StoreModelBundle(challenger_folder), _handle("m", "2", challenger_folder))
    alone = score_kind("customer", profiles, champion, None, model_name="m")
    faults: list[Fault] = []
    both = score_kind("customer", profiles, champion, challenger, model_name="m", faults=faults)
    assert both["shadow"].isna().all()
    assert list(both["propensity"]) == list(alone["propensity"])
    assert [(f.role, f.fault.store_id, f.fault.version) for f in faults] == [("shadow", "a", "2")]
    # a challenger that cannot be opened: shadow off, served untouched, one fault
    faults.clear()
    unopened = Scorer(None, _handle("m", "3", tmp_path), "OSError: gone")
    out = score_kind("customer", profiles, champion, unopened, model_name="m", faults=faults)
    assert out["shadow"].isna().all() and list(out["propensity"]) == list(alone["propensity"])
    assert [(f.role, f.fault.version) for f in faults] == [("shadow", "3")]


# --- Redis ------------------------------------------------------------------------------------
class _Redis:
    """A redis-server with an append-only file, so that a stop and restart keeps the data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url, timeout=0.5):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: redis fsyncs the AOF and exits
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = _Redis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _record(version: int, propensity: float | None, scope: str) -> dict[str, Any]:
    return {
        "store_id": "s1",
        "customer_id": "c1",
        "profile_version": version,
        "order_count": version,
        "propensity": propensity,
        "model": {"name": "m", "version": "4" if scope != "none" else None, "scope": scope},
    }


def test_an_unscored_write_after_a_failure_keeps_the_stored_score(own_redis: _Redis) -> None:
    sink = RedisProfileSink(own_redis.url, "t")
    lookups = FeatureStore(own_redis.url, "t")
    sink.write("customer", [_record(1, 0.8, "store")], "customer_id")
    sink.write("customer", [_record(2, None, "unavailable")], "customer_id")
    stored = lookups.customer("s1", "c1")
    assert stored is not None
    assert stored["order_count"] == "2"  # the profile moved on
    assert stored["propensity"] == "0.8"  # its score stayed, with the model that made it
    assert stored["model"] == {"name": "m", "version": "4", "scope": "store"}
    # a replay of the same write is idempotent (written_at is the wall clock of the write)
    sink.write("customer", [_record(2, None, "unavailable")], "customer_id")
    replayed = lookups.customer("s1", "c1")
    assert replayed is not None and int(replayed["written_at"]) >= int(stored["written_at"])
    assert {**replayed, "written_at": None} == {**stored, "written_at": None}
    # a deliberate "none" (no model registered any more) does clear the score
    sink.write("customer", [_record(3, None, "none")], "customer_id")
    cleared = lookups.customer("s1", "c1")
    assert cleared is not None and "propensity" not in cleared
    sink.close()
    lookups.close()


def test_writes_wait_out_a_redis_outage_with_backoff(own_redis: _Redis) -> None:
    sink = RedisProfileSink(own_redis.url, "t", retry_seconds=60)
    sink.write("customer", [_record(1, 0.5, "store")], "customer_id")
    own_redis.stop()
    outcome: dict[str, Any] = {}

    def write() -> None:
        started = time.monotonic()
        outcome["result"] = sink.write("customer", [_record(2, 0.6, "store")], "customer_id")
        outcome["seconds"] = time.monotonic() - started

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(3)
    assert writer.is_alive(), "the write should wait for Redis"
    own_redis.start()  # same port, same append-only file
    writer.join(30)
    assert outcome.get("result") == (1, 0), outcome
    assert outcome["seconds"] >= 3
    stored = FeatureStore(own_redis.url, "t").customer("s1", "c1")
    assert stored is not None and stored["profile_version"] == "2"

    # past retry_seconds the write fails with a clear error (and the batch is replayed later)
    own_redis.stop()
    short = RedisProfileSink(own_redis.url, "t", retry_seconds=1)
    with pytest.raises(ConnectorError, match="Redis unreachable for 1s"):
        short.write("customer", [_record(3, 0.6, "store")], "customer_id")


def test_an_artifact_store_that_does_not_answer_is_waited_for_not_published_unscored(
    settings: Any, tmp_path: Path
) -> None:
    """A version whose files cannot be fetched (yet) is not a broken version: the task waits,
    so that a replay publishes what the first attempt would have; past the bound it fails."""
    import dataclasses
    import shutil

    from storeml.errors import ArtifactUnavailableError
    from storeml.streams.context import job_context
    from storeml.streams.publish import publish_profiles

    built = _bundle(tmp_path, "built", {"a": CountingEstimator("a", first=0.2)}, None)
    shared = tmp_path / "shared"  # a shared folder that is not mounted yet
    late = shared / "artifacts" / "stores"
    handle = ModelHandle("m", "5", None, shared.as_uri())
    ctx = dataclasses.replace(
        job_context(settings), publish=False, profiles_dir=None, model_fetch_retry_seconds=30
    )
    customers = _customer_rows({"a": 2})
    products = customers.iloc[0:0].assign(product_id=[])

    def mount() -> None:
        time.sleep(1.5)
        shutil.copytree(built, late)

    mounting = threading.Thread(target=mount)
    mounting.start()
    started = time.monotonic()
    done = publish_profiles(ctx, customers, products, {"customer": handle}, {}, "0")
    mounting.join()
    assert time.monotonic() - started >= 1.5 and done.fault_count == 0

    gone = ModelHandle("m", "6", None, (tmp_path / "never").as_uri())
    quick = dataclasses.replace(ctx, model_fetch_retry_seconds=0.5)
    with pytest.raises(ArtifactUnavailableError):
        publish_profiles(quick, customers, products, {"customer": gone}, {}, "0")
