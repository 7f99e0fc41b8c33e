"""The serving benchmark's systems: its data, the requests of each case, and the servers.

``setup_data`` writes the profiles through the stream's ``RedisProfileSink``; ``start_systems``
registers the model, makes an admin key and starts ``storeml serve``, builds and starts the Feast
peer (``bench/serve_peer.py``), and returns, per system, how to load it for a case.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.serve_procs import HttpServer

__all__ = [
    "REPO",
    "PREFIX",
    "MODEL",
    "POOL",
    "say",
    "draw_keys",
    "storeml_requests",
    "redis_requests",
    "start_storeml",
    "probe",
    "wait_answer",
    "setup_data",
    "start_systems",
]

REPO = Path(__file__).resolve().parent.parent
PREFIX = "bench"
MODEL = "bench-serve-customers"
#: Distinct requests per case (drawn once, the same for every system, sent round-robin).
POOL = 4096

_T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- requests ------------------------------------------------------------------------------------
def draw_keys(case: str, stores: int, per_store: int, seed: int) -> list[list[tuple[str, str]]]:
    """(store, customer) keys of each request of ``case``: one key, or 50 of one store."""
    from bench.serve_seed import customer_id, store_id

    rng = random.Random(f"{seed}:{case}")
    size = 50 if case == "batch50" else 1
    out = []
    for _ in range(POOL):
        s = rng.randrange(stores)
        picks = rng.sample(range(per_store), size)
        out.append([(store_id(s), customer_id(c)) for c in picks])
    return out


def storeml_requests(case: str, keys: list[list[tuple[str, str]]]) -> list[dict[str, Any]]:
    import json

    out = []
    for group in keys:
        store = group[0][0]
        if case == "single":
            out.append({"method": "GET", "path": f"/v1/stores/{store}/customers/{group[0][1]}"})
        elif case == "batch50":
            body = json.dumps({"ids": [c for _, c in group]}, separators=(",", ":"))
            path = f"/v1/stores/{store}/customers:batchGet"
            out.append({"method": "POST", "path": path, "body": body})
        else:
            body = json.dumps({"ids": [group[0][1]]}, separators=(",", ":"))
            path = f"/v1/stores/{store}/models/customer:predict"
            out.append({"method": "POST", "path": path, "body": body})
    return out


def redis_requests(keys: list[list[tuple[str, str]]]) -> list[list[str]]:
    from storeml.connectors.redis_sink import profile_key

    return [[profile_key(PREFIX, "customer", s, c) for s, c in group] for group in keys]


# --- the servers ---------------------------------------------------------------------------------
def start_storeml(
    workdir: Path,
    redis_url: str,
    tracking: str,
    artifacts: str,
    port: int,
    command: str,
    extra_env: Sequence[str] = (),
) -> HttpServer:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREML_")}
    env.update(
        {
            "STOREML_HOME": str(workdir / "home"),
            "STOREML_REDIS_URL": redis_url,
            "STOREML_REDIS_PREFIX": PREFIX,
            "STOREML_MLFLOW_TRACKING_URI": tracking,
            "STOREML_MLFLOW_ARTIFACT_ROOT": artifacts,
            "STOREML_CUSTOMER_MODEL": MODEL,
            "STOREML_SERVE_RATE_LIMIT": "1000000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for item in extra_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("STOREML_"):
            raise SystemExit(f"--storeml-env {item!r}: expected STOREML_NAME=value")
        env[name] = value
    server = HttpServer(
        "storeml serve",
        shlex.split(command.format(python=sys.executable, port=port)),
        port,
        workdir / "storeml-serve.log",
        env=env,
        cwd=REPO,
    )
    server.start()
    return server


def probe(target: dict[str, Any], request: Any) -> dict[str, Any]:
    """One request outside the load: its status and answer size (a check that the case works)."""
    if target["kind"] != "http":
        return {"status": 200, "keys": len(request)}
    import httpx

    base = f"http://{target['host']}:{target['port']}"
    headers = dict(target.get("headers") or {})
    if request.get("body"):
        headers["Content-Type"] = "application/json"
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        answer = client.request(request["method"], request["path"], content=request.get("body"))
    out: dict[str, Any] = {"status": answer.status_code, "bytes": len(answer.content)}
    if answer.status_code == 200 and answer.headers.get("content-type", "").startswith(
        "application/json"
    ):
        body = answer.json()
        if isinstance(body, dict) and body.get("missing"):
            out["missing"] = len(body["missing"])
    return out


def wait_answer(
    base: str, request: dict[str, Any], headers: dict[str, str], timeout: float
) -> float:
    """Send ``request`` until it answers 200 (the predictor opens its model in the background);
    the seconds that took."""
    import httpx

    started = time.monotonic()
    deadline = started + timeout
    status = 0
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        while time.monotonic() < deadline:
            answer = client.request(
                request["method"],
                request["path"],
                content=request.get("body"),
                headers={"Content-Type": "application/json"} if request.get("body") else None,
            )
            status = answer.status_code
            if status == 200:
                return time.monotonic() - started
            time.sleep(0.2)
    raise RuntimeError(f"{base}{request['path']} still answers {status} after {timeout:.0f}s")


# --- one measurement -----------------------------------------------------------------------------
def setup_data(args: argparse.Namespace, workdir: Path, redis_url: str) -> dict[str, Any]:
    from bench.serve_seed import make_profiles, seed_redis, write_feast_parquet

    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    records = make_profiles(args.stores, args.customers, seed=args.seed, now_ms=now_ms, model=MODEL)
    made = time.perf_counter() - started
    say(f"{len(records):,} profiles made in {made:.1f}s; writing them with RedisProfileSink")
    seeded = seed_redis(redis_url, PREFIX, records)
    write_feast_parquet(records, workdir / "profiles.parquet", now_ms)
    return {"profiles": len(records), "make_s": made, "redis_sink": seeded, "now_ms": now_ms}


def start_systems(
    args: argparse.Namespace,
    systems: list[str],
    workdir: Path,
    redis: Any,
    servers: list[Any],
    results: dict[str, Any],
) -> dict[str, Callable[[str, Any], tuple[dict[str, Any], list[Any], Any] | None]]:
    """Start the servers of ``systems``; per system, a function from (case, keys) to the
    generator's target, the requests and the server process (None where it has no such case)."""
    from bench.serve_peer import FeastPeer, default_venv, ensure_feast_venv, feast_requests
    from storeml.stack import free_port

    plans: dict[str, Callable[[str, Any], Any]] = {}
    if "redis" in systems:
        target = {"kind": "redis", "url": redis.url}
        plans["redis"] = lambda case, keys: (
            None if case == "predict" else (target, redis_requests(keys), None)
        )
    if "feast" in systems:
        try:
            venv = ensure_feast_venv(Path(args.feast_venv or default_venv()), say=say)
            peer = FeastPeer(venv, workdir, "127.0.0.1", int(redis.port))
            say(f"Feast {venv['version']}: writing the profiles with write_to_online_store")
            loaded = peer.load(workdir / "profiles.parquet")
            servers.append(peer)
            port = free_port()
            start_s = peer.start(port)
            results["feast"] = {"version": venv["version"], "load": loaded, "start_s": start_s}
            feast_target = {"kind": "http", "host": "127.0.0.1", "port": port}
            feast_server = peer.server
            plans["feast"] = lambda case, keys: (
                None if case == "predict" else (feast_target, feast_requests(keys), feast_server)
            )
        except (RuntimeError, OSError, ValueError) as exc:
            reason = f"Feast peer unavailable: {exc}"
            say(reason)
            results["notes"].append(reason)
            results["feast"] = {"error": str(exc)}
    if "storeml" in systems:
        from bench.serve_seed import register_model
        from storeml.connectors.api_keys import ADMIN, SCOPES, KeyStore
        from storeml.connectors.redis_client import RedisTarget

        tracking = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
        artifacts = (workdir / "mlflow" / "artifacts").as_uri()
        # always: a server whose registry does not exist yet creates it (MLflow's migrations,
        # seconds of CPU) in its first alias pass, which would land in the first measurement
        say(f"registering {MODEL}@champion ({args.stores} stores) in MLflow on SQLite")
        results["model"] = register_model(
            workdir, args.stores, tracking, artifacts, MODEL, "champion"
        )
        client = RedisTarget.parse(redis.url).connect()
        key, record = KeyStore(client, PREFIX).create(ADMIN, list(SCOPES), label="serve bench")
        client.close()
        port = free_port()
        server = start_storeml(
            workdir, redis.url, tracking, artifacts, port, args.storeml_command, args.storeml_env
        )
        servers.append(server)
        headers = {"Authorization": f"Bearer {key}"}
        results["storeml"] = {"key_id": record.key_id}
        # the predictor opens the champion in the background: wait for it, whatever the cases
        first = storeml_requests("predict", draw_keys("predict", args.stores, 1, args.seed))
        results["storeml"]["ready_s"] = wait_answer(server.base, first[0], headers, timeout=180)
        st_target = {"kind": "http", "host": "127.0.0.1", "port": port, "headers": headers}
        plans["storeml"] = lambda case, keys: (st_target, storeml_requests(case, keys), server)
    return plans
