"""A real ``storeml serve`` process on a free port, for the API's tests (fixture ``api_server``).

The server is a subprocess started the way a user starts it (``python -m storeml.cli serve``),
with the test's settings passed as ``STOREML_*`` variables; its log is kept in a file so tests
can read what it printed (and check that no key appears there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from storeml.connectors.api_keys import KeyStore
from storeml.settings import Settings
from storeml.stack import free_port

__all__ = ["ApiServer", "settings_env", "api_server"]


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict | list):
        return json.dumps(
            {k: _env_value(v) for k, v in value.items()} if isinstance(value, dict) else value
        )
    return str(value)


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment of a subprocess that loads the same ``settings`` (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREML_")}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is not None:
            env[f"STOREML_{name.upper()}"] = _env_value(value)
    for name, value in extra.items():
        env[f"STOREML_{name.upper()}"] = _env_value(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


@dataclass
class ApiServer:
    """A running server: ``url``, ``log`` (its output), ``admin_key`` and ``keys`` to make more."""

    settings: Settings
    url: str
    log: Path
    process: subprocess.Popen[bytes]
    keys: KeyStore
    admin_key: str = ""
    made: list[str] = field(default_factory=list)

    def key(self, store: str, scopes: str | list[str] = "read,predict,segments") -> str:
        """A new key of ``store`` (``"*"``: admin) with ``scopes``."""
        wanted = scopes.split(",") if isinstance(scopes, str) else scopes
        key, _ = self.keys.create(store, wanted, label="test")
        self.made.append(key)
        return key

    def client(self, key: str | None = None, **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **options)

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until ``/readyz`` answers 200 (Redis reached, registry aliases resolved)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = httpx.get(f"{self.url}/readyz", timeout=5)
            if answer.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout:.0f} s: {answer.text}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(
    settings: Settings,
    log: Path,
    *,
    admin: bool = True,
    scheme: str = "http",
    verify: str | bool = True,
    **extra: Any,
) -> ApiServer:
    """Start ``storeml serve`` for ``settings`` and wait until it answers /healthz."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "storeml.cli", "serve", "--port", str(port)],
        env=settings_env(settings, **extra),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"{scheme}://127.0.0.1:{port}"
    server = ApiServer(
        settings, url, log, process, KeyStore(settings.redis.connect(), settings.redis_prefix)
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"storeml serve exited {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"storeml serve did not answer in 60 s:\n{server.output()}")
        time.sleep(0.1)
    if admin:
        server.admin_key = server.key("*", "read,predict,segments")
    return server


@pytest.fixture
def api_server(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """``api_server(**settings)`` starts a server for the test's settings (plus overrides)."""
    started: list[ApiServer] = []

    def start(**extra: Any) -> ApiServer:
        server = start_server(settings, tmp_path / f"serve-{len(started)}.log", **extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
