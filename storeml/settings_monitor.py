"""Settings of the monitor (``storeml monitor run``) and of the stream's metrics, mixed into ``Settings``.

Kept apart from ``storeml/settings.py`` like the serving settings; the fields are ordinary
``Settings`` fields (``STOREML_MONITOR_WINDOW_SECONDS``...). ``docs/monitoring.md`` explains them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

__all__ = ["MonitorSettings"]


class MonitorSettings(BaseSettings):
    """The ``monitor_*`` fields, the alerts topic and the stream's metrics port."""

    topic_alerts: str = Field(
        default="storeml.alerts",
        description="Topic of monitor alerts (Avro `monitor_alert`), keyed by store.",
    )
    monitor_app_id: str = Field(
        default="storeml-monitor",
        description="Faust application id: its consumer group and the prefix of its changelog"
        " topics. A new id starts the monitor from scratch.",
    )
    monitor_window_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Length of the monitor's tumbling event-time windows.",
    )
    monitor_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How late (in event time) a record may arrive and still count in its window;"
        " a window is evaluated once every input partition's event time passed its end plus this.",
    )
    monitor_idle_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A partition that delivered nothing for this long (wall clock) no longer holds"
        " back the closing of windows.",
    )
    monitor_alert_budget_per_day: float = Field(
        default=1.0,
        gt=0,
        description="Expected false drift alerts per day across all stores and statistics; the"
        " per-test significance level is derived from it.",
    )
    monitor_min_js: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Smallest Jensen-Shannon distance that may alert, however significant: a"
        " floor on the effect size.",
    )
    monitor_min_rows: int = Field(
        default=20,
        ge=1,
        description="Rows a store's window needs before its drift is tested.",
    )
    monitor_min_store_rows: int = Field(
        default=50,
        ge=1,
        description="Reference rows a store needs for its own reference histograms; smaller"
        " stores are tested against the reference of all stores.",
    )
    monitor_reference_days: float = Field(
        default=28.0,
        gt=0,
        description="A model version's monitors learn from the last this many days (event time)"
        " of the history it was trained on, the period closest to the live traffic it will see.",
    )
    monitor_cooldown_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="An alert that keeps firing is sent again at most once per this time (per"
        " store, monitor and statistic).",
    )
    monitor_horizon_days: float = Field(
        default=30.0,
        gt=0,
        description="A customer's propensity counts as confirmed when the customer orders again"
        " within this time (event time), refuted when the time passes without an order.",
    )
    monitor_stale_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Alert when the newest enriched record is older than this (wall clock).",
    )
    monitor_lag_records: int = Field(
        default=100_000,
        ge=1,
        description="Alert when the stream's enriched output falls this many input records behind.",
    )
    monitor_dead_letter_ratio: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Alert when dead letters exceed this share of the input in a window.",
    )
    monitor_silent_windows: int = Field(
        default=3,
        ge=1,
        description="Alert when a store that had events sends none for this many windows.",
    )
    monitor_webhook_url: SecretStr | None = Field(
        default=None,
        description="Optional webhook (e.g. a Slack incoming webhook) that gets every alert as"
        " Slack-compatible JSON; kept out of logs.",
    )
    monitor_dashboard_url: str = Field(
        default="http://127.0.0.1:8000/dashboard",
        description="Base URL of the dashboard, linked from every alert.",
    )
    monitor_web_port: int = Field(
        default=6066,
        ge=0,
        le=65535,
        description="Port of the monitor's web server (Faust's), which serves /metrics.",
    )
    monitor_retention_windows: int = Field(
        default=288,
        ge=1,
        description="Windows of results kept in Redis per store and monitor for the dashboard.",
    )
    stream_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port on which `storeml stream run` serves Prometheus /metrics (batch rates,"
        " durations, lag); 0 turns it off.",
    )
