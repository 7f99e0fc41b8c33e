"""Enriched profiles to Kafka: idempotent producer, optional transactions, replay-safe headers.

Every record is keyed ``<store_id>|<entity_id>`` (UTF-8) and carries headers that let a consumer
drop a replayed duplicate without decoding the value:

=========================  ==========================================================================
``storeml.profile_version``  events folded into the profile; keep the highest seen per key, drop <=
``storeml.source``           JSON list of the source ranges ``[topic, partition, first, last]`` folded in
``storeml.schema``           ``<schema name>/v<N>`` of the Avro value (single-object encoded)
``storeml.model``            ``<registered model>:<version>`` that scored it (``none`` when unscored)
=========================  ==========================================================================

With ``transactional_id`` set, each :meth:`flush` commits one Kafka transaction (use it on brokers
that isolate aborted records, i.e. Apache Kafka, with consumers in ``read_committed``); without
it the producer is idempotent and writes are at least once, which the headers make safe.

A transactional id belongs to one producer at a time: ``init_transactions`` of a new producer with
the id fences the previous one (a crashed driver's, or another worker process's). A fenced sink
raises :class:`~storeml.errors.FencedError` and stays unusable; its owner drops it and builds a
new one (``streams/publish.py`` does, then writes the whole task's records again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storeml.connectors.base import Sink
from storeml.errors import ConnectorError, FencedError

__all__ = ["KafkaRecordSink", "Header"]

Header = tuple[str, bytes]


class KafkaRecordSink(Sink):
    """Produces already-encoded records; :meth:`flush` raises if any delivery failed."""

    def __init__(self, config: dict[str, Any], transactional_id: str | None = None) -> None:
        self.config = dict(config)
        self.transactional_id = transactional_id

    def setup(self) -> None:
        from confluent_kafka import Producer

        conf = {
            "enable.idempotence": True,
            "linger.ms": 10,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            **self.config,
        }
        if self.transactional_id:
            conf["transactional.id"] = self.transactional_id
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self._in_transaction = False
        self.fenced = False
        if self.transactional_id:
            try:
                self._producer.init_transactions(30)
            except Exception as exc:
                raise ConnectorError(
                    f"cannot init Kafka transactions for {self.transactional_id!r}: {exc}; set"
                    " STOREML_KAFKA_TRANSACTIONS=false on brokers without transaction support"
                ) from exc

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _fenced(self, exc: Exception, what: str) -> Exception:
        """``exc`` as a FencedError when the producer is fenced (or otherwise fatally broken)."""
        error = exc.args[0] if exc.args else None
        fatal = bool(getattr(error, "fatal", lambda: False)())
        if fatal or "fenced" in str(exc).lower():
            self.fenced = True
            return FencedError(
                f"Kafka producer {self.transactional_id!r} {what}: {exc}; another producer took"
                " its transactional id (a restarted driver or another worker); drop this one"
            )
        return ConnectorError(f"Kafka transaction {self.transactional_id!r} {what}: {exc}")

    def produce(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header] = ()
    ) -> None:
        self.ensure_setup()
        if self.fenced:
            raise FencedError(f"Kafka producer {self.transactional_id!r} was fenced; drop it")
        if self.transactional_id and not self._in_transaction:
            try:
                self._producer.begin_transaction()
            except Exception as exc:
                raise self._fenced(exc, "cannot begin a transaction") from exc
            self._in_transaction = True
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers),
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
            except Exception as exc:  # KafkaException: fatal (fenced) or a bad record
                if self.transactional_id:
                    error = self._fenced(exc, "cannot produce")
                    if not isinstance(error, FencedError):
                        self.abort()  # never commit a failed attempt's records later
                    raise error from exc
                raise ConnectorError(f"cannot produce to {topic!r}: {exc}") from exc
        self._producer.poll(0)

    def abort(self, timeout: float = 30.0) -> None:
        """Abort the open transaction, if any (its records are never committed)."""
        if not (self._ready and self.transactional_id and self._in_transaction):
            return
        self._in_transaction = False
        try:
            self._producer.abort_transaction(timeout)
        except Exception as exc:
            raise self._fenced(exc, "cannot abort") from exc

    def flush(self, timeout: float = 60.0) -> None:
        if not self._ready:
            return
        if self.transactional_id and self._in_transaction:
            try:
                self._producer.commit_transaction(timeout)
            except Exception as exc:
                error = self._fenced(exc, "cannot commit")
                if not isinstance(error, FencedError):
                    try:
                        self._producer.abort_transaction(timeout)
                    except Exception as abort_exc:
                        error = self._fenced(abort_exc, "cannot abort after a failed commit")
                raise error from exc
            finally:
                self._in_transaction = False
        remaining = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if remaining:
            raise ConnectorError(f"{remaining} Kafka records not delivered within {timeout}s")
        if errors:
            raise ConnectorError(
                f"{len(errors)} Kafka deliveries failed, first: {errors[0]}; is the topic created?"
            )

    def close(self) -> None:
        if self._ready and not self.fenced:
            self._producer.flush(10)
