"""What the chaos run compares: the outputs of a run killed many times against an uninterrupted one.

Each output is read the way its consumers read it:

* **Redis**: every hash under the run's prefix, all fields as stored but ``written_at`` (the wall
  clock of the write), and every score index set (members and scores);
* **enriched topics**: every record, deduplicated by key keeping the highest
  ``storeml.profile_version`` header (the documented consumer rule). Replays may repeat a
  ``(key, version)`` pair (at least once), never change its value nor skip a version;
* **event lake**: every row of every Parquet file (compacted and incoming), by source coordinates
  ``(topic, partition, offset)``: each accepted event exactly once, with the bytes received;
* **dead letters**: the set of source coordinates (the ``storeml.source`` header).

:func:`compare_runs` returns a :class:`Comparison`; its :attr:`~Comparison.ok` is what the chaos
run's exit status says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Coordinates",
    "RunOutputs",
    "Comparison",
    "read_outputs",
    "input_coordinates",
    "compare_runs",
    "summarise_counts",
]

Coordinates = tuple[str, int, int]  # (topic, partition, offset)
LakeRow = tuple[Coordinates, bytes | None, bytes, str]  # coordinates, key, value, store


@dataclass
class RunOutputs:
    """Everything one run left behind, read back."""

    redis: dict[str, dict[str, str]]
    #: per output topic: key -> every (version, value, headers) record seen, in topic order
    topics: dict[str, dict[bytes, list[tuple[int, bytes, tuple[tuple[str, bytes], ...]]]]]
    lake_rows: list[LakeRow]  # compacted files
    lake_incoming: list[LakeRow]  # incoming files not yet compacted
    dead_letters: list[Coordinates]


@dataclass
class Comparison:
    """Differences between the killed run and the uninterrupted one (all zero when equal)."""

    events: int = 0
    accepted: int = 0
    dead_letter_events: int = 0
    redis_keys: int = 0
    redis_missing: list[str] = field(default_factory=list)
    redis_extra: list[str] = field(default_factory=list)
    redis_differing: list[str] = field(default_factory=list)
    topic_keys: int = 0
    topic_missing: list[str] = field(default_factory=list)
    topic_extra: list[str] = field(default_factory=list)
    topic_differing: list[str] = field(default_factory=list)
    topic_versions_lost: int = 0  # (key, version) pairs of the clean run the killed run lacks
    topic_version_conflicts: int = 0  # one (key, version) with two different values
    topic_replayed: int = 0  # records repeating a (key, version) pair: expected after kills
    lake_lost: int = 0
    lake_duplicated: int = 0
    lake_unexpected: int = 0  # coordinates that are not accepted events (dead or unknown)
    lake_bytes_differing: int = 0
    lake_incoming_left: int = 0  # rows still incoming after the final compaction (information)
    clean_lake_problems: int = 0  # the uninterrupted run's own lake against the input
    dead_letters_lost: int = 0
    dead_letters_extra: int = 0
    dead_letters_replayed: int = 0  # repeated dead letters: expected after kills
    unaccounted: int = 0  # input events neither in the lake nor among the dead letters

    @property
    def lost(self) -> int:
        return (
            self.lake_lost
            + self.dead_letters_lost
            + self.topic_versions_lost
            + len(self.redis_missing)
            + len(self.topic_missing)
        )

    @property
    def duplicated(self) -> int:
        """Duplicates a reader sees: lake rows repeated after the final compaction."""
        return self.lake_duplicated

    @property
    def differing_keys(self) -> int:
        return (
            len(self.redis_differing)
            + len(self.redis_extra)
            + len(self.topic_differing)
            + len(self.topic_extra)
            + self.topic_version_conflicts
        )

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.differing_keys == 0
            and self.lake_unexpected == 0
            and self.lake_bytes_differing == 0
            and self.dead_letters_extra == 0
            and self.clean_lake_problems == 0
            and self.unaccounted == 0
            and self.redis_keys > 0
            and self.topic_keys > 0
        )

    def problems(self, limit: int = 5) -> list[str]:
        """Human-readable lines naming the first differing keys of each kind."""
        out = []
        for name in (
            "redis_missing",
            "redis_extra",
            "redis_differing",
            "topic_missing",
            "topic_extra",
            "topic_differing",
        ):
            keys = getattr(self, name)
            if keys:
                out.append(f"{name}: {len(keys)}, first {keys[:limit]}")
        for name in (
            "topic_versions_lost",
            "topic_version_conflicts",
            "lake_lost",
            "lake_duplicated",
            "lake_unexpected",
            "lake_bytes_differing",
            "clean_lake_problems",
            "dead_letters_lost",
            "dead_letters_extra",
            "unaccounted",
        ):
            if getattr(self, name):
                out.append(f"{name}: {getattr(self, name)}")
        if not self.redis_keys:
            out.append("the uninterrupted run wrote no Redis hash: nothing was compared")
        if not self.topic_keys:
            out.append("the uninterrupted run wrote no enriched record: nothing was compared")
        return out


# --- reading -------------------------------------------------------------------------------------
def _redis_hashes(url: str, prefix: str) -> dict[str, dict[str, str]]:
    """Every key under ``prefix``: hashes as field -> value without ``written_at`` (the wall clock
    of the write differs between runs), score index sets as member -> score."""
    import redis

    from storeml.connectors.redis_sink import is_index_key

    client = redis.Redis.from_url(url)
    try:
        keys = sorted(client.scan_iter(match=f"{prefix}:*", count=5000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            if is_index_key(key, prefix):
                pipe.zrange(key, 0, -1, withscores=True)
            else:
                pipe.hgetall(key)
        values = pipe.execute()
    finally:
        client.close()
    out: dict[str, dict[str, str]] = {}
    for key, raw in zip(keys, values, strict=True):
        if isinstance(raw, list):  # a score index: (member, score) pairs
            out[key.decode()[len(prefix) :]] = {m.decode(): repr(score) for m, score in raw}
        else:
            out[key.decode()[len(prefix) :]] = {
                k.decode(): v.decode() for k, v in raw.items() if k != b"written_at"
            }
    return out


def _topic_records(
    settings: Any, topic: str
) -> dict[bytes, list[tuple[int, bytes, tuple[tuple[str, bytes], ...]]]]:
    from storeml.connectors.kafka_admin import read_all, watermark_method_for

    out: dict[bytes, list[tuple[int, bytes, tuple[tuple[str, bytes], ...]]]] = {}
    for r in read_all(settings.kafka_config(), topic, watermark_method_for(settings.kafka_flavor)):
        headers = dict(r.headers)
        version = int(headers["storeml.profile_version"])
        out.setdefault(r.key or b"", []).append((version, r.value or b"", tuple(r.headers)))
    return out


def _lake_rows(root: Path) -> tuple[list[LakeRow], list[LakeRow]]:
    """Every row of the compacted files and of the incoming files still there.

    The store comes from the file (incoming) or its path (compacted). Work folders of a
    compaction (``_staging``, ``_compactions``, ``_ledger``) and temporary files are no part of
    what readers see.
    """
    import pyarrow.parquet as pq

    compacted: list[LakeRow] = []
    incoming: list[LakeRow] = []
    for path in sorted(root.rglob("*.parquet")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts):
            continue
        if parts[0] == "_incoming":
            rows = incoming
        elif parts[0].startswith("store_id="):
            rows = compacted
        else:
            continue
        table = pq.read_table(path, partitioning=None).to_pydict()
        stores = table.get("store_id") or [parts[0].split("=", 1)[1]] * len(table["offset"])
        for topic, partition, offset, key, value, store in zip(
            table["topic"],
            table["partition"],
            table["offset"],
            table["key"],
            table["value"],
            stores,
            strict=True,
        ):
            rows.append(((topic, int(partition), int(offset)), key, value, store))
    return compacted, incoming


def _dead_letters(settings: Any) -> list[Coordinates]:
    from storeml.connectors.kafka_admin import read_all, watermark_method_for

    out = []
    for r in read_all(
        settings.kafka_config(),
        settings.topic_dead_letter,
        watermark_method_for(settings.kafka_flavor),
    ):
        topic, partition, offset = dict(r.headers)["storeml.source"].decode().rsplit(":", 2)
        out.append((topic, int(partition), int(offset)))
    return out


def read_outputs(settings: Any) -> RunOutputs:
    """Read back what the run with ``settings`` wrote (its prefix, topics, lake)."""
    lake = settings.lake_path
    compacted, incoming = (
        _lake_rows(Path(lake)) if lake is not None and Path(lake).exists() else ([], [])
    )
    return RunOutputs(
        redis=_redis_hashes(settings.redis_url, settings.redis_prefix),
        topics={
            "customer": _topic_records(settings, settings.topic_customer_profiles),
            "product": _topic_records(settings, settings.topic_product_profiles),
        },
        lake_rows=compacted,
        lake_incoming=incoming,
        dead_letters=_dead_letters(settings),
    )


def input_coordinates(settings: Any) -> dict[Coordinates, tuple[bytes | None, bytes]]:
    """Every input message (orders and products) as the broker holds it: coords -> (key, value)."""
    from storeml.connectors.kafka_admin import read_all, watermark_method_for

    method = watermark_method_for(settings.kafka_flavor)
    out: dict[Coordinates, tuple[bytes | None, bytes]] = {}
    for topic in (settings.topic_orders, settings.topic_products):
        for r in read_all(settings.kafka_config(), topic, method):
            out[(r.topic, r.partition, r.offset)] = (r.key, r.value or b"")
    return out


# --- comparing -----------------------------------------------------------------------------------
def _latest(
    records: dict[bytes, list[tuple[int, bytes, tuple[tuple[str, bytes], ...]]]],
) -> dict[bytes, tuple[int, bytes, tuple[tuple[str, bytes], ...]]]:
    return {key: max(seen, key=lambda r: r[0]) for key, seen in records.items()}


def _lake_problems(
    compacted: list[LakeRow],
    incoming: list[LakeRow],
    accepted: Mapping[Coordinates, tuple[bytes | None, bytes]],
) -> tuple[int, int, int, int]:
    """(lost, duplicated rows, unexpected coordinates, rows whose bytes differ from the input).

    What a reader sees: the compacted rows, plus the incoming rows of events not compacted yet
    (readers drop an incoming row whose event a compaction already placed).
    """
    done = {coords for coords, *_ in compacted}
    rows = compacted + [row for row in incoming if row[0] not in done]
    counts = Counter(coords for coords, *_ in rows)
    lost = sum(1 for coords in accepted if coords not in counts)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    unexpected = sum(1 for coords in counts if coords not in accepted)
    differing = sum(
        1
        for coords, key, value, _store in rows
        if coords in accepted and accepted[coords] != (key, value)
    )
    return lost, duplicated, unexpected, differing


def compare_runs(
    killed: RunOutputs,
    clean: RunOutputs,
    inputs: Mapping[Coordinates, tuple[bytes | None, bytes]],
) -> Comparison:
    """Compare the killed run's outputs with the uninterrupted run's, and both lakes with the input.

    The accepted events are the input minus the uninterrupted run's dead letters.
    """
    c = Comparison(events=len(inputs))
    dead_clean = set(clean.dead_letters)
    accepted = {k: v for k, v in inputs.items() if k not in dead_clean}
    c.accepted, c.dead_letter_events = len(accepted), len(dead_clean)

    # Redis: the same hashes, every field
    c.redis_keys = len(clean.redis)
    c.redis_missing = sorted(set(clean.redis) - set(killed.redis))
    c.redis_extra = sorted(set(killed.redis) - set(clean.redis))
    c.redis_differing = sorted(
        k for k in set(clean.redis) & set(killed.redis) if clean.redis[k] != killed.redis[k]
    )

    # enriched topics: the same latest record per key; no version skipped, none changed
    for kind in ("customer", "product"):
        got, want = killed.topics[kind], clean.topics[kind]
        latest_got, latest_want = _latest(got), _latest(want)
        c.topic_keys += len(latest_want)
        c.topic_missing += [f"{kind}:{k.decode()}" for k in sorted(set(want) - set(got))]
        c.topic_extra += [f"{kind}:{k.decode()}" for k in sorted(set(got) - set(want))]
        c.topic_differing += [
            f"{kind}:{k.decode()}"
            for k in sorted(set(want) & set(got))
            if latest_got[k] != latest_want[k]
        ]
        for key, seen in got.items():
            values: dict[int, set[tuple[bytes, tuple[tuple[str, bytes], ...]]]] = {}
            for version, value, headers in seen:
                values.setdefault(version, set()).add((value, headers))
            c.topic_version_conflicts += sum(1 for v in values.values() if len(v) > 1)
            c.topic_replayed += len(seen) - len(values)
            wanted = {version for version, _, _ in want.get(key, [])}
            c.topic_versions_lost += len(wanted - set(values))
        c.topic_versions_lost += sum(len({v for v, _, _ in want[k]}) for k in set(want) - set(got))

    # the lake: every accepted event exactly once, with the bytes received
    c.lake_lost, c.lake_duplicated, c.lake_unexpected, c.lake_bytes_differing = _lake_problems(
        killed.lake_rows, killed.lake_incoming, accepted
    )
    c.lake_incoming_left = len(killed.lake_incoming)
    c.clean_lake_problems = sum(_lake_problems(clean.lake_rows, clean.lake_incoming, accepted))

    # dead letters: the same source coordinates
    dead_killed = set(killed.dead_letters)
    c.dead_letters_lost = len(dead_clean - dead_killed)
    c.dead_letters_extra = len(dead_killed - dead_clean)
    c.dead_letters_replayed = len(killed.dead_letters) - len(dead_killed)
    in_lake = {coords for coords, *_ in killed.lake_rows + killed.lake_incoming}
    c.unaccounted = sum(1 for k in inputs if k not in in_lake and k not in dead_killed)
    return c


def summarise_counts(values: Iterable[str]) -> dict[str, int]:
    """``{value: count}`` sorted by value (the report's kill kinds)."""
    return dict(sorted(Counter(values).items()))
