"""Delayed labels found in the enriched stream itself (pure; the Faust app keeps the state).

Customers. Every enriched customer profile is a served prediction (its ``propensity``, and the
challenger's in ``shadow``). Per (store, customer) one :class:`Pending` prediction waits: the
newest one seen. When a newer profile arrives (higher ``profile_version``; anything at or below is
a replay and changes nothing):

* its ``order_count`` grew: the customer ordered again, and the pending prediction is *confirmed*
  (label 1) when ``last_order_time - pending.event_time <= horizon_ms``, else *refuted* (label 0);
* the count did not grow but the profile is dated after the pending prediction's horizon
  (``last_event_time > pending.event_time + horizon_ms``): refuted (label 0), as :func:`expire`
  would have done with that profile's time as the watermark;
* otherwise the pending prediction gets no label: it is superseded, and the newest served score is
  the one judged.

Either way the new profile becomes the pending prediction. :func:`expire` refutes a pending
prediction once the event-time watermark passes its horizon; the caller then drops it. So each
label belongs to the last score served before the outcome, and time is event time throughout.

Products. An uncategorised product's last served top-5 is checked when a later record brings its
category (:func:`product_outcome`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import Any

__all__ = ["Pending", "Outcome", "on_profile", "expire", "product_outcome"]


@dataclass(frozen=True)
class Pending:
    """One served prediction waiting for its outcome."""

    event_time: int  # ms, the profile's last_event_time
    score: float | None  # served propensity
    version: str | None  # served model version
    shadow_score: float | None
    shadow_version: str | None
    order_count: int
    profile_version: int

    def to_list(self) -> list[Any]:
        """The fields in order (JSON-able, for a Faust table)."""
        return list(astuple(self))

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> Pending:
        event_time, score, version, shadow_score, shadow_version, orders, profile_version = values
        return cls(
            int(event_time),
            None if score is None else float(score),
            version,
            None if shadow_score is None else float(shadow_score),
            shadow_version,
            int(orders),
            int(profile_version),
        )

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Pending:
        """The prediction served with a decoded enriched CustomerProfile."""
        model = profile.get("model") or {}
        shadow = profile.get("shadow") or {}
        shadow_model = shadow.get("model") or {}
        score = profile.get("propensity")
        shadow_score = shadow.get("propensity")
        return cls(
            event_time=int(profile["last_event_time"]),
            score=None if score is None else float(score),
            version=model.get("version"),
            shadow_score=None if shadow_score is None else float(shadow_score),
            shadow_version=shadow_model.get("version") if shadow else None,
            order_count=int(profile["order_count"]),
            profile_version=int(profile["profile_version"]),
        )


@dataclass(frozen=True)
class Outcome:
    """A prediction whose label is known (1: the customer ordered again within the horizon)."""

    event_time: int
    score: float | None
    version: str | None
    shadow_score: float | None
    shadow_version: str | None
    label: int


def _outcome(pending: Pending, label: int) -> Outcome:
    return Outcome(
        pending.event_time,
        pending.score,
        pending.version,
        pending.shadow_score,
        pending.shadow_version,
        label,
    )


def on_profile(
    pending: Pending | None, profile: Mapping[str, Any], horizon_ms: int
) -> tuple[list[Outcome], Pending | None]:
    """Join a newer profile with the customer's pending prediction (see the module docstring)."""
    version = int(profile["profile_version"])
    if pending is not None and version <= pending.profile_version:
        return [], pending
    new = Pending.from_profile(profile)
    if pending is None:
        return [], new
    if new.order_count > pending.order_count:
        ordered = profile.get("last_order_time")
        ordered_at = new.event_time if ordered is None else int(ordered)
        label = int(ordered_at - pending.event_time <= horizon_ms)
        return [_outcome(pending, label)], new
    if new.event_time > pending.event_time + horizon_ms:
        return [_outcome(pending, 0)], new
    return [], new


def expire(pending: Pending, watermark_ms: int, horizon_ms: int) -> Outcome | None:
    """Label 0 once ``watermark_ms > pending.event_time + horizon_ms``, else None."""
    if watermark_ms > pending.event_time + horizon_ms:
        return _outcome(pending, 0)
    return None


def product_outcome(
    predicted: Sequence[Mapping[str, Any]] | None, category: str | None
) -> tuple[list[str], str] | None:
    """``(top-5 categories best first, actual category)``, or None when there is nothing to check.

    ``predicted`` is the product's last served ``predicted_categories`` (dicts with ``category``
    and ``rank``); ``category`` the one a later record brings. None when either is missing.
    """
    if not predicted or category is None:
        return None
    ranked = sorted(predicted, key=lambda p: int(p.get("rank", 0)))
    return [str(p["category"]) for p in ranked[:5]], str(category)
