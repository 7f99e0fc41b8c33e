"""The stream's source: Kafka records decoded into facts inside the read task (``storeml_events``).

Spark runs a Python data source's reader and a ``mapInPandas`` that follows it in two Python worker
processes per task, and the rows cross into the JVM and back between them. Decoding in the reader
saves that hop (about 0.1 s per small micro-batch on 2 cores) and halves the Python workers, each of
which loads the store models and caches state buckets on its own.

Everything about Kafka is :mod:`storeml.connectors.kafka_source`'s: the options, the offsets in
Spark's checkpoint, ``maxRecordsPerTrigger``, ``maxPartitions``. The rows are
:func:`storeml.streams.enrich.decode_frames`' (facts, raw bytes for the event lake, and one
:data:`~storeml.streams.enrich.DECODE_STATS` row per task with its counts). The job context the
decoder needs travels as the option ``storeml.context`` (:func:`context_option`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from pyspark.sql.datasource import InputPartition
from pyspark.sql.types import StructType

from storeml.connectors.kafka_source import (
    KAFKA_SCHEMA,
    KafkaBatchReader,
    KafkaDataSource,
    KafkaRangeReader,
    KafkaStreamReader,
    SourceOptions,
    parse_options,
)
from storeml.connectors.redis_client import RedisTarget
from storeml.errors import ConfigError
from storeml.streams.context import JobContext
from storeml.streams.decode import decode_frames, decode_schema

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EVENT_SOURCE_NAME", "EventSource", "context_option"]

EVENT_SOURCE_NAME = "storeml_events"
_CONTEXT = "storeml.context"


def context_option(ctx: JobContext) -> dict[str, str]:
    """The source option carrying ``ctx`` (plain values, as JSON), without any credential.

    Spark prints this option in plans (its name matches no redaction pattern), so it holds
    :meth:`JobContext.without_secrets`: no Kafka client settings (the source rebuilds them from its
    ``kafka.*`` options and the redacted ``kafkaSecrets`` one), no Redis or MLflow password (the
    decoder needs neither; the tasks get the full context pickled).
    """
    return {_CONTEXT: json.dumps(asdict(ctx.without_secrets()), sort_keys=True)}


def _decoded(
    ctx: JobContext, schema: StructType, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(schema, timezone="UTC")
    for facts in decode_frames(ctx, (batch.to_pandas() for batch in batches)):
        yield pa.RecordBatch.from_pandas(facts, schema=arrow, preserve_index=False)


class _DecodingReader(KafkaRangeReader):
    """What both readers add to the Kafka source's: the job context, and decoding in ``read``."""

    def __init__(self, options: SourceOptions, ctx: JobContext, schema: StructType) -> None:
        super().__init__(options, KAFKA_SCHEMA)
        self.ctx = ctx
        self.facts_schema = schema

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return _decoded(self.ctx, self.facts_schema, super().read(partition))


class _DecodingStreamReader(_DecodingReader, KafkaStreamReader):
    pass


class _DecodingBatchReader(_DecodingReader, KafkaBatchReader):
    pass


class EventSource(KafkaDataSource):
    """The order and product topics as decoded facts (see the module docstring)."""

    @classmethod
    def name(cls) -> str:
        return EVENT_SOURCE_NAME

    def _context(self) -> JobContext:
        raw = self.options.get(_CONTEXT)
        if not raw:
            raise ConfigError(
                f"the {EVENT_SOURCE_NAME} source needs the option {_CONTEXT}"
                " (storeml.streams.event_source.context_option(job_context(settings)))"
            )
        kafka = parse_options(self._kafka_options(), batch=True).config  # the client settings only
        values = json.loads(raw)
        return JobContext(**{**values, "kafka": kafka, "redis": RedisTarget(**values["redis"])})

    def _kafka_options(self) -> dict[str, str]:
        return {k: v for k, v in self.options.items() if k.lower() != _CONTEXT}

    def schema(self) -> str:
        return decode_schema(self._context())

    def reader(self, schema: StructType) -> _DecodingBatchReader:
        options = parse_options(self._kafka_options(), batch=True)
        return _DecodingBatchReader(options, self._context(), schema)

    def streamReader(self, schema: StructType) -> _DecodingStreamReader:
        return _DecodingStreamReader(parse_options(self._kafka_options()), self._context(), schema)
