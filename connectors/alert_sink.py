"""Monitor alerts out: Avro records to the alerts topic, and an optional Slack-compatible webhook.

:class:`AlertSink` writes every alert (a dict shaped like ``schemas/avro/monitor_alert``) as a
single-object-encoded ``MonitorAlert`` to ``settings.topic_alerts``, keyed by ``store_id`` (UTF-8)
with headers ``storeml.schema`` (``monitor_alert/v<N>``) and ``storeml.alert_id``. The monitor is at
least once, so a replay writes an alert again with the same ``alert_id``; readers drop duplicates
by it. Then, when ``monitor_webhook_url`` is set, it POSTs :func:`slack_payload` of the alert.

The webhook is best effort: each alert gets ``webhook_tries`` attempts with a timeout and an
exponential backoff (transport errors, 429 and 5xx are retried; other 4xx are not). A webhook that
still fails is logged (never with its URL, which is a secret: a Slack webhook's path is its
credential) and counted in ``storeml_monitor_webhook_failures_total``; :meth:`AlertSink.send`
never raises for it. Kafka failures do raise: :meth:`AlertSink.flush` raises
:class:`~storeml.errors.ConnectorError` when a record was not delivered.

Prometheus counters (default registry, no store label): ``storeml_monitor_alerts_total{monitor,
status}`` (alerts sent, by either sink) and ``storeml_monitor_webhook_failures_total`` (alerts whose
webhook delivery failed after every try).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from storeml.connectors.base import Sink
from storeml.connectors.kafka_sink import KafkaRecordSink
from storeml.redaction import SecretRedactingFilter
from storeml.schemas.codec import get_codec

if TYPE_CHECKING:
    from storeml.settings import Settings

__all__ = [
    "ALERTS_TOTAL",
    "WEBHOOK_FAILURES_TOTAL",
    "AlertSink",
    "ListAlertSink",
    "alert_id",
    "slack_payload",
]

log = logging.getLogger(__name__)

SCHEMA = "monitor_alert"

ALERTS_TOTAL = Counter(
    "storeml_monitor_alerts",
    "Monitor alerts sent, by monitor kind and status (firing or resolved).",
    ["monitor", "status"],
)
WEBHOOK_FAILURES_TOTAL = Counter(
    "storeml_monitor_webhook_failures",
    "Alerts whose webhook POST failed after every retry (the alert is still on the topic).",
)

#: HTTP statuses worth another try: rate limited, or the receiver's own trouble.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def alert_id(
    store_id: str,
    monitor: str,
    statistic: str,
    column: str | None,
    window_start: int,
    status: str,
) -> str:
    """The stable id of an alert: ``store|monitor|statistic|column|window_start|status``.

    A null column is an empty part; the same alert raised again (a replay) gets the same id.
    """
    return f"{store_id}|{monitor}|{statistic}|{column or ''}|{int(window_start)}|{status}"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: float) -> str:
    return f"{value:.4g}"


def _escape(text: str) -> str:
    """Text made safe for Slack mrkdwn (``&``, ``<`` and ``>`` are control characters there)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack-compatible JSON body for ``alert``: ``{"text": ..., "blocks": [...]}``.

    ``text`` is the one-line fallback notifications show; the blocks give the store, monitor,
    statistic (and column), value against threshold, the window in UTC, the model, and a link to
    the dashboard. Pure: no I/O.
    """
    status = str(alert["status"])
    firing = status == "firing"
    store = str(alert["store_id"])
    where = "all stores" if store == "*" else f"store {store}"
    statistic = str(alert["statistic"])
    if alert.get("column"):
        statistic = f"{statistic} on {alert['column']}"
    value, threshold = float(alert["value"]), float(alert["threshold"])
    window = f"{_utc(int(alert['window_start']))} to {_utc(int(alert['window_end']))} UTC"
    mark = ":rotating_light:" if firing else ":white_check_mark:"
    title = f"{status.upper()}: {alert['monitor']} monitor, {where}"
    text = (
        f"{title}: {statistic} = {_number(value)} (threshold {_number(threshold)}),"
        f" window {window}. {alert.get('message', '')}".strip()
    )
    model = alert.get("model")
    model_text = "-"
    if model:
        model_text = str(model["name"]) + (f" v{model['version']}" if model.get("version") else "")
    fields = [
        ("Store", store),
        ("Monitor", str(alert["monitor"])),
        ("Statistic", statistic),
        ("Value vs threshold", f"{_number(value)} vs {_number(threshold)}"),
        ("Window", window),
        ("Model", model_text),
        ("Rows", str(alert.get("rows", "-"))),
    ]
    link = str(alert.get("link") or "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"{mark} {_escape(str(alert.get('message') or text))}",
            },
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_escape(shown)}"} for name, shown in fields
            ],
        },
    ]
    if link:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in the dashboard>"}],
            }
        )
    return {"text": text, "blocks": blocks}


def _count(alert: Mapping[str, Any]) -> None:
    ALERTS_TOTAL.labels(monitor=str(alert["monitor"]), status=str(alert["status"])).inc()


class AlertSink(Sink):
    """Alerts to the alerts topic and the webhook; connects in :meth:`setup`, never in ``__init__``.

    ``webhook_tries`` attempts per alert, ``webhook_timeout`` seconds each, sleeping
    ``webhook_backoff * 2**attempt`` seconds between them. Not thread-safe: use one per thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        webhook_timeout: float = 3.0,
        webhook_tries: int = 3,
        webhook_backoff: float = 0.5,
    ) -> None:
        self.kafka_config = settings.kafka_config()
        self.topic = settings.topic_alerts
        self.webhook_url = settings.monitor_webhook_url  # SecretStr | None: never log it
        self.webhook_timeout = webhook_timeout
        self.webhook_tries = max(1, webhook_tries)
        self.webhook_backoff = webhook_backoff
        self.sent = 0
        self.webhook_posts = 0
        self.webhook_failures = 0

    def __repr__(self) -> str:
        hook = "set" if self.webhook_url else "none"
        return f"AlertSink(topic={self.topic!r}, webhook={hook})"

    def setup(self) -> None:
        self._kafka = KafkaRecordSink(self.kafka_config)
        self._kafka.ensure_setup()
        self._http = None
        self._url: str | None = None
        if self.webhook_url is not None and self.webhook_url.get_secret_value():
            import httpx

            self._url = self.webhook_url.get_secret_value()
            self._secrets = (self._url, str(httpx.URL(self._url)))
            _guard_http_logs(self._secrets)
            self._http = httpx.Client(timeout=httpx.Timeout(self.webhook_timeout))
        self._headers_schema = f"{SCHEMA}/v{get_codec(SCHEMA).version}".encode()

    def send(self, alert: Mapping[str, Any]) -> None:
        """Write ``alert`` to the topic (raises :class:`~storeml.errors.CodecError` if it does not
        fit the schema), then POST it to the webhook if one is set (never raises for that)."""
        self.ensure_setup()
        value = get_codec(SCHEMA).encode(alert)
        headers = [
            ("storeml.schema", self._headers_schema),
            ("storeml.alert_id", str(alert["alert_id"]).encode()),
        ]
        self._kafka.produce(self.topic, str(alert["store_id"]).encode(), value, headers)
        self.sent += 1
        _count(alert)
        if self._http is not None:
            self._post(alert)

    def _post(self, alert: Mapping[str, Any]) -> None:
        import httpx

        assert self._http is not None and self._url is not None
        payload = slack_payload(alert)
        reason = "no attempt"
        for attempt in range(self.webhook_tries):
            if attempt:
                time.sleep(self.webhook_backoff * 2 ** (attempt - 1))
            try:
                response = self._http.post(self._url, json=payload)
            except httpx.HTTPError as exc:  # connect/read timeouts, refused, protocol errors
                reason = f"{type(exc).__name__}: {self._clean(str(exc))}"
                continue
            if response.is_success:
                self.webhook_posts += 1
                return
            reason = f"HTTP {response.status_code}"
            if response.status_code not in _RETRY_STATUS:
                break
        self.webhook_failures += 1
        WEBHOOK_FAILURES_TOTAL.inc()
        log.warning(
            "alert webhook failed for %s after %d tries (%s); the alert is on topic %s",
            alert["alert_id"],
            attempt + 1,
            reason,
            self.topic,
        )

    def _clean(self, text: str) -> str:
        from storeml.redaction import redact_text

        return redact_text(text, self._secrets)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every alert is on the topic; raises ConnectorError if one was not."""
        if self._ready:
            self._kafka.flush(timeout)

    def close(self) -> None:
        if not self._ready:
            return
        self._kafka.close()
        if self._http is not None:
            self._http.close()
        self._ready = False


class ListAlertSink(Sink):
    """In-memory double: keeps every alert in :attr:`alerts` (for unit tests of the logic).

    Each alert is encoded with the real schema, so one that would not reach the topic fails here
    too; it counts in ``storeml_monitor_alerts_total`` like the real sink.
    """

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def setup(self) -> None:
        pass

    def send(self, alert: Mapping[str, Any]) -> None:
        get_codec(SCHEMA).encode(alert)
        self.alerts.append(dict(alert))
        _count(alert)


_guarded: set[tuple[str, ...]] = set()


def _guard_http_logs(secrets: tuple[str, ...]) -> None:
    """Mask ``secrets`` in httpx's own log records (it logs every request's URL at INFO).

    httpcore's debug records name the host and port only, never the path that holds the secret.
    """
    if secrets in _guarded:
        return
    _guarded.add(secrets)
    logging.getLogger("httpx").addFilter(SecretRedactingFilter(secrets))
