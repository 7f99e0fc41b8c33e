"""Segments from the score index equal a pandas filter of all profiles (real Redis, real sink).

Profiles are written through the stream's :class:`RedisProfileSink`; segments are read with the
async reader (the API's), the sync one (the CLI's), ``storeml segments export`` and the HTTP API
served by uvicorn. Pages and exports are also read while another thread keeps writing, deleting
and unscoring other profiles of the same store at the same scores: the profiles that do not
change must come back exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
import redis.asyncio

from storeml.cli import main
from storeml.connectors.redis_sink import RedisProfileSink
from storeml.connectors.segment_reader import (
    SegmentReader,
    SyncSegmentReader,
    decode_cursor,
    encode_cursor,
)
from storeml.errors import CodecError
from storeml.settings import Settings

SCORES = [0.95, 0.9, 0.85, 0.8, 0.8, 0.8, 0.75, 0.5, 0.2]  # many ties, on purpose
CATEGORIES = ["shoes", "bags", "hats", "Home & Garden: {tools}"]


def customer(store: str, entity: str, version: int, propensity: float | None) -> dict[str, Any]:
    return {
        "store_id": store,
        "customer_id": entity,
        "profile_version": version,
        "order_count": version,
        "propensity": propensity,
        "model": {"name": "m", "version": "1", "scope": "store"},
        "source": [],
    }


def product(
    store: str, entity: str, version: int, predicted: list[tuple[str, float]]
) -> dict[str, Any]:
    return {
        "store_id": store,
        "product_id": entity,
        "profile_version": version,
        "views": version,
        "predicted_categories": [
            {"category": c, "probability": p, "rank": r} for r, (c, p) in enumerate(predicted)
        ],
        "model": {"name": "m", "version": "1", "scope": "store"},
        "source": [],
    }


def make_profiles(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    customers = [
        customer(
            f"s{n % 3}",
            f"c{n:04d}",
            1,
            None if rng.random() < 0.1 else rng.choice(SCORES + [rng.random()]),
        )
        for n in range(600)
    ]
    products = []
    for n in range(300):
        picked = rng.sample(CATEGORIES, rng.randrange(0, 4))
        predicted = sorted(((c, rng.choice(SCORES)) for c in picked), key=lambda x: -x[1])
        products.append(product(f"s{n % 3}", f"p{n:04d}", 1, predicted))
    return customers, products


def want_customers(
    customers: list[dict[str, Any]], store: str, low: float | None, high: float | None
) -> list[tuple[str, float]]:
    """The pandas filter a segment must equal: score in [low, high], score desc, id desc."""
    frame = pd.DataFrame(customers)
    frame = frame[(frame.store_id == store) & frame.propensity.notna()]
    if low is not None:
        frame = frame[frame.propensity >= low]
    if high is not None:
        frame = frame[frame.propensity <= high]
    frame = frame.sort_values(["propensity", "customer_id"], ascending=False)
    return list(zip(frame.customer_id, frame.propensity.astype(float), strict=True))


def want_products(
    products: list[dict[str, Any]], store: str, category: str, low: float | None
) -> list[tuple[str, float]]:
    rows = [
        {"id": p["product_id"], "score": c["probability"]}
        for p in products
        if p["store_id"] == store
        for c in p["predicted_categories"]
        if c["category"] == category
    ]
    frame = pd.DataFrame(rows, columns=["id", "score"])
    if low is not None:
        frame = frame[frame.score >= low]
    frame = frame.sort_values(["score", "id"], ascending=False)
    return list(zip(frame.id, frame.score.astype(float), strict=True))


@pytest.fixture
def written(settings: Settings) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    customers, products = make_profiles(seed=11)
    sink = RedisProfileSink(settings.redis_url, settings.redis_prefix)
    assert sink.write("customer", customers, "customer_id") == (len(customers), 0)
    assert sink.write("product", products, "product_id") == (len(products), 0)
    sink.close()
    yield customers, products


def all_pages(
    reader: SyncSegmentReader, limit: int, order: str = "score", **query: Any
) -> list[list[tuple[str, float]]]:
    pages, cursor = [], None
    while True:
        items, cursor = reader.page(limit=limit, cursor=cursor, order=order, **query)
        pages.append([(i["id"], i["score"]) for i in items])
        if cursor is None:
            return pages


def test_pages_and_exports_equal_a_pandas_filter(settings: Settings, written: Any) -> None:
    customers, products = written
    client = redis.Redis.from_url(settings.redis_url)
    reader = SyncSegmentReader(client, settings.redis_prefix)
    for store, low, high in [("s0", 0.8, None), ("s1", None, 0.85), ("s2", 0.8, 0.8), ("s1", 2, 3)]:
        want = want_customers(customers, store, low, high)
        query = {"kind": "customer", "store": store, "field": "propensity", "min": low, "max": high}
        for order, expected in (("score", want), ("id", sorted(want))):
            for limit in (1, 3, 7, 1000):
                pages = all_pages(reader, limit, order, **query)
                got = [row for page in pages for row in page]
                assert got == expected, (store, low, high, limit, order)
                assert all(len(page) == limit for page in pages[:-1])
                assert len(pages) == max(1, -(-len(want) // limit))  # no empty last page
        exported = [(i["id"], i["score"]) for chunk in reader.export(**query) for i in chunk]
        assert exported == want
    assert want_customers(customers, "s0", 0.8, None), "the data should give a segment"
    for category in CATEGORIES:
        want = want_products(products, "s1", category, 0.5)
        assert want, category
        query = {"kind": "product", "store": "s1", "field": "category", "category": category}
        pages = all_pages(reader, 4, min=0.5, max=None, **query)
        assert [row for page in pages for row in page] == want
        by_id = all_pages(reader, 4, "id", min=0.5, max=None, **query)
        assert [row for page in by_id for row in page] == sorted(want)
        exported = reader.export(min=0.5, max=None, **query)
        assert [(i["id"], i["score"]) for chunk in exported for i in chunk] == want
    client.close()

    async def read_async() -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        aclient = redis.asyncio.Redis.from_url(settings.redis_url)
        areader = SegmentReader(aclient, settings.redis_prefix)
        got, cursor = [], None
        while True:
            items, cursor = await areader.page(
                "customer", "s0", "propensity", 0.8, None, 5, cursor, order="score"
            )
            got += [(i["id"], i["score"]) for i in items]
            if cursor is None:
                break
        exported = [
            (i["id"], i["score"])
            async for chunk in areader.export("customer", "s0", "propensity", 0.8, None)
            for i in chunk
        ]
        await aclient.aclose()
        return got, exported

    got, exported = asyncio.run(read_async())
    assert got == exported == want_customers(customers, "s0", 0.8, None)


def test_bad_queries_and_cursors_are_refused(settings: Settings) -> None:
    reader = SyncSegmentReader(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    with pytest.raises(CodecError, match="propensity"):
        reader.page("customer", "s0", "order_count", None, None, 10, None)
    with pytest.raises(CodecError, match="category"):
        reader.page("product", "s0", "category", None, None, 10, None)
    with pytest.raises(CodecError, match="cursor"):
        reader.page("customer", "s0", "propensity", None, None, 10, "not-a-cursor")
    with pytest.raises(CodecError, match="limit"):
        reader.page("customer", "s0", "propensity", None, None, 0, None)
    score_cursor = encode_cursor((0.8, "c0007", 3))
    with pytest.raises(CodecError, match="order=id"):  # a cursor of the other order
        reader.page("customer", "s0", "propensity", None, None, 10, score_cursor, order="id")
    with pytest.raises(CodecError, match="order"):
        reader.page("customer", "s0", "propensity", None, None, 10, None, order="random")
    text = encode_cursor((0.8, "c0007", 3))
    assert decode_cursor(text) == (0.8, "c0007", 3)
    assert all(ch.isalnum() or ch in "-_" for ch in text)  # url-safe as it is


def test_pages_and_exports_miss_nothing_and_repeat_nothing_while_the_sink_writes(
    settings: Settings,
) -> None:
    """Tracked customers never change; others of the same store churn around the same scores
    (ids interleaved with the tracked ones, so ties at a page's cursor come and go)."""
    store, low = "s0", 0.8
    tracked = [
        customer(store, f"c{n:04d}", 1, random.Random(n).choice(SCORES)) for n in range(0, 400, 2)
    ]
    sink = RedisProfileSink(settings.redis_url, settings.redis_prefix)
    sink.write("customer", tracked, "customer_id")
    want = want_customers(tracked, store, low, None)
    assert len(want) > 100
    tracked_ids = {c["customer_id"] for c in tracked}

    stop = threading.Event()
    rounds = [0]

    def churn() -> None:
        rng = random.Random(5)
        writer = RedisProfileSink(settings.redis_url, settings.redis_prefix)
        version = 0
        while not stop.is_set():
            version += 1
            batch = [
                customer(store, f"c{n:04d}", version, rng.choice(SCORES + [None]))
                for n in rng.sample(range(1, 400, 2), 60)
            ]
            writer.write("customer", batch, "customer_id")
            gone = [(store, f"c{n:04d}", version) for n in rng.sample(range(1, 400, 2), 20)]
            writer.delete("customer", gone)
            rounds[0] += 1
        writer.close()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    client = redis.Redis.from_url(settings.redis_url)
    reader = SyncSegmentReader(client, settings.redis_prefix)
    try:
        while rounds[0] < 3:  # the writer is under way before the first page
            stop.wait(0.01)
        before = rounds[0]
        for limit in (3, 10, 25):
            pages = all_pages(
                reader, limit, kind="customer", store=store, field="propensity", min=low, max=None
            )
            seen = [row for page in pages for row in page if row[0] in tracked_ids]
            assert seen == want, limit  # every unchanged profile once, in order
            by_id = all_pages(
                reader,
                limit,
                "id",
                kind="customer",
                store=store,
                field="propensity",
                min=low,
                max=None,
            )
            rows = [row for page in by_id for row in page]
            ids_seen = [entity for entity, _ in rows]
            assert len(ids_seen) == len(set(ids_seen)), limit  # not even a churned id twice
            assert ids_seen == sorted(ids_seen)
            assert [row for row in rows if row[0] in tracked_ids] == sorted(want), limit
            exported = [
                (i["id"], i["score"])
                for chunk in reader.export("customer", store, "propensity", low, None)
                for i in chunk
            ]
            ids = [entity for entity, _ in exported]
            assert len(ids) == len(set(ids))  # a snapshot: nobody twice
            assert [row for row in exported if row[0] in tracked_ids] == want
            assert exported == sorted(exported, key=lambda r: (r[1], r[0]), reverse=True)
        assert rounds[0] > before, "the writer should have written during the reads"
    finally:
        stop.set()
        thread.join(30)
        client.close()
        sink.close()


def test_the_cli_export_equals_the_filter(settings: Settings, written: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    customers, products = written
    env = {"STOREML_REDIS_URL": settings.redis_url, "STOREML_REDIS_PREFIX": settings.redis_prefix}
    runner = CliRunner()
    out = tmp_path / "out.csv"
    args = ["segments", "export", "--store", "s0", "--kind", "customer", "--field", "propensity"]
    result = runner.invoke(main, [*args, "--min", "0.8", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, dtype={"id": str})
    assert list(frame.columns) == ["id", "score"]
    want = want_customers(customers, "s0", 0.8, None)
    assert list(zip(frame["id"], frame["score"], strict=True)) == want

    out = tmp_path / "out.ndjson"
    result = runner.invoke(
        main,
        [
            *args[:3],
            "s1",
            "--kind",
            "product",
            "--category",
            "bags",
            "--min",
            "0.5",
            "-o",
            str(out),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in rows] == want_products(products, "s1", "bags", 0.5)

    bad = runner.invoke(main, [*args[:3], "s1", "--kind", "product", "-o", str(out)], env=env)
    assert bad.exit_code != 0 and "category" in bad.output
    assert len(out.read_text().splitlines()) == len(rows)  # a failed export leaves the file


def test_the_api_serves_pages_and_exports(
    settings: Settings, written: Any, api_server: Any
) -> None:
    customers, products = written
    server = api_server(serve_page_limit=50)
    key = server.key("s0", "segments")
    want = want_customers(customers, "s0", 0.8, None)
    with server.client(key) as api:
        got, cursor, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"field": "propensity", "min": 0.8, "max": "", "limit": 7}
            if cursor:
                params["cursor"] = cursor
            answer = api.get("/v1/stores/s0/segments/customer", params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            got += [(i["id"], i["score"]) for i in body["items"]]
            cursor, pages = body["next_cursor"], pages + 1
            if cursor is None:
                break
        assert got == sorted(want) and pages == -(-len(want) // 7)  # order=id, the default

        ndjson = api.get("/v1/stores/s0/segments/customer:export", params={"min": 0.8})
        assert ndjson.status_code == 200, ndjson.text
        assert ndjson.headers["content-type"].startswith("application/x-ndjson")
        rows = [json.loads(line) for line in ndjson.text.splitlines()]
        assert [(r["id"], r["score"]) for r in rows] == want
        csv = api.get(
            "/v1/stores/s0/segments/customer:export", params={"min": 0.8, "format": "csv"}
        )
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        frame = pd.read_csv(io.StringIO(csv.text), dtype={"id": str})
        assert list(zip(frame["id"], frame["score"], strict=True)) == want
        bags = api.get(
            "/v1/stores/s0/segments/product",
            params={"field": "category", "category": "bags", "limit": 50, "order": "score"},
        ).json()
        assert [(i["id"], i["score"]) for i in bags["items"]] == want_products(
            products, "s0", "bags", None
        )

        def error(path: str, **params: Any) -> tuple[int, str]:
            answer = api.get(path, params=params)
            return answer.status_code, answer.json()["error"]["message"]

        status, message = error("/v1/stores/s0/segments/customer", limit=51)
        assert status == 422 and "at most 50" in message
        status, message = error("/v1/stores/s0/segments/customer", cursor="garbage")
        assert status == 422 and "cursor" in message
        status, message = error("/v1/stores/s0/segments/product:export")
        assert status == 422 and "category" in message
        status, message = error("/v1/stores/s0/segments/customer", field="views")
        assert status == 422 and "propensity" in message
        assert error("/v1/stores/s0/segments/customer", min="nan")[0] == 422
        assert error("/v1/stores/s0/segments/animal")[0] == 422
        # another store's segment is a 404, like a missing profile
        assert api.get("/v1/stores/s1/segments/customer").status_code == 404
        assert api.get("/v1/stores/s1/segments/customer:export").status_code == 404
