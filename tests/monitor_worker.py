"""A real ``storeml monitor run`` worker for the monitor's tests (started as a user starts it).

The worker is a subprocess with the test's settings as ``STOREML_*`` variables and its own Faust
application id, so tests sharing the broker never share consumer groups or changelog topics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storeml.connectors.monitor_store import MonitorStore
from storeml.settings import Settings
from tests.api_server import settings_env

__all__ = ["MonitorWorker", "start_monitor", "wait_for"]


def wait_for(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class MonitorWorker:
    settings: Settings
    log: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """``kill -9`` the worker (no shutdown, no last commit)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_monitor(settings: Settings, log: Path, *, ready_timeout: float = 60.0) -> MonitorWorker:
    """Start a worker and wait until it wrote its first health record (it is consuming then)."""
    store = MonitorStore.from_settings(settings)
    store.setup()
    before = (store.health() or {}).get("at_ms", 0)
    process = subprocess.Popen(
        [sys.executable, "-m", "storeml.cli", "monitor", "run", "--loglevel", "info"],
        env=settings_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = MonitorWorker(settings, log, process)

    def ready() -> bool:
        if not worker.alive():
            raise AssertionError(f"monitor exited {process.returncode}:\n{worker.output()[-4000:]}")
        return (store.health() or {}).get("at_ms", 0) > before

    try:
        wait_for(ready, ready_timeout, "the monitor's first health record")
    except AssertionError as exc:
        worker.stop()
        raise AssertionError(f"{exc}; monitor log:\n{worker.output()[-6000:]}") from None
    except BaseException:
        worker.stop()
        raise
    finally:
        store.close()
    return worker
