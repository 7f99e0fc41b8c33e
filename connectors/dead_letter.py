"""Dead-letter topic: input messages the stream could not accept, with the reason and original bytes.

Records are ``DeadLetter`` Avro values (``schemas/avro/dead_letter``) keyed by the original key, with
headers ``storeml.reason`` (the stage and error type) and ``storeml.source``
(``topic:partition:offset``) so they can be inspected without decoding and de-duplicated after a
replay (the stream writes them at least once).
"""

from __future__ import annotations

from typing import Any

from storeml.connectors.kafka_sink import KafkaRecordSink
from storeml.schemas.codec import get_codec

__all__ = ["DeadLetterSink"]


class DeadLetterSink(KafkaRecordSink):
    """A Kafka sink that frames each rejected message as a DeadLetter record."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        super().__init__(config)
        self.topic = topic

    def send(
        self,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        stage: str,
        error_type: str,
        reason: str,
    ) -> None:
        record = {
            "source_topic": source_topic,
            "source_partition": partition,
            "source_offset": offset,
            "key": key,
            "value": value,
            "stage": stage,
            "error_type": error_type,
            "reason": reason,
        }
        headers = [
            ("storeml.reason", f"{stage}:{error_type}".encode()),
            ("storeml.source", f"{source_topic}:{partition}:{offset}".encode()),
        ]
        self.produce(self.topic, key, get_codec("dead_letter").encode(record), headers)
