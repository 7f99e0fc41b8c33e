"""Jobs around model packages: history for training, and comparing two trained versions.

:func:`facts_from_topics` reads every record now in the order and product topics, decodes and
validates them with the stream's own codec and checks, and builds the facts table the profile fold
reads. Records the stream would dead-letter are skipped and counted, never fatal.
:func:`cutoff_from_date` and :func:`default_cutoff` pick the training cutoff.

:func:`compare_versions` puts the per-store test metrics of two registered versions side by side
(each training logs them as ``metrics/store_metrics.csv`` of its run);
:func:`compare_store_metrics` is the pure pandas part. Test sets differ between versions trained
on different history or cutoffs, so a comparison says which model did better on *its own* test
rows of each store; shadow scores of the live stream compare them on the same rows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storeml.errors import ConfigError, ModelError
from storeml.settings import Settings

if TYPE_CHECKING:
    from storeml.connectors.mlflow_registry import ModelHandle

__all__ = [
    "facts_from_topics",
    "cutoff_from_date",
    "default_cutoff",
    "PRIMARY_METRICS",
    "ALL_STORES",
    "compare_store_metrics",
    "compare_versions",
]

#: The metric a comparison uses by default: the first of these both versions logged (customer
#: models log ``auc``, product models ``top5_accuracy``). All are "higher is better".
PRIMARY_METRICS: tuple[str, ...] = ("auc", "top5_accuracy", "accuracy")
#: ``store_id`` of the aggregate row of :func:`compare_store_metrics`.
ALL_STORES = "(all)"
#: Columns of a store metrics table that are not metrics.
_NOT_METRICS = frozenset({"store_id", "examples", "train", "test", "classes", "reason", "scope"})


def cutoff_from_date(value: str | date) -> int:
    """Epoch milliseconds of midnight UTC starting ``value`` (``YYYY-MM-DD``)."""
    if isinstance(value, date):
        day = value
    else:
        try:
            day = date.fromisoformat(str(value))
        except ValueError as exc:
            raise ConfigError(
                f"training date {value!r} is not a date; write YYYY-MM-DD, e.g. 2024-03-01"
            ) from exc
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def default_cutoff(facts: pd.DataFrame, fraction: float = 0.7) -> int:
    """The event time with ``fraction`` of the facts before it (labels need history after it)."""
    if facts.empty:
        raise ModelError("no history to train from: the facts table is empty")
    times = facts["event_time"].sort_values().to_numpy()
    return int(times[min(int(len(times) * fraction), len(times) - 1)])


def facts_from_topics(settings: Settings) -> tuple[pd.DataFrame, dict[str, int]]:
    """Facts of every valid record in the order and product topics, and counts of what was read.

    Counts: ``orders``, ``products`` (records read) and ``skipped`` (undecodable or invalid).
    """
    from storeml.connectors.kafka_admin import read_all, watermark_method_for
    from storeml.errors import CodecError
    from storeml.models.events import (
        ORDER,
        PRODUCT,
        facts_from_events,
        validate_order,
        validate_product,
    )
    from storeml.schemas.codec import get_codec

    method = watermark_method_for(settings.kafka_flavor)
    events: list[tuple[str, dict[str, Any], str, int, int]] = []
    counts = {"orders": 0, "products": 0, "skipped": 0}
    for kind, topic, schema, validate in (
        (ORDER, settings.topic_orders, "order_event", validate_order),
        (PRODUCT, settings.topic_products, "product_event", validate_product),
    ):
        codec = get_codec(schema)
        records = read_all(settings.kafka_config(), topic, method)
        counts["orders" if kind == ORDER else "products"] += len(records)
        for record in records:
            try:
                value = codec.decode(record.value)
            except CodecError:
                counts["skipped"] += 1
                continue
            if validate(value) is not None:
                counts["skipped"] += 1
                continue
            events.append((kind, value, record.topic, record.partition, record.offset))
    return facts_from_events(events), counts


def _metric_columns(table: pd.DataFrame) -> list[str]:
    return [
        c
        for c in table.columns
        if c not in _NOT_METRICS
        and not c.startswith("global_")
        and pd.api.types.is_numeric_dtype(table[c])
    ]


def _pick_metric(champion: pd.DataFrame, challenger: pd.DataFrame, metric: str | None) -> str:
    both = [c for c in _metric_columns(champion) if c in set(_metric_columns(challenger))]
    if metric is not None:
        if metric not in both:
            raise ModelError(
                f"metric {metric!r} is not logged by both versions; choose one of:"
                f" {', '.join(both) or 'none'}"
            )
        return metric
    for name in (*PRIMARY_METRICS, *both):
        if name in both:
            return name
    raise ModelError(
        "the two versions log no metric in common (champion: "
        f"{', '.join(_metric_columns(champion)) or 'none'}; challenger: "
        f"{', '.join(_metric_columns(challenger)) or 'none'}); are they models of the same kind?"
    )


def _scope_counts(scopes: pd.Series) -> str:
    counts = scopes.dropna().value_counts()
    return " / ".join(f"{int(counts[s])} {s}" for s in ("store", "global", "none") if s in counts)


def compare_store_metrics(
    champion: pd.DataFrame, challenger: pd.DataFrame, metric: str | None = None
) -> pd.DataFrame:
    """Per-store ``metric`` of two trainings side by side, and an aggregate row last.

    ``champion`` and ``challenger`` are store metrics tables (``metrics/store_metrics.csv``, one
    row per store: ``store_id``, ``test``, ``scope``, metrics). ``metric`` defaults to the first
    of :data:`PRIMARY_METRICS` both log. Result columns: ``store_id``, ``champion_scope``,
    ``champion_test``, ``champion_<metric>``, the same three for ``challenger``, and
    ``delta_<metric>`` (challenger minus champion; positive: the challenger did better). One row
    per store in either table, sorted by store id; a store only one version was trained on has
    None / NaN on the other side (the stream scores it with that version's global model).

    The last row (``store_id`` = :data:`ALL_STORES`) aggregates the stores where both versions
    have the metric, so both sides cover the same stores: ``*_test`` are their test rows, the
    metrics are test-size-weighted means (as the run's ``mean_<metric>``), and ``*_scope`` count
    which model served them (``"3 store / 9 global"``).
    """
    name = _pick_metric(champion, challenger, metric)

    def side(table: pd.DataFrame, role: str) -> pd.DataFrame:
        part = table[["store_id", "scope", "test", name]].copy()
        part["store_id"] = part["store_id"].astype(str)
        return part.rename(
            columns={"scope": f"{role}_scope", "test": f"{role}_test", name: f"{role}_{name}"}
        )

    frame = side(champion, "champion").merge(
        side(challenger, "challenger"), on="store_id", how="outer", sort=True
    )
    frame[f"delta_{name}"] = frame[f"challenger_{name}"] - frame[f"champion_{name}"]
    both = frame[frame[f"champion_{name}"].notna() & frame[f"challenger_{name}"].notna()]
    total: dict[str, Any] = {"store_id": ALL_STORES}
    for role in ("champion", "challenger"):
        weights = both[f"{role}_test"].astype("float64")
        values = both[f"{role}_{name}"].astype("float64")
        total[f"{role}_scope"] = _scope_counts(both[f"{role}_scope"])
        total[f"{role}_test"] = weights.sum()
        total[f"{role}_{name}"] = (
            float(np.average(values, weights=weights)) if weights.sum() > 0 else float("nan")
        )
    total[f"delta_{name}"] = total[f"challenger_{name}"] - total[f"champion_{name}"]
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    for role in ("champion", "challenger"):
        frame[f"{role}_scope"] = frame[f"{role}_scope"].astype(object)
        frame[f"{role}_scope"] = frame[f"{role}_scope"].where(frame[f"{role}_scope"].notna(), None)
    return frame


def compare_versions(
    settings: Settings, champion: ModelHandle, challenger: ModelHandle, metric: str | None = None
) -> pd.DataFrame:
    """:func:`compare_store_metrics` of two registered versions (e.g. from ``resolve_version``).

    Reads each version's run artifact ``metrics/store_metrics.csv``; :class:`ModelError` when a
    version has no run or no such artifact (it was not trained by storeml).
    """
    from storeml.connectors.mlflow_registry import STORE_METRICS_ARTIFACT, read_run_table

    tables = []
    for handle in (champion, challenger):
        if not handle.run_id:
            raise ModelError(
                f"{handle.name} version {handle.version} has no training run, so no per-store"
                " metrics; compare versions registered by `storeml models train`"
            )
        tables.append(read_run_table(settings.tracking_uri, handle.run_id, STORE_METRICS_ARTIFACT))
    return compare_store_metrics(tables[0], tables[1], metric)
