"""Real-time predict (serving/predictor.py) on a real MLflow registry (SQLite) and a real Redis.

* by id and by posted row, predictions equal what the stream's scoring code writes for the same
  profiles (trained models: linear customer tables, per-store product models);
* a promotion (the champion alias moved by a plain ``MlflowClient`` call) is served without a
  restart; the time from the move to the first prediction naming the new version is printed;
* ``alias=challenger`` scores with the challenger; an unknown alias is refused;
* a store whose model raises falls back to the global model, the other stores are unaffected;
* no alias, and no registry: 503 saying which, and ``ready()`` says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from storeml.connectors.mlflow_registry import ModelHandle
from storeml.connectors.profile_reader import ProfileReader, connect_async
from storeml.connectors.redis_sink import RedisProfileSink
from storeml.connectors.registry_aliases import AliasResolver
from storeml.models.features import CUSTOMER_FEATURES
from storeml.models.profiles import to_records
from storeml.models.serving import Scorer, score_kind
from storeml.models.store_models import get_model_cache, write_bundle
from storeml.schemas.typed import to_json
from storeml.serving.bodies import HIDDEN_FIELDS
from storeml.serving.errors import ApiProblem
from storeml.serving.predictor import Predictor
from storeml.settings import Settings
from storeml.stack import free_port
from storeml.streams.publish import CUSTOMER_FIELDS, PRODUCT_FIELDS
from tests.conftest import MlflowUris
from tests.registry import log_and_register
from tests.test_faults import RaisingEstimator
from tests.test_models import CountingEstimator, _customer_rows, _profiles

T = TypeVar("T")

FIELDS = {"customer": CUSTOMER_FIELDS, "product": PRODUCT_FIELDS}
ID_FIELD = {"customer": "customer_id", "product": "product_id"}
SCORED = {"customer": "propensity", "product": "predicted_categories"}


def _run(settings: Settings, body: Callable[[Predictor], Awaitable[T]], **options: Any) -> T:
    """``body(predictor)`` with a started predictor on a real async Redis client, then closed."""

    async def main() -> T:
        client = connect_async(settings.redis)
        predictor = Predictor(settings, ProfileReader(client, settings.redis_prefix), **options)
        await predictor.start()
        try:
            return await body(predictor)
        finally:
            await predictor.close()
            await client.aclose()

    return asyncio.run(main())


async def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
    """Wait until ``check()``; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _customer_bundle(folder: Path, stores: dict[str, Any], global_model: Any) -> Path:
    return write_bundle(
        folder / "stores",  # the name the registered pyfunc expects
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=stores,
        global_model=global_model,
        linear=False,
    )


def _register(
    settings: Settings, mlflow_uris: MlflowUris, folder: Path, alias: str | None
) -> ModelHandle:
    handle: ModelHandle = log_and_register(
        folder, mlflow_uris.tracking_uri, mlflow_uris.artifact_root, settings.customer_model, alias
    )
    return handle


def _rows(kind: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as an API client posts them: ``Profile.fields`` JSON (ISO times) and ``id``."""
    rows = []
    for record in records:
        fields = {k: v for k, v in to_json(kind, record).items() if k not in HIDDEN_FIELDS}
        rows.append({"id": record[ID_FIELD[kind]], **fields})
    return rows


# --- (a) the stream's scores ----------------------------------------------------------------
def test_predict_by_id_and_by_row_equals_the_streams_scores(settings: Settings) -> None:
    from storeml.batch.history import synthetic_facts, train_on_synthetic

    handles = train_on_synthetic(settings, stores=5, events=4_000, seed=3)
    facts, _ = synthetic_facts(stores=5, events=3_000, seed=21)
    customers, products = _profiles(facts)
    cache = get_model_cache(settings.model_cache_size)
    stream: dict[str, list[dict[str, Any]]] = {}
    for kind, frame in (("customer", customers), ("product", products)):
        bundle = cache.bundle(handles[kind], settings.tracking_uri, settings.registry_uri)
        scored = score_kind(  # what streams/publish.py publish_profiles does
            kind,
            frame,
            Scorer(bundle, handles[kind]),
            None,
            model_name=handles[kind].name,
            faults=[],
        )
        stream[kind] = to_records(scored, FIELDS[kind])
    sink = RedisProfileSink(settings.redis, settings.redis_prefix, 5.0)
    for kind, records in stream.items():
        sink.write(kind, records, ID_FIELD[kind])
    sink.close()
    scored_products = [r for r in stream["product"] if r["predicted_categories"]]
    assert scored_products, "no uncategorised product was scored: the test would prove little"
    assert {r["model"]["scope"] for r in stream["customer"]} >= {"store"}

    async def body(predictor: Predictor) -> int:
        await _until("the first resolution", lambda: predictor.ready() is None)
        compared = 0
        for kind, records in stream.items():
            stores = sorted({r["store_id"] for r in records})
            for store in stores:
                mine = [r for r in records if r["store_id"] == store][:50]
                want = [
                    {"id": r[ID_FIELD[kind]], SCORED[kind]: r[SCORED[kind]], "model": r["model"]}
                    for r in mine
                ]
                ids = [r[ID_FIELD[kind]] for r in mine]
                by_id = await predictor.predict(kind, store, ids=[*ids, "nobody"])
                assert by_id["model"] == {
                    "name": handles[kind].name,
                    "version": handles[kind].version,
                    "alias": "champion",
                }
                assert by_id["predictions"] == want
                assert by_id["missing"] == ["nobody"]
                by_row = await predictor.predict(kind, store, rows=_rows(kind, mine))
                assert by_row["predictions"] == want and by_row["missing"] == []
                one = await predictor.predict(kind, store, rows=_rows(kind, mine[:1]))
                assert one["predictions"] == want[:1]  # a batch of one scores the same
                compared += len(mine)
        return compared

    compared = _run(settings, body)
    assert compared >= 100
    assert get_model_cache().stats()["bundle_hits"] >= 1  # the stream's own cache


# --- (b) promotion --------------------------------------------------------------------------
def test_a_promotion_is_served_without_a_restart(
    settings: Settings, mlflow_uris: MlflowUris, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    settings = settings.model_copy(update={"serve_alias_refresh_seconds": 1.0})
    old = _register(
        settings,
        mlflow_uris,
        _customer_bundle(tmp_path / "v1", {"s1": CountingEstimator("v1", first=0.2)}, None),
        "champion",
    )
    new = _register(
        settings,
        mlflow_uris,
        _customer_bundle(tmp_path / "v2", {"s1": CountingEstimator("v2", first=0.9)}, None),
        None,
    )
    row = {"id": "c1", "order_count": 2, "last_event_time": "2026-11-30T10:00:00.000Z"}

    async def body(predictor: Predictor) -> tuple[float, list[str]]:
        await _until("the first resolution", lambda: predictor.ready() is None)
        before = await predictor.predict("customer", "s1", rows=[row])
        assert before["model"]["version"] == old.version
        assert before["predictions"][0]["propensity"] == pytest.approx(0.8)
        client = MlflowClient(tracking_uri=settings.tracking_uri)  # as a data scientist would
        client.set_registered_model_alias(settings.customer_model, "champion", new.version)
        moved = time.monotonic()
        seen: list[str] = []
        while time.monotonic() - moved < 60:
            answer = await predictor.predict("customer", "s1", rows=[row])
            seen.append(answer["model"]["version"])
            if answer["model"]["version"] == new.version:
                assert answer["predictions"][0]["propensity"] == pytest.approx(0.1)
                assert answer["predictions"][0]["model"]["version"] == new.version
                break
            await asyncio.sleep(0.005)
        return time.monotonic() - moved, seen

    elapsed, seen = _run(settings, body)
    assert seen[-1] == new.version, f"still {seen[-1]} 60 s after the move"
    assert set(seen) <= {old.version, new.version}
    print(
        f"\npromotion: alias moved -> first prediction by version {new.version} after"
        f" {elapsed * 1000:.0f} ms (serve_alias_refresh_seconds="
        f"{settings.serve_alias_refresh_seconds:g}; {len(seen)} requests)"
    )


# --- (c) challenger -------------------------------------------------------------------------
def test_alias_challenger_scores_with_the_challenger(
    settings: Settings, mlflow_uris: MlflowUris, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    champion = _register(
        settings,
        mlflow_uris,
        _customer_bundle(tmp_path / "v1", {}, CountingEstimator("g1", first=0.3)),
        "champion",
    )
    challenger = _register(
        settings,
        mlflow_uris,
        _customer_bundle(tmp_path / "v2", {}, CountingEstimator("g2", first=0.6)),
        "challenger",
    )
    rows: list[dict[str, Any]] = [{"id": "c1"}, {"order_count": 1}]
    settings = settings.model_copy(update={"serve_alias_refresh_seconds": 0.2})

    async def body(predictor: Predictor) -> None:
        await _until("the first resolution", lambda: predictor.ready() is None)
        served = await predictor.predict("customer", "s1", rows=rows)
        shadow = await predictor.predict("customer", "s1", rows=rows, alias="challenger")
        assert served["model"] == {
            "name": settings.customer_model,
            "version": champion.version,
            "alias": "champion",
        }
        assert shadow["model"]["version"] == challenger.version
        assert shadow["model"]["alias"] == "challenger"
        assert [p["propensity"] for p in served["predictions"]] == pytest.approx([0.7, 0.7])
        assert [p["propensity"] for p in shadow["predictions"]] == pytest.approx([0.4, 0.4])
        assert [p["id"] for p in shadow["predictions"]] == ["c1", None]
        assert {p["model"]["scope"] for p in shadow["predictions"]} == {"global"}
        with pytest.raises(ApiProblem, match="alias 'staging'") as refused:
            await predictor.predict("customer", "s1", rows=rows, alias="staging")
        assert refused.value.status == 422
        # the product model was never registered: 503 naming the alias
        with pytest.raises(ApiProblem, match="has no alias 'champion'") as missing:
            await predictor.predict("product", "s1", rows=[{"title": "red shoe"}])
        assert missing.value.status == 503
        # removing the challenger ends the experiment: refused within a pass
        MlflowClient(tracking_uri=settings.tracking_uri).delete_registered_model_alias(
            settings.customer_model, "challenger"
        )
        await _until(
            "the challenger to go",
            lambda: predictor.served().get("customer@challenger") is None,
        )
        with pytest.raises(ApiProblem, match="no alias 'challenger'"):
            await predictor.predict("customer", "s1", rows=rows, alias="challenger")
        assert (await predictor.predict("customer", "s1", rows=rows))["model"]["version"] == (
            champion.version
        )

    _run(settings, body)


# --- (d) fault isolation --------------------------------------------------------------------
def test_a_store_whose_model_raises_falls_back_to_global(
    settings: Settings, mlflow_uris: MlflowUris, tmp_path: Path
) -> None:
    folder = _customer_bundle(
        tmp_path / "v1",
        {"a": CountingEstimator("a", first=0.2), "bad": RaisingEstimator("bad")},
        CountingEstimator("global", first=0.6),
    )
    handle = _register(settings, mlflow_uris, folder, "champion")
    profiles = _customer_rows({"a": 3, "bad": 2})
    records = to_records(profiles, CUSTOMER_FIELDS)

    async def body(predictor: Predictor) -> None:
        await _until("the first resolution", lambda: predictor.ready() is None)
        bad = await predictor.predict(
            "customer",
            "bad",
            rows=_rows("customer", [r for r in records if r["store_id"] == "bad"]),
        )
        good = await predictor.predict(
            "customer", "a", rows=_rows("customer", [r for r in records if r["store_id"] == "a"])
        )
        assert [p["model"] for p in bad["predictions"]] == [
            {"name": settings.customer_model, "version": handle.version, "scope": "global"}
        ] * 2
        assert [p["propensity"] for p in bad["predictions"]] == pytest.approx([0.4, 0.4])
        assert [p["propensity"] for p in good["predictions"]] == pytest.approx([0.8] * 3)
        assert {p["model"]["scope"] for p in good["predictions"]} == {"store"}
        assert predictor.faults == 1
        assert predictor.registry_stats()["model_faults"] == 1

    _run(settings, body)


# --- refusals and an absent registry --------------------------------------------------------
def test_rows_of_another_store_and_bad_rows_are_refused(
    settings: Settings, mlflow_uris: MlflowUris, tmp_path: Path
) -> None:
    _register(
        settings,
        mlflow_uris,
        _customer_bundle(tmp_path / "v1", {}, CountingEstimator("g", first=0.5)),
        "champion",
    )

    async def body(predictor: Predictor) -> None:
        await _until("the first resolution", lambda: predictor.ready() is None)
        same = await predictor.predict("customer", "s1", rows=[{"store_id": "s1", "id": "c1"}])
        assert same["predictions"][0]["id"] == "c1"
        for row, message in (
            ({"store_id": "s2"}, "store_id is 's2', not 's1'"),
            ({"order_count": "three"}, "order_count"),
            ({"colour": "red"}, "unknown customer field"),
            ({"last_event_time": "yesterday"}, "last_event_time"),
            ({"id": "a b"}, "customer_id"),
            ({"id": "c1", "customer_id": "c2"}, "differ"),
        ):
            with pytest.raises(ApiProblem, match=message) as refused:
                await predictor.predict("customer", "s1", rows=[{"id": "ok"}, row])
            assert refused.value.status == 422
            assert "rows[1]" in refused.value.message
        # nested values and integer ranges are checked against the Avro types up front
        hostile: list[dict[str, Any]] = [
            {"top_categories": [1]},
            {"top_categories": [{}]},
            {"order_count": 10**400},
        ]
        for bad in hostile:
            with pytest.raises(
                ApiProblem, match="does not match its Avro type|outside the long"
            ) as refused:
                await predictor.predict("customer", "s1", rows=[bad])
            assert refused.value.status == 422

    _run(settings, body)


def test_without_a_registry_predict_is_unavailable_and_ready_says_why(
    settings: Settings,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = settings.model_copy(
        update={"mlflow_tracking_uri": dead, "mlflow_registry_uri": dead}
    )
    resolver = AliasResolver(dead, dead, 0.5, first_timeout_s=1.0)

    async def body(predictor: Predictor) -> str | None:
        assert predictor.ready() is not None  # not asked yet
        await _until("a failed pass", lambda: predictor.registry_stats()["passes"] >= 1)
        with pytest.raises(ApiProblem, match="unavailable") as refused:
            await predictor.predict("customer", "s1", rows=[{"id": "c1"}])
        assert refused.value.status == 503
        return predictor.ready()

    reason = _run(settings, body, resolver=resolver, refresh_s=0.2)
    assert reason is not None and dead in reason


# --- the route, served by uvicorn -------------------------------------------------------------
def test_the_predict_route_over_http(
    settings: Settings, mlflow_uris: MlflowUris, tmp_path: Path, api_server: Any
) -> None:
    handle = _register(
        settings,
        mlflow_uris,
        _customer_bundle(tmp_path / "v1", {"s1": CountingEstimator("s1", first=0.25)}, None),
        "champion",
    )
    server = api_server(serve_alias_refresh_seconds=0.5, serve_batch_limit=3)
    url = "/v1/stores/s1/models/customer:predict"
    with server.client(server.admin_key) as api:
        deadline = time.monotonic() + 60
        while (answer := api.post(url, json={"rows": [{"id": "c1"}]})).status_code == 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "model": {
                "name": settings.customer_model,
                "version": handle.version,
                "alias": "champion",
            },
            "predictions": [
                {
                    "id": "c1",
                    "propensity": pytest.approx(0.75),
                    "model": {
                        "name": settings.customer_model,
                        "version": handle.version,
                        "scope": "store",
                    },
                }
            ],
            "missing": [],
        }
        by_id = api.post(url, json={"ids": ["c1", "c2"]}).json()
        assert by_id["predictions"] == [] and by_id["missing"] == ["c1", "c2"]
        for body, params in (
            ({"ids": ["c1"], "rows": [{}]}, None),
            ({}, None),
            ({"ids": []}, None),
            ({"ids": ["a", "b", "c", "d"]}, None),
            ({"rows": [{}, {}, {}, {}]}, None),
            ({"ids": ["a:b"]}, None),
            ({"rows": [{"store_id": "s2"}]}, None),
            ({"ids": ["c1"]}, {"alias": "staging"}),
        ):
            refused = api.post(url, json=body, params=params)
            assert refused.status_code == 422, (body, refused.text)
            assert refused.json()["error"]["code"] == "invalid"
        assert (
            api.post("/v1/stores/s1/models/order:predict", json={"ids": ["c1"]}).status_code == 422
        )
        no_challenger = api.post(url, json={"ids": ["c1"]}, params={"alias": "challenger"})
        assert no_challenger.status_code == 503
        assert "no alias 'challenger'" in no_challenger.json()["error"]["message"]
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["registry"] == "ok"
