"""State scale: the same micro-batches with 10,000, 100,000 and 1,000,000 entities already in state.

Run from the repository root (10-15 minutes at the default sizes, on a quiet machine)::

    .venv/bin/python -m bench.state_bench
    .venv/bin/python -m bench.state_bench --sizes 10000,1000000 --batches 4 --json /tmp/s.json

One invocation starts private services (as ``bench.stream_bench`` does), trains per-store models,
and then, for each size, on fresh topics and a fresh checkpoint:

1. runs the stream over a small warm-up input (batch 0: Python workers start, models load);
2. seeds the state with ``size`` customers spread over the stores (ids of the generator's form, so
   the measured events touch seeded customers as well as new ones), each with one order and one
   category, written to the host's working copy and snapshotted into the checkpoint, as a stream
   that has run for months would hold them;
3. runs the stream over ``--batches`` micro-batches of ``--batch-events`` events each, the same
   events for every size, and reports the median micro-batch time (``foreachBatch``; the first
   batch after the seed is left out) and the peak RSS of the whole stream, Spark's JVM and Python
   workers included (sampled every 0.2 s over the benchmark's process tree).

Targets (the state issue): median batch time at 1,000,000 / at 10,000 <= 1.3; peak RSS growing
by less than 1 GiB from 10,000 to 1,000,000. Nothing here asserts a time: it prints numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import RssSampler, emit
from bench.seeding import seed_state
from bench.stream_bench import (
    _quiet,
    _say,
    preload_events,
    start_services,
    start_spark,
    train_models,
)

TARGET_RATIO = 1.3
TARGET_RSS_GROWTH_GIB = 1.0


def run_size(
    spark: Any,
    services: Any,
    stores: int,
    size: int,
    args: argparse.Namespace,
    batches: int | None = None,
) -> dict[str, Any]:
    from storeml.streams.enrich import start_enrichment

    batches = batches or args.batches
    stage = f"state-{size}-{batches}"
    settings = services.settings_for(
        stage,
        topic_orders=f"bench.{services.run_id}.{stage}.orders",
        topic_products=f"bench.{services.run_id}.{stage}.products",
        max_records_per_batch=args.batch_events,
    )
    warm = max(5 * stores, 5_000)
    preload_events(settings, stores, warm, args.seed + 7)
    query, _ = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(args.timeout)
    seeded = seed_state(settings, stores, size, int(time.time() * 1000))
    _say(f"{size:,} entities: seeded {seeded['seeded']:,} in {seeded['seed_s']:.1f}s")
    preload_events(settings, stores, args.batch_events * batches, args.seed)
    with RssSampler() as rss:
        query, handler = start_enrichment(spark, settings, available_now=True)
        query.awaitTermination(args.timeout)
    if query.exception() is not None:
        raise RuntimeError(f"the stream failed: {query.exception()}")
    reports = handler.reports
    steady = [r.seconds for r in reports[1:]] or [r.seconds for r in reports]
    states = [r.state for r in reports]
    return {
        "entities": size,
        **seeded,
        "batches": len(reports),
        "batch_events": [r.events for r in reports],
        "batch_seconds": [round(r.seconds, 3) for r in reports],
        "median_s": statistics.median(steady),
        "state_s": [round(r.stages.get("state_s", 0.0), 3) for r in reports],
        "fold_s": [round(r.stages.get("fold_s", 0.0), 3) for r in reports],
        "state": states,
        "peak_rss_gib": rss.peak / 2**30,
        "state_file_gib": sum(p.stat().st_size for p in settings.state_cache_path.glob("*.sqlite*"))
        / 2**30,
    }


def format_report(results: dict[str, Any]) -> str:
    rows = results["sizes"]
    lines = [
        f"state scale: {results['batches']} micro-batches of {results['batch_events']:,} events,"
        f" {results['stores']:,} stores, on {os.cpu_count()} cores",
        f"{'entities':>12} {'median batch s':>15} {'ratio':>7} {'peak RSS GiB':>13}"
        f" {'state copy GiB':>15}  batch seconds",
    ]
    first = rows[0]
    for row in rows:
        ratio = row["median_s"] / first["median_s"]
        lines.append(
            f"{row['entities']:>12,} {row['median_s']:>15.3f} {ratio:>7.2f}"
            f" {row['peak_rss_gib']:>13.2f} {row['state_file_gib']:>15.3f}  {row['batch_seconds']}"
        )
    last = rows[-1]
    ratio = last["median_s"] / first["median_s"]
    growth = last["peak_rss_gib"] - first["peak_rss_gib"]
    lines += [
        f"target: median ratio {last['entities']:,}/{first['entities']:,} <= {TARGET_RATIO}:"
        f" {ratio:.2f} ({'met' if ratio <= TARGET_RATIO else 'NOT met'})",
        f"target: peak RSS growth < {TARGET_RSS_GROWTH_GIB} GiB: {growth:+.2f} GiB"
        f" ({'met' if growth < TARGET_RSS_GROWTH_GIB else 'NOT met'})",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.state_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--sizes", default="10000,100000,1000000", help="entities in state before the batches")
    add("--stores", type=int, default=1_000)
    add("--batch-events", type=int, default=20_000, help="events per measured micro-batch")
    add("--batches", type=int, default=6, help="measured micro-batches per size")
    add("--seed", type=int, default=7)
    add("--timeout", type=float, default=1_200.0)
    add("--no-warmup", action="store_true", help="skip the unreported warm-up run")
    add("--json", type=Path, default=None, help="also write the results as JSON here")
    add("--keep-temp", action="store_true", help="keep the temporary work folder")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="storeml-state-bench-"))
    services = start_services(workdir, max_records_per_batch=args.batch_events, overrides={})
    spark = None
    results: dict[str, Any] = {
        "stores": args.stores,
        "batches": args.batches,
        "batch_events": args.batch_events,
        "load_start": os.getloadavg(),
        "sizes": [],
    }
    try:
        base = services.settings_for("train")
        _say(f"training per-store models ({args.stores} stores)")
        train_models(base, args.stores, 50_000, args.seed)
        spark, results["spark_start_s"] = start_spark(base, {})
        sizes = [int(s) for s in args.sizes.split(",")]
        if not args.no_warmup:  # so that the first size measured is not also the first run
            _say("warm-up run (not reported)")
            run_size(spark, services, args.stores, sizes[0], args, batches=2)
        for size in sizes:
            results["sizes"].append(run_size(spark, services, args.stores, size, args))
            row = results["sizes"][-1]
            _say(
                f"{size:,} entities: median batch {row['median_s']:.3f}s,"
                f" peak RSS {row['peak_rss_gib']:.2f} GiB"
            )
    finally:
        results["load_end"] = os.getloadavg()
        if spark is not None:
            with contextlib.suppress(Exception):
                spark.stop()
        services.stop(args.keep_temp)
    return results


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    results = run(args)
    emit(results, format_report(results), args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
