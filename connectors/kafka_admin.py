"""Kafka topic administration, partition discovery and watermarks, with broker quirks in one place.

A *watermark method* says how to learn a partition's high watermark (the offset the next record
will get; reading up to it, exclusive, reads everything that is there):

- ``"list_offsets"`` asks the broker with ListOffsets (``get_watermark_offsets(cached=False)``).
  Right on Apache Kafka, Confluent and Redpanda (2-4 ms per partition).
- ``"fetch"`` assigns a consumer to the partitions, waits until each one has had a fetch response,
  and reads the watermarks those responses carried (``get_watermark_offsets(cached=True)``). Needed
  on the embedded Tansu broker, whose ListOffsets(LATEST) answer is the last record *batch*'s base
  offset + 1 instead of the log end. About 10 ms per call for any number of partitions on loopback.

A partition counts as answered when the consumer delivers one of its records or a
"partition EOF" event: both are produced while handling a fetch response issued after the call
began, so the cached watermark is fresh. To keep that cheap the consumer is assigned just below
the last known high watermark (one record, or EOF on an empty partition), not at the log start.

Under ``isolation.level=read_committed`` (librdkafka's default) "high watermark" means the last
stable offset with either method, so a reader never waits for an open transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from storeml.errors import ConfigError, ConnectorError

__all__ = [
    "WatermarkMethod",
    "WATERMARK_METHODS",
    "TopicPartitionKey",
    "KafkaRecord",
    "WatermarkReader",
    "position_of",
    "watermark_method_for",
    "check_watermark_method",
    "ensure_topics",
    "partitions_of",
    "high_watermarks",
    "low_watermarks",
    "read_all",
]

log = logging.getLogger(__name__)

WatermarkMethod = Literal["list_offsets", "fetch"]
WATERMARK_METHODS: tuple[str, ...] = get_args(WatermarkMethod)
TopicPartitionKey = tuple[str, int]

_FLAVOR_METHODS: dict[str, WatermarkMethod] = {"apache": "list_offsets", "tansu": "fetch"}

# Consumer properties of the watermark consumer: answer fast, fetch little, never commit.
_WATERMARK_CONSUMER: dict[str, Any] = {
    "group.id": "storeml-watermarks",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 10,
    "fetch.queue.backoff.ms": 1,
    "fetch.message.max.bytes": 16_384,
    "queued.min.messages": 1,
}

# Seconds after which partitions that gave no answer are re-assigned at their log start.
_REWIND_AFTER = 1.0

# Consumer properties of read_all: read exactly what is there, fail if it is gone.
_READ_CONSUMER: dict[str, Any] = {
    "group.id": "storeml-read-all",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "error",
    "fetch.wait.max.ms": 100,
    "fetch.queue.backoff.ms": 5,
}


def watermark_method_for(flavor: str) -> WatermarkMethod:
    """The watermark method for a broker flavor (``settings.kafka_flavor``)."""
    try:
        return _FLAVOR_METHODS[flavor]
    except KeyError:
        raise ConfigError(
            f"unknown Kafka flavor {flavor!r}; use one of {sorted(_FLAVOR_METHODS)}"
        ) from None


def check_watermark_method(method: str) -> WatermarkMethod:
    """``method`` if it is a watermark method, else :class:`ConfigError`."""
    if method not in WATERMARK_METHODS:
        raise ConfigError(
            f"unknown watermark method {method!r}; use one of {list(WATERMARK_METHODS)}"
        )
    return cast(WatermarkMethod, method)


@dataclass(frozen=True)
class KafkaRecord:
    """One record as stored in Kafka; ``timestamp_ms`` is None when the broker has none."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, message: Message) -> KafkaRecord:
        kind, stamp = message.timestamp()
        topic, partition, offset = position_of(message)
        headers = cast(list[tuple[str, bytes | None]], message.headers() or [])
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=cast(bytes | None, message.key()),
            value=cast(bytes | None, message.value()),
            headers=[(k, v if v is not None else b"") for k, v in headers],
            timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else stamp,
        )


def position_of(message: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message or partition event.

    confluent-kafka types them as optional; they are always set on what ``consume()`` returns.
    """
    return cast(str, message.topic()), cast(int, message.partition()), cast(int, message.offset())


def _bootstrap(config: Mapping[str, Any]) -> str:
    if not config.get("bootstrap.servers"):
        raise ConfigError("Kafka config has no 'bootstrap.servers'; set STOREML_KAFKA_BOOTSTRAP")
    return str(config["bootstrap.servers"])


def _client_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without consumer/producer-only keys an AdminClient would warn about."""
    _bootstrap(config)
    return {k: v for k, v in config.items() if not k.startswith(("group.", "enable.auto"))}


def ensure_topics(
    config: Mapping[str, Any], topics: Iterable[str], partitions: int, timeout: float = 30.0
) -> None:
    """Create the missing ``topics`` with ``partitions`` partitions; wait until metadata shows them.

    A topic that already exists is left as it is, whatever its partition count.
    """
    wanted = sorted(set(topics))
    if not wanted:
        return
    if partitions < 1:
        raise ConfigError(f"partitions={partitions}: a topic needs at least one partition")
    admin = AdminClient(_client_config(config))
    deadline = time.monotonic() + timeout
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ConnectorError(f"Kafka at {_bootstrap(config)}: cannot list topics: {exc}") from exc
    missing = [t for t in wanted if t not in existing]
    created: set[str] = set()
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions) for t in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
                created.add(topic)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                raise ConnectorError(
                    f"Kafka at {_bootstrap(config)}: cannot create topic {topic!r}: {exc}"
                ) from exc
    while True:
        metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        pending = []
        for topic in wanted:
            meta = metadata.topics.get(topic)
            seen = 0 if meta is None or meta.error is not None else len(meta.partitions)
            if seen == 0 or (topic in created and seen < partitions):
                pending.append(topic)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise ConnectorError(
                f"Kafka at {_bootstrap(config)}: topics {pending} not visible in metadata after"
                f" {timeout:.0f}s; is the broker healthy?"
            )
        time.sleep(0.05)


class WatermarkReader:
    """A long-lived consumer that answers partition and watermark questions.

    Keep one per process and reuse it (each call then costs one fetch round trip or one
    ListOffsets per partition); the consumer is created on first use and dropped when the object
    is pickled, so it can live inside a Spark data source reader. Not thread-safe.
    """

    def __init__(
        self, config: Mapping[str, Any], method: WatermarkMethod, timeout: float = 10.0
    ) -> None:
        _bootstrap(config)
        self.config = dict(config)
        self.method = check_watermark_method(method)
        self.timeout = timeout
        self._consumer: Consumer | None = None
        self._known_high: dict[TopicPartitionKey, int] = {}
        self._warm_topics: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_consumer"] = None
        state["_warm_topics"] = set()
        return state

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            try:
                self._consumer = Consumer({**self.config, **_WATERMARK_CONSUMER})
            except KafkaException as exc:
                raise ConnectorError(
                    f"cannot create a Kafka consumer for {self.config.get('bootstrap.servers')}:"
                    f" {exc}; check the kafka.* options"
                ) from exc
        return self._consumer

    def close(self) -> None:
        """Close the consumer (a later call opens a new one)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()

    def partitions(self, topics: Iterable[str]) -> list[TopicPartitionKey]:
        """Every (topic, partition) of ``topics``, sorted; a topic that does not exist has none."""
        found: list[TopicPartitionKey] = []
        for topic in sorted(set(topics)):
            try:
                metadata = self.consumer.list_topics(topic, timeout=self.timeout)
            except KafkaException as exc:
                raise ConnectorError(
                    f"Kafka at {self.config['bootstrap.servers']}: no metadata for topic"
                    f" {topic!r}: {exc}"
                ) from exc
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                if meta is not None and meta.error.code() not in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_TOPIC,
                ):
                    raise ConnectorError(f"topic {topic!r}: metadata error {meta.error}")
                log.debug("topic %s does not exist (yet)", topic)
                continue
            found.extend((topic, p) for p in sorted(meta.partitions))
        return found

    def watermarks(
        self,
        topic_partitions: Iterable[TopicPartitionKey],
        positions: Mapping[TopicPartitionKey, int] | None = None,
    ) -> dict[TopicPartitionKey, tuple[int, int]]:
        """(low, high) watermarks of each partition.

        ``positions`` (fetch method only) are offsets believed to be at or below the high
        watermark (e.g. a stream's checkpointed offsets): the consumer starts just below them, or
        below the high watermark it saw last time if that is higher. A partition that gives no
        answer there within a second (its log is shorter: topic recreated, broker restarted) is
        asked again from its log start.
        """
        keys = sorted(set(topic_partitions))
        if not keys:
            return {}
        if self.method == "list_offsets":
            return {key: self._query(key) for key in keys}
        return self._fetch(keys, positions or {})

    def high(
        self,
        topic_partitions: Iterable[TopicPartitionKey],
        positions: Mapping[TopicPartitionKey, int] | None = None,
    ) -> dict[TopicPartitionKey, int]:
        return {k: hi for k, (_lo, hi) in self.watermarks(topic_partitions, positions).items()}

    def low(self, topic_partitions: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        return {k: lo for k, (lo, _hi) in self.watermarks(topic_partitions).items()}

    def _query(self, key: TopicPartitionKey) -> tuple[int, int]:
        try:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(*key), timeout=self.timeout, cached=False
            )
        except KafkaException as exc:
            raise ConnectorError(
                f"cannot list offsets of {key[0]}[{key[1]}] at {self.config['bootstrap.servers']}:"
                f" {exc}"
            ) from exc
        return int(low), int(high)

    def _fetch(
        self, keys: list[TopicPartitionKey], positions: Mapping[TopicPartitionKey, int]
    ) -> dict[TopicPartitionKey, tuple[int, int]]:
        consumer = self.consumer
        cold = {t for t, _p in keys} - self._warm_topics
        if cold:  # assign() waits ~0.5 s for metadata it has not got; asking for it is ~50 ms
            self.partitions(cold)
            self._warm_topics |= cold
        starts: dict[TopicPartitionKey, int] = {}
        for key in keys:
            known = self._known_high.get(key)
            hint = positions.get(key)
            if hint is not None and known is not None:
                known = max(known, int(hint))
            elif hint is not None:
                known = int(hint)
            starts[key] = OFFSET_BEGINNING if known is None else max(known - 1, 0)
        answered: set[TopicPartitionKey] = set()
        started = time.monotonic()
        rewound = False
        consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in keys])
        try:
            while len(answered) < len(keys):
                waited = time.monotonic() - started
                if waited > self.timeout:
                    silent = [f"{t}[{p}]" for t, p in keys if (t, p) not in answered]
                    raise ConnectorError(
                        f"no fetch response from {self.config['bootstrap.servers']} for"
                        f" {', '.join(silent)} within {self.timeout:.0f}s"
                    )
                if waited > _REWIND_AFTER and not rewound:
                    # A start above the log end (topic recreated, broker restarted) gets empty
                    # fetch responses and no EOF from some brokers: start those at the log start.
                    rewound = True
                    for key in keys:
                        if key not in answered:
                            starts[key] = OFFSET_BEGINNING
                    consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in keys])
                for message in consumer.consume(1000, timeout=0.005):
                    error = message.error()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        raise ConnectorError(
                            f"fetching {message.topic()}[{message.partition()}] for its watermark"
                            f" failed: {error}"
                        )
                    answered.add(position_of(message)[:2])
            result: dict[TopicPartitionKey, tuple[int, int]] = {}
            for key in keys:
                low, high = consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
                if low < 0:  # the fetch response carried no log start offset
                    low = self._query(key)[0]
                result[key] = (int(low), int(high))
                self._known_high[key] = int(high)
            return result
        finally:
            consumer.unassign()


def partitions_of(config: Mapping[str, Any], topics: Iterable[str]) -> list[TopicPartitionKey]:
    """Every (topic, partition) of ``topics`` (missing topics have none), sorted."""
    reader = WatermarkReader(config, "list_offsets")
    try:
        return reader.partitions(topics)
    finally:
        reader.close()


def high_watermarks(
    config: Mapping[str, Any],
    topic_partitions: Iterable[TopicPartitionKey],
    method: WatermarkMethod,
    timeout: float = 10.0,
) -> dict[TopicPartitionKey, int]:
    """High watermark (next offset to be written) of each partition. One-off: streams keep a
    :class:`WatermarkReader` instead."""
    reader = WatermarkReader(config, method, timeout=timeout)
    try:
        return reader.high(topic_partitions)
    finally:
        reader.close()


def low_watermarks(
    config: Mapping[str, Any],
    topic_partitions: Iterable[TopicPartitionKey],
    method: WatermarkMethod,
    timeout: float = 10.0,
) -> dict[TopicPartitionKey, int]:
    """Low watermark (first offset still stored) of each partition."""
    reader = WatermarkReader(config, method, timeout=timeout)
    try:
        return reader.low(topic_partitions)
    finally:
        reader.close()


def read_all(
    config: Mapping[str, Any], topic: str, method: WatermarkMethod, timeout: float = 30.0
) -> list[KafkaRecord]:
    """Every record now in ``topic``, partition by partition in offset order.

    Reads each partition from its low to its high watermark, as measured when the call starts
    (records produced meanwhile are left out). Offsets missing inside a range (compaction,
    transaction markers) are skipped; records deleted while reading raise :class:`ConnectorError`.
    """
    reader = WatermarkReader(config, method, timeout=min(timeout, 10.0))
    try:
        keys = reader.partitions([topic])
        marks = reader.watermarks(keys)
    finally:
        reader.close()
    todo = {key: (lo, hi) for key, (lo, hi) in marks.items() if hi > lo}
    if not todo:
        return []
    by_partition: dict[TopicPartitionKey, list[KafkaRecord]] = {key: [] for key in todo}
    consumer = Consumer({**config, **_READ_CONSUMER})
    try:
        consumer.assign([TopicPartition(t, p, lo) for (t, p), (lo, _hi) in todo.items()])
        pending = set(todo)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                where = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                raise ConnectorError(f"read_all({topic!r}): {where} not read within {timeout:.0f}s")
            for message in consumer.consume(10_000, timeout=0.1):
                t, p, offset = position_of(message)
                key = (t, p)
                if key not in pending:
                    continue
                high = todo[key][1]
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                        continue
                    raise ConnectorError(f"read_all({topic!r}): {key[0]}[{key[1]}]: {error}")
                if offset < high:
                    by_partition[key].append(KafkaRecord.from_message(message))
                if offset >= high - 1:
                    pending.discard(key)
    finally:
        consumer.close()
    return [record for key in sorted(by_partition) for record in by_partition[key]]
