"""The profile fold: equal to a plain pandas computation, whatever the micro-batch cuts and order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.models.events import (
    ORDER,
    PRODUCT,
    bucket_of,
    facts_from_events,
    validate_order,
    validate_product,
)
from storeml.models.profiles import (
    ProfileState,
    apply_delta,
    customer_profiles,
    fold,
    product_profiles,
    to_records,
)
from tests.reference import assert_profiles_match, reference_profiles

Event = tuple[str, dict[str, Any], str, int, int]


def synthetic_events(events: int = 3_000, stores: int = 8, seed: int = 3) -> list[Event]:
    out: list[Event] = []
    offsets = {"orders": 0, "products": 0}
    for e in generate(GeneratorConfig(stores=stores, events=events, seed=seed)):
        kind = ORDER if e.topic_kind == "orders" else PRODUCT
        partition = hash(e.key) % 3 if False else sum(e.key) % 3
        offsets[e.topic_kind] += 1
        out.append((kind, e.record, e.topic_kind, partition, offsets[e.topic_kind]))
    return out


def fold_in_batches(events: list[Event], cuts: list[int]) -> tuple[dict, dict]:
    state = ProfileState()
    customers: dict[tuple[str, str], dict[str, Any]] = {}
    products: dict[tuple[str, str], dict[str, Any]] = {}
    bounds = [0, *cuts, len(events)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        facts = facts_from_events(events[lo:hi])
        delta = fold(state, facts)
        state = apply_delta(state, delta)
        for r in to_records(customer_profiles(state, delta, facts), list(CUSTOMER_COLUMNS)):
            customers[(r["store_id"], r["customer_id"])] = r
        for r in to_records(product_profiles(state, delta, facts), list(PRODUCT_COLUMNS)):
            products[(r["store_id"], r["product_id"])] = r
    return customers, products


CUSTOMER_COLUMNS = (
    "store_id",
    "customer_id",
    "profile_version",
    "order_count",
    "total_spend_minor",
    "avg_order_value_minor",
    "first_order_time",
    "last_order_time",
    "last_event_time",
    "days_since_last_order",
    "top_categories",
    "product_views",
    "source",
)
PRODUCT_COLUMNS = (
    "store_id",
    "product_id",
    "profile_version",
    "views",
    "order_count",
    "units",
    "revenue_minor",
    "title",
    "description",
    "price_minor",
    "category",
    "last_event_time",
    "source",
)


def test_single_fold_equals_plain_pandas() -> None:
    events = synthetic_events()
    want_c, want_p = reference_profiles(events)
    got_c, got_p = fold_in_batches(events, [])
    assert_profiles_match(got_c, want_c)
    assert_profiles_match(got_p, want_p)
    assert any(p["title"] for p in got_p.values())


@pytest.mark.parametrize("seed", [1, 2])
def test_fold_is_independent_of_batch_cuts_and_arrival_order(seed: int) -> None:
    events = synthetic_events(seed=seed)
    want_c, want_p = reference_profiles(events)
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)  # late and out-of-order arrivals
    cuts = sorted(random.Random(seed).sample(range(1, len(events)), 7))
    got_c, got_p = fold_in_batches(shuffled, cuts)
    assert_profiles_match(got_c, want_c)
    assert_profiles_match(got_p, want_p)


def test_source_ranges_and_versions_per_batch() -> None:
    events = synthetic_events(events=500)
    state = ProfileState()
    facts = facts_from_events(events[:200])
    delta = fold(state, facts)
    state = apply_delta(state, delta)
    rows = to_records(customer_profiles(state, delta, facts), list(CUSTOMER_COLUMNS))
    for row in rows:
        assert row["source"], row
        for source in row["source"]:
            assert source["first_offset"] <= source["last_offset"]
    facts2 = facts_from_events(events[200:])
    delta2 = fold(state, facts2)
    for key, row in delta2.customers.iterrows():
        if key in state.customers.index:
            assert row["profile_version"] > state.customers.loc[key, "profile_version"]


def test_validation_names_the_problem() -> None:
    good = {
        "store_id": "s",
        "customer_id": "c",
        "order_id": "o",
        "event_time": 1,
        "currency": "USD",
        "lines": [{"product_id": "p", "quantity": 1, "unit_price_minor": 5}],
    }
    assert validate_order(good) is None
    assert "quantity 0" in validate_order({**good, "lines": [{**good["lines"][0], "quantity": 0}]})
    assert "empty store_id" in validate_order({**good, "store_id": ""})
    assert "no lines" in validate_order({**good, "lines": []})
    assert "negative price_minor" in validate_product(
        {"store_id": "s", "product_id": "p", "event_time": 1, "kind": "created", "price_minor": -1}
    )
    assert bucket_of("store-1", 8) == bucket_of("store-1", 8) < 8
