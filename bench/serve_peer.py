"""The serving benchmark's peer: Feast's own Python feature server (``feast serve``) on the same
Redis and the same profiles, installed in a virtual environment of its own that the bench creates
and caches (never in the project's lock).

The venv lives in ``~/.cache/storeml-bench/feast-venv`` (``--feast-venv`` or
``STOREML_BENCH_FEAST_VENV`` to move it) and holds ``feast[redis]`` of :data:`FEAST_SPEC`; a
stamp file records what was installed, so later runs reuse it. ``bench/serve_feast_repo.py``
runs inside it to write the feature repo and the profiles (Feast's ``write_to_online_store``);
then ``feast serve`` runs with one worker, as ``storeml serve`` runs one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.serve_procs import HttpServer

__all__ = [
    "FEAST_SPEC",
    "FEATURES",
    "default_venv",
    "ensure_feast_venv",
    "FeastPeer",
    "feast_requests",
]

#: What the peer's venv installs.
FEAST_SPEC = "feast[redis]==0.67.*"
_STAMP = "storeml-bench.json"
_REPO_SCRIPT = Path(__file__).with_name("serve_feast_repo.py")

#: The feature view's features, as ``serve_feast_repo.FEATURES`` names them (all are requested).
FEATURES = (
    "profile_version",
    "order_count",
    "total_spend_minor",
    "avg_order_value_minor",
    "first_order_time",
    "last_order_time",
    "last_event_time",
    "days_since_last_order",
    "top_categories",
    "product_views",
    "propensity",
    "model",
    "shadow",
)


def default_venv() -> Path:
    env = os.environ.get("STOREML_BENCH_FEAST_VENV")
    return Path(env) if env else Path.home() / ".cache" / "storeml-bench" / "feast-venv"


def ensure_feast_venv(venv: Path, say: Any = print) -> dict[str, Any]:
    """Create ``venv`` with :data:`FEAST_SPEC` unless its stamp says it holds it already.

    Returns ``{"python", "feast", "version", "created_s"}``; raises ``RuntimeError`` with pip's
    last lines when the install fails (the caller reports the reason).
    """
    python = venv / "bin" / "python"
    feast = venv / "bin" / "feast"
    stamp = venv / _STAMP
    started = time.perf_counter()
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = {}
    if recorded.get("spec") != FEAST_SPEC or not python.exists() or not feast.exists():
        say(f"creating the Feast venv {venv} ({FEAST_SPEC}); about a minute, once")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", FEAST_SPEC],
            capture_output=True,
            text=True,
            check=False,
        )
        if install.returncode != 0:
            lines = [x for x in install.stderr.splitlines() if not x.startswith("WARNING")]
            raise RuntimeError(f"pip install {FEAST_SPEC} failed: " + "\n".join(lines[-8:]))
    version = subprocess.run(
        [str(python), "-c", "import feast; print(feast.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stamp.write_text(json.dumps({"spec": FEAST_SPEC, "version": version}))
    return {
        "python": str(python),
        "feast": str(feast),
        "version": version,
        "created_s": time.perf_counter() - started,
    }


class FeastPeer:
    """A Feast feature repo on the bench's Redis, filled with the profiles, and its server."""

    def __init__(self, venv: dict[str, Any], workdir: Path, redis_host: str, redis_port: int):
        self.venv = venv
        self.repo = workdir / "feast-repo"
        self.workdir = workdir
        self.redis = f"{redis_host}:{redis_port},db=0"
        self.server: HttpServer | None = None

    def load(self, profiles_parquet: Path) -> dict[str, Any]:
        """Apply the repo and write the profiles with Feast's write path; Feast's timings."""
        out = subprocess.run(
            [
                self.venv["python"],
                str(_REPO_SCRIPT),
                "--repo",
                str(self.repo),
                "--redis",
                self.redis,
                "--profiles",
                str(profiles_parquet),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"Feast repo setup failed:\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def start(self, port: int) -> float:
        """``feast serve`` with one worker, no access log, no worker recycling; start seconds.

        gunicorn's ``--max-requests`` defaults to 1000 in ``feast serve``: its only worker would
        restart every thousand requests, which is a setting, not the server, so it is switched
        off (0) as storeml's server never recycles itself either.
        """
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["FEAST_USAGE"] = "False"
        self.server = HttpServer(
            "feast serve",
            [
                self.venv["feast"],
                "--chdir",
                str(self.repo),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--workers",
                "1",
                "--max-requests",
                "0",
            ],
            port,
            self.workdir / "feast-serve.log",
            env=env,
            health="/health",
        )
        return self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def feast_requests(pairs: Sequence[Sequence[tuple[str, str]]]) -> list[dict[str, Any]]:
    """``POST /get-online-features`` bodies, one per list of (store, customer) entity keys."""
    features = [f"customer_profile:{name}" for name in FEATURES]
    return [
        {
            "method": "POST",
            "path": "/get-online-features",
            "body": json.dumps(
                {
                    "features": features,
                    "entities": {
                        "store_id": [s for s, _ in keys],
                        "customer_id": [c for _, c in keys],
                    },
                },
                separators=(",", ":"),
            ),
        }
        for keys in pairs
    ]
