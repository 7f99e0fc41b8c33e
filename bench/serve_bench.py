"""Serving benchmark (issue #11): ``storeml serve`` against Feast's feature server and raw Redis.

Run from the repository root (about ten minutes at the defaults, plus about a minute once to
create Feast's venv)::

    .venv/bin/python -m bench.serve_bench
    .venv/bin/python -m bench.serve_bench --rates 500,1000,2000 --duration 30 --json out.json
    .venv/bin/python -m bench.serve_bench --systems storeml,redis --cases single --duration 5

One run, one private ``redis-server`` on a free port, one set of profiles:

* **data**: ``--customers`` customer profiles over ``--stores`` stores, written through the
  stream's own ``RedisProfileSink`` (its Lua guard and encoding), so the hashes are exactly what
  the stream writes; a customer bundle of every store registered as ``<model>@champion`` in a
  private MLflow on SQLite (predict by id scores the stored profile with it);
* **storeml**: ``storeml serve`` (one uvicorn process, the settings as ``STOREML_*`` variables)
  with an admin key made by ``KeyStore``; the per-key rate limit is raised out of the way
  (``STOREML_SERVE_RATE_LIMIT=1e6``: the limiter runs, it never refuses);
* **feast**: Feast's own Python feature server (``feast serve``, one worker, Redis online store)
  from a venv the bench creates and caches (``bench/serve_peer.py``), its profiles written by
  Feast's ``write_to_online_store`` into the same Redis (its own key space);
* **redis**: redis-py's asyncio client (hiredis) in the load generator itself, HGETALL or a
  pipeline of 50: the floor under any server.

Cases: ``single`` (``GET /v1/stores/{s}/customers/{id}``; Feast: one entity), ``batch50``
(``POST .../customers:batchGet`` with 50 ids of one store; Feast: the same 50 entities; Redis: a
pipeline) and ``predict`` (``POST .../models/customer:predict`` with one id; storeml only).
Each runs open-loop at every ``--rates`` rate (``--case-rates`` for one case's own;
``bench/serve_load.py``: intended start times
fixed in advance, latency from the intended start) and closed-loop with
``--saturation-connections`` connections for the saturation throughput.

Modules: ``serve_systems`` (data, requests, servers), ``serve_seed`` (profiles, model),
``serve_peer`` + ``serve_feast_repo`` (Feast), ``serve_load`` + ``serve_http`` (the load
generator), ``serve_procs`` (processes), ``serve_report`` (tables and targets).

Nothing here asserts a time: it prints tables (``--json`` also writes everything) next to the
targets of the issue, marked met or not met.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import emit
from bench.serve_procs import HttpServer, load_generator
from bench.serve_report import format_report, verdicts
from bench.serve_systems import REPO, draw_keys, probe, say, setup_data, start_systems

__all__ = ["CASES", "SYSTEMS", "build_parser", "main", "run"]

CASES = ("single", "batch50", "predict")
SYSTEMS = ("storeml", "feast", "redis")


def measure(
    target: dict[str, Any],
    requests: Sequence[Any],
    *,
    mode: str,
    rate: float,
    duration: float,
    warmup: float,
    connections: int,
    server: HttpServer | None,
    nice: int = -10,
    realtime: bool = True,
) -> dict[str, Any]:
    spec = {
        "target": target,
        "requests": list(requests),
        "mode": mode,
        "rate": rate,
        "duration": duration,
        "warmup": warmup,
        "connections": connections,
        "drain": 5.0,
        "nice": nice,
        "realtime": realtime,
    }
    cpu0 = server.cpu_seconds() if server else 0.0
    wall0 = time.perf_counter()
    result = load_generator(spec, sys.executable, REPO)
    if server is not None:
        wall = time.perf_counter() - wall0
        result["server_cpu"] = (server.cpu_seconds() - cpu0) / wall  # includes process start-up
        result["server_rss"] = server.rss_bytes()
        result["settle_s"] = settle(server)
    return result


def settle(server: HttpServer, idle: float = 0.05, timeout: float = 20.0) -> float:
    """Wait until ``server`` is idle (under ``idle`` of a core over 0.25 s): an overloaded run
    leaves requests the generator gave up on, which must not run into the next one."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = server.cpu_seconds()
        time.sleep(0.25)
        if server.cpu_seconds() - before < idle * 0.25:
            break
    return time.perf_counter() - started


def _rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r.strip()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from storeml.stack import RedisServer

    cases = [c for c in args.cases.split(",") if c]
    systems = [s for s in args.systems.split(",") if s]
    rates = {case: _rates(args.rates) for case in cases}
    for item in args.case_rates:
        case, sep, values = item.partition("=")
        if not sep or case not in CASES:
            raise SystemExit(f"--case-rates {item!r}: expected CASE=R1,R2 with CASE in {CASES}")
        rates[case] = _rates(values)
    bad = sorted(set(cases) - set(CASES)) + sorted(set(systems) - set(SYSTEMS))
    if bad:
        raise SystemExit(f"unknown case or system: {', '.join(bad)}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="storeml-serve-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": os.getloadavg(),
        },
        "args": vars(args),
        "runs": [],
        "notes": [],
    }
    redis = RedisServer(workdir=workdir / "redis")
    servers: list[Any] = []
    try:
        redis.start()
        say(f"redis-server on port {redis.port}")
        results["setup"] = setup_data(args, workdir, redis.url)
        targets = start_systems(args, systems, workdir, redis, servers, results)
        per_store = args.customers // args.stores
        for case in cases:
            keys = draw_keys(case, args.stores, per_store, args.seed)
            plans = [(name, *plan) for name in systems if (plan := targets[name](case, keys))]
            for name, target, reqs, _ in plans:
                sample = probe(target, reqs[0])
                results.setdefault("samples", {}).setdefault(case, {})[name] = sample
                if sample.get("status") != 200:
                    results["notes"].append(f"{case}/{name}: first request answered {sample}")
            for rate in rates[case]:
                for name, target, reqs, server in plans:
                    say(f"{case:8} {name:8} open loop {rate:,.0f}/s for {args.duration:g}s")
                    result = measure(
                        target,
                        reqs,
                        mode="open",
                        rate=rate,
                        duration=args.duration,
                        warmup=args.warmup,
                        connections=args.connections,
                        server=server,
                        nice=args.generator_nice,
                        realtime=not args.no_realtime,
                    )
                    results["runs"].append({"case": case, "system": name, "rate": rate, **result})
            if args.saturation_duration > 0:
                for name, target, reqs, server in plans:
                    say(f"{case:8} {name:8} closed loop, {args.saturation_connections} connections")
                    result = measure(
                        target,
                        reqs,
                        mode="closed",
                        rate=0,
                        duration=args.saturation_duration,
                        warmup=args.warmup,
                        connections=args.saturation_connections,
                        server=server,
                        nice=args.generator_nice,
                    )
                    results["runs"].append(
                        {"case": case, "system": name, "rate": "saturation", **result}
                    )
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            results["workdir"] = str(workdir)
    results["verdicts"] = verdicts(results)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve_bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rates", default="500,1000,2000", help="open-loop rates, requests/s")
    parser.add_argument(
        "--case-rates",
        action="append",
        default=[],
        metavar="CASE=R1,R2",
        help="other open-loop rates for one case (repeatable), e.g. batch50=100,200,500",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {', '.join(SYSTEMS)}")
    parser.add_argument("--stores", type=int, default=100)
    parser.add_argument("--customers", type=int, default=100_000, help="profiles, all stores")
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="open loop: most connections the generator opens",
    )
    parser.add_argument(
        "--saturation-connections", type=int, default=16, help="closed loop: connections"
    )
    parser.add_argument(
        "--saturation-duration", type=float, default=10.0, help="closed loop seconds; 0: skip"
    )
    parser.add_argument(
        "--generator-nice",
        type=int,
        default=-10,
        help="nice value of the load generator where SCHED_FIFO is not used or not allowed",
    )
    parser.add_argument(
        "--no-realtime",
        action="store_true",
        help="do not run the open-loop generator under SCHED_FIFO (see bench/serve_load.py)",
    )
    parser.add_argument(
        "--storeml-command",
        default="{python} -m storeml.cli serve --port {port}",
        help="how storeml's server is started ({python}, {port} filled in), to try variants",
    )
    parser.add_argument(
        "--storeml-env",
        action="append",
        default=[],
        metavar="STOREML_NAME=VALUE",
        help="an extra setting for storeml's server (repeatable), to try variants",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--feast-venv", help="Feast's venv [default: ~/.cache/storeml-bench/feast-venv]"
    )
    parser.add_argument("--workdir", help="keep the run's files here (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="do not delete the work folder")
    parser.add_argument("--json", type=Path, help="write all results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run(args)
    emit(results, format_report(results), args.json, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
