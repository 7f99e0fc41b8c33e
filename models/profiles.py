"""Per-customer and per-product profiles, folded from events: pure pandas, no I/O.

The stream and the batch recompute share this code, so that recomputing from history lands on
exactly the profiles the stream wrote:

* every state field is a commutative, associative aggregate over integers (counts, sums of money in
  minor units, min/max of epoch milliseconds), so the result does not depend on how events are cut
  into micro-batches or in which order they arrive;
* the one "latest value" field set (a product's attributes) is chosen by the total order
  ``(event_time, topic, partition, offset)``, never by arrival order;
* derived fields (averages, shares, days since last order) are computed from the state at the end,
  never accumulated.

Input is a *facts* table (:data:`FACT_COLUMNS`): one row per order line and one row per product event,
with its source coordinates. :func:`fold` turns (state, facts) into a :class:`StateDelta`
holding the new rows of every entity the facts touched; :func:`apply_delta` returns the next state;
:func:`customer_profiles` / :func:`product_profiles` render the touched entities' profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "FACT_COLUMNS",
    "FACT_SPARK_SCHEMA",
    "CUSTOMER_KEY",
    "PRODUCT_KEY",
    "CATEGORY_KEY",
    "STATE_COLUMNS",
    "ProfileState",
    "StateDelta",
    "empty_facts",
    "facts_frame",
    "fold",
    "apply_delta",
    "restart_entities",
    "add_empty_rows",
    "stamp_delta",
    "state_table",
    "customer_profiles",
    "product_profiles",
    "TOP_CATEGORIES",
    "MS_PER_DAY",
    "to_records",
    "customer_facts",
    "source_ranges",
    "ranges_by_entity",
]

MS_PER_DAY = 86_400_000
TOP_CATEGORIES = 5
CUSTOMER_KEY = ["store_id", "customer_id"]
PRODUCT_KEY = ["store_id", "product_id"]
CATEGORY_KEY = ["store_id", "customer_id", "category"]

#: Columns of the facts table and their pandas dtypes. ``kind`` is "order_line" or "product_event".
FACT_COLUMNS: dict[str, str] = {
    "bucket": "int32",
    "kind": "object",
    "store_id": "object",
    "customer_id": "object",
    "product_id": "object",
    "order_id": "object",
    "event_time": "int64",
    "topic": "object",
    "partition": "int32",
    "offset": "int64",
    "category": "object",
    "quantity": "Int64",
    "unit_price_minor": "Int64",
    "event_kind": "object",
    "title": "object",
    "description": "object",
    "price_minor": "Int64",
}

#: The same columns as a Spark DDL schema (for mapInPandas / applyInPandas).
FACT_SPARK_SCHEMA = (
    "bucket int, kind string, store_id string, customer_id string, product_id string, order_id string,"
    " event_time long, topic string, partition int, offset long, category string, quantity long,"
    " unit_price_minor long, event_kind string, title string, description string, price_minor long"
)

_CUSTOMER_STATE = {
    "profile_version": "int64",
    "order_count": "int64",
    "total_spend_minor": "int64",
    "first_order_time": "Int64",
    "last_order_time": "Int64",
    "last_event_time": "int64",
    "product_views": "int64",
    # processing time (ms) of the micro-batch that last touched the entity: idle expiry only
    "touched_ms": "Int64",
}
_CATEGORY_STATE = {"spend_minor": "int64"}
_PRODUCT_STATE = {
    "profile_version": "int64",
    "views": "int64",
    "order_count": "int64",
    "units": "int64",
    "revenue_minor": "int64",
    "last_event_time": "int64",
    # attributes of the latest created/updated event, and that event's position in the total order
    "attr_time": "Int64",
    "attr_topic": "object",
    "attr_partition": "Int64",
    "attr_offset": "Int64",
    "title": "object",
    "description": "object",
    "price_minor": "Int64",
    "category": "object",
    "touched_ms": "Int64",
}

#: State columns per table (besides the key columns), as stored.
STATE_COLUMNS: dict[str, dict[str, str]] = {
    "customers": _CUSTOMER_STATE,
    "categories": _CATEGORY_STATE,
    "products": _PRODUCT_STATE,
}


_EMPTY: dict[tuple[str, ...], pd.DataFrame] = {}


def _empty(key: list[str], columns: dict[str, str]) -> pd.DataFrame:
    spec = (*key, "|", *columns)
    template = _EMPTY.get(spec)
    if template is None:
        index = pd.MultiIndex.from_arrays([pd.Series([], dtype="object") for _ in key], names=key)
        template = _EMPTY[spec] = pd.DataFrame(
            {c: pd.Series([], dtype=t) for c, t in columns.items()}, index=index
        )
    return template.copy()


def state_table(table: str, columns: dict[str, list[object]]) -> pd.DataFrame:
    """One state table (indexed by its key) from plain column lists (None for nulls), typed.

    The fast way in from a database cursor: no per-row work beyond building the arrays.
    """
    key, types = _KEY_OF[table], STATE_COLUMNS[table]
    if not columns or not len(next(iter(columns.values()))):
        return _empty(key, types)
    data: dict[str, object] = {}
    for column, dtype in types.items():
        values = columns.get(column)
        if values is None:
            values = [None] * len(columns[key[0]])
        if dtype == "object":
            data[column] = pd.Series(values, dtype=object)
        elif dtype == "Int64":
            data[column] = pd.array(values, dtype="Int64")
        else:
            data[column] = np.asarray(values, dtype=dtype)
    index = pd.MultiIndex.from_arrays([pd.Index(columns[k], dtype=object) for k in key], names=key)
    frame = pd.DataFrame(data)
    frame.index = index
    return frame


def empty_facts() -> pd.DataFrame:
    """A facts table with no rows and the right dtypes."""
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in FACT_COLUMNS.items()})


def facts_frame(rows: list[dict[str, object]] | pd.DataFrame) -> pd.DataFrame:
    """A facts table from dict rows (or a frame): missing columns filled, dtypes as FACT_COLUMNS."""
    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for column, dtype in FACT_COLUMNS.items():
        values = (
            frame[column].reset_index(drop=True)
            if column in frame
            else pd.Series([None] * len(frame), dtype=object)
        )
        if dtype == "object":
            out[column] = values.astype(object).where(values.notna(), None)
        elif dtype in ("int32", "int64"):
            out[column] = values.fillna(0).astype(dtype)
        else:
            out[column] = values.astype(dtype)
    return out


@dataclass
class ProfileState:
    """Profile state of one bucket: customers, their per-category spend, and products."""

    customers: pd.DataFrame = field(default_factory=lambda: _empty(CUSTOMER_KEY, _CUSTOMER_STATE))
    categories: pd.DataFrame = field(default_factory=lambda: _empty(CATEGORY_KEY, _CATEGORY_STATE))
    products: pd.DataFrame = field(default_factory=lambda: _empty(PRODUCT_KEY, _PRODUCT_STATE))

    TABLES = ("customers", "categories", "products")

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame]) -> ProfileState:
        """Rebuild from flat tables (as stored): key columns become the index, dtypes restored."""
        out = cls()
        for name, key, columns in _TABLE_SPECS:
            frame = tables.get(name)
            if frame is not None and len(frame):
                setattr(out, name, _normalise(frame.set_index(key), columns))
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """Flat tables (key columns as columns), for storage."""
        return {name: getattr(self, name).reset_index() for name in self.TABLES}

    def __len__(self) -> int:
        return len(self.customers) + len(self.products)


@dataclass
class StateDelta:
    """New rows for every entity a batch touched (same layout as :class:`ProfileState`)."""

    customers: pd.DataFrame
    categories: pd.DataFrame
    products: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name).reset_index() for name in ProfileState.TABLES}

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame]) -> StateDelta:
        state = ProfileState.from_tables(tables)
        return cls(state.customers, state.categories, state.products)


_KEY_OF = {"customers": CUSTOMER_KEY, "categories": CATEGORY_KEY, "products": PRODUCT_KEY}

_TABLE_SPECS = (
    ("customers", CUSTOMER_KEY, _CUSTOMER_STATE),
    ("categories", CATEGORY_KEY, _CATEGORY_STATE),
    ("products", PRODUCT_KEY, _PRODUCT_STATE),
)


def _normalise(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for column, dtype in columns.items():
        values = frame[column] if column in frame else pd.Series(pd.NA, index=frame.index)
        if dtype == "object":
            values = values.astype(object).where(values.notna(), None)
        out[column] = values.astype(dtype)
    return out


def _upsert(base: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return base
    if base.empty:
        return rows.copy()
    kept = base[~base.index.isin(rows.index)]
    return pd.concat([kept, rows])


def apply_delta(state: ProfileState, delta: StateDelta) -> ProfileState:
    """The state after ``delta``: touched entities replaced, the rest kept."""
    return ProfileState(
        customers=_upsert(state.customers, delta.customers),
        categories=_upsert(state.categories, delta.categories),
        products=_upsert(state.products, delta.products),
    )


def restart_entities(state: ProfileState, gone: dict[str, pd.DataFrame]) -> ProfileState:
    """``state`` with the entities in ``gone`` started afresh (idle expiry).

    ``gone`` maps "customers"/"products" to frames of key columns and ``profile_version``. Each
    such entity's row becomes an empty one that keeps its ``profile_version`` (so its next profile
    still counts upwards), and an expired customer's category rows go.
    """
    if not gone:
        return state
    out = ProfileState(state.customers, state.categories, state.products)
    for table, key in (("customers", CUSTOMER_KEY), ("products", PRODUCT_KEY)):
        keys = gone.get(table)
        if keys is None or keys.empty:
            continue
        index = pd.MultiIndex.from_frame(keys[key])
        kept = getattr(out, table)[~getattr(out, table).index.isin(index)]
        setattr(out, table, add_empty_rows(kept, table, keys[[*key, "profile_version"]]))
        if table == "customers" and len(out.categories):
            owners = out.categories.index.droplevel("category")
            out.categories = out.categories[~owners.isin(index)]
    return out


def add_empty_rows(state: pd.DataFrame, table: str, versions: pd.DataFrame) -> pd.DataFrame:
    """``state`` plus an empty row, holding only ``profile_version``, for each key of ``versions``
    (key columns and ``profile_version``) not in it: an entity that starts afresh."""
    key = _KEY_OF[table]
    versions = versions[~pd.MultiIndex.from_frame(versions[key]).isin(state.index)]
    if versions.empty:
        return state
    columns: dict[str, list[object]] = {c: versions[c].tolist() for c in key}
    for column, dtype in STATE_COLUMNS[table].items():
        if column == "profile_version":
            columns[column] = versions["profile_version"].astype("int64").tolist()
        else:
            columns[column] = [0 if dtype == "int64" else None] * len(versions)
    empty = state_table(table, columns)
    return pd.concat([state, empty]) if len(state) else empty


def stamp_delta(delta: StateDelta, buckets: int, touched_ms: int) -> StateDelta:
    """``delta`` with each row's state ``bucket`` (a first column) and ``touched_ms`` set."""
    from storeml.models.events import buckets_of

    parts = {}
    for table in ProfileState.TABLES:
        frame = getattr(delta, table).copy()
        stores = frame.index.get_level_values("store_id")
        frame.insert(0, "bucket", buckets_of(stores, buckets).astype("int32"))
        if "touched_ms" in frame:
            frame["touched_ms"] = pd.array([touched_ms] * len(frame), dtype="Int64")
        parts[table] = frame
    return StateDelta(parts["customers"], parts["categories"], parts["products"])


def _sum(prev: pd.Series, new: pd.Series) -> pd.Series:
    return prev.fillna(0).astype("int64") + new.fillna(0).astype("int64")


def _extreme(prev: pd.Series, new: pd.Series, how: str) -> pd.Series:
    both = pd.concat([prev.astype("Int64"), new.astype("Int64")], axis=1)
    return (both.min(axis=1) if how == "min" else both.max(axis=1)).astype("Int64")


def _fold_customers(state: ProfileState, facts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    lines = facts[facts["kind"] == "order_line"]
    amount = lines["quantity"].astype("int64") * lines["unit_price_minor"].astype("int64")
    lines = lines.assign(amount=amount)
    order_key = [*CUSTOMER_KEY, "topic", "partition", "offset"]
    orders = lines.groupby(order_key, sort=False).agg(
        amount=("amount", "sum"), event_time=("event_time", "first")
    )
    per_customer = orders.groupby(level=CUSTOMER_KEY, sort=False).agg(
        order_count=("amount", "size"),
        spend=("amount", "sum"),
        first=("event_time", "min"),
        last=("event_time", "max"),
    )
    views = facts[
        (facts["kind"] == "product_event")
        & (facts["event_kind"] == "viewed")
        & facts["customer_id"].notna()
    ]
    per_viewer = views.groupby(CUSTOMER_KEY, sort=False).agg(
        views=("event_time", "size"), last_view=("event_time", "max")
    )
    touched = per_customer.index.union(per_viewer.index)
    if len(touched) == 0:
        return _empty(CUSTOMER_KEY, _CUSTOMER_STATE), _empty(CATEGORY_KEY, _CATEGORY_STATE)
    batch = per_customer.reindex(touched).join(per_viewer.reindex(touched))
    prev = state.customers.reindex(touched)
    new = pd.DataFrame(index=touched)
    new["order_count"] = _sum(prev["order_count"], batch["order_count"])
    new["profile_version"] = _sum(prev["profile_version"], batch["order_count"]) + batch[
        "views"
    ].fillna(0).astype("int64")
    new["total_spend_minor"] = _sum(prev["total_spend_minor"], batch["spend"])
    new["first_order_time"] = _extreme(prev["first_order_time"], batch["first"], "min")
    new["last_order_time"] = _extreme(prev["last_order_time"], batch["last"], "max")
    batch_last = _extreme(batch["last"], batch["last_view"], "max")
    new["last_event_time"] = _extreme(prev["last_event_time"], batch_last, "max").astype("int64")
    new["product_views"] = _sum(prev["product_views"], batch["views"])
    new = _normalise(new, _CUSTOMER_STATE)

    categorised = lines[lines["category"].notna()]
    spend = categorised.groupby(CATEGORY_KEY, sort=False)["amount"].sum()
    prev_spend = state.categories["spend_minor"].reindex(spend.index)
    categories = pd.DataFrame({"spend_minor": _sum(prev_spend, spend)}, index=spend.index)
    return new, _normalise(categories, _CATEGORY_STATE)


def _fold_products(state: ProfileState, facts: pd.DataFrame) -> pd.DataFrame:
    lines = facts[facts["kind"] == "order_line"]
    lines = lines.assign(
        units=lines["quantity"].astype("int64"),
        revenue=lines["quantity"].astype("int64") * lines["unit_price_minor"].astype("int64"),
    )
    # One order counts once per product even when it has several lines of that product.
    per_order = lines.groupby([*PRODUCT_KEY, "topic", "partition", "offset"], sort=False).agg(
        units=("units", "sum"), revenue=("revenue", "sum"), event_time=("event_time", "first")
    )
    ordered = per_order.groupby(level=PRODUCT_KEY, sort=False).agg(
        order_count=("units", "size"),
        units=("units", "sum"),
        revenue=("revenue", "sum"),
        last_order=("event_time", "max"),
    )
    events = facts[facts["kind"] == "product_event"]
    events_viewed = events.assign(viewed=(events["event_kind"] == "viewed").astype("int64"))
    per_event = events_viewed.groupby(PRODUCT_KEY, sort=False).agg(
        events=("event_time", "size"),
        views=("viewed", "sum"),
        last_seen=("event_time", "max"),
    )
    touched = ordered.index.union(per_event.index)
    if len(touched) == 0:
        return _empty(PRODUCT_KEY, _PRODUCT_STATE)
    batch = ordered.reindex(touched).join(per_event.reindex(touched))
    prev = state.products.reindex(touched)
    new = pd.DataFrame(index=touched)
    new["profile_version"] = _sum(prev["profile_version"], batch["order_count"]) + batch[
        "events"
    ].fillna(0).astype("int64")
    new["views"] = _sum(prev["views"], batch["views"])
    new["order_count"] = _sum(prev["order_count"], batch["order_count"])
    new["units"] = _sum(prev["units"], batch["units"])
    new["revenue_minor"] = _sum(prev["revenue_minor"], batch["revenue"])
    batch_last = _extreme(batch["last_order"], batch["last_seen"], "max")
    new["last_event_time"] = _extreme(prev["last_event_time"], batch_last, "max").astype("int64")

    # Attributes: the greatest (event_time, topic, partition, offset) among created/updated events wins.
    attrs = prev[
        [
            "attr_time",
            "attr_topic",
            "attr_partition",
            "attr_offset",
            "title",
            "description",
            "price_minor",
            "category",
        ]
    ].copy()
    updates = events[events["event_kind"].isin(["created", "updated"])]
    if len(updates):
        order = ["event_time", "topic", "partition", "offset"]
        latest = (
            updates.sort_values([*PRODUCT_KEY, *order]).groupby(PRODUCT_KEY, sort=False).tail(1)
        )
        latest = latest.set_index(PRODUCT_KEY)
        candidate = pd.DataFrame(
            {
                "attr_time": latest["event_time"].astype("Int64"),
                "attr_topic": latest["topic"],
                "attr_partition": latest["partition"].astype("Int64"),
                "attr_offset": latest["offset"].astype("Int64"),
                "title": latest["title"],
                "description": latest["description"],
                "price_minor": latest["price_minor"].astype("Int64"),
                "category": latest["category"],
            }
        )
        current = attrs.reindex(candidate.index)
        newer = _position_newer(candidate, current)
        winners = candidate[newer]
        attrs.loc[winners.index, winners.columns] = winners
    for column in attrs.columns:
        new[column] = attrs[column]
    return _normalise(new, _PRODUCT_STATE)


def _position_newer(candidate: pd.DataFrame, current: pd.DataFrame) -> pd.Series:
    """True where candidate's (time, topic, partition, offset) is greater than current's (or none)."""
    ct, cu = candidate["attr_time"], current["attr_time"]
    missing = cu.isna()
    key_c = list(
        zip(
            ct.fillna(-1),
            candidate["attr_topic"].fillna(""),
            candidate["attr_partition"].fillna(-1),
            candidate["attr_offset"].fillna(-1),
            strict=True,
        )
    )
    key_u = list(
        zip(
            cu.fillna(-1),
            current["attr_topic"].fillna(""),
            current["attr_partition"].fillna(-1),
            current["attr_offset"].fillna(-1),
            strict=True,
        )
    )
    greater = pd.Series([a > b for a, b in zip(key_c, key_u, strict=True)], index=candidate.index)
    return (missing | greater).astype(bool)


def fold(state: ProfileState, facts: pd.DataFrame) -> StateDelta:
    """Fold a batch of facts into ``state``; returns the new rows of every touched entity.

    Pure: ``state`` is not modified. Applying the delta (:func:`apply_delta`) gives the next state.
    """
    customers, categories = _fold_customers(state, facts)
    products = _fold_products(state, facts)
    return StateDelta(customers=customers, categories=categories, products=products)


def _source_ranges(
    facts: pd.DataFrame, key: list[str]
) -> dict[tuple[str, str], list[dict[str, object]]]:
    """Per entity: the (topic, partition, first_offset, last_offset) ranges of its facts."""
    if facts.empty:
        return {}
    return ranges_by_entity(source_ranges(facts, key), key)


def ranges_by_entity(ranges: pd.DataFrame, key: list[str]) -> Sources:
    """:func:`source_ranges` rows (columns key, topic, partition, min, max) per entity, sorted."""
    out: dict[tuple[str, str], list[dict[str, object]]] = {}
    for store, entity, topic, partition, lo, hi in zip(
        ranges[key[0]].tolist(),
        ranges[key[1]].tolist(),
        ranges["topic"].tolist(),
        ranges["partition"].tolist(),
        ranges["min"].tolist(),
        ranges["max"].tolist(),
        strict=True,
    ):
        out.setdefault((store, entity), []).append(
            {
                "topic": topic,
                "partition": int(partition),
                "first_offset": int(lo),
                "last_offset": int(hi),
            }
        )
    return out


Sources = dict[tuple[str, str], list[dict[str, object]]]


def customer_facts(facts: pd.DataFrame) -> pd.DataFrame:
    """The facts that touch a customer profile: order lines and views by a known customer."""
    return facts[
        facts["customer_id"].notna()
        & ((facts["kind"] == "order_line") | (facts["event_kind"] == "viewed"))
    ]


def source_ranges(facts: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Per entity and topic-partition, the lowest and highest offset of its facts (flat)."""
    return (
        facts.groupby([*key, "topic", "partition"], sort=True)["offset"]
        .agg(["min", "max"])
        .reset_index()
    )


def customer_profiles(
    state: ProfileState,
    delta: StateDelta,
    facts: pd.DataFrame | None,
    sources: Sources | None = None,
) -> pd.DataFrame:
    """Profiles of the customers in ``delta`` (``state`` is the state *after* the delta).

    Columns: the CustomerProfile fields except the model outputs (``propensity``, ``model``),
    one row per touched customer, sorted by key. ``source`` lists the offset ranges of ``facts``
    per customer, or comes from ``sources`` when given (a recompute that folded in chunks).
    """
    rows = delta.customers.sort_index()
    out = rows.reset_index()
    orders = rows["order_count"].to_numpy()
    spend = rows["total_spend_minor"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.where(orders > 0, spend / np.maximum(orders, 1), np.nan)
    out["avg_order_value_minor"] = avg
    last_order = rows["last_order_time"].astype("float64").to_numpy()
    out["days_since_last_order"] = (rows["last_event_time"].to_numpy() - last_order) / MS_PER_DAY

    # top categories by spend (ties broken by category name), share of total spend
    cats = state.categories
    touched_cats = cats[cats.index.droplevel("category").isin(rows.index)].reset_index()
    tops: dict[tuple[str, str], list[dict[str, object]]] = {}
    if len(touched_cats):
        touched_cats = touched_cats.sort_values(
            ["store_id", "customer_id", "spend_minor", "category"],
            ascending=[True, True, False, True],
        )
        touched_cats = touched_cats.groupby(CUSTOMER_KEY, sort=False).head(TOP_CATEGORIES)
        totals = rows["total_spend_minor"].rename("total").reset_index()
        touched_cats = touched_cats.merge(totals, on=CUSTOMER_KEY, how="left")
        for store, customer, category, spend_minor, total in zip(
            touched_cats["store_id"].tolist(),
            touched_cats["customer_id"].tolist(),
            touched_cats["category"].tolist(),
            touched_cats["spend_minor"].tolist(),
            touched_cats["total"].tolist(),
            strict=True,
        ):
            share = float(spend_minor) / total if total else 0.0
            tops.setdefault((store, customer), []).append(
                {"category": category, "spend_minor": int(spend_minor), "share": share}
            )
    keys = list(zip(out["store_id"].tolist(), out["customer_id"].tolist(), strict=True))
    out["top_categories"] = [tops.get(key, []) for key in keys]
    if sources is None:
        assert facts is not None
        sources = _source_ranges(customer_facts(facts), CUSTOMER_KEY)
    out["source"] = [sources.get(key, []) for key in keys]
    return out


def product_profiles(
    state: ProfileState,
    delta: StateDelta,
    facts: pd.DataFrame | None,
    sources: Sources | None = None,
) -> pd.DataFrame:
    """Profiles of the products in ``delta``: ProductProfile fields except the model outputs.

    ``source`` as in :func:`customer_profiles`.
    """
    rows = delta.products.sort_index()
    out = rows.reset_index().drop(
        columns=["attr_time", "attr_topic", "attr_partition", "attr_offset"]
    )
    if sources is None:
        assert facts is not None
        sources = _source_ranges(facts[facts["product_id"].notna()], PRODUCT_KEY)
    out["source"] = [
        sources.get(key, []) for key in zip(out["store_id"], out["product_id"], strict=True)
    ]
    return out


def to_records(frame: pd.DataFrame, fields: list[str]) -> list[dict[str, object]]:
    """Rows of ``frame`` as plain-Python dicts of ``fields``: NaN/NA -> None, numpy -> int/float."""
    out: list[dict[str, object]] = []
    columns = [frame[f].tolist() if f in frame else [None] * len(frame) for f in fields]
    for values in zip(*columns, strict=True):
        record: dict[str, object] = {}
        for name, value in zip(fields, values, strict=True):
            if value is None or value is pd.NA or (isinstance(value, float) and value != value):
                record[name] = None
            elif isinstance(value, np.integer):
                record[name] = int(value)
            elif isinstance(value, np.floating):
                record[name] = float(value)
            else:
                record[name] = value
        out.append(record)
    return out
