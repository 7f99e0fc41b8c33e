"""Delayed labels from the enriched customer stream: confirm, refute, replay, expiry; products."""

from __future__ import annotations

from typing import Any

from storeml.models.label_join import Outcome, Pending, expire, on_profile, product_outcome

DAY = 86_400_000
HORIZON = 30 * DAY


def profile(
    version: int,
    at: int,
    orders: int,
    last_order: int | None,
    score: float | None = 0.4,
    shadow: float | None = None,
) -> dict[str, Any]:
    return {
        "store_id": "s",
        "customer_id": "c",
        "profile_version": version,
        "order_count": orders,
        "last_order_time": last_order,
        "last_event_time": at,
        "propensity": score,
        "model": {"name": "m", "version": "3", "scope": "store"},
        "shadow": None
        if shadow is None
        else {"model": {"name": "m", "version": "4", "scope": "store"}, "propensity": shadow},
    }


def test_first_profile_becomes_pending_and_round_trips() -> None:
    outcomes, pending = on_profile(None, profile(1, 1000, 1, 1000, shadow=0.6), HORIZON)
    assert outcomes == [] and pending is not None
    assert (pending.score, pending.version, pending.shadow_score, pending.shadow_version) == (
        0.4,
        "3",
        0.6,
        "4",
    )
    assert Pending.from_list(pending.to_list()) == pending


def test_an_order_within_the_horizon_confirms() -> None:
    _, pending = on_profile(None, profile(1, 1000, 1, 1000, shadow=0.6), HORIZON)
    at = 1000 + 10 * DAY
    outcomes, new = on_profile(pending, profile(2, at, 2, at, score=0.9), HORIZON)
    assert outcomes == [Outcome(1000, 0.4, "3", 0.6, "4", 1)]
    assert new is not None and new.score == 0.9 and new.order_count == 2


def test_an_order_after_the_horizon_refutes() -> None:
    _, pending = on_profile(None, profile(1, 1000, 1, 1000), HORIZON)
    at = 1000 + HORIZON + 1
    outcomes, _ = on_profile(pending, profile(2, at, 2, at), HORIZON)
    assert [o.label for o in outcomes] == [0]
    at = 1000 + HORIZON  # exactly the horizon still counts
    outcomes, _ = on_profile(pending, profile(2, at, 2, at), HORIZON)
    assert [o.label for o in outcomes] == [1]


def test_replays_change_nothing() -> None:
    _, pending = on_profile(None, profile(5, 1000, 1, 1000), HORIZON)
    for version in (5, 4, 1):
        later = 1000 + DAY
        outcomes, same = on_profile(pending, profile(version, later, 2, later), HORIZON)
        assert outcomes == [] and same is pending


def test_a_newer_profile_without_an_order_supersedes_or_refutes() -> None:
    _, pending = on_profile(None, profile(1, 1000, 1, 1000), HORIZON)
    outcomes, new = on_profile(pending, profile(2, 1000 + DAY, 1, 1000, score=0.2), HORIZON)
    assert outcomes == [] and new is not None and new.score == 0.2  # superseded, no label
    late = 1000 + HORIZON + 1
    outcomes, new = on_profile(pending, profile(2, late, 1, 1000), HORIZON)
    assert [o.label for o in outcomes] == [0] and new is not None and new.event_time == late


def test_expiry_by_watermark() -> None:
    _, pending = on_profile(None, profile(1, 1000, 1, 1000, score=None), HORIZON)
    assert pending is not None
    assert expire(pending, 1000 + HORIZON, HORIZON) is None
    outcome = expire(pending, 1000 + HORIZON + 1, HORIZON)
    assert outcome == Outcome(1000, None, "3", None, None, 0)  # unscored: the caller skips it


def test_product_outcome() -> None:
    predicted = [
        {"category": "b", "probability": 0.2, "rank": 1},
        {"category": "a", "probability": 0.5, "rank": 0},
        {"category": "c", "probability": 0.1, "rank": 2},
    ]
    assert product_outcome(predicted, "b") == (["a", "b", "c"], "b")
    assert product_outcome(predicted, None) is None
    assert product_outcome([], "a") is None and product_outcome(None, "a") is None
