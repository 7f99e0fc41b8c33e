"""Processes and probes of the monitor benchmark: private services, the pinned worker, its metrics,
its memory, a paced producer and a reader of the alerts topic.

Only processes this module started are stopped, by their own process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Services",
    "start_services",
    "run_settings",
    "worker_env",
    "Worker",
    "Producer",
    "AlertReader",
    "pin",
    "ensure",
]

REPO = Path(__file__).resolve().parent.parent
_METRIC = re.compile(r'^(storeml_monitor_\w+?)(?:_total)?\{(\w+)="([^"]*)"\}\s+([0-9.eE+-]+)$')


def pin(pid: int, cpus: set[int] | None) -> bool:
    """Pin ``pid`` (0: this process) to ``cpus``; False when not possible here."""
    if not cpus:
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except (OSError, AttributeError):
        return False
    return True


@dataclass
class Services:
    """A Tansu broker, a redis-server and an MLflow SQLite store of the bench's own."""

    workdir: Path
    broker: Any
    redis: Any
    tracking_uri: str
    artifact_root: str

    def pids(self) -> list[int]:
        return [p for p in (self.broker.pid, self.redis.pid) if p]

    def stop(self) -> None:
        for service in (self.broker, self.redis):
            with contextlib.suppress(Exception):
                service.stop()


def start_services(workdir: Path) -> Services:
    """Start the broker and Redis on free ports (never the machine's 6379) and migrate MLflow."""
    from storeml.stack import RedisServer, TansuBroker, init_mlflow

    broker = TansuBroker(workdir=workdir / "tansu")
    broker.start()
    redis = RedisServer(workdir=workdir / "redis")
    try:
        redis.start()
        folder = workdir / "mlflow"
        tracking = f"sqlite:///{folder / 'mlflow.db'}"
        artifacts = (folder / "artifacts").as_uri()
        init_mlflow(tracking, artifacts)
    except BaseException:
        broker.stop()
        redis.stop()
        raise
    return Services(workdir, broker, redis, tracking, artifacts)


def run_settings(services: Services, name: str, **monitor: Any) -> Any:
    """Settings of one bench run: its own topics, app id, Redis prefix, model names."""
    from storeml.settings import load_settings
    from storeml.stack import free_port

    run = f"{name}-{uuid.uuid4().hex[:6]}"
    return load_settings(
        home=services.workdir,
        kafka_bootstrap=services.broker.bootstrap,
        kafka_flavor="tansu",
        redis_url=services.redis.url,
        redis_prefix=f"bench:{run}",
        mlflow_tracking_uri=services.tracking_uri,
        mlflow_artifact_root=services.artifact_root,
        topic_orders=f"bench.{run}.orders",
        topic_products=f"bench.{run}.products",
        topic_customer_profiles=f"bench.{run}.customer-profiles",
        topic_product_profiles=f"bench.{run}.product-profiles",
        topic_dead_letter=f"bench.{run}.dead-letter",
        topic_notices=f"bench.{run}.notices",
        topic_alerts=f"bench.{run}.alerts",
        monitor_app_id=f"bench-{run}-monitor",
        customer_model=f"bench-{run}-customers",
        product_model=f"bench-{run}-products",
        checkpoint_dir=services.workdir / run / "checkpoint",
        lake_dir=services.workdir / run / "lake",
        monitor_web_port=free_port(),
        **monitor,
    )


def _env_value(value: Any) -> str:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def worker_env(settings: Any) -> dict[str, str]:
    """The environment of a ``storeml monitor run`` that loads the same ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREML_")}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is not None:
            env[f"STOREML_{name.upper()}"] = _env_value(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass
class Worker:
    """``storeml monitor run`` as a user runs it, pinned to ``cpus``; metrics, RSS and CPU time."""

    settings: Any
    log: Path
    cpus: set[int] | None
    loglevel: str = "warn"
    proc: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def start(self) -> None:
        cpus = self.cpus

        def affinity() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "storeml.cli",
                    "monitor",
                    "run",
                    "--loglevel",
                    self.loglevel,
                ],
                env=worker_env(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                preexec_fn=affinity,
            )
        self.started = time.perf_counter()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _processes(self) -> list[Any]:
        import psutil

        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> int:
        import psutil

        total = 0
        for p in self._processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for p in self._processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, self.rss())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{metric: {label value: number}}`` of the worker's ``storeml_monitor_*`` metrics."""
        url = f"http://127.0.0.1:{self.settings.monitor_web_port}/metrics"
        out: dict[str, dict[str, float]] = {}
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                text = answer.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            m = _METRIC.match(line)
            if m:
                out.setdefault(m.group(1), {})[m.group(3)] = float(m.group(4))
        return out

    def ready(self) -> bool:
        """Whether the worker wrote a health record (it is consuming then)."""
        from storeml.connectors.monitor_store import MonitorStore

        store = MonitorStore.from_settings(self.settings)
        store.setup()
        try:
            return bool((store.health() or {}).get("at_ms"))
        finally:
            store.close()

    def wait_ready(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive() or self.crashed():
                raise RuntimeError(f"the monitor exited or crashed; its log ends:\n{self.tail()}")
            if self.ready():
                return time.perf_counter() - self.started
            time.sleep(0.25)
        raise RuntimeError(f"the monitor was not ready in {timeout:.0f}s:\n{self.tail()}")

    def crashed(self) -> bool:
        """Whether the worker's log reports its Faust app crashed (the process may live on)."""
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, self.log.stat().st_size - 65_536))
                return b"[^-App]: Crashed" in f.read()
        except OSError:
            return False

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        self._stop.set()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Producer:
    """A confluent-kafka producer with the event producer's defaults; counts what it wrote."""

    def __init__(self, kafka_config: Mapping[str, Any]) -> None:
        from confluent_kafka import Producer as Client

        from storeml.connectors.event_producer import PRODUCER_DEFAULTS

        self._client = Client({**PRODUCER_DEFAULTS, **kafka_config})
        self.sent: dict[str, int] = {}
        self.errors = 0

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors += 1

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._report}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._client.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                self._client.poll(0.05)
        self.sent[topic] = self.sent.get(topic, 0) + 1

    def poll(self) -> None:
        self._client.poll(0)

    def flush(self) -> None:
        left = self._client.flush(300)
        if left or self.errors:
            raise RuntimeError(f"{left} messages undelivered, {self.errors} delivery errors")


class AlertReader:
    """Reads the alerts topic from the start in a thread; each alert with its arrival time."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.alerts: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AlertReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from storeml.connectors.kafka_admin import partitions_of
        from storeml.schemas.codec import get_codec

        codec = get_codec("monitor_alert")
        topic = self.settings.topic_alerts
        consumer = Consumer(
            {
                **self.settings.kafka_config(),
                "group.id": f"bench-alerts-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "fetch.queue.backoff.ms": 5,
            }
        )
        parts = [p for t, p in partitions_of(self.settings.kafka_config(), [topic]) if t == topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.1)
                if message is None or message.error():
                    continue
                self.alerts.append((time.time(), codec.decode(message.value())))
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def first(self, **match: Any) -> tuple[float, dict[str, Any]] | None:
        for at, alert in list(self.alerts):
            if all(alert.get(k) == v for k, v in match.items()):
                return at, alert
        return None


def ensure(settings: Any, topics: Iterable[str]) -> None:
    from storeml.connectors.kafka_admin import ensure_topics

    ensure_topics(settings.kafka_config(), list(topics), settings.topic_partitions)
