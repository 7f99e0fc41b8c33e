"""The SDK (``storeml.client``) and ``storeml lookup --api`` against the live serving API.

The server is a real ``storeml serve`` process (uvicorn) on a free loopback port, started by the
API tests' ``tests/api_server.py`` over the session's Redis and MLflow, once for the module (and
once more for the rate-limit and Redis-outage cases). Profiles are written by the stream's own
Redis sink (which also maintains the score index); models are trained and registered the way
``storeml train`` does. Only the first two tests use ``httpx.MockTransport``, and only for what
a live server cannot be made to say (a proxy's HTML 502, an answer of the wrong shape) or to
look at the requests themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from storeml.cli import main
from storeml.client import AsyncClient, Client
from storeml.client_models import ModelRef, Profile, SegmentItem
from storeml.errors import (
    ApiError,
    ApiForbiddenError,
    ApiInvalidError,
    ApiNotFoundError,
    ApiRateLimitedError,
    ApiUnauthorizedError,
    ApiUnavailableError,
    StoremlError,
)
from storeml.schemas.codec import get_codec
from storeml.schemas.typed import to_json
from storeml.settings import Settings, load_settings
from storeml.stack import free_port
from tests.api_server import ApiServer, start_server
from tests.conftest import MlflowUris

BASE_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z
N_CUSTOMERS = 220  # more than two batchGet requests' worth (serve_batch_limit 100)
UNSCORED = {7, 150}  # customers without a propensity: in no segment


# --- the pure layer (MockTransport: answers a live server cannot be made to give) -------------
def _mock(handler: Any) -> Client:
    return Client("http://api.test", api_key=_fake_key(), transport=httpx.MockTransport(handler))


def _fake_key() -> str:
    return "sml_0123456789ab_" + "S" * 43


def test_a_proxy_error_page_and_a_bad_answer_become_api_errors() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with _mock(proxy) as client, pytest.raises(ApiUnavailableError) as err:
        client.customer("s1", "c1")
    assert err.value.status == 502 and "Bad Gateway" in str(err.value)

    def wrong_shape(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"profile": {}})

    with _mock(wrong_shape) as client, pytest.raises(ApiError) as bad:
        client.customer("s1", "c1")
    assert bad.value.code == "bad_response" and type(bad.value) is ApiError


def test_requests_are_built_from_the_arguments() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith(":batchGet"):
            ids = json.loads(request.content)["ids"]
            return httpx.Response(200, json={"profiles": [], "missing": ids})
        return httpx.Response(200, json={"items": [], "next_cursor": None})

    with _mock(record) as client:
        assert client.customers("s1", [f"c{i}" for i in range(250)]).missing[-1] == "c249"
        assert client.customers("s1", []).missing == ()  # nothing to send
        client.segment("s1", "product", field="category", category="a/b", min=0.5, limit=3)
        with pytest.raises(TypeError):
            client.customers("s1", "c1")  # one string is not a list of ids
    assert [len(json.loads(r.content)["ids"]) for r in seen[:3]] == [100, 100, 50]
    assert seen[0].headers["authorization"] == f"Bearer {_fake_key()}"
    page = seen[3]
    assert page.url.path == "/v1/stores/s1/segments/product"
    assert dict(page.url.params) == {
        "field": "category",
        "category": "a/b",
        "min": "0.5",
        "limit": "3",
    }
    # an id cannot reach another route: its "/" is encoded inside the path segment
    with _mock(record) as client:
        client.segment("s/../x", "customer")
    assert seen[-1].url.raw_path.startswith(b"/v1/stores/s%2F..%2Fx/segments/customer")


def test_a_mangled_key_is_refused_without_being_quoted() -> None:
    mangled = _fake_key() + "\n"  # pasted with its line break
    with pytest.raises(ValueError) as err:
        Client("http://api.test", api_key=mangled)
    assert "0123456789ab" in str(err.value) and "S" * 43 not in str(err.value)


# --- records, keys and servers -----------------------------------------------------------------
def _customer(store: str, i: int, model: str) -> dict[str, Any]:
    t = BASE_MS + i * 60_000
    orders = i % 5 + 1
    return {
        "store_id": store,
        "customer_id": f"c{i}",
        "profile_version": 10 + i,
        "order_count": orders,
        "total_spend_minor": 1_000 * (i + 1),
        "avg_order_value_minor": 1_000.0 * (i + 1) / orders,
        "first_order_time": t - 86_400_000,
        "last_order_time": t,
        "last_event_time": t + 1_234,
        "days_since_last_order": float(i % 3),
        "top_categories": [{"category": "shoes", "spend_minor": 1_000 * (i + 1), "share": 1.0}],
        "product_views": i % 7,
        "propensity": None if i in UNSCORED else round(0.05 + i * 0.004, 6),
        "model": {"name": model, "version": "1", "scope": "store"},
        "source": [{"topic": "t", "partition": 0, "first_offset": i, "last_offset": i}],
        "shadow": None,
    }


def _product(store: str, i: int, model: str) -> dict[str, Any]:
    first, second = ("shoes", "bags") if i % 2 else ("bags", "shoes")
    # products with a category are not predicted by the model (only uncategorised ones are)
    top = round(0.5 + i * 0.04, 6)
    return {
        "store_id": store,
        "product_id": f"p{i}",
        "profile_version": 3 + i,
        "views": 10 * i,
        "order_count": i,
        "units": 2 * i,
        "revenue_minor": 500 * i,
        "title": f"Product {i}",
        "description": "leather, handmade",
        "price_minor": 2_500 + i,
        "category": first if i < 4 else None,
        "last_event_time": BASE_MS + i * 1_000,
        "predicted_categories": [
            {"category": first, "probability": top, "rank": 0},
            {"category": second, "probability": round(1 - top, 6), "rank": 1},
        ],
        "model": {"name": model, "version": "1", "scope": "global"},
        "source": [],
        "shadow": None,
    }


def _settings(home: Path, redis_url: str, mlflow: MlflowUris, tag: str, **serve: Any) -> Settings:
    return load_settings(
        home=home,
        redis_url=redis_url,
        mlflow_tracking_uri=mlflow.tracking_uri,
        mlflow_artifact_root=mlflow.artifact_root,
        redis_prefix=f"test:{tag}",
        customer_model=f"test-{tag}-customers",
        product_model=f"test-{tag}-products",
        **serve,
    )


class Live:
    """The module's server, its data and keys."""

    def __init__(self, server: ApiServer, keys: dict[str, str]) -> None:
        self.server = server
        self.url = server.url
        self.settings = server.settings
        self.keys = keys
        settings = server.settings
        self.customers = {
            store: {f"c{i}": _customer(store, i, settings.customer_model) for i in range(n)}
            for store, n in (("s1", N_CUSTOMERS), ("s2", 3))
        }
        self.products = {f"p{i}": _product("s1", i, settings.product_model) for i in range(6)}

    def client(self, key: str | None = "admin", **kwargs: Any) -> Client:
        return Client(self.url, api_key=None if key is None else self.keys[key], **kwargs)


@pytest.fixture(scope="module")
def live(
    settings_home: Path,
    redis_url: str,
    mlflow_uris: MlflowUris,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    from storeml.batch.history import train_on_synthetic
    from storeml.connectors.redis_sink import RedisProfileSink

    settings = _settings(settings_home, redis_url, mlflow_uris, uuid.uuid4().hex[:10])
    train_on_synthetic(settings, stores=3, events=2_000, seed=3)  # -> @champion, both kinds
    server = start_server(settings, tmp_path_factory.mktemp("sdk") / "serve.log", admin=False)
    try:
        keys = {
            "admin": server.key("*"),
            "s1": server.key("s1"),
            "s1-read": server.key("s1", "read"),
            "s2": server.key("s2"),
            "revoked": server.key("s1"),
        }
        server.keys.revoke(keys["revoked"].split("_")[1])
        _wait_ready(server.url)
        data = Live(server, keys)
        sink = RedisProfileSink(settings.redis, settings.redis_prefix)
        for records in data.customers.values():
            for record in records.values():
                get_codec("customer_profile").encode(record)  # the test's records are valid
            sink.write("customer", list(records.values()), "customer_id")
        for record in data.products.values():
            get_codec("product_profile").encode(record)
        sink.write("product", list(data.products.values()), "product_id")
        sink.close()
        yield data
    finally:
        server.stop()


def _wait_ready(url: str) -> None:
    """Until /readyz says ok: the predictor resolves the aliases in the background after start."""
    deadline = time.monotonic() + 120  # a bound on a broken start, not a measurement
    with Client(url) as client:
        while not (ready := client.ready()).ok:
            if time.monotonic() > deadline:
                raise AssertionError(f"the API never got ready: {ready}")
            time.sleep(0.1)


def _fields_of(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    hidden = {"store_id", "customer_id", "product_id", "profile_version", "model", "source"}
    return {k: v for k, v in to_json(kind, record).items() if k not in hidden}


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


# --- lookups -----------------------------------------------------------------------------------
def test_customer_lookup_is_typed_with_model_and_freshness(live: Live) -> None:
    record = live.customers["s1"]["c3"]
    before = datetime.now(UTC)
    with live.client("s1") as client:
        profile = client.customer("s1", "c3")
        narrow = client.customer("s1", "c3", fields=["order_count", "last_event_time"])
        also = client.customer("s1", "c3", fields="propensity,order_count")
    assert isinstance(profile, Profile)
    assert (profile.kind, profile.store_id, profile.id) == ("customer", "s1", "c3")
    assert profile.profile_version == record["profile_version"]
    assert profile.fields == _fields_of("customer", record)
    assert isinstance(profile["order_count"], int) and isinstance(profile["propensity"], float)
    assert profile["last_event_time"] == "2025-11-24T16:03:01.234Z"
    assert profile.model == ModelRef(live.settings.customer_model, "1", "store")
    assert _ms(profile.freshness.last_event_time) == record["last_event_time"]
    written = profile.freshness.written_at
    assert written is not None and written.tzinfo is not None
    assert written <= datetime.now(UTC) and _ms(written) >= _ms(before) - 3_600_000
    assert narrow.fields == {"order_count": 4, "last_event_time": "2025-11-24T16:03:01.234Z"}
    assert set(also.fields) == {"propensity", "order_count"}
    assert profile.to_dict()["freshness"]["last_event_time"] == profile["last_event_time"]


def test_product_lookup(live: Live) -> None:
    with live.client("admin") as client:
        product = client.product("s1", "p2")
    assert product.kind == "product" and product.fields == _fields_of(
        "product", live.products["p2"]
    )
    assert product["predicted_categories"][0] == {
        "category": "bags",
        "probability": 0.58,
        "rank": 0,
    }
    assert product.model == ModelRef(live.settings.product_model, "1", "global")


def test_batch_lookups_split_past_the_server_limit_and_keep_request_order(live: Live) -> None:
    wanted = [f"c{i}" for i in range(N_CUSTOMERS + 30)][::-1]  # 30 unknown ids, reversed order
    with live.client("s1-read") as client:
        batch = client.customers("s1", wanted, fields=["order_count"])
        products = client.products("s1", ["p5", "nope", "p0"])
    assert len(wanted) > 2 * live.settings.serve_batch_limit  # the server refuses one such request
    assert [p.id for p in batch.profiles] == [i for i in wanted if i in live.customers["s1"]]
    assert list(batch.missing) == [i for i in wanted if i not in live.customers["s1"]]
    for profile in batch.profiles:
        assert profile.fields == {"order_count": live.customers["s1"][profile.id]["order_count"]}
    assert [p.id for p in products.profiles] == ["p5", "p0"] and products.missing == ("nope",)


def test_lookup_errors_map_to_the_exception_tree(live: Live) -> None:
    with live.client("s1") as client:
        with pytest.raises(ApiNotFoundError) as missing:
            client.customer("s1", "nobody")
        with pytest.raises(ApiNotFoundError) as other_store:
            client.customer("s2", "c1")  # exists, but not for this key: same answer as missing
        with pytest.raises(ApiInvalidError) as bad_field:
            client.customer("s1", "c1", fields=["no_such_field"])
        with pytest.raises(ApiInvalidError) as bad_id:
            client.customer("s1", "a:b")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    assert other_store.value.status == 404 and "c1" in str(other_store.value)
    assert bad_field.value.status == 422 and "no_such_field" in str(bad_field.value)
    assert bad_id.value.status == 422 and bad_id.value.code == "invalid"
    with live.client(None) as anonymous, pytest.raises(ApiUnauthorizedError) as no_key:
        anonymous.customer("s1", "c1")
    with live.client("revoked") as revoked, pytest.raises(ApiUnauthorizedError) as gone:
        revoked.customer("s1", "c1")
    with live.client("s1-read") as reader, pytest.raises(ApiForbiddenError) as scope:
        reader.predict("s1", "customer", ids=["c1"])
    assert (no_key.value.status, gone.value.status, scope.value.status) == (401, 401, 403)
    assert scope.value.code == "forbidden" and "predict" in str(scope.value)
    assert all(isinstance(e.value, StoremlError) for e in (missing, no_key, scope))


# --- predict -------------------------------------------------------------------------------------
def test_predict_by_id_and_by_posted_rows(live: Live) -> None:
    with live.client("s1") as client:
        by_id = client.predict("s1", "customer", ids=["c1", "c2", "ghost"])
        profile = client.customer("s1", "c2")
        what_if = client.predict("s1", "customer", rows=[profile.fields], alias="champion")
        products = client.predict("s1", "product", ids=["p4", "p1"])
    assert by_id.model.name == live.settings.customer_model and by_id.model.alias == "champion"
    assert [p.id for p in by_id.predictions] == ["c1", "c2"] and by_id.missing == ("ghost",)
    for prediction in by_id.predictions:
        assert prediction.propensity is not None and 0.0 <= prediction.propensity <= 1.0
        assert prediction.model is not None and prediction.model.name == by_id.model.name
    # a stored profile posted back as a row scores as the stored profile does
    assert what_if.predictions[0].propensity == pytest.approx(by_id.predictions[1].propensity)
    categories = products.predictions[0].predicted_categories
    assert categories and [c.rank for c in categories] == list(range(len(categories)))
    assert products.predictions[1].predicted_categories == ()  # it has a category already
    assert sum(c.probability for c in categories) <= 1.0 + 1e-9


def test_predict_splits_many_ids_and_refuses_bad_arguments(live: Live) -> None:
    ids = [f"c{i}" for i in range(N_CUSTOMERS)]
    with live.client("admin") as client:
        result = client.predict("s1", "customer", ids=ids)
        with pytest.raises(ValueError):
            client.predict("s1", "customer")  # neither ids nor rows
        with pytest.raises(ApiInvalidError):
            client.predict("s1", "customer", rows=[{"order_count": "three"}])
    assert [p.id for p in result.predictions] == ids and result.missing == ()


# --- segments ----------------------------------------------------------------------------------
def _expected_segment(live: Live, low: float) -> list[SegmentItem]:
    members = [
        SegmentItem(r["customer_id"], r["propensity"])
        for r in live.customers["s1"].values()
        if r["propensity"] is not None and r["propensity"] >= low
    ]
    return sorted(members, key=lambda item: (-item.score, item.id))


def test_segment_pages_iteration_and_export(live: Live) -> None:
    want = _expected_segment(live, 0.5)
    with live.client("s1") as client:
        first = client.segment("s1", "customer", min=0.5, limit=10, order="score")
        second = client.segment(
            "s1", "customer", min=0.5, limit=10, cursor=first.next_cursor, order="score"
        )
        walked = list(client.iter_segment("s1", "customer", min=0.5, limit=7, order="score"))
        by_id = list(client.iter_segment("s1", "customer", min=0.5, limit=7))  # the default
        ndjson = list(client.export_segment("s1", "customer", min=0.5))
        as_csv = list(client.export_segment("s1", "customer", min=0.5, format="csv"))
        band = list(client.iter_segment("s1", "customer", min=0.3, max=0.4))
        shoes = client.segment("s1", "product", field="category", category="shoes", limit=100)
        by_default = client.segment("s1", "product", category="shoes", limit=100)  # field: kind's
    assert list(first.items) == want[:10] and list(second.items) == want[10:20]
    assert first.next_cursor is not None
    assert walked == want and len({item.id for item in walked}) == len(want)
    assert by_id == sorted(want, key=lambda item: item.id)
    assert ndjson == want
    assert [i.id for i in as_csv] == [i.id for i in want]
    assert [i.score for i in as_csv] == pytest.approx([i.score for i in want])
    assert band and all(0.3 <= item.score <= 0.4 for item in band)
    expected_shoes = {
        pid: next(c["probability"] for c in r["predicted_categories"] if c["category"] == "shoes")
        for pid, r in live.products.items()
    }
    assert {item.id: item.score for item in shoes.items} == pytest.approx(expected_shoes)
    assert shoes.next_cursor is None and by_default == shoes


def test_segment_errors(live: Live) -> None:
    with live.client("s1-read") as reader, pytest.raises(ApiForbiddenError):
        reader.segment("s1", "customer", min=0.5)
    with live.client("s1-read") as reader, pytest.raises(ApiForbiddenError):
        list(reader.export_segment("s1", "customer", min=0.5))  # raised when iteration starts
    with live.client("s2") as other, pytest.raises(ApiNotFoundError):
        list(other.iter_segment("s1", "customer"))
    with live.client("s1") as client, pytest.raises(ApiInvalidError):
        client.segment("s1", "customer", limit=live.settings.serve_page_limit + 1)
    with live.client("s1") as client, pytest.raises(ValueError):
        list(client.export_segment("s1", "customer", format="xlsx"))


# --- health, outages, rate limits --------------------------------------------------------------
def test_health_and_readiness(live: Live) -> None:
    with live.client(None) as client:
        health = client.health()
        ready = client.ready()
    assert health.ok and health.status == "ok"
    assert ready.ok and ready.checks["redis"] == "ok"


def test_an_unreachable_server_is_unavailable_with_its_cause() -> None:
    port = free_port()  # nobody listens there
    with Client(f"http://127.0.0.1:{port}", api_key=_fake_key()) as client:
        for call in (client.health, lambda: client.customer("s1", "c1")):
            with pytest.raises(ApiUnavailableError) as err:
                call()
            assert err.value.status == 0 and err.value.code == "unavailable"
            assert isinstance(err.value.__cause__, httpx.ConnectError)
            assert f"127.0.0.1:{port}" in str(err.value)


def test_redis_down_is_503_and_not_ready(
    settings_home: Path, mlflow_uris: MlflowUris, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    settings = _settings(settings_home, dead, mlflow_uris, "down", serve_auth=False)
    server = start_server(settings, tmp_path / "serve.log", admin=False)
    try:
        with Client(server.url) as client:
            ready = client.ready()
            with pytest.raises(ApiUnavailableError) as err:
                client.customer("s1", "c1")
    finally:
        server.stop()
    assert not ready.ok and ready.checks["redis"] != "ok"
    assert err.value.status == 503 and err.value.code == "unavailable"


def test_rate_limited_says_when_to_retry(live: Live, tmp_path: Path) -> None:
    # one request per 1,000 s (a burst of one): the second is refused whatever the clock says
    server = start_server(
        live.settings, tmp_path / "serve.log", admin=False, serve_rate_limit=0.001
    )
    try:
        with Client(server.url, api_key=live.keys["s1"]) as client:
            client.customer("s1", "c1")
            with pytest.raises(ApiRateLimitedError) as err:
                client.customer("s1", "c1")
    finally:
        server.stop()
    assert err.value.status == 429 and err.value.code == "rate_limited"
    assert err.value.retry_after >= 1


# --- the key stays secret --------------------------------------------------------------------------
def test_the_key_never_shows_in_repr_errors_or_logs(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    key = live.keys["s1"]
    secret = key.split("_", 2)[2]
    key_id = key.split("_")[1]
    caught: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        with live.client("s1") as client:
            shown = [repr(client), str(client)]
            client.customer("s1", "c1")
            for call in (
                lambda: client.customer("s1", "nobody"),
                lambda: client.customer("s2", "c1"),
                lambda: client.customer("s1", "c1", fields=["bad"]),
            ):
                with pytest.raises(ApiError) as err:
                    call()
                caught.append(err.value)
        with Client("http://127.0.0.1:9", api_key=key) as dead, pytest.raises(ApiError) as down:
            dead.health()
        caught.append(down.value)
        shown.append(repr(dead))
        asyncio.run(_async_repr(live, shown))
    assert key_id in shown[0] and live.url in shown[0]
    for error in caught:
        shown += [str(error), repr(error), repr(error.args)]
        shown += traceback.format_exception(error)
    shown += [record.getMessage() for record in caplog.records]
    shown += [repr(record.args) for record in caplog.records]
    assert caplog.records  # the capture did see the libraries' debug lines
    shown.append(live.server.output())  # the server's own log
    for text in shown:
        assert secret not in text and key not in text


async def _async_repr(live: Live, shown: list[str]) -> None:
    async with AsyncClient(live.url, api_key=live.keys["s1"]) as client:
        shown.append(repr(client))
        await client.customer("s1", "c1")


# --- AsyncClient -------------------------------------------------------------------------------
def test_async_client_does_what_the_sync_one_does(live: Live) -> None:
    async def run() -> dict[str, Any]:
        async with AsyncClient(live.url, api_key=live.keys["s1"]) as client:
            out: dict[str, Any] = {
                "customer": await client.customer("s1", "c3"),
                "product": await client.product("s1", "p2"),
                "customers": await client.customers("s1", [f"c{i}" for i in range(230)]),
                "products": await client.products("s1", ["p1", "x"]),
                "predict": await client.predict("s1", "customer", ids=["c1"]),
                "page": await client.segment("s1", "customer", min=0.5, limit=5, order="score"),
                "walk": [i async for i in client.iter_segment("s1", "customer", min=0.5, limit=9)],
                "export": [i async for i in client.export_segment("s1", "customer", min=0.5)],
                "health": await client.health(),
                "ready": await client.ready(),
            }
            try:
                await client.customer("s2", "c1")
            except ApiNotFoundError as exc:
                out["not_found"] = exc
        async with AsyncClient(live.url) as anonymous:
            try:
                await anonymous.customer("s1", "c1")
            except ApiUnauthorizedError as exc:
                out["unauthorized"] = exc
        return out

    out = asyncio.run(run())
    with live.client("s1") as client:
        assert out["customer"] == client.customer("s1", "c3")
        assert out["product"] == client.product("s1", "p2")
        assert out["predict"] == client.predict("s1", "customer", ids=["c1"])
    want = _expected_segment(live, 0.5)
    assert len(out["customers"].profiles) == N_CUSTOMERS and len(out["customers"].missing) == 10
    assert out["products"].missing == ("x",)
    assert list(out["page"].items) == want[:5]
    assert out["walk"] == sorted(want, key=lambda item: item.id)  # order=id, the default
    assert out["export"] == want
    assert out["health"].ok and out["ready"].ok
    assert out["not_found"].status == 404 and out["unauthorized"].status == 401


# --- storeml lookup --api --------------------------------------------------------------------------
def test_lookup_through_the_api(live: Live) -> None:
    runner = CliRunner()
    key = live.keys["s1-read"]
    args = ["lookup", "--api", live.url, "customer", "s1", "c3"]
    result = runner.invoke(main, args, env={"STOREML_API_KEY": key})
    assert result.exit_code == 0, result.output
    with live.client("s1") as client:
        assert json.loads(result.output) == client.customer("s1", "c3").to_dict()
    # the URL from the settings (environment) instead of --api; the key as an option
    by_env = runner.invoke(
        main,
        ["lookup", "--api-key", key, "product", "s1", "p1"],
        env={"STOREML_API_URL": live.url, "STOREML_API_KEY": None},
    )
    assert by_env.exit_code == 0, by_env.output
    assert json.loads(by_env.output)["fields"]["title"] == "Product 1"
    missing = runner.invoke(main, [*args[:-1], "nobody"], env={"STOREML_API_KEY": key})
    assert missing.exit_code == 1 and "no customer profile" in missing.output
    other = runner.invoke(main, ["lookup", "--api", live.url, "customer", "s2", "c1"],
                          env={"STOREML_API_KEY": key})  # fmt: skip
    assert other.exit_code == 1 and "no customer profile" in other.output
    refused = runner.invoke(main, args, env={"STOREML_API_KEY": live.keys["revoked"]})
    assert refused.exit_code == 1 and "401" in refused.output
    for result in (missing, other, refused):
        assert key.split("_", 2)[2] not in result.output
        assert live.keys["revoked"].split("_", 2)[2] not in result.output
