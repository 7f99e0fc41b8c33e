"""Dead-letter topic: input messages the stream could not accept, with the reason and original bytes.

Records are ``DeadLetter`` Avro values (``schemas/avro/dead_letter``) keyed by the original key, with
headers ``storeml.reason`` (the stage and error type) and ``storeml.source``
(``topic:partition:offset``) so they can be inspected without decoding and de-duplicated after a
replay (the stream writes them at least once). Reasons are printable single lines of at most 1,000
characters; ``key_size``/``value_size`` and ``key_sha256``/``value_sha256`` describe the original
bytes even when a dead letter had to be cut to the broker's message size (``truncated``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from storeml.connectors.kafka_sink import Header, KafkaRecordSink
from storeml.errors import CodecError, ConnectorError
from storeml.schemas.codec import get_codec
from storeml.schemas.rules import REASON_MAX_CHARS

__all__ = ["DEFAULT_MAX_BYTES", "MIN_MAX_BYTES", "DeadLetterSink", "clean_reason"]

log = logging.getLogger(__name__)

#: Kafka's default ``message.max.bytes`` (broker) and librdkafka's (producer).
DEFAULT_MAX_BYTES = 1_000_000
#: The smallest limit a dead letter can be made to fit (reason, coordinates, hashes, no payload).
MIN_MAX_BYTES = 8_192
#: Record-batch and record framing around key, value and headers, generously counted.
_FRAMING = 512
#: Bytes of an oversized key kept (as the Kafka key and in the record) when a dead letter is cut.
_KEY_KEPT = 256
#: Broker or producer answers that concern this one message (its size or its bytes): the dead
#: letter is sent again without key and value. Any other failure is the sink's, and raises.
_MESSAGE_ERRORS = {2, 4, 10, 18, 87}  # INVALID_MSG, INVALID_MSG_SIZE, MSG_SIZE_TOO_LARGE,
# RECORD_LIST_TOO_LARGE, INVALID_RECORD


def clean_reason(reason: str) -> str:
    """``reason`` made one printable line of at most REASON_MAX_CHARS (escapes, then cuts)."""
    if not reason.isprintable():
        reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
    if len(reason) > REASON_MAX_CHARS:
        cut = f"... (reason cut, {len(reason)} characters)"
        reason = reason[: REASON_MAX_CHARS - len(cut)] + cut
    return reason


def _digest(data: bytes | None) -> tuple[int | None, str | None]:
    if data is None:
        return None, None
    return len(data), hashlib.sha256(data).hexdigest()


class DeadLetterSink(KafkaRecordSink):
    """A Kafka sink that frames each rejected message as a DeadLetter record.

    Every dead letter fits in ``max_bytes`` (set it to the smaller of the topic's
    ``max.message.bytes`` and the producer's ``message.max.bytes``): a larger one keeps the first
    bytes of its value and :data:`_KEY_KEPT` bytes of its key, says so in ``reason`` and
    ``truncated``, and always carries the original sizes and SHA-256 hashes. If the broker or the
    producer still refuses one for its size or bytes, it is sent again with neither key nor value,
    so a message can never fail the task that reads it (and be re-read forever). Failures that
    are not about the message (broker down, topic missing, no permission) raise
    :class:`ConnectorError` from :meth:`flush`: the batch fails and is retried once fixed,
    and no dead letter is lost.
    """

    def __init__(
        self, config: dict[str, Any], topic: str, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__(config)
        self.topic = topic
        if max_bytes < MIN_MAX_BYTES:
            raise ConnectorError(
                f"dead-letter max_bytes={max_bytes} is below {MIN_MAX_BYTES}; set"
                " STOREML_DEAD_LETTER_MAX_BYTES to the broker's message.max.bytes (default 1000000)"
            )
        self.max_bytes = max_bytes
        self.truncated = 0
        self.stripped = 0

    def setup(self) -> None:
        super().setup()
        self._refused: list[tuple[dict[str, Any], list[Header], str]] = []

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
        key_size, key_sha = _digest(key)
        value_size, value_sha = _digest(value)
        record: dict[str, Any] = {
            "source_topic": source_topic,
            "source_partition": int(partition),
            "source_offset": int(offset),
            "key": key,
            "value": value,
            "stage": stage,
            "error_type": error_type,
            "reason": clean_reason(reason),
            "truncated": False,
            "key_size": key_size,
            "key_sha256": key_sha,
            "value_size": value_size,
            "value_sha256": value_sha,
        }
        headers = [
            ("storeml.reason", f"{stage}:{error_type}".encode()),
            ("storeml.source", f"{source_topic}:{partition}:{offset}".encode()),
        ]
        body = self._encode(record)
        fixed = sum(len(k) + len(v) for k, v in headers) + _FRAMING
        if len(body) + (key_size or 0) + fixed > self.max_bytes:
            record, body = self._cut(record, len(body), fixed)
        self._produce(record, body, headers)

    def _encode(self, record: dict[str, Any]) -> bytes:
        return get_codec("dead_letter").encode(record)

    def _cut(self, record: dict[str, Any], size: int, fixed: int) -> tuple[dict[str, Any], bytes]:
        """The record with key and value cut so that it fits ``max_bytes``, and its encoding."""
        key, value = record["key"] or b"", record["value"] or b""
        kept_key = key[:_KEY_KEPT] if record["key"] is not None else None
        note = (
            f" [dead letter cut to fit {self.max_bytes} bytes (STOREML_DEAD_LETTER_MAX_BYTES):"
            f" key {len(key)} -> {len(kept_key or b'')} bytes, value {len(value)} -> VALUE_KEPT"
            " bytes; key_size/value_size and the SHA-256 hashes describe the original]"
        )
        reason = record["reason"]
        reason = reason[: REASON_MAX_CHARS - len(note)] + note
        # everything but the payload, counted from the full encoding
        rest = size - len(key) - len(value) + len(reason) - len(record["reason"])
        budget = self.max_bytes - fixed - rest - 2 * len(kept_key or b"") - 32  # 32: varint slack
        kept_value = None if record["value"] is None else value[: max(budget, 0)]
        reason = reason.replace("VALUE_KEPT", str(len(kept_value or b"")))
        cut = {**record, "key": kept_key, "value": kept_value, "reason": reason, "truncated": True}
        self.truncated += 1
        log.warning(
            "dead letter of %s:%s:%s cut to fit %d bytes (value %d bytes)",
            record["source_topic"],
            record["source_partition"],
            record["source_offset"],
            self.max_bytes,
            len(value),
        )
        return cut, self._encode(cut)

    def _produce(self, record: dict[str, Any], body: bytes, headers: list[Header]) -> None:
        from confluent_kafka import KafkaException

        try:
            self.produce(self.topic, record["key"], body, headers)
        except (KafkaException, ConnectorError) as exc:  # refused before sending
            cause = exc if isinstance(exc, KafkaException) else exc.__cause__
            code = (
                cause.args[0].code() if isinstance(cause, KafkaException) and cause.args else None
            )
            if code not in _MESSAGE_ERRORS or (record["key"] is None and record["value"] is None):
                if isinstance(exc, ConnectorError):
                    raise
                raise ConnectorError(
                    f"cannot produce a dead letter to {self.topic!r}: {exc}"
                ) from exc
            self._strip(record, headers, str(cause))

    def _strip(self, record: dict[str, Any], headers: list[Header], error: str) -> None:
        """Send ``record`` again without key and value (they made the broker refuse it)."""
        note = f" [key and value dropped: the dead letter was refused: {error}]"
        reason = record["reason"][: REASON_MAX_CHARS - len(note)] + note
        stub = {**record, "key": None, "value": None, "reason": reason, "truncated": True}
        self.stripped += 1
        log.warning(
            "dead letter of %s:%s:%s sent without key and value: %s",
            record["source_topic"],
            record["source_partition"],
            record["source_offset"],
            error,
        )
        self._produce(stub, self._encode(stub), headers)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None and err.code() in _MESSAGE_ERRORS:
            try:
                record = get_codec("dead_letter").decode(msg.value())
            except CodecError:  # pragma: no cover - we encoded it
                record = None
            if record is not None and (record["key"] is not None or record["value"] is not None):
                self._refused.append((record, list(msg.headers() or ()), str(err)))
                return
        super()._on_delivery(err, msg)

    def flush(self, timeout: float = 60.0) -> None:
        """Deliver everything; dead letters refused for their size are re-sent without payload."""
        if not self._ready:
            return
        self._producer.flush(timeout)
        while self._refused:
            refused, self._refused = self._refused, []
            for record, headers, error in refused:
                self._strip(record, headers, error)
            self._producer.flush(timeout)
        super().flush(timeout)
