"""The score index the Redis sink keeps beside the hashes (real Redis, the session's server).

The index must always say what the hashes say: one sorted set of propensities per store, one set
per predicted category and store for products, changed only by writes the version guard accepts.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from storeml.connectors.redis_sink import (
    FeatureStore,
    RedisProfileSink,
    index_key,
    is_index_key,
    profile_key,
    profile_pattern,
)
from storeml.settings import Settings


@pytest.fixture
def sink(settings: Settings) -> Iterator[RedisProfileSink]:
    sink = RedisProfileSink(settings.redis_url, settings.redis_prefix)
    yield sink
    sink.close()


@pytest.fixture
def raw(settings: Settings) -> Iterator[Any]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    client.close()


def customer(
    customer_id: str,
    version: int,
    propensity: float | None,
    scope: str = "store",
    store: str = "s1",
) -> dict[str, Any]:
    return {
        "store_id": store,
        "customer_id": customer_id,
        "profile_version": version,
        "order_count": version,
        "propensity": propensity,
        "model": {"name": "m", "version": "2" if scope != "none" else None, "scope": scope},
        "source": [],
    }


def product(
    product_id: str,
    version: int,
    predicted: list[tuple[str, float]],
    scope: str = "store",
    store: str = "s1",
) -> dict[str, Any]:
    return {
        "store_id": store,
        "product_id": product_id,
        "profile_version": version,
        "views": version,
        "category": None,
        "predicted_categories": [
            {"category": c, "probability": p, "rank": r} for r, (c, p) in enumerate(predicted)
        ],
        "model": {"name": "m", "version": "2", "scope": scope},
        "source": [],
    }


def members(raw: Any, key: str) -> dict[str, float]:
    return dict(raw.zrange(key, 0, -1, withscores=True))


def customers_index(settings: Settings, raw: Any, store: str = "s1") -> dict[str, float]:
    return members(raw, index_key(settings.redis_prefix, "customer", store, "propensity"))


def category_index(
    settings: Settings, raw: Any, category: str, store: str = "s1"
) -> dict[str, float]:
    return members(raw, index_key(settings.redis_prefix, "product", store, "category", category))


def all_indexes(settings: Settings, raw: Any) -> dict[str, dict[str, float]]:
    keys = raw.scan_iter(match=f"{settings.redis_prefix}:{{*}}:index:*", count=1000)
    return {key: members(raw, key) for key in keys}


def implied_indexes(settings: Settings, raw: Any) -> dict[str, dict[str, float]]:
    """The index the stored hashes call for (computed here in Python, not by the guard)."""
    out: dict[str, dict[str, float]] = {}
    prefix = settings.redis_prefix
    for kind in ("customer", "product"):
        for key in raw.scan_iter(match=profile_pattern(prefix, kind), count=1000):
            stored = raw.hgetall(key)
            store = key[len(prefix) + 2 : key.index("}")]
            entity = stored[f"{kind}_id"]
            if kind == "customer" and "propensity" in stored:
                score = float(stored["propensity"])
                if not math.isnan(score):
                    zkey = index_key(prefix, kind, store, "propensity")
                    out.setdefault(zkey, {})[entity] = score
            if kind == "product":
                for item in json.loads(stored.get("predicted_categories", "[]")):
                    zkey = index_key(prefix, kind, store, "category", item["category"])
                    out.setdefault(zkey, {})[entity] = float(item["probability"])
    return out


def test_the_index_follows_accepted_writes(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    records = [customer("c1", 1, 0.25), customer("c2", 1, 0.9), customer("c3", 1, None)]
    assert sink.write("customer", records, "customer_id") == (3, 0)
    assert customers_index(settings, raw) == {"c1": 0.25, "c2": 0.9}
    # a new score moves the member; a store's index holds only that store's customers
    sink.write(
        "customer", [customer("c1", 2, 0.75), customer("c9", 1, 0.5, store="s2")], "customer_id"
    )
    assert customers_index(settings, raw) == {"c1": 0.75, "c2": 0.9}
    assert customers_index(settings, raw, "s2") == {"c9": 0.5}
    # scores are the exact doubles of the hash
    odd = 0.1 + 0.2
    sink.write("customer", [customer("c3", 2, odd)], "customer_id")
    assert customers_index(settings, raw)["c3"] == odd
    assert (
        float(raw.hget(profile_key(settings.redis_prefix, "customer", "s1", "c3"), "propensity"))
        == odd
    )


def test_refused_and_replayed_writes_leave_the_index_as_it_is(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    sink.write("customer", [customer("c1", 5, 0.4)], "customer_id")
    sink.write("product", [product("p1", 5, [("shoes", 0.6), ("bags", 0.3)])], "product_id")
    before = all_indexes(settings, raw)
    # older versions (a late replay) are refused: neither hash nor index changes
    assert sink.write("customer", [customer("c1", 4, 0.99)], "customer_id") == (0, 1)
    assert sink.write("product", [product("p1", 3, [("hats", 0.9)])], "product_id") == (0, 1)
    assert all_indexes(settings, raw) == before
    # a replay of the same batch rewrites the same values
    assert sink.write("customer", [customer("c1", 5, 0.4)], "customer_id") == (1, 0)
    assert sink.write(
        "product", [product("p1", 5, [("shoes", 0.6), ("bags", 0.3)])], "product_id"
    ) == (1, 0)
    assert all_indexes(settings, raw) == before
    assert before == implied_indexes(settings, raw)


def test_an_unscored_write_keeps_the_score_and_its_index_entries(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    sink.write("customer", [customer("c1", 1, 0.8)], "customer_id")
    sink.write("product", [product("p1", 1, [("shoes", 0.7)])], "product_id")
    # the model failed (scope "unavailable"): the profile moves on, the score and index stay
    sink.write("customer", [customer("c1", 2, None, "unavailable")], "customer_id")
    sink.write("product", [product("p1", 2, [], "unavailable")], "product_id")
    assert customers_index(settings, raw) == {"c1": 0.8}
    assert category_index(settings, raw, "shoes") == {"p1": 0.7}
    stored = raw.hgetall(profile_key(settings.redis_prefix, "customer", "s1", "c1"))
    assert stored["order_count"] == "2" and stored["propensity"] == "0.8"
    # an entity never scored and unscored now is not indexed
    sink.write("customer", [customer("c2", 1, None, "unavailable")], "customer_id")
    assert customers_index(settings, raw) == {"c1": 0.8}


def test_a_null_score_removes_the_entity_from_the_index(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    sink.write("customer", [customer("c1", 1, 0.8), customer("c2", 1, 0.1)], "customer_id")
    sink.write("product", [product("p1", 1, [("shoes", 0.7), ("bags", 0.2)])], "product_id")
    # "none": no model is registered any more, the score is cleared on purpose
    sink.write("customer", [customer("c1", 2, None, "none")], "customer_id")
    # a product that got a real category has no predictions any more
    sink.write("product", [product("p1", 2, [])], "product_id")
    assert customers_index(settings, raw) == {"c2": 0.1}
    assert all_indexes(settings, raw) == {
        index_key(settings.redis_prefix, "customer", "s1", "propensity"): {"c2": 0.1}
    }
    # a NaN score is stored but cannot be indexed (Redis refuses it); the write goes through
    assert sink.write("customer", [customer("c2", 2, float("nan"))], "customer_id") == (1, 0)
    assert customers_index(settings, raw) == {}


def test_the_guarded_delete_removes_the_entity_from_its_indexes(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    sink.write("customer", [customer("c1", 3, 0.8), customer("c2", 1, 0.6)], "customer_id")
    sink.write("product", [product("p1", 2, [("shoes", 0.7), ("bags", 0.2)])], "product_id")
    # an expiry for an older version leaves the newer profile and its entries
    assert sink.delete("customer", [("s1", "c1", 2)]) == 0
    assert customers_index(settings, raw) == {"c1": 0.8, "c2": 0.6}
    assert sink.delete("customer", [("s1", "c1", 3)]) == 1
    assert sink.delete("product", [("s1", "p1", 2)]) == 1
    assert customers_index(settings, raw) == {"c2": 0.6}
    assert category_index(settings, raw, "shoes") == {} == category_index(settings, raw, "bags")
    assert all_indexes(settings, raw) == implied_indexes(settings, raw)


def test_products_are_indexed_per_predicted_category(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    odd = 'Home & Garden: {tools} | "quoted" é'  # any text a category may hold
    sink.write(
        "product",
        [
            product("p1", 1, [("shoes", 0.5), ("bags", 0.3), (odd, 0.2)]),
            product("p2", 1, [("bags", 0.6), ("shoes", 0.4)]),
        ],
        "product_id",
    )
    assert category_index(settings, raw, "shoes") == {"p1": 0.5, "p2": 0.4}
    assert category_index(settings, raw, "bags") == {"p1": 0.3, "p2": 0.6}
    assert category_index(settings, raw, odd) == {"p1": 0.2}
    # new predictions: p1 leaves "bags" and the odd category, joins "hats"
    sink.write("product", [product("p1", 2, [("hats", 0.8), ("shoes", 0.15)])], "product_id")
    assert category_index(settings, raw, "bags") == {"p2": 0.6}
    assert category_index(settings, raw, "hats") == {"p1": 0.8}
    assert category_index(settings, raw, "shoes") == {"p1": 0.15, "p2": 0.4}
    assert category_index(settings, raw, odd) == {}
    # index keys share the store's hash tag (one Redis Cluster slot) and are not profiles
    key = index_key(settings.redis_prefix, "product", "s1", "category", odd)
    assert key.startswith(f"{settings.redis_prefix}:{{s1}}:index:")
    assert is_index_key(key, settings.redis_prefix)
    assert not is_index_key(
        profile_key(settings.redis_prefix, "product", "s1", "p1"), settings.redis_prefix
    )
    lookups = FeatureStore(settings.redis_url, settings.redis_prefix)
    assert sorted(lookups.scan("product")) == [
        profile_key(settings.redis_prefix, "product", "s1", p) for p in ("p1", "p2")
    ]
    lookups.close()


def test_a_hash_written_before_the_index_existed_is_indexed_on_its_next_write(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    key = profile_key(settings.redis_prefix, "customer", "s1", "c1")
    # what an older sink left: the same fields, no written_at, no index entry
    raw.hset(
        key,
        mapping={
            "customer_id": "c1",
            "store_id": "s1",
            "profile_version": "1",
            "propensity": "0.3",
        },
    )
    assert sink.write("customer", [customer("c1", 1, 0.3)], "customer_id") == (1, 0)
    assert customers_index(settings, raw) == {"c1": 0.3}


def test_written_at_is_the_wall_clock_of_the_write(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    before = time.time_ns() // 1_000_000
    sink.write("customer", [customer("c1", 1, 0.5)], "customer_id")
    after = time.time_ns() // 1_000_000
    stored = FeatureStore(settings.redis_url, settings.redis_prefix).customer("s1", "c1")
    assert stored is not None and before <= int(stored["written_at"]) <= after


def test_random_writes_and_deletes_keep_index_and_hashes_in_agreement(
    settings: Settings, sink: RedisProfileSink, raw: Any
) -> None:
    rng = random.Random(20261201)
    categories = ["a", "b", "c", "d", "e", "f", "g"]
    versions: dict[tuple[str, str], int] = {}
    for _ in range(40):
        customers, products, deletes = [], [], []
        for _ in range(25):
            store, entity = rng.choice(["s1", "s2"]), f"e{rng.randrange(12)}"
            version = max(0, versions.get((store, entity), 0) + rng.choice([-1, 0, 1, 1, 2]))
            versions[(store, entity)] = max(version, versions.get((store, entity), 0))
            scope = rng.choice(["store", "store", "global", "unavailable", "none"])
            what = rng.random()
            if what < 0.1:
                deletes.append((store, entity, version))
            elif what < 0.55:
                score = (
                    None if scope in ("unavailable", "none") or rng.random() < 0.1 else rng.random()
                )
                customers.append(customer(entity, version, score, scope, store))
            else:
                picked = rng.sample(categories, rng.randrange(0, 6))
                predicted = sorted(((c, rng.random()) for c in picked), key=lambda x: -x[1])
                if scope in ("unavailable", "none"):
                    predicted = []
                products.append(product(entity, version, predicted, scope, store))
        sink.write("customer", customers, "customer_id")
        sink.write("product", products, "product_id")
        sink.delete("customer", deletes[: len(deletes) // 2])
        sink.delete("product", deletes[len(deletes) // 2 :])
    assert implied_indexes(settings, raw), "the random run should leave indexed entities"
    assert all_indexes(settings, raw) == implied_indexes(settings, raw)
