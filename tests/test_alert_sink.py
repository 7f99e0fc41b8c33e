"""Alert sink: the schema's exact bytes, alerts through the real broker, the webhook over real HTTP."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY
from pydantic import SecretStr

from storeml.connectors.alert_sink import AlertSink, ListAlertSink, alert_id, slack_payload
from storeml.connectors.kafka_admin import ensure_topics
from storeml.errors import CodecError
from storeml.schemas.codec import MAGIC, get_codec
from storeml.settings import Settings

SECRET_PATH = "/services/T0000/B0000/s3cr3tW3bh00kXYZ"


def _alert(store: str = "s1", status: str = "firing", **extra: Any) -> dict[str, Any]:
    alert = {
        "alert_id": alert_id(store, "orders", "g_test", "order_value", 1_000, status),
        "status": status,
        "store_id": store,
        "model": {"name": "customers", "version": "3"},
        "monitor": "orders",
        "statistic": "g_test",
        "column": "order_value",
        "value": 0.5,
        "threshold": 0.25,
        "window_start": 1_000,
        "window_end": 301_000,
        "rows": 42,
        "detected_at": 302_000,
        "link": "http://dash/dashboard/stores/s1",
        "message": "Order values of store s1 drifted.",
    }
    alert.update(extra)
    return alert


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- schema ---------------------------------------------------------------------------------------
def test_exact_bytes_of_a_small_alert() -> None:
    codec = get_codec("monitor_alert")
    alert = {
        "alert_id": "a",
        "status": "resolved",
        "store_id": "*",
        "model": None,
        "monitor": "h",
        "statistic": "s",
        "column": None,
        "value": 1.0,
        "threshold": 0.5,
        "window_start": 1,
        "window_end": 2,
        "rows": 3,
        "detected_at": 4,
        "link": "l",
        "message": "m",
    }
    data = codec.encode(alert)
    assert data[:2] == MAGIC and data[2:10] == codec.current.fingerprint
    assert (
        data.hex()
        == (
            "c301" + codec.current.fingerprint.hex() + "0261"  # alert_id "a"
            "02"  # status: enum index 1 (resolved)
            "022a"  # store_id "*"
            "00"  # model: union branch 0 (null)
            "0268"  # monitor "h"
            "0273"  # statistic "s"
            "00"  # column: null
            "000000000000f03f"  # value 1.0 (little-endian double)
            "000000000000e03f"  # threshold 0.5
            "02"  # window_start 1 (zigzag)
            "04"  # window_end 2
            "06"  # rows 3
            "08"  # detected_at 4
            "026c"  # link "l"
            "026d"  # message "m"
        )
    )
    assert codec.decode(data) == alert


def test_round_trip_and_a_bad_alert() -> None:
    codec = get_codec("monitor_alert")
    alert = _alert()
    assert codec.decode(codec.encode(alert)) == alert
    no_version = _alert(model={"name": "m", "version": None})
    assert codec.decode(codec.encode(no_version))["model"] == {"name": "m", "version": None}
    with pytest.raises(CodecError):
        codec.encode(_alert(status="open"))  # not a symbol of the enum
    with pytest.raises(CodecError):
        ListAlertSink().send({k: v for k, v in _alert().items() if k != "value"})


def test_alert_id_is_stable() -> None:
    assert alert_id("s1", "health", "staleness_seconds", None, 5, "firing") == (
        "s1|health|staleness_seconds||5|firing"
    )


def test_slack_payload() -> None:
    payload = slack_payload(_alert(message="Values <drifted> & more"))
    assert payload["text"].startswith("FIRING: orders monitor, store s1: g_test on order_value")
    assert "0.5 (threshold 0.25)" in payload["text"]
    header, section, context = payload["blocks"]
    assert header["type"] == "header"
    assert "&lt;drifted&gt; &amp; more" in section["text"]["text"]
    shown = {
        f["text"].split("\n")[0].strip("*"): f["text"].split("\n")[1] for f in section["fields"]
    }
    assert shown["Store"] == "s1" and shown["Value vs threshold"] == "0.5 vs 0.25"
    assert shown["Window"] == "1970-01-01 00:00:01 to 1970-01-01 00:05:01 UTC"
    assert shown["Model"] == "customers v3"
    assert (
        context["elements"][0]["text"] == "<http://dash/dashboard/stores/s1|Open in the dashboard>"
    )
    health = slack_payload(_alert(store="*", status="resolved", model=None, column=None, link=""))
    assert health["text"].startswith("RESOLVED: orders monitor, all stores: g_test =")
    assert len(health["blocks"]) == 2
    json.dumps(payload)  # plain JSON


def test_list_sink_collects_and_counts() -> None:
    before = _counter("storeml_monitor_alerts_total", monitor="orders", status="resolved")
    sink = ListAlertSink()
    sink.send(_alert(status="resolved"))
    assert sink.alerts == [_alert(status="resolved")]
    after = _counter("storeml_monitor_alerts_total", monitor="orders", status="resolved")
    assert after == before + 1


# --- broker ---------------------------------------------------------------------------------------
def _read(settings: Settings, topic: str, partitions: int, count: int) -> list[Any]:
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "test-alert-reader",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        messages: list[Any] = []
        deadline = time.monotonic() + 20
        while len(messages) < count and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.2):
                if message.error() is None:
                    messages.append(message)
        return messages
    finally:
        consumer.close()


@pytest.fixture
def alert_settings(settings: Settings, unique: str) -> Settings:
    topic = f"test.{unique}.alerts"
    ensure_topics(settings.kafka_config(), [topic], 2)
    return settings.model_copy(update={"topic_alerts": topic})


def test_alerts_reach_the_topic(alert_settings: Settings) -> None:
    alerts = [_alert("s1"), _alert("s2", column=None), _alert("s1", status="resolved")]
    sink = AlertSink(alert_settings)
    assert "AlertSink(topic=" in repr(sink)
    for alert in alerts:
        sink.send(alert)
    sink.flush()
    sink.close()
    messages = _read(alert_settings, alert_settings.topic_alerts, 2, len(alerts))
    assert len(messages) == 3
    codec = get_codec("monitor_alert")
    got = sorted((codec.decode(m.value()) for m in messages), key=lambda a: a["alert_id"])
    assert got == sorted(alerts, key=lambda a: a["alert_id"])
    for message in messages:
        record = codec.decode(message.value())
        assert message.key() == record["store_id"].encode()
        headers = dict(message.headers())
        assert headers["storeml.schema"] == b"monitor_alert/v1"
        assert headers["storeml.alert_id"] == record["alert_id"].encode()
    # one store's alerts share a partition, in order
    s1 = [codec.decode(m.value())["status"] for m in messages if m.key() == b"s1"]
    assert s1 == ["firing", "resolved"]


# --- webhook --------------------------------------------------------------------------------------
class _Hook:
    """A real HTTP server in a thread, answering every POST with ``status`` and recording it."""

    def __init__(self, status: int) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_ok() -> Iterator[_Hook]:
    hook = _Hook(200)
    yield hook
    hook.stop()


@pytest.fixture
def hook_failing() -> Iterator[_Hook]:
    hook = _Hook(500)
    yield hook
    hook.stop()


def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "expected log records (httpx logs each request at INFO)"
    for record in caplog.records:
        assert "s3cr3tW3bh00k" not in record.getMessage()
    assert "s3cr3tW3bh00k" not in caplog.text


def test_webhook_posts_slack_json(
    alert_settings: Settings, hook_ok: _Hook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = alert_settings.model_copy(update={"monitor_webhook_url": SecretStr(hook_ok.url)})
    sink = AlertSink(settings, webhook_backoff=0.05)
    assert "s3cr3t" not in repr(sink)
    sink.send(_alert("s1"))
    sink.send(_alert("s1", status="resolved"))
    sink.flush()
    sink.close()
    assert [path for path, _ in hook_ok.posts] == [SECRET_PATH, SECRET_PATH]
    assert hook_ok.posts[0][1] == slack_payload(_alert("s1"))
    assert hook_ok.posts[1][1]["text"].startswith("RESOLVED:")
    assert sink.webhook_posts == 2 and sink.webhook_failures == 0
    _no_secret_in_logs(caplog)


def test_webhook_failures_are_retried_counted_and_never_raised(
    alert_settings: Settings, hook_failing: _Hook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failures = _counter("storeml_monitor_webhook_failures_total")
    sent = _counter("storeml_monitor_alerts_total", monitor="orders", status="firing")
    settings = alert_settings.model_copy(
        update={"monitor_webhook_url": SecretStr(hook_failing.url)}
    )
    sink = AlertSink(settings, webhook_tries=3, webhook_backoff=0.05)
    started = time.monotonic()
    sink.send(_alert("s9"))  # does not raise
    assert time.monotonic() - started < 5
    assert len(hook_failing.posts) == 3  # three tries
    assert sink.webhook_failures == 1
    assert _counter("storeml_monitor_webhook_failures_total") == failures + 1
    assert _counter("storeml_monitor_alerts_total", monitor="orders", status="firing") == sent + 1
    assert any("alert webhook failed" in r.getMessage() for r in caplog.records)
    # nobody listening at all: a transport error, also retried and swallowed
    hook_failing.stop()
    sink.send(_alert("s9", status="resolved"))
    assert sink.webhook_failures == 2
    sink.flush()  # the alerts themselves are on the topic
    sink.close()
    assert len(_read(settings, settings.topic_alerts, 2, 2)) == 2
    _no_secret_in_logs(caplog)
