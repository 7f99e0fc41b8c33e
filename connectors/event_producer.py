"""Produce input events (synthetic or replayed) to the order and product topics.

:func:`produce_events` is the whole API most callers need. It writes with an idempotent,
lz4-compressing, batching confluent-kafka producer, so a retried send never duplicates a message
within a producer session; a second run of the same events does write them again (the stream's
profile fold is what tolerates replays, not this producer). Delivery is confirmed before it
returns: any failed delivery raises :class:`~storeml.errors.ConnectorError` naming the topic and
the broker's error.

With ``rate`` set, messages are handed to the producer at a steady pace (events per second of
wall-clock time) rather than as fast as possible, for latency measurements; the pace is kept on
average and never made up by bursting more than a few milliseconds' worth of events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from storeml.connectors.base import Sink
from storeml.connectors.synthetic import SyntheticEvent
from storeml.errors import ConnectorError

__all__ = ["EventProducer", "ProduceStats", "produce_events", "PRODUCER_DEFAULTS"]

#: librdkafka properties the event producer uses unless the caller's config overrides them.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 10,
    "compression.type": "lz4",
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 1_048_576,
}

_PROGRESS_EVERY = 10_000
_MAX_LAG = 0.005  # seconds of schedule a paced run may make up at full speed


@dataclass
class ProduceStats:
    """What a produce run wrote: message counts per topic kind, payload bytes and duration."""

    sent: int = 0
    orders: int = 0
    products: int = 0
    malformed: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Messages per second over the run (0.0 for an empty run)."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class EventProducer(Sink):
    """An idempotent producer of encoded messages; :meth:`flush` raises on failed deliveries.

    The confluent-kafka client is created in :meth:`setup`, on first use, never in ``__init__``.
    """

    def __init__(self, kafka_config: dict[str, Any], flush_timeout: float = 120.0) -> None:
        self.kafka_config = dict(kafka_config)
        self.flush_timeout = flush_timeout

    def setup(self) -> None:
        from confluent_kafka import KafkaException, Producer

        conf = {**PRODUCER_DEFAULTS, **self.kafka_config}
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise ConnectorError(
                f"cannot create a Kafka producer for {conf.get('bootstrap.servers')!r}: {exc};"
                " check the producer properties (kafka_config)"
            ) from exc
        self._errors: list[tuple[str, str]] = []
        self._error_count = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._error_count += 1
            if len(self._errors) < 10:
                self._errors.append((msg.topic(), str(err)))

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Queue one message; waits (serving delivery reports) while the local queue is full."""
        self.ensure_setup()
        producer = self._producer
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    def poll(self) -> None:
        """Serve pending delivery reports without waiting."""
        if self._ready:
            self._producer.poll(0)

    def flush(self) -> None:
        """Wait for every queued message; raise :class:`ConnectorError` if any was not delivered."""
        if not self._ready:
            return
        remaining = self._producer.flush(self.flush_timeout)
        if self._error_count:
            topic, error = self._errors[0]
            count = self._error_count
            self._errors.clear()
            self._error_count = 0
            raise ConnectorError(
                f"{count} message(s) not delivered; first: topic {topic!r}: {error}. Check that"
                " the topic exists and the broker is reachable"
            )
        if remaining:
            raise ConnectorError(
                f"{remaining} message(s) still undelivered after {self.flush_timeout:g}s; is the"
                f" broker at {self.kafka_config.get('bootstrap.servers')!r} up?"
            )

    def close(self) -> None:
        """Drop the client (confluent-kafka has no explicit close for producers)."""
        if self._ready:
            del self._producer
            self._ready = False


def produce_events(
    kafka_config: dict[str, Any],
    events: Iterable[SyntheticEvent],
    orders_topic: str,
    products_topic: str,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> ProduceStats:
    """Produce ``events`` (orders to ``orders_topic``, product events to ``products_topic``).

    ``rate`` paces the sends at that many events per second; ``progress`` is called with the
    number of events sent so far every 10,000 events and once at the end. Returns when every
    message is delivered; raises :class:`ConnectorError` if any delivery failed.
    """
    if rate is not None and rate <= 0:
        raise ConnectorError(f"rate={rate} must be > 0 events/s, or None for as fast as possible")
    topics = {"orders": orders_topic, "products": products_topic}
    producer = EventProducer(kafka_config)
    stats = ProduceStats()
    started = time.perf_counter()
    interval = 1.0 / rate if rate else 0.0
    next_due = started
    try:
        for event in events:
            topic = topics.get(event.topic_kind)
            if topic is None:
                raise ConnectorError(
                    f"event topic_kind {event.topic_kind!r} is neither 'orders' nor 'products'"
                )
            if interval:
                ahead = next_due - time.perf_counter()
                if ahead > 0.001:
                    producer.poll()
                    time.sleep(ahead)
                elif ahead < -_MAX_LAG:  # fell behind (a pause): forget the debt, do not burst
                    next_due -= ahead + _MAX_LAG
                next_due += interval
            producer.send(topic, event.key, event.value)
            stats.sent += 1
            stats.bytes += len(event.value)
            if event.topic_kind == "orders":
                stats.orders += 1
            else:
                stats.products += 1
            if event.malformed is not None:
                stats.malformed += 1
            if stats.sent % _PROGRESS_EVERY == 0:
                producer.poll()
                if progress is not None:
                    progress(stats.sent)
        producer.flush()
    finally:
        producer.close()
    stats.seconds = time.perf_counter() - started
    if progress is not None:
        progress(stats.sent)
    return stats
