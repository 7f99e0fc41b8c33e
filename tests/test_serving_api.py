"""The serving API over real Redis, served by a real ``storeml serve`` process (uvicorn).

Profiles are written by the stream's own Redis sink; the stream-level equality with the enriched
topic's Avro records is in ``tests/test_serving_stream.py``. Here: typed lookups, the batch, the
error bodies, every route's key check, rate limits, health, metrics and the OpenAPI document.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from storeml.connectors.redis_sink import RedisProfileSink
from storeml.schemas.typed import iso_millis
from storeml.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"

STORES = ("s1", "s2", "s3")


def customer(store: str, n: int, version: int = 1) -> dict[str, Any]:
    rng = random.Random(f"{store}-{n}-{version}")
    orders = rng.randint(0, 9)
    spend = orders * rng.randint(100, 90_000)
    last = 1_760_000_000_000 + rng.randint(0, 10**9)
    return {
        "store_id": store,
        "customer_id": f"c{n}",
        "profile_version": version,
        "order_count": orders,
        "total_spend_minor": spend,
        "avg_order_value_minor": spend / orders if orders else None,
        "first_order_time": last - 86_400_000 if orders else None,
        "last_order_time": last if orders else None,
        "last_event_time": last,
        "days_since_last_order": 0.0 if orders else None,
        "top_categories": [{"category": "shoes", "spend_minor": spend, "share": 1.0}]
        if orders
        else [],
        "product_views": rng.randint(0, 50),
        "propensity": rng.random() if n % 7 else None,
        "model": {"name": "m", "version": "3", "scope": "store"},
        "source": [{"topic": "orders", "partition": 0, "first_offset": n, "last_offset": n}],
        "shadow": None,
    }


def product(store: str, n: int) -> dict[str, Any]:
    return {
        "store_id": store,
        "product_id": f"p{n}",
        "profile_version": 2,
        "views": n,
        "order_count": 1,
        "units": 3,
        "revenue_minor": 4_500,
        "title": f"Product {n}",
        "description": None,
        "price_minor": 1_500,
        "category": None,
        "last_event_time": 1_760_000_000_123,
        "predicted_categories": [
            {"category": "shoes", "probability": 0.75, "rank": 0},
            {"category": "bags", "probability": 0.25, "rank": 1},
        ],
        "model": {"name": "p", "version": "1", "scope": "global"},
        "source": [{"topic": "products", "partition": 1, "first_offset": 5, "last_offset": 9}],
        "shadow": None,
    }


@pytest.fixture
def seeded(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    sink = RedisProfileSink(settings.redis, settings.redis_prefix)
    customers = [customer(store, n) for store in STORES for n in range(40)]
    products = [product(store, n) for store in STORES for n in range(5)]
    sink.write("customer", customers, "customer_id")
    sink.write("product", products, "product_id")
    sink.close()
    return {"customer": customers, "product": products}


def expected_fields(record: dict[str, Any], kind: str) -> dict[str, Any]:
    hidden = {"store_id", "customer_id", "product_id", "profile_version", "model", "source"}
    times = {"first_order_time", "last_order_time", "last_event_time"}
    return {k: (iso_millis(v) if k in times else v) for k, v in record.items() if k not in hidden}


def test_lookups_are_typed_as_the_avro_schema(seeded: dict, api_server: Any) -> None:
    server = api_server()
    with server.client(server.key("s1", "read")) as api:
        for record in seeded["customer"][:40]:
            got = api.get(f"/v1/stores/s1/customers/{record['customer_id']}")
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["kind"] == "customer" and body["id"] == record["customer_id"]
            assert body["profile_version"] == record["profile_version"]
            assert body["model"] == record["model"]
            assert body["fields"] == expected_fields(record, "customer")
            assert isinstance(body["fields"]["order_count"], int)
            assert body["freshness"]["last_event_time"] == iso_millis(record["last_event_time"])
        product_record = seeded["product"][0]
        got = api.get("/v1/stores/s1/products/p0").json()
        assert got["fields"] == expected_fields(product_record, "product")
        assert got["fields"]["predicted_categories"][0] == {
            "category": "shoes",
            "probability": 0.75,
            "rank": 0,
        }

        only = api.get("/v1/stores/s1/customers/c1", params={"fields": "propensity,order_count"})
        assert set(only.json()["fields"]) == {"propensity", "order_count"}
        bad = api.get("/v1/stores/s1/customers/c1", params={"fields": "propensity,nope"})
        assert bad.status_code == 422 and "nope" in bad.json()["error"]["message"]

        missing = api.get("/v1/stores/s1/customers/nobody")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


def test_batch_get_keeps_request_order_and_lists_missing(seeded: dict, api_server: Any) -> None:
    server = api_server(serve_batch_limit=50)
    with server.client(server.key("s2", "read")) as api:
        ids = ["c3", "ghost", "c1", "c39", "c0"]
        got = api.post("/v1/stores/s2/customers:batchGet", json={"ids": ids})
        assert got.status_code == 200, got.text
        body = got.json()
        assert [p["id"] for p in body["profiles"]] == ["c3", "c1", "c39", "c0"]
        assert body["missing"] == ["ghost"]
        by_id = {r["customer_id"]: r for r in seeded["customer"] if r["store_id"] == "s2"}
        for profile in body["profiles"]:
            assert profile["fields"] == expected_fields(by_id[profile["id"]], "customer")
        narrow = api.post(
            "/v1/stores/s2/products:batchGet", json={"ids": ["p1", "p2"], "fields": ["views"]}
        ).json()
        assert [p["fields"] for p in narrow["profiles"]] == [{"views": 1}, {"views": 2}]
        too_many = api.post(
            "/v1/stores/s2/customers:batchGet", json={"ids": [f"c{n}" for n in range(51)]}
        )
        assert too_many.status_code == 422 and "at most 50" in too_many.json()["error"]["message"]
        empty = api.post("/v1/stores/s2/customers:batchGet", json={"ids": []})
        assert empty.status_code == 422


# --- the key check, on every route and verb ------------------------------------------------------
#: (method, path template) -> (scope, JSON body). A new /v1 route must be added here.
ROUTES: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/v1/stores/{store}/customers/{entity_id}"): ("read", None),
    ("GET", "/v1/stores/{store}/products/{entity_id}"): ("read", None),
    ("POST", "/v1/stores/{store}/customers:batchGet"): ("read", {"ids": ["c1"]}),
    ("POST", "/v1/stores/{store}/products:batchGet"): ("read", {"ids": ["p1"]}),
    ("POST", "/v1/stores/{store}/models/{kind}:predict"): ("predict", {"ids": ["c1"]}),
    ("GET", "/v1/stores/{store}/segments/{kind}"): ("segments", None),
    ("GET", "/v1/stores/{store}/segments/{kind}:export"): ("segments", None),
}
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


def served_routes(api: httpx.Client) -> set[tuple[str, str]]:
    document = api.get("/openapi.json").json()
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def _url(template: str, store: str) -> str:
    entity = "p1" if "/products/" in template else "c1"
    return (
        template.replace("{store}", store)
        .replace("{entity_id}", entity)
        .replace("{kind}", "customer")
    )


def _call(api: httpx.Client, method: str, template: str, store: str, body: Any, **kw: Any) -> Any:
    params = {"field": "propensity", "min": "0"} if "/segments/" in template else None
    return api.request(method, _url(template, store), json=body, params=params, **kw)


def test_every_route_checks_the_key(seeded: dict, api_server: Any) -> None:
    server = api_server(serve_key_cache_seconds=0, serve_rate_limit=0)
    with server.client() as anonymous:
        routes = served_routes(anonymous)
    assert routes - OPEN_ROUTES - {("GET", "/docs"), ("GET", "/openapi.json")} <= set(ROUTES), (
        "a new route needs its expected scope in ROUTES"
    )
    served = {r: ROUTES[r] for r in ROUTES if r in routes}
    assert ("GET", "/v1/stores/{store}/customers/{entity_id}") in served

    full = server.key("s1", "read,predict,segments")
    revoked = server.key("s1", "read,predict,segments")
    server.keys.revoke(revoked.split("_")[1])
    with (
        server.client() as nobody,
        server.client(full) as owner,
        server.client(server.admin_key) as admin,
        server.client(revoked) as gone,
        server.client("sml_000000000000_" + "A" * 43) as forged,
    ):
        for (method, template), (scope, body) in served.items():
            what = f"{method} {template}"
            assert _call(nobody, method, template, "s1", body).status_code == 401, what
            assert _call(forged, method, template, "s1", body).status_code == 401, what
            assert _call(gone, method, template, "s1", body).status_code == 401, what
            header_only = _call(nobody, method, template, "s1", body, headers={"X-API-Key": full})
            assert header_only.status_code not in (401, 403, 404), (what, header_only.text)
            # another store: 404, the body a missing profile gets
            for other in ("s2", "no-such-store"):
                denied = _call(owner, method, template, other, body)
                assert denied.status_code == 404, (what, denied.text)
                assert denied.json()["error"]["code"] == "not_found"
            for others in [s for s in ("read", "predict", "segments") if s != scope]:
                narrow = server.key("s1", others)
                with server.client(narrow) as wrong_scope:
                    refused = _call(wrong_scope, method, template, "s1", body)
                    assert refused.status_code == 403, (what, others, refused.text)
            assert _call(owner, method, template, "s1", body).status_code not in (401, 403), what
            assert _call(admin, method, template, "s2", body).status_code not in (401, 403), what


def test_cross_store_requests_are_all_denied(seeded: dict, api_server: Any) -> None:
    """Every store key against every other store, on every served route: 100% denied."""
    server = api_server(serve_rate_limit=0)
    with server.client() as anonymous:
        routes = [r for r in ROUTES if r in served_routes(anonymous)]
    keys = {store: server.key(store, "read,predict,segments") for store in STORES}
    tried = denied = 0
    for store, key in keys.items():
        with server.client(key) as api:
            for other in STORES:
                if other == store:
                    continue
                for method, template in routes:
                    tried += 1
                    answer = _call(api, method, template, other, ROUTES[(method, template)][1])
                    denied += answer.status_code == 404
    assert tried == denied and tried >= 3 * 2 * 4


def test_keys_never_reach_the_log(seeded: dict, api_server: Any) -> None:
    server = api_server(serve_access_log=True, serve_key_cache_seconds=0)
    key = server.key("s1", "read")
    with server.client(key) as api:
        assert api.get("/v1/stores/s1/customers/c1").status_code == 200
        api.get("/v1/stores/s2/customers/c1")
        api.get("/v1/stores/s1/customers/c1", headers={"Authorization": "Bearer not-a-key"})
        api.get("/v1/stores/s1/customers/c1", headers={"Authorization": f"Bearer {key}x"})
        api.get("/v1/stores/s1/customers/bad{id}")
    log = server.output()
    assert "GET /v1/stores/{store}/customers/{entity_id} 200 key=" in log
    for made in [key, *server.made]:
        secret = made.split("_", 2)[2]
        assert secret not in log and made not in log
    assert "not-a-key" not in log


def test_rate_limit_answers_429_with_retry_after(seeded: dict, api_server: Any) -> None:
    server = api_server(serve_rate_limit=5)
    key = server.key("s1", "read")
    with server.client(key) as api:
        answers = [api.get("/v1/stores/s1/customers/c1") for _ in range(40)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited and answers[0].status_code == 200
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert int(limited[0].headers["Retry-After"]) >= 1
    # another key has its own bucket
    with server.client(server.key("s1", "read")) as other:
        assert other.get("/v1/stores/s1/customers/c1").status_code == 200


def test_health_readiness_and_metrics(seeded: dict, api_server: Any, settings: Settings) -> None:
    server = api_server()
    server.wait_ready()
    with server.client(server.key("s3", "read")) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["redis"] == "ok"
        for n in range(5):
            api.get(f"/v1/stores/s3/customers/c{n}")
        api.get("/v1/stores/s3/customers/nobody")
        metrics = api.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    route = 'route="/v1/stores/{store}/customers/{entity_id}"'
    assert re.search(
        rf'storeml_api_request_seconds_count\{{.*{re.escape(route)}.*status="200"\}} 5', text
    )
    assert 'status="404"' in text
    assert "storeml_api_model_cache_" in text
    assert "s3" not in text and "c1" not in text.replace("storeml", "")  # no store/entity labels


def test_readiness_fails_when_redis_is_gone(settings: Settings, api_server: Any) -> None:
    from storeml.stack import free_port

    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    from tests.api_server import start_server

    server = start_server(dead, Path(str(settings.checkpoint_path) + "-serve.log"), admin=False)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            answer = api.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["checks"]["redis"].startswith("failed")
    finally:
        server.stop()


def test_openapi_document_is_kept_in_docs(api_server: Any) -> None:
    server = api_server()
    with server.client() as api:
        served = api.get("/openapi.json").json()
    kept = json.loads(DOCS.read_text())
    assert served == kept, (
        "docs/openapi.json differs from the served document; regenerate it with"
        " `storeml serve --print-openapi > docs/openapi.json`"
    )
