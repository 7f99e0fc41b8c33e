"""Faust's view of the broker: app options from the settings, and the embedded broker's quirk.

Faust (aiokafka) recovers a table by reading its changelog up to each partition's high watermark,
which it asks with ListOffsets(latest). The embedded broker (Tansu, ``kafka_flavor="tansu"``)
answers that with the last record batch's base offset + 1 (``../shared/NOTES.md``), so recovery
stops short and drops the tail of the changelog: a restarted worker silently loses the last
updates. :func:`install_broker_quirks` replaces the answer, for that flavor only, with the high
watermarks the project reads from fetch responses (:func:`storeml.connectors.kafka_admin.
high_watermarks`). On Apache Kafka nothing is changed.

:class:`PartitionTable` is a Faust table whose keys name their changelog partition
(``"<partition>|..."``): the monitor keys its state by the input partition it came from, so a
key's changelog partition never depends on which event happened to be current, state can be
written from a batch that mixes partitions, and recovery replays each partition's writes in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from storeml.connectors.kafka_admin import high_watermarks, watermark_method_for
from storeml.errors import ConfigError

__all__ = [  # noqa: F822
    "faust_options",
    "install_broker_quirks",
    "install_flush_fix",
    "PartitionTable",
    "partition_key",
]

log = logging.getLogger(__name__)

_installed: dict[str, Any] = {}


def partition_key(partition: int, *parts: str) -> str:
    """A table key that names its changelog partition: ``"<partition>|part|part..."``."""
    return "|".join((str(partition), *parts))


def faust_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments of ``faust.App`` for this deployment's broker and the monitor's needs."""
    config = settings.kafka_config()
    unsupported = sorted(
        k for k in config if k not in ("bootstrap.servers",) and not k.startswith("client.")
    )
    if unsupported:
        raise ConfigError(
            f"kafka_security: {', '.join(unsupported)} are not passed to the monitor (Faust uses"
            " aiokafka, not librdkafka); run the monitor on a listener without them"
        )
    servers = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(","))
    return {
        "broker": servers,
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        "web_port": settings.monitor_web_port or 6066,
        "web_bind": settings.serve_host,
        "web_enabled": settings.monitor_web_port > 0,
        "consumer_auto_offset_reset": "earliest",
        # a subscribe() group joins in ~3 s with this, ~23 s with the default (NOTES.md)
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_commit_interval": 1.0,
        "table_standby_replicas": 0,
        "topic_allow_declare": True,
        "producer_compression_type": "lz4",
    }


def install_broker_quirks(settings: Any) -> None:
    """Make Faust's recovery read true high watermarks on the embedded broker (a no-op elsewhere)."""
    if settings.kafka_flavor != "tansu":
        return
    from faust.transport.drivers import aiokafka as driver

    config = settings.kafka_config()
    _installed["config"] = config
    if _installed.get("patched"):
        return
    method = watermark_method_for("tansu")

    async def _highwaters(self: Any, partitions: list[Any]) -> dict[Any, int]:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        highs = await asyncio.get_running_loop().run_in_executor(
            None, lambda: high_watermarks(_installed["config"], keys, method)
        )
        return {tp: highs[(tp.topic, tp.partition)] for tp in partitions}

    driver.AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
    _installed["patched"] = True
    log.info("tansu flavor: Faust reads high watermarks from fetch responses")


def install_flush_fix() -> None:
    """Make Faust's producer flush wait until its buffer is empty (every broker).

    Table writes wait in Faust's producer buffer until a background task sends them. Before it
    commits consumer offsets, Faust flushes that buffer, but its ``ProducerBuffer.flush`` gives up
    as soon as no message was sent for 0.1 s, buffer not empty. On a busy machine a commit could
    then run ahead of the changelog, and a ``kill -9`` lose table writes of committed records.
    The replacement keeps waiting while messages are pending (and raises, as Faust does, when the
    producer stopped).
    """
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, "_storeml", False):
        return

    async def flush(self: Any) -> None:
        while self.size:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
            except TimeoutError:
                continue

    flush._storeml = True  # type: ignore[attr-defined]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


@functools.cache
def _table_class() -> type:
    import faust

    class _PartitionTable(faust.Table):  # type: ignore[misc,type-arg]
        """A table whose string keys start with their changelog partition number."""

        def partition_for_key(self, key: Any) -> int | None:
            head, _, _ = str(key).partition("|")
            try:
                return int(head)
            except ValueError as exc:
                raise TypeError(f"table key {key!r} does not start with '<partition>|'") from exc

    return _PartitionTable


def __getattr__(name: str) -> Any:
    # faust is imported only by the monitor (it is slow to import and patches asyncio)
    if name == "PartitionTable":
        return _table_class()
    raise AttributeError(name)
