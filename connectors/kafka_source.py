"""Kafka as a Spark source, written with Spark's Python Data Source API (format ``storeml_kafka``).

We have no JVM Kafka connector, so this module is the stream's source. Register it once per
session and read as with Spark's own Kafka source::

    spark.dataSource.register(KafkaDataSource)
    events = (
        spark.readStream.format("storeml_kafka")
        .option("bootstrap.servers", "127.0.0.1:19092")
        .option("subscribe", "storeml.orders,storeml.products")
        .option("watermarkMethod", "fetch")            # the embedded Tansu broker
        .load()
    )

Rows (the schema is fixed, :data:`KAFKA_SCHEMA`)::

    topic      string                              the record's topic
    partition  int                                 its partition
    offset     long                                its offset in the partition
    timestamp  long                                record timestamp, epoch milliseconds (null: none)
    key        binary                              key bytes (null: no key)
    value      binary                              value bytes (null: tombstone)
    headers    array<struct<key:string,value:binary>>  headers in record order ([] when none)

Options (names are case-insensitive):

- ``bootstrap.servers`` (required): the brokers, ``host:port[,host:port]``.
- ``subscribe`` (required): comma-separated topics. A topic that does not exist yet is read once
  it appears; partitions added to a topic later are read from their log start.
- ``startingOffsets``: ``earliest`` (default) or ``latest``; for batch reads also JSON
  ``{"topic": {"0": 42}}`` (-2 = earliest, -1 = latest; unlisted partitions: earliest).
  A restarted stream ignores it and resumes from its checkpoint.
- ``endingOffsets`` (batch reads only): ``latest`` (default), ``earliest`` or JSON as above
  (unlisted partitions: latest). Ends are exclusive.
- ``maxRecordsPerTrigger``: most records in one micro-batch (default 50000), spread evenly over
  the partitions that have data; ``Trigger.AvailableNow`` honours it too.
- ``maxPartitions``: most Spark partitions (tasks) per read. By default each topic partition with
  records is one task; with a cap, the ranges are packed into at most that many tasks of about
  equal record counts (each task reads its ranges one after the other). Every task of a Python
  data source costs a fixed ~40 ms here, so a stream of small micro-batches should read with about
  one task per core (:func:`pack_ranges`).
- ``minRecordsPerPartition``: with ``maxPartitions``, a micro-batch gets one task per this many
  records at most, so a small batch runs as one task (default: no minimum). On 2 cores a
  2,000-record micro-batch ran faster as one task than as two.
- ``watermarkMethod``: ``list_offsets`` (default; Apache Kafka, Confluent, Redpanda) or ``fetch``
  (brokers whose ListOffsets answer is wrong, like Tansu); see :mod:`storeml.connectors.kafka_admin`
  and ``watermark_method_for(settings.kafka_flavor)``.
- ``timeoutSeconds``: how long a read may make no progress, and the limit of one watermark
  query, before the query fails (default 60).
- ``kafka.<property>``: any librdkafka property, passed to every consumer
  (``kafka.security.protocol``...). ``auto.offset.reset`` is always ``error`` and
  ``enable.partition.eof`` always true.
- ``kafkaSecrets``: JSON ``{"<property>": "<value>"}`` of secret librdkafka properties
  (``sasl.password``, ``ssl.key.pem``, ``sasl.oauthbearer.client.secret``...), merged into the
  ``kafka.*`` ones. Spark prints a ``kafka.ssl.key.pem`` option in plans; this one's name matches
  ``spark.redaction.regex`` (``secret``), so its value is always shown redacted.

Offsets are JSON ``{"topic": {"<partition>": next_offset}}`` (the next offset to read, so ranges are
end-exclusive). Spark's checkpoint owns them: nothing is committed to Kafka consumer groups, and a
restarted query re-reads exactly the ranges of the batches it had not finished. Records missing
from a planned range (deleted by retention, a broker that lost its data) fail the task with a
:class:`ConnectorError` naming the topic, partition and offset; nothing is skipped silently.
Offsets missing inside a range because of compaction or transaction markers are normal.

Kafka clients are created lazily inside methods and dropped when the reader is pickled: Spark
pickles the reader from its planning process to the executors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from pyspark.sql.datasource import (
    DataSource,
    DataSourceReader,
    DataSourceStreamReader,
    InputPartition,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from storeml.connectors.kafka_admin import (
    TopicPartitionKey,
    WatermarkMethod,
    WatermarkReader,
    check_watermark_method,
    position_of,
)
from storeml.errors import ConfigError, ConnectorError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "KAFKA_SCHEMA",
    "SECRETS_OPTION",
    "SOURCE_NAME",
    "KafkaDataSource",
    "KafkaInputPartition",
    "KafkaRangeGroup",
    "KafkaRangeReader",
    "pack_ranges",
    "KafkaStreamReader",
    "KafkaBatchReader",
    "SourceOptions",
    "parse_options",
    "share_cap",
]

log = logging.getLogger(__name__)

SOURCE_NAME = "storeml_kafka"

KAFKA_SCHEMA = StructType(
    [
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", LongType()),
        StructField("key", BinaryType()),
        StructField("value", BinaryType()),
        StructField(
            "headers",
            ArrayType(
                StructType([StructField("key", StringType()), StructField("value", BinaryType())])
            ),
        ),
    ]
)

DEFAULT_MAX_RECORDS = 50_000
DEFAULT_TIMEOUT = 60.0
EARLIEST, LATEST = -2, -1

# Consumer properties for reading ranges; kafka.* options go on top, then _FORCED.
_READ_DEFAULTS: dict[str, Any] = {
    "group.id": "storeml-spark-source",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "fetch.queue.backoff.ms": 5,  # the default (1000) stalls fetches for ~1 s
    "fetch.wait.max.ms": 100,
    "fetch.max.bytes": 52_428_800,
    "fetch.message.max.bytes": 8_388_608,
    "queued.max.messages.kbytes": 131_072,
    "check.crcs": False,
}
_FORCED: dict[str, Any] = {"auto.offset.reset": "error", "enable.partition.eof": True}
_CHUNK = 10_000  # records per pyarrow.RecordBatch
_Headers = list[tuple[str, bytes | None]]

# Options, as Spark hands them over (lower case) -> the name to show in messages.
_KNOWN = {
    "bootstrap.servers": "bootstrap.servers",
    "kafka.bootstrap.servers": "kafka.bootstrap.servers",
    "subscribe": "subscribe",
    "startingoffsets": "startingOffsets",
    "endingoffsets": "endingOffsets",
    "maxrecordspertrigger": "maxRecordsPerTrigger",
    "maxpartitions": "maxPartitions",
    "minrecordsperpartition": "minRecordsPerPartition",
    "watermarkmethod": "watermarkMethod",
    "timeoutseconds": "timeoutSeconds",
}
SECRETS_OPTION = "kafkaSecrets"

OffsetSpec = str | dict[TopicPartitionKey, int]
"""``"earliest"``, ``"latest"`` or explicit offsets (-2 earliest, -1 latest) per partition."""


@dataclass(frozen=True)
class SourceOptions:
    """The parsed options of one source (see the module docstring)."""

    bootstrap: str
    topics: tuple[str, ...]
    starting: OffsetSpec = "earliest"
    ending: OffsetSpec = "latest"
    max_records: int = DEFAULT_MAX_RECORDS
    max_partitions: int | None = None
    min_partition_records: int | None = None
    watermark_method: WatermarkMethod = "list_offsets"
    timeout: float = DEFAULT_TIMEOUT
    kafka: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        """librdkafka properties shared by every client of this source."""
        return {"bootstrap.servers": self.bootstrap, **self.kafka}

    def watermarks(self) -> WatermarkReader:
        return WatermarkReader(self.config, self.watermark_method, timeout=min(self.timeout, 30.0))


def _offset_spec(name: str, raw: str, topics: tuple[str, ...], batch: bool) -> OffsetSpec:
    text = raw.strip()
    if text.lower() in ("earliest", "latest"):
        return text.lower()
    if not batch:
        raise ConfigError(f"{name}={raw!r}: a stream starts at 'earliest' or 'latest'")
    try:
        data = json.loads(text)
        spec = {
            (str(topic), int(part)): int(offset)
            for topic, parts in data.items()
            for part, offset in parts.items()
        }
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{name}={raw!r}: expected 'earliest', 'latest' or JSON like"
            f' {{"topic": {{"0": 42}}}} ({exc})'
        ) from exc
    strangers = sorted({t for t, _p in spec} - set(topics))
    if strangers:
        raise ConfigError(f"{name} names topics {strangers} that are not in subscribe={topics}")
    bad = [f"{t}[{p}]={o}" for (t, p), o in spec.items() if o < EARLIEST or p < 0]
    if bad:
        raise ConfigError(f"{name}: invalid offsets {bad}; use >= 0, -2 (earliest) or -1 (latest)")
    return spec


def _positive(name: str, raw: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive {kind.__name__}")
    return value


def parse_options(options: Mapping[str, str], batch: bool = False) -> SourceOptions:
    """Validate data source options; :class:`ConfigError` names the first bad one."""
    values = {str(k).lower(): str(v) for k, v in options.items()}
    secrets = values.pop(SECRETS_OPTION.lower(), None)
    if secrets is not None:
        try:
            properties = json.loads(secrets)
            assert isinstance(properties, dict)
        except (ValueError, AssertionError):
            raise ConfigError(
                f"option {SECRETS_OPTION} must be a JSON object of librdkafka properties (value"
                " not shown); build the options with storeml.streams.enrich.source_options"
            ) from None
        values.update({f"kafka.{str(k).lower()}": str(v) for k, v in properties.items()})
    for key in values:
        if key not in _KNOWN and not key.startswith("kafka."):
            raise ConfigError(
                f"unknown option {key!r} for the {SOURCE_NAME} source; valid options:"
                f" {sorted(set(_KNOWN.values()) - {'kafka.bootstrap.servers'})}"
                " and kafka.<property>"
            )
        if key == "endingoffsets" and not batch:
            raise ConfigError("endingOffsets is for batch reads only; a stream has no end")
    bootstrap = values.get("bootstrap.servers") or values.get("kafka.bootstrap.servers") or ""
    if not bootstrap.strip():
        raise ConfigError(f"option bootstrap.servers is required by the {SOURCE_NAME} source")
    topics = tuple(t.strip() for t in values.get("subscribe", "").split(",") if t.strip())
    if not topics:
        raise ConfigError("option subscribe is required: comma-separated topic names")
    method = values.get("watermarkmethod", "list_offsets")
    try:
        watermark_method = check_watermark_method(method)
    except ConfigError as exc:
        raise ConfigError(f"watermarkMethod: {exc}") from exc
    kafka = {
        k[len("kafka.") :]: v
        for k, v in values.items()
        if k.startswith("kafka.") and k != "kafka.bootstrap.servers"
    }
    return SourceOptions(
        bootstrap=bootstrap.strip(),
        topics=topics,
        starting=_offset_spec(
            "startingOffsets", values.get("startingoffsets", "earliest"), topics, batch
        ),
        ending=_offset_spec("endingOffsets", values.get("endingoffsets", "latest"), topics, batch),
        max_records=_positive(
            "maxRecordsPerTrigger",
            values.get("maxrecordspertrigger", str(DEFAULT_MAX_RECORDS)),
            int,
        ),
        max_partitions=(
            _positive("maxPartitions", values["maxpartitions"], int)
            if "maxpartitions" in values
            else None
        ),
        min_partition_records=(
            _positive("minRecordsPerPartition", values["minrecordsperpartition"], int)
            if "minrecordsperpartition" in values
            else None
        ),
        watermark_method=watermark_method,
        timeout=_positive(
            "timeoutSeconds", values.get("timeoutseconds", str(DEFAULT_TIMEOUT)), float
        ),
        kafka=kafka,
    )


# --- offsets ---------------------------------------------------------------------------------


def _to_json(positions: Mapping[TopicPartitionKey, int]) -> dict[str, dict[str, int]]:
    """Canonical offset dict: topics sorted, partitions in numeric order (Spark compares JSON)."""
    result: dict[str, dict[str, int]] = {}
    for topic, part in sorted(positions):
        result.setdefault(topic, {})[str(part)] = int(positions[(topic, part)])
    return result


def _from_json(offset: Mapping[str, Any] | None) -> dict[TopicPartitionKey, int]:
    if not offset:
        return {}
    try:
        return {
            (str(topic), int(part)): int(value)
            for topic, parts in offset.items()
            for part, value in parts.items()
        }
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConnectorError(
            f"offset {offset!r} is not {{'topic': {{'partition': offset}}}}: was the checkpoint"
            f" written by another source? ({exc})"
        ) from exc


def share_cap(
    available: Mapping[TopicPartitionKey, int], cap: int | None
) -> dict[TopicPartitionKey, int]:
    """How many records to take from each partition: everything, or ``cap`` shared fairly.

    Water-filling: partitions with little data get all of it, the rest split what is left
    evenly, so no partition with data is starved while others have a backlog. The result sums to
    ``min(cap, total)`` exactly.
    """
    wanted = {k: n for k, n in available.items() if n > 0}
    if cap is None or sum(wanted.values()) <= cap:
        return wanted
    taken: dict[TopicPartitionKey, int] = {}
    remaining = cap
    order = sorted(wanted, key=lambda k: (wanted[k], k))
    for index, key in enumerate(order):
        fair = remaining // (len(order) - index)
        taken[key] = min(wanted[key], fair)
        remaining -= taken[key]
    return {k: n for k, n in taken.items() if n > 0}


# --- reading one range -----------------------------------------------------------------------


@dataclass
class KafkaInputPartition(InputPartition):
    """Records ``start`` (inclusive) to ``end`` (exclusive) of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int


@dataclass
class KafkaRangeGroup(InputPartition):
    """Several ranges read one after the other by one task (see ``maxPartitions``)."""

    ranges: tuple[KafkaInputPartition, ...]


def pack_ranges(
    ranges: Sequence[KafkaInputPartition],
    max_partitions: int | None,
    min_records: int | None = None,
) -> list[KafkaInputPartition | KafkaRangeGroup]:
    """At most ``max_partitions`` Spark partitions of about equal record counts.

    ``min_records`` lowers the cap to one partition per that many records (at least one).
    Largest range first, each into the group with the fewest records so far (ties: the lowest
    group), so the result is deterministic for the same ranges. Without a cap, or with no more
    ranges than the cap, every range stays a partition of its own.
    """
    if max_partitions is not None and min_records is not None:
        total = sum(r.end - r.start for r in ranges)
        max_partitions = min(max_partitions, max(1, -(-total // min_records)))
    if max_partitions is None or len(ranges) <= max_partitions:
        return list(ranges)
    groups: list[list[KafkaInputPartition]] = [[] for _ in range(max_partitions)]
    sizes = [0] * max_partitions
    for part in sorted(ranges, key=lambda r: (-(r.end - r.start), r.topic, r.partition)):
        target = min(range(max_partitions), key=lambda g: (sizes[g], g))
        groups[target].append(part)
        sizes[target] += part.end - part.start
    return [KafkaRangeGroup(tuple(group)) for group in groups if group]


def _arrow_schema(schema: StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


def _read_range(
    options: SourceOptions, part: KafkaInputPartition, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """Yield the records of ``part`` as record batches of ``schema`` (:data:`KAFKA_SCHEMA`)."""
    import pyarrow as pa
    from confluent_kafka import (
        TIMESTAMP_NOT_AVAILABLE,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    where = f"{part.topic}[{part.partition}]"
    headers_type = schema.field("headers").type
    header_fields = list(headers_type.value_type)
    try:
        consumer = Consumer({**_READ_DEFAULTS, **options.config, **_FORCED})
    except KafkaException as exc:
        raise ConfigError(
            f"cannot create a Kafka consumer: {exc}; check the kafka.* options"
        ) from exc
    next_offset = part.start
    last_progress = time.monotonic()
    try:
        tp = TopicPartition(part.topic, part.partition, part.start)
        consumer.assign([tp])
        while next_offset < part.end:
            messages = consumer.consume(min(_CHUNK, part.end - next_offset), timeout=0.5)
            offsets: list[int] = []
            stamps: list[int | None] = []
            keys: list[bytes | None] = []
            values: list[bytes | None] = []
            list_offsets = [0]
            header_keys: list[str] = []
            header_values: list[bytes | None] = []
            done = False
            for message in messages:
                error = message.error()
                offset = position_of(message)[2]
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if offset >= part.end:  # the rest holds no records (markers)
                            done = True
                            break
                        raise ConnectorError(
                            f"{where}: the log ends at offset {offset} but this batch"
                            f" planned to read up to {part.end} (exclusive): records were lost"
                            " (broker restarted or topic recreated); start a new checkpoint with"
                            " `storeml stream reset` (profiles keep updating: a new generation)"
                        )
                    raise ConnectorError(
                        f"{where}: cannot read from offset {next_offset} (planned"
                        f" {part.start}..{part.end}): {error}. Records deleted by retention before"
                        " they were read cannot be recovered; start a new checkpoint with"
                        " `storeml stream reset`"
                    )
                if offset >= part.end:
                    done = True
                    break
                kind, stamp = message.timestamp()
                offsets.append(offset)
                stamps.append(None if kind == TIMESTAMP_NOT_AVAILABLE else stamp)
                keys.append(cast(bytes | None, message.key()))
                values.append(cast(bytes | None, message.value()))
                for h_key, h_value in cast(_Headers, message.headers() or ()):
                    header_keys.append(h_key)
                    header_values.append(h_value)
                list_offsets.append(len(header_keys))
                next_offset = offset + 1
            if offsets:
                last_progress = time.monotonic()
                count = len(offsets)
                headers = pa.ListArray.from_arrays(
                    pa.array(list_offsets, pa.int32()),
                    pa.StructArray.from_arrays(
                        [pa.array(header_keys, pa.string()), pa.array(header_values, pa.binary())],
                        fields=header_fields,
                    ),
                    type=headers_type,
                )
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.repeat(pa.scalar(part.topic, pa.string()), count),
                        pa.repeat(pa.scalar(part.partition, pa.int32()), count),
                        pa.array(offsets, pa.int64()),
                        pa.array(stamps, pa.int64()),
                        pa.array(keys, pa.binary()),
                        pa.array(values, pa.binary()),
                        headers,
                    ],
                    schema=schema,
                )
            if done:
                return
            if not messages and time.monotonic() - last_progress > options.timeout:
                raise ConnectorError(
                    f"{where}: no record at offset {next_offset} within {options.timeout:.0f}s"
                    f" (planned {part.start}..{part.end}); is the broker up, and were the"
                    " records lost? Raise timeoutSeconds if the broker is just slow"
                )
    finally:
        consumer.close()


# --- the data source -------------------------------------------------------------------------


class KafkaDataSource(DataSource):
    """Kafka topics as a Spark source (batch and streaming); see the module docstring."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType | str:
        return KAFKA_SCHEMA

    def reader(self, schema: StructType) -> KafkaBatchReader:
        return KafkaBatchReader(parse_options(self.options, batch=True), _check_schema(schema))

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(parse_options(self.options), _check_schema(schema))


def _check_schema(schema: StructType) -> StructType:
    if schema.fieldNames() != KAFKA_SCHEMA.fieldNames() or [f.dataType for f in schema.fields] != [
        f.dataType for f in KAFKA_SCHEMA.fields
    ]:
        raise ConfigError(
            f"the {SOURCE_NAME} source has a fixed schema ({KAFKA_SCHEMA.simpleString()});"
            f" got {schema.simpleString()}: drop .schema(...) and select/cast afterwards"
        )
    return schema


class KafkaRangeReader:
    """What batch and stream readers share: options, schema and the lazy watermark client."""

    def __init__(self, options: SourceOptions, schema: StructType) -> None:
        self.options = options
        self.schema = schema
        self._watermarks: WatermarkReader | None = None
        self._arrow: pa.Schema | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_watermarks"] = None
        state["_arrow"] = None
        return state

    @property
    def watermarks(self) -> WatermarkReader:
        if self._watermarks is None:
            self._watermarks = self.options.watermarks()
        return self._watermarks

    def _close(self) -> None:
        if self._watermarks is not None:
            self._watermarks.close()
            self._watermarks = None

    def _ranges(
        self, start: Mapping[TopicPartitionKey, int], end: Mapping[TopicPartitionKey, int]
    ) -> list[KafkaInputPartition | KafkaRangeGroup]:
        ranges = [
            KafkaInputPartition(topic, part, start[(topic, part)], stop)
            for (topic, part), stop in sorted(end.items())
            if (topic, part) in start and stop > start[(topic, part)]
        ]
        return pack_ranges(ranges, self.options.max_partitions, self.options.min_partition_records)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if isinstance(partition, KafkaInputPartition):
            ranges: tuple[KafkaInputPartition, ...] = (partition,)
        elif isinstance(partition, KafkaRangeGroup):
            ranges = partition.ranges
        else:
            raise ConnectorError(f"{SOURCE_NAME} cannot read partition {partition!r}")
        if self._arrow is None:
            self._arrow = _arrow_schema(self.schema)
        arrow = self._arrow
        return (batch for part in ranges for batch in _read_range(self.options, part, arrow))


class KafkaStreamReader(KafkaRangeReader, DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batches of offset ranges; Spark's checkpoint stores the offsets.

    ``latestOffset`` caps each batch at ``maxRecordsPerTrigger`` records (shared fairly over
    partitions, see :func:`share_cap`). A partition that appears later is first added to the
    offsets at its log start with an empty range and read from the next batch on, so every
    range's start is in the checkpoint (replays read the same records).
    """

    def __init__(self, options: SourceOptions, schema: StructType) -> None:
        super().__init__(options, schema)
        self._target: dict[TopicPartitionKey, int] | None = None
        self._latest: dict[TopicPartitionKey, int] | None = None

    def initialOffset(self) -> dict[str, dict[str, int]]:
        keys = self.watermarks.partitions(self.options.topics)
        marks = self.watermarks.watermarks(keys)
        pick = 1 if self.options.starting == "latest" else 0
        return _to_json({key: pair[pick] for key, pair in marks.items()})

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.options.max_records)

    def prepareForTriggerAvailableNow(self) -> None:
        """Remember today's high watermarks; this run never reads past them."""
        keys = self.watermarks.partitions(self.options.topics)
        self._target = self.watermarks.high(keys)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict[str, dict[str, int]]:
        begin = _from_json(start)
        current = set(self.watermarks.partitions(self.options.topics))
        known = sorted(current & set(begin))
        high = self.watermarks.high(known, positions=begin)
        lost = [
            f"{t}[{p}]: log end {high[(t, p)]} < {begin[(t, p)]}"
            for t, p in known
            if high[(t, p)] < begin[(t, p)]
        ]
        if lost:
            raise ConnectorError(
                "the checkpoint is ahead of the broker (" + "; ".join(lost) + "): the topic was"
                " recreated or the broker lost its data; start a new checkpoint with"
                " `storeml stream reset`"
            )
        self._latest = {**begin, **high}
        if self._target is not None:
            high = {
                k: max(begin[k], min(h, self._target.get(k, begin[k]))) for k, h in high.items()
            }
        if isinstance(limit, ReadMaxRows):
            cap: int | None = limit.max_rows
        elif isinstance(limit, ReadAllAvailable):
            cap = None
        else:
            raise ConnectorError(
                f"{SOURCE_NAME} supports ReadMaxRows and ReadAllAvailable, not {limit!r}"
            )
        take = share_cap({k: high[k] - begin[k] for k in known}, cap)
        end = dict(begin)
        for key, count in take.items():
            end[key] += count
        new = sorted(current - set(begin))
        if new:
            lows = self.watermarks.low(new)
            log.info("new partitions %s: reading them from their log start", new)
            end.update(lows)
        return _to_json(end)

    def reportLatestOffset(self) -> dict[str, dict[str, int]] | None:
        return None if self._latest is None else _to_json(self._latest)

    def partitions(self, start: dict, end: dict) -> Sequence[InputPartition]:
        return self._ranges(_from_json(start), _from_json(end))

    def commit(self, end: dict) -> None:
        """Nothing to do: Spark's checkpoint owns the offsets; no consumer group is committed."""

    def stop(self) -> None:
        self._close()


class KafkaBatchReader(KafkaRangeReader, DataSourceReader):
    """One Spark partition per topic partition between ``startingOffsets`` and ``endingOffsets``."""

    def partitions(self) -> Sequence[InputPartition]:
        try:
            keys = self.watermarks.partitions(self.options.topics)
            marks = self.watermarks.watermarks(keys)
        finally:
            self._close()
        start = _resolve("startingOffsets", self.options.starting, marks, EARLIEST)
        end = _resolve("endingOffsets", self.options.ending, marks, LATEST)
        backwards = [
            f"{t}[{p}] {start[(t, p)]} > {end[(t, p)]}"
            for t, p in keys
            if start[(t, p)] > end[(t, p)]
        ]
        if backwards:
            raise ConfigError(f"startingOffsets after endingOffsets: {backwards}")
        return self._ranges(start, end)


def _resolve(
    name: str,
    spec: OffsetSpec,
    marks: Mapping[TopicPartitionKey, tuple[int, int]],
    default: int,
) -> dict[TopicPartitionKey, int]:
    explicit: Mapping[TopicPartitionKey, int] = spec if isinstance(spec, dict) else {}
    fallback = (
        {"earliest": EARLIEST, "latest": LATEST}.get(spec, default)
        if isinstance(spec, str)
        else default
    )
    unknown = sorted(set(explicit) - set(marks))
    if unknown:
        raise ConfigError(f"{name} names partitions that do not exist: {unknown}")
    resolved = {}
    for key, (low, high) in marks.items():
        wanted = explicit.get(key, fallback)
        offset = low if wanted == EARLIEST else high if wanted == LATEST else wanted
        if offset > high:
            raise ConfigError(f"{name}: {key[0]}[{key[1]}]={offset} is past the log end {high}")
        resolved[key] = offset
    return resolved
