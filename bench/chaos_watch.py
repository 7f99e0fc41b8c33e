"""The stream, seen from outside: its checkpoint and lake files, and its outputs as they arrive.

:class:`Checkpoint` reads Spark's offset and commit logs, the profile state's changelog, manifests
and snapshots, and the lake's incoming and work folders of one run, without touching them.
:class:`OutputWatch` counts, live, what reaches the run's enriched and dead-letter topics and its
Redis hashes. The chaos run's kill points (``bench/chaos_kill.py``) are read from both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "OutputWatch", "secret_value"]

#: An incoming lake file: ``<topic>+<partition>+<first offset>[.<digest>].parquet``.
_INCOMING = re.compile(
    r"^(?P<topic>[^.].*)\+(?P<partition>\d+)\+(?P<offset>\d+)(\.[0-9a-f]+)?\.parquet$"
)


def secret_value(value: Any) -> str:
    """A setting that may be a plain string or a pydantic ``SecretStr``."""
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter else value)


# --- the checkpoint, read from outside -----------------------------------------------------------
class Checkpoint:
    """Spark's offset and commit logs and the state files of one checkpoint folder."""

    def __init__(self, root: Path, lake: Path | None) -> None:
        self.root = root
        self.lake = lake
        self.state = root / "profile-state"

    @staticmethod
    def _ids(folder: Path) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(folder) if n.isdigit())
        except FileNotFoundError:
            return []

    def planned(self) -> int:
        ids = self._ids(self.root / "offsets")
        return ids[-1] if ids else -1

    def committed(self) -> int:
        ids = self._ids(self.root / "commits")
        return ids[-1] if ids else -1

    def end_offsets(self, batch: int) -> dict[tuple[str, int], int]:
        """The source's end offsets of batch ``batch`` (exclusive), from the offset log."""
        if batch < 0:
            return {}
        lines = (self.root / "offsets" / str(batch)).read_text().splitlines()
        positions: dict[tuple[str, int], int] = {}
        for topic, parts in json.loads(lines[2]).items():
            for part, offset in parts.items():
                positions[(topic, int(part))] = int(offset)
        return positions

    def ranges(self, batch: int) -> dict[tuple[str, int], tuple[int, int]]:
        """``(topic, partition) -> (first, end)`` of what batch ``batch`` reads."""
        begin = self.end_offsets(batch - 1)
        return {k: (begin.get(k, 0), end) for k, end in self.end_offsets(batch).items()}

    def changelog_files(self, batch: int) -> list[str]:
        try:
            return [
                n for n in os.listdir(self.state / "changelog") if n.startswith(f"{batch:012d}")
            ]
        except FileNotFoundError:
            return []

    def manifest(self, batch: int) -> bool:
        return (self.state / "changelog" / f"{batch:012d}.json").exists()

    def snapshot_in_flight(self, batch: int, buckets: list[int]) -> bool:
        """A snapshot file of ``batch`` (or a temporary one) without its completion marker."""
        name = f"{batch:012d}"
        for bucket in buckets:
            try:
                names = os.listdir(self.state / "snapshots" / f"bucket={bucket:05d}")
            except FileNotFoundError:
                continue
            if any(n.endswith(".tmp") for n in names) or (
                f"{name}.sqlite" in names and f"{name}.json" not in names
            ):
                return True
        return False

    def snapshots_of(self, batch: int) -> tuple[int, int]:
        """(snapshot tables, completion markers) written for ``batch`` so far."""
        tables = markers = 0
        with contextlib.suppress(FileNotFoundError):
            for folder in os.scandir(self.state / "snapshots"):
                names = os.listdir(folder.path)
                tables += f"{batch:012d}.sqlite" in names
                markers += f"{batch:012d}.json" in names
        return tables, markers

    def incoming_of(self, batch: int) -> int:
        """Lake ``_incoming`` files named after an event of batch ``batch``."""
        if self.lake is None:
            return 0
        ranges = self.ranges(batch)
        count = 0
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.lake / "_incoming"):
                match = _INCOMING.match(name)
                if match is None:
                    continue
                lo, hi = ranges.get((match["topic"], int(match["partition"])), (0, 0))
                count += lo <= int(match["offset"]) < hi
        return count

    def compaction_locked(self) -> bool:
        """Whether a compaction holds the lake's lock (it has started working), from /proc/locks."""
        if self.lake is None:
            return False
        try:
            inode = os.stat(self.lake / ".compaction.lock").st_ino
            locks = Path("/proc/locks").read_text()
        except OSError:
            return False
        return f":{inode} " in locks

    def staging_busy(self) -> bool:
        if self.lake is None:
            return False
        try:
            return bool(os.listdir(self.lake / "_staging"))
        except FileNotFoundError:
            return False


# --- the run's outputs, watched live -------------------------------------------------------------
class OutputWatch:
    """Counts what reaches the run's enriched and dead-letter topics and its Redis hashes, live.

    Kafka: a consumer assigned to every partition of the three topics from the start. Redis: a
    keyspace-notification subscription on the run's prefix (the Redis must be ours: the watch
    turns notifications on).
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.kafka = {"profiles": 0, "dead-letter": 0}
        self.kafka_sources: list[tuple[float, str, str]] = []  # (time, topic, storeml.source)
        self.redis = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._consume, daemon=True),
            threading.Thread(target=self._subscribe, daemon=True),
        ]
        self._ready = threading.Barrier(3)

    def __enter__(self) -> OutputWatch:
        for thread in self._threads:
            thread.start()
        self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _consume(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from storeml.connectors.kafka_admin import partitions_of

        s = self.settings
        topics = [s.topic_customer_profiles, s.topic_product_profiles, s.topic_dead_letter]
        consumer = Consumer(
            {
                **s.kafka_config(),
                "group.id": "storeml-chaos-watch",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
                "fetch.queue.backoff.ms": 1,
            }
        )
        consumer.assign(
            [TopicPartition(t, p, 0) for t, p in partitions_of(s.kafka_config(), topics)]
        )
        self._ready.wait(60)
        try:
            while not self._stop.is_set():
                for message in consumer.consume(1000, timeout=0.02):
                    if message.error() is not None:
                        continue
                    which = "dead-letter" if message.topic() == s.topic_dead_letter else "profiles"
                    self.kafka[which] += 1
                    source = dict(message.headers() or []).get("storeml.source") or b""
                    text = source.decode() if isinstance(source, bytes) else str(source)
                    self.kafka_sources.append((time.monotonic(), str(message.topic()), text))
        finally:
            consumer.close()

    def _subscribe(self) -> None:
        import redis

        client = redis.Redis.from_url(secret_value(self.settings.redis_url))
        client.config_set("notify-keyspace-events", "Kh")
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(f"__keyspace@*__:{self.settings.redis_prefix}:*")
        self._ready.wait(60)
        try:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.02)
                if message is not None:
                    self.redis += 1
        finally:
            pubsub.close()
            client.close()
