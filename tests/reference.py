"""An independent, plain-pandas computation of the final profiles, to check the fold and the stream.

Deliberately written differently from ``models/profiles.py`` (whole history at once, no state, no
deltas) so that the two agree only if both are right.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def reference_profiles(
    events: list[tuple[str, dict[str, Any], str, int, int]],
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """Final customer and product profiles from ``(kind, record, topic, partition, offset)`` events."""
    orders = [(r, t, p, o) for k, r, t, p, o in events if k == "order"]
    products = [(r, t, p, o) for k, r, t, p, o in events if k == "product"]
    lines = pd.DataFrame(
        [
            {
                "store": r["store_id"],
                "customer": r["customer_id"],
                "time": r["event_time"],
                "pos": (t, p, o),
                "product": ln["product_id"],
                "category": ln["category"],
                "qty": ln["quantity"],
                "amount": ln["quantity"] * ln["unit_price_minor"],
            }
            for r, t, p, o in orders
            for ln in r["lines"]
        ]
    )
    pev = pd.DataFrame(
        [
            {
                "store": r["store_id"],
                "product": r["product_id"],
                "customer": r["customer_id"],
                "time": r["event_time"],
                "kind": r["kind"],
                "pos": (r["event_time"], t, p, o),
                "title": r["title"],
                "description": r["description"],
                "price": r["price_minor"],
                "category": r["category"],
            }
            for r, t, p, o in products
        ]
    )
    customers: dict[tuple[str, str], dict[str, Any]] = {}
    for r, _t, _p, _o in orders:
        c = customers.setdefault(
            (r["store_id"], r["customer_id"]),
            {"order_count": 0, "spend": 0, "times": [], "views": 0, "cats": {}, "version": 0},
        )
        c["order_count"] += 1
        c["version"] += 1
        c["times"].append(r["event_time"])
        for ln in r["lines"]:
            c["spend"] += ln["quantity"] * ln["unit_price_minor"]
            if ln["category"] is not None:
                c["cats"][ln["category"]] = c["cats"].get(ln["category"], 0) + (
                    ln["quantity"] * ln["unit_price_minor"]
                )
    for r, _t, _p, _o in products:
        if r["kind"] == "viewed" and r["customer_id"] is not None:
            c = customers.setdefault(
                (r["store_id"], r["customer_id"]),
                {"order_count": 0, "spend": 0, "times": [], "views": 0, "cats": {}, "version": 0},
            )
            c["views"] += 1
            c["version"] += 1
            c.setdefault("view_times", []).append(r["event_time"])
    out_c: dict[tuple[str, str], dict[str, Any]] = {}
    for key, c in customers.items():
        all_times = c["times"] + c.get("view_times", [])
        last_order = max(c["times"]) if c["times"] else None
        cats = sorted(c["cats"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        out_c[key] = {
            "profile_version": c["version"],
            "order_count": c["order_count"],
            "total_spend_minor": c["spend"],
            "avg_order_value_minor": c["spend"] / c["order_count"] if c["order_count"] else None,
            "first_order_time": min(c["times"]) if c["times"] else None,
            "last_order_time": last_order,
            "last_event_time": max(all_times),
            "days_since_last_order": (
                (max(all_times) - last_order) / 86_400_000 if last_order is not None else None
            ),
            "top_categories": [
                {"category": k, "spend_minor": v, "share": v / c["spend"]} for k, v in cats
            ],
            "product_views": c["views"],
        }
    out_p: dict[tuple[str, str], dict[str, Any]] = {}
    keys = set()
    if len(lines):
        keys |= set(zip(lines["store"], lines["product"], strict=True))
    if len(pev):
        keys |= set(zip(pev["store"], pev["product"], strict=True))
    for store, product in keys:
        pl = (
            lines[(lines["store"] == store) & (lines["product"] == product)]
            if len(lines)
            else lines
        )
        pe = pev[(pev["store"] == store) & (pev["product"] == product)] if len(pev) else pev
        attrs = pe[pe["kind"].isin(["created", "updated"])] if len(pe) else pe
        latest = max(attrs.itertuples(), key=lambda row: row.pos) if len(attrs) else None
        times = (list(pl["time"]) if len(pl) else []) + (list(pe["time"]) if len(pe) else [])
        n_orders = pl["pos"].nunique() if len(pl) else 0
        out_p[(store, product)] = {
            "profile_version": int(n_orders + len(pe)),
            "views": int((pe["kind"] == "viewed").sum()) if len(pe) else 0,
            "order_count": int(n_orders),
            "units": int(pl["qty"].sum()) if len(pl) else 0,
            "revenue_minor": int(pl["amount"].sum()) if len(pl) else 0,
            "title": _text(latest.title) if latest is not None else None,
            "description": _text(latest.description) if latest is not None else None,
            "price_minor": (None if latest is None or pd.isna(latest.price) else int(latest.price)),
            "category": _text(latest.category) if latest is not None else None,
            "last_event_time": int(max(times)),
        }
    return out_c, out_p


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else value


def assert_profiles_match(
    got: dict[tuple[str, str], dict[str, Any]], want: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """Every field of ``want`` equals ``got`` (floats to 1e-9 relative), same key set."""
    assert set(got) == set(want), (
        f"missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}"
    )
    for key, expected in want.items():
        actual = got[key]
        for field, value in expected.items():
            other = actual[field]
            if isinstance(value, float):
                assert other is not None and abs(other - value) <= 1e-9 * max(1.0, abs(value)), (
                    key,
                    field,
                    other,
                    value,
                )
            elif field == "top_categories":
                assert [c["category"] for c in other] == [c["category"] for c in value], (
                    key,
                    other,
                    value,
                )
                for a, b in zip(other, value, strict=True):
                    assert a["spend_minor"] == b["spend_minor"]
                    assert abs(a["share"] - b["share"]) < 1e-12
            else:
                assert other == value, (key, field, other, value)
