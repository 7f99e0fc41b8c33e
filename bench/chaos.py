"""Chaos run: kill -9 the stream at many points, restart it, and compare with an uninterrupted run.

Usage (about 10-15 minutes on 2 cores with the defaults: 12 kills over 40+ micro-batches)::

    .venv/bin/python -m bench.chaos                       # prints its figures; exit 1 on a difference
    .venv/bin/python -m bench.chaos --kills 3 --events 3000 --steps 2 --stores 60   # a small run

What it does, on services of its own (a Tansu broker, a ``redis-server``, MLflow on SQLite, all in
a temporary folder):

1. trains and registers per-store models on synthetic history;
2. produces a fixed set of synthetic events (orders and product events over ``--stores`` stores,
   with ``--malformed`` of them broken so dead letters exist) to the input topics in ``--steps``
   steps. Each step is produced while neither stream runs, and each run then processes it to the
   end: a micro-batch's boundaries depend on what the broker holds when it is planned, and the
   profiles' ``source`` field (in Redis and on the topic) on the boundaries, so both runs must see
   the same input at the same points to be comparable field by field;
3. per step, runs ``storeml stream run`` (the CLI, as users do) as a child process with its own
   checkpoint, lake, Redis prefix and output topics, with small batches, frequent snapshots,
   short changelog retention and frequent lake compactions, and kills its whole process group with
   SIGKILL at points chosen by :mod:`bench.chaos_kill` (sink writes, the state commit, a lake
   compaction, ...), restarting it after each kill until the step is processed; then stops it with
   SIGTERM;
4. per step, runs the same CLI with ``--available-now`` for the uninterrupted run (its own
   checkpoint, lake, prefix and topics);
5. compacts both lakes (``storeml lake compact``) and compares (:mod:`bench.chaos_compare`): Redis
   hashes (every field), the enriched topics after the header dedupe, the lake (every accepted event
   exactly once, with its bytes), the dead letters (the same source coordinates), and the two runs'
   micro-batch plans (the same offset ranges).

It prints the kills by kind (aimed at, and hit as found on disk, in Kafka and in Redis), batches,
events, lost, duplicated and differing keys, and exits 1 on any difference (2 when the run itself
could not be carried out, e.g. the stream crashed on its own).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.chaos_compare import (
    compare_runs,
    input_coordinates,
    read_outputs,
    summarise_counts,
)
from bench.chaos_kill import KILL_KINDS
from bench.chaos_runs import (
    ChaosConfig,
    ChaosResult,
    ChaosWorld,
    KilledRun,
    batch_plans,
    clean_step,
    compact_lake_cli,
    run_values,
    variant_values,
)
from bench.chaos_watch import Checkpoint, OutputWatch
from bench.common import emit

__all__ = ["ChaosConfig", "ChaosWorld", "ChaosResult", "run_chaos", "format_report", "main"]

#: Kinds every run aims at first (the issue's "sink writes, the state commit and a compaction").
FIRST_KINDS = ("redis", "kafka", "manifest", "changelog", "compaction")


# --- the two runs --------------------------------------------------------------------------------
def _kind_plan(config: ChaosConfig, rng: random.Random) -> list[str]:
    """The kinds to aim at, one per kill: the issue's kinds first, then the others, shuffled."""
    first = [k for k in FIRST_KINDS if k in config.kinds]
    rest = [k for k in config.kinds if k not in first]
    rng.shuffle(first)
    rng.shuffle(rest)
    cycle = first + rest
    return [cycle[i % len(cycle)] for i in range(config.kills)]


def run_chaos(
    world: ChaosWorld, config: ChaosConfig, say: Callable[[str], None] = print
) -> ChaosResult:
    """One chaos run on ``world``'s services (see the module docstring).

    A failure to carry the run out (the stream crashing on its own again and again, a step not
    processed in time) ends it early with :attr:`ChaosResult.error` set and the kills so far.
    """
    from storeml.batch.history import live_config, train_on_synthetic
    from storeml.connectors.kafka_admin import ensure_topics
    from storeml.connectors.synthetic import generate
    from storeml.settings import load_settings

    started = time.perf_counter()
    result = ChaosResult(config=asdict(config))
    rng = random.Random(config.seed)
    run_id = uuid.uuid4().hex[:8]
    base = run_values(world, config, run_id)
    values = {
        name: variant_values(base, name, run_id, world.workdir) for name in ("killed", "clean")
    }
    killed, clean = (load_settings(**values[name]) for name in ("killed", "clean"))
    for s in (killed, clean):
        ensure_topics(s.kafka_config(), s.topics, s.topic_partitions)
        Path(s.checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
    say(f"training models for {config.stores} stores on {config.train_events:,} history events")
    train_on_synthetic(killed, config.stores, config.train_events, config.seed)
    events = list(
        generate(live_config(config.stores, config.events, config.seed, config.malformed))
    )
    result.seconds["setup"] = time.perf_counter() - started
    try:
        with OutputWatch(killed) as watch:
            run = KilledRun(values["killed"], killed, config, result, watch, rng, say)
            _steps(run, values["clean"], clean, events, _kind_plan(config, rng), say)
        for name in ("killed", "clean"):
            say(f"  {name}: {compact_lake_cli(values[name])}")
    except RuntimeError as exc:
        result.error = str(exc)
        return result

    if len(result.kills) < config.kills:
        result.error = (
            f"only {len(result.kills)} of {config.kills} kills landed before the input was"
            " processed; raise --events or lower --max-records"
        )
    killed_cp, clean_cp = (Checkpoint(s.checkpoint_path, s.lake_path) for s in (killed, clean))
    result.batches_killed_run = killed_cp.committed() + 1
    result.batches_clean_run = clean_cp.committed() + 1
    got, want = batch_plans(killed_cp), batch_plans(clean_cp)
    result.plans_differing = sorted(b for b in set(got) | set(want) if got.get(b) != want.get(b))
    t0 = time.perf_counter()
    result.comparison = compare_runs(
        read_outputs(killed), read_outputs(clean), input_coordinates(killed)
    )
    result.seconds["compare"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - started
    return result


def _steps(
    run: KilledRun,
    clean_values: dict[str, Any],
    clean: Any,
    events: list[Any],
    kinds: list[str],
    say: Callable[[str], None],
) -> None:
    """Produce the events step by step; after each, the killed run, then the uninterrupted one."""
    from storeml.connectors.event_producer import produce_events
    from storeml.connectors.kafka_admin import high_watermarks, partitions_of, watermark_method_for

    s, config, seconds = run.settings, run.config, run.result.seconds
    inputs = partitions_of(s.kafka_config(), [s.topic_orders, s.topic_products])
    chunk = -(-len(events) // config.steps)
    for step in range(config.steps):
        part = events[step * chunk : (step + 1) * chunk]
        produce_events(s.kafka_config(), part, s.topic_orders, s.topic_products)
        target = high_watermarks(s.kafka_config(), inputs, watermark_method_for(s.kafka_flavor))
        # kills at random batches of the step (what earlier steps missed is carried on)
        first = run.cp.committed() + 1
        batches = range(first, first + -(-len(part) // config.max_records))
        kills = min(len(kinds) // (config.steps - step), len(batches))
        plan = sorted(run.rng.sample(batches, kills))
        say(
            f"step {step + 1}/{config.steps}: {len(part):,} events, batches {first}-"
            f"{batches[-1]}; kills planned at batches {plan}"
        )
        t0 = time.perf_counter()
        run.step(target, kinds, plan, batches[-1])
        seconds["killed_run"] = seconds.get("killed_run", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        clean_step(clean_values, clean, target)
        seconds["clean_run"] = seconds.get("clean_run", 0.0) + time.perf_counter() - t0


# --- report --------------------------------------------------------------------------------------
def format_report(result: ChaosResult) -> str:
    cfg = result.config
    c = result.comparison
    aimed = summarise_counts(k.aimed for k in result.kills)
    hit = summarise_counts(kind for k in result.kills for kind in k.kinds)
    lines = [
        f"chaos run: {cfg['stores']} stores, {cfg['events']:,} events in {cfg['steps']} steps,"
        f" at most {cfg['max_records']} records per micro-batch, seed {cfg['seed']}",
        f"kills:      {len(result.kills)} (kill -9 of the whole process group)",
        f"  aimed at: {', '.join(f'{k}={v}' for k, v in aimed.items()) or '-'}",
        f"  hit:      {', '.join(f'{k}={v}' for k, v in hit.items()) or '-'}",
        f"restarts:   {result.restarts}; crashes on its own: {len(result.crashes)};"
        f" processes surviving a kill: {result.survivors}",
        f"batches:    {result.batches_killed_run} (killed run), {result.batches_clean_run}"
        f" (uninterrupted); plans differing: {len(result.plans_differing)}",
    ]
    if c is not None:
        lines += [
            f"events:     {c.events:,} ({c.accepted:,} accepted, {c.dead_letter_events} dead"
            " letters)",
            f"lost:       {c.lost}",
            f"duplicated: {c.duplicated}",
            f"differing keys: {c.differing_keys}",
            f"  compared: {c.redis_keys:,} Redis hashes, {c.topic_keys:,} enriched keys,"
            f" {c.accepted:,} lake events, {c.dead_letter_events} dead letters",
            f"  replayed (at least once, absorbed by consumers): {c.topic_replayed} enriched"
            f" records, {c.dead_letters_replayed} dead letters",
        ]
        lines += [f"  DIFFERENCE {line}" for line in c.problems()]
    if result.plans_differing:
        lines.append(f"  DIFFERENCE batch plans differ from batch {result.plans_differing[0]}")
    lines += [f"  CRASH {text.splitlines()[0]}" for text in result.crashes]
    if result.error:
        lines.append(f"  ERROR {result.error}")
    lines.append("per kill (aimed -> batch: stage reached; evidence):")
    for i, k in enumerate(result.kills, 1):
        e = k.evidence
        lines.append(
            f"  {i:2d}. {k.aimed:<22} batch {k.batch:3d} at {k.at_s:5.1f}s: {k.stage:<9}"
            f" lake={e.get('incoming_files')} changelog={e.get('changelog_files')}"
            f" snapshots={e.get('snapshot_markers')}/{e.get('snapshot_tables')}"
            f" kafka={e.get('kafka_records')} dlq={e.get('dead_letters')}"
            f" redis={e.get('redis_hashes')} manifest={int(bool(e.get('manifest')))}"
            f" compaction={int(k.compaction_running)}"
        )
    secs = result.seconds
    lines.append("time: " + ", ".join(f"{name} {value:.0f}s" for name, value in secs.items()))
    lines.append("result: " + ("OK, equal to the uninterrupted run" if result.ok else "DIFFERENT"))
    return "\n".join(lines)


def start_world(workdir: Path) -> tuple[ChaosWorld, list[Any]]:
    """A Tansu broker, a redis-server and an MLflow store of the run's own, under ``workdir``."""
    from storeml.stack import RedisServer, TansuBroker, init_mlflow

    broker = TansuBroker(workdir=workdir / "tansu")
    broker.start()
    redis_server = RedisServer(workdir=workdir / "redis")
    redis_server.start()
    tracking_uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    artifact_root = (workdir / "mlflow" / "artifacts").as_uri()
    init_mlflow(tracking_uri, artifact_root)
    world = ChaosWorld(workdir, broker.bootstrap, redis_server.url, tracking_uri, artifact_root)
    return world, [redis_server, broker]


def build_parser() -> argparse.ArgumentParser:
    d = ChaosConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", type=int, default=d.stores)
    p.add_argument("--events", type=int, default=d.events)
    p.add_argument(
        "--steps", type=int, default=d.steps, help="produce the events in this many steps"
    )
    p.add_argument("--kills", type=int, default=d.kills)
    p.add_argument(
        "--kinds",
        default=",".join(d.kinds),
        help=f"kill points to aim at, comma-separated (of {', '.join(KILL_KINDS)})",
    )
    p.add_argument("--max-records", type=int, default=d.max_records, help="records per micro-batch")
    p.add_argument("--snapshot-every", type=int, default=d.snapshot_every)
    p.add_argument("--retain-batches", type=int, default=d.retain_batches)
    p.add_argument("--compact-seconds", type=float, default=d.compact_seconds)
    p.add_argument("--malformed", type=float, default=d.malformed)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep everything here (default: temp)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KILL_KINDS))
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; choose from {', '.join(KILL_KINDS)}")
    config = ChaosConfig(
        stores=args.stores,
        events=args.events,
        steps=args.steps,
        kills=args.kills,
        kinds=kinds,
        max_records=args.max_records,
        snapshot_every=args.snapshot_every,
        retain_batches=args.retain_batches,
        compact_seconds=args.compact_seconds,
        malformed=args.malformed,
        seed=args.seed,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="storeml-chaos-"))
    world, services = start_world(workdir)
    result: ChaosResult | None = None
    try:
        result = run_chaos(world, config, say=out)
        emit(result.as_dict(), format_report(result), args.json, out)
    finally:
        for service in services:
            service.stop()
        if args.workdir is None and result is not None and result.ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            out(f"work folder kept: {workdir} (stream logs: */stream.log)")
    if result.error or result.crashes:
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
