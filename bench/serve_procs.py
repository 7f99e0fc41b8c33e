"""Server processes of the serving benchmark: started in their own session, waited for over HTTP,
their CPU time sampled, stopped by their process group (only the group this module started)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["HttpServer", "load_generator"]


class HttpServer:
    """One HTTP server command (``storeml serve``, ``feast serve``) on ``127.0.0.1:port``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        health: str = "/healthz",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.health = health
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait until ``health`` answers 200; returns the seconds that took."""
        started = time.perf_counter()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting; "
                    f"its log {self.log} ends:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.base + self.health, timeout=1.0) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer {self.health} in {timeout:.0f}s:\n{self.tail()}"
        )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and its children (gunicorn workers)."""
        import psutil

        if self.proc is None:
            return 0.0
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        except psutil.Error:
            pass
        return total

    def rss_bytes(self) -> int:
        import psutil

        if self.proc is None:
            return 0
        total = 0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
        return total

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the server's own process group, then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def load_generator(spec: Mapping[str, object], python: str, cwd: Path) -> dict[str, object]:
    """Run ``bench.serve_load`` with ``spec`` in a fresh process; its JSON result."""
    import json

    out = subprocess.run(
        [python, "-m", "bench.serve_load"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout)
    return result
