"""Recompute benchmark: rebuilding every profile from history, next to the stream on the same data.

Run from the repository root (several minutes at the default sizes)::

    .venv/bin/python -m bench.recompute_bench                     # 1,000,000 events, 1,000 stores
    .venv/bin/python -m bench.recompute_bench --events 100000 --stores 100 --json /tmp/r.json

One invocation starts private services (as ``bench.stream_bench`` does: a Tansu broker, Redis,
MLflow on SQLite), trains per-store models, pre-loads the events, and then measures on those events:

* **stream**: the enrichment stream with ``availableNow`` (its event lake on), wall time from query
  start to termination;
* **recompute from the lake** the stream wrote, publishing to the enriched topics and Redis;
* **recompute from the topics** (``--from-topic``), publishing likewise;
* with ``--scale 1000000,10000000``: a lake of each size written straight from the generator (no
  stream), recomputed from it, with the peak RSS of the whole job (JVM and Python workers).

Each stage writes to its own output topics and Redis prefix. Nothing here asserts a time: the script
prints numbers (``--json`` writes them) beside the targets (recompute at least as fast per event as
the stream; 1,000,000 events in under 2 minutes on the 2-core machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RssSampler, emit
from bench.stream_bench import (
    _fmt,
    _kv,
    _machine,
    _quiet,
    _ratio,
    _say,
    _yes,
    add_world_options,
    preload_events,
    run_spark,
    start_services,
    start_spark,
    train_models,
    use_bytecode_cache,
)

__all__ = [
    "TARGET_SECONDS_PER_MILLION",
    "build_parser",
    "run",
    "run_recompute",
    "format_report",
    "main",
]

#: Wall time target of a recompute of 1,000,000 events on the 2-core machine (seconds).
TARGET_SECONDS_PER_MILLION = 120.0


def run_recompute(spark: Any, settings: Any, source: str) -> dict[str, Any]:
    """One recompute, publishing to ``settings``' topics and Redis prefix."""
    from storeml.batch.recompute import recompute

    started = time.perf_counter()
    summary = recompute(spark, settings, source=source)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    return {
        "events": summary.events,
        "skipped": summary.skipped,
        "wall_s": wall,
        "rate": summary.events / wall if wall else None,
        "customers": summary.customers,
        "products": summary.products,
        "stores": len(summary.stores),
        "redis_written": summary.redis_written,
        "stages_s": summary.stages,
    }


def write_lake(settings: Any, stores: int, events: int, seed: int, chunk: int = 500_000) -> float:
    """Archive ``events`` synthetic events straight into ``settings``' lake (no stream, no broker),
    as the stream would have: the input topics' names, one partition, offsets in order."""
    import pandas as pd

    from storeml.connectors.event_lake import EventLakeSink
    from storeml.connectors.synthetic import GeneratorConfig, generate

    started = time.perf_counter()
    sink = EventLakeSink(str(settings.lake_path))
    topics = {"orders": settings.topic_orders, "products": settings.topic_products}
    offsets = {"orders": 0, "products": 0}
    rows: list[tuple[Any, ...]] = []

    def flush() -> None:
        frame = pd.DataFrame(
            rows, columns=["topic", "partition", "offset", "key", "value", "store_id", "event_time"]
        )
        sink.write(frame)
        rows.clear()

    for event in generate(GeneratorConfig(stores=stores, events=events, seed=seed)):
        if event.record is None:
            continue
        kind = event.topic_kind
        rows.append(
            (
                topics[kind],
                0,
                offsets[kind],
                event.key,
                event.value,
                event.record["store_id"],
                event.record["event_time"],
            )
        )
        offsets[kind] += 1
        if len(rows) >= chunk:
            flush()
    if rows:
        flush()
    return time.perf_counter() - started


def run_scale(spark: Any, services: Any, args: argparse.Namespace, events: int) -> dict[str, Any]:
    """Recompute from a lake of ``events`` written straight from the generator; peak RSS."""
    settings = services.settings_for(
        f"scale-{events}", lake_dir=str(services.workdir / f"lake-{events}")
    )
    _say(f"writing a lake of {events:,} events")
    write_s = write_lake(settings, args.stores, events, args.seed + 100)
    _say(f"lake written in {write_s:.0f}s; recompute from it")
    with RssSampler() as rss:
        out = run_recompute(spark, settings, "lake")
    out.update(lake_write_s=write_s, peak_rss_gib=rss.peak / 2**30)
    _say(
        f"recompute of {events:,}: {out['rate']:,.0f} events/s, peak RSS {out['peak_rss_gib']:.2f}"
        " GiB"
    )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recompute_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_world_options(
        parser,
        events=1_000_000,
        train_events=100_000,
        train_help="synthetic history events to train on",
    )
    add = parser.add_argument
    add(
        "--skip-stream",
        action="store_true",
        help="no stream run (then the lake is empty: topic only)",
    )
    add("--skip-topic", action="store_true", help="skip the recompute from the topics")
    add(
        "--scale",
        default="",
        help="comma-separated event counts (e.g. 1000000,10000000): recompute a lake of each size,"
        " written straight from the generator, and report its peak RSS (JVM and Python workers)",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every stage; returns the results (as written with ``--json``)."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": _machine(),
        "bytecode_cache": use_bytecode_cache(Path(tempfile.gettempdir()) / "storeml-bench-pycache"),
    }
    workdir = Path(tempfile.mkdtemp(prefix="storeml-recompute-bench-"))
    lake = workdir / "lake"
    _say(f"work folder {workdir}; starting services")
    services = start_services(
        workdir,
        max_records_per_batch=args.max_records_per_batch,
        overrides={**_kv(args.settings, "--set"), "lake_dir": str(lake)},
    )
    spark = None
    try:
        base = services.settings_for("train", lake_enabled=False)
        _say(
            f"training per-store models ({args.stores} stores, {args.train_events:,} history events)"
        )
        train = train_models(base, args.stores, args.train_events, args.seed)
        train.pop("handles")
        results["train"] = train
        _say(f"pre-loading {args.events:,} events")
        results["setup"] = preload_events(base, args.stores, args.events, args.seed)
        expected = results["setup"]["events"]
        _say(f"produced {expected:,} events at {results['setup']['produce_rate']:,.0f}/s")
        spark, results["spark_start_s"] = start_spark(base, _kv(args.spark_conf, "--spark-conf"))
        if not args.skip_stream:
            _say("stream (availableNow, lake on)")
            results["stream"] = run_spark(
                spark, services.settings_for("stream"), expected, args.timeout
            )
            _say(f"stream: {results['stream']['rate']:,.0f} events/s")
            _say("recompute from the lake")
            results["lake"] = run_recompute(spark, services.settings_for("recompute-lake"), "lake")
            _say(f"recompute from the lake: {results['lake']['rate']:,.0f} events/s")
        if not args.skip_topic:
            _say("recompute from the topics")
            results["topic"] = run_recompute(
                spark, services.settings_for("recompute-topic", lake_enabled=False), "topic"
            )
            _say(f"recompute from the topics: {results['topic']['rate']:,.0f} events/s")
        results["scale"] = [
            run_scale(spark, services, args, int(n)) for n in args.scale.split(",") if n
        ]
    finally:
        results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
        if spark is not None:
            with contextlib.suppress(Exception):
                spark.stop()
        services.stop(args.keep_temp)
    return results


def format_report(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    setup = results["setup"]
    lines = [
        f"machine: {machine.get('cpus')} CPUs, Python {machine.get('python')}, load at start"
        f" {machine.get('load_start')}, at end {machine.get('load_end')}",
        f"input: {setup['events']:,} events ({setup['orders']:,} orders), {results['args']['stores']:,}"
        f" stores; produced at {setup['produce_rate']:,.0f} events/s; Spark start"
        f" {results['spark_start_s']:.1f}s (not counted)",
        "",
        f"{'stage':<28}{'events':>11}{'seconds':>10}{'events/s':>11}{'vs stream':>11}"
        f"{'s per 1M':>10}  target met",
        "-" * 92,
    ]
    stream = results.get("stream", {}).get("rate")
    if "stream" in results:
        s = results["stream"]
        lines.append(
            f"{'stream (availableNow)':<28}{s['events']:>11,}{s['wall_s']:>10.1f}{s['rate']:>11,.0f}"
            f"{'1.00x':>11}{1e6 / s['rate']:>10.1f}  -"
        )
    for key, label in (("lake", "recompute --from-lake"), ("topic", "recompute --from-topic")):
        if key not in results:
            continue
        r = results[key]
        per_million = 1e6 / r["rate"] if r["rate"] else None
        met = (stream is None or r["rate"] >= stream) and (
            per_million is not None and per_million < TARGET_SECONDS_PER_MILLION
        )
        lines.append(
            f"{label:<28}{r['events']:>11,}{r['wall_s']:>10.1f}{r['rate']:>11,.0f}"
            f"{_ratio(r['rate'], stream):>11}{_fmt(per_million, 1):>10}  {_yes(met)}"
        )
    lines.append(
        f"targets: recompute >= the stream's events/s, and < {TARGET_SECONDS_PER_MILLION:.0f} s"
        " per 1,000,000 events"
    )
    scale = results.get("scale") or []
    for row in scale:
        lines.append(
            f"{'recompute lake (scale)':<28}{row['events']:>11,}{row['wall_s']:>10.1f}"
            f"{row['rate']:>11,.0f}{_ratio(row['rate'], stream):>11}"
            f"{1e6 / row['rate']:>10.1f}  peak RSS {row['peak_rss_gib']:.2f} GiB"
        )
    if len(scale) > 1:
        growth = scale[-1]["peak_rss_gib"] / scale[0]["peak_rss_gib"]
        lines.append(
            f"target: peak RSS at {scale[-1]['events']:,} <= 1.3x that at {scale[0]['events']:,}:"
            f" {growth:.2f}x ({'met' if growth <= 1.3 else 'NOT met'})"
        )
    for key in ("lake", "topic"):
        if key in results:
            r = results[key]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
            lines.append(
                f"{key}: {r['customers']:,} customer and {r['products']:,} product profiles in"
                f" {r['stores']:,} stores; Redis {r['redis_written']:,} written; task seconds: {stages}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    results = run(args)
    emit(results, format_report(results), args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
