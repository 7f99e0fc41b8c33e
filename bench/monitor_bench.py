"""Monitor benchmark (issue #12): what one ``storeml monitor run`` worker keeps up with, its memory
at 10,000 and 100,000 stores, how soon a drift alerts, and Evidently on the same windows.

Run from the repository root, on a quiet machine (the full run takes tens of minutes; docs/
monitor-bench.md describes the method and every knob)::

    .venv/bin/python -m bench.monitor_bench --json monitor-bench.json
    .venv/bin/python -m bench.monitor_bench --quick            # smoke size, a few minutes
    .venv/bin/python -m bench.monitor_bench --stores 10000 --skip-drift --skip-evidently

One invocation starts private services (a Tansu broker and a ``redis-server`` on free ports, MLflow
on SQLite in a work folder), then:

* **backlog** (``bench/monitor_runs.backlog_run``), per ``--stores`` count: train the monitors on
  the history of a synthetic world (``bench/monitor_world.py``), pre-produce its live input events
  and the enriched profiles the stream's own fold code makes of them (batches of
  ``--stream-batch``), start a worker pinned to ``--worker-cpus`` and time it until its
  ``storeml_monitor_records_total`` counters reach what was produced: records/s per topic and in
  total, against the stream's steady rate (``--stream-rate``, NOTES.md) times (1 + enriched
  records per input event). Peak RSS of the worker (and children) over the same run;
* **drift** (``drift_run``): a world whose biggest store's order prices are multiplied by
  ``--drift-factor`` from the middle of a window on; input events produced in event-time order at
  ``--drift-rate``/s (event time = wall time x ``--drift-speed``) to a running worker; wall time
  from the ``produce()`` of the first drifted order to the first firing alert on the alerts topic,
  and the alert's window counted from the drift's;
* **evidently** (``bench/monitor_peer.py``): Evidently's ``DataDriftPreset`` (in a cached venv of
  its own) on the drift run's (store, window) frames of the orders monitor's columns, against the
  same references; time per window and agreement with the worker's verdicts.

Nothing here asserts a number: the report prints them next to the issue's targets.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import emit

__all__ = ["build_parser", "main", "run", "format_report", "TARGET_RSS_BYTES"]

#: Peak RSS of the worker at 100,000 stores.
TARGET_RSS_BYTES = 1024**3
_T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def _cpus(text: str) -> set[int] | None:
    return {int(c) for c in text.split(",") if c.strip()} if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.monitor_bench", description=__doc__.split("\n")[0]
    )
    a = p.add_argument
    a("--quick", action="store_true", help="smoke sizes (200 stores, a few thousand records)")
    a("--stores", default="10000,100000", help="store counts of the backlog runs")
    a("--history-events", type=int, default=300_000, help="history events (reference) per run")
    a("--live-events", type=int, default=500_000, help="live events of the backlog per run")
    a(
        "--min-store-events",
        type=int,
        default=10,
        help="generator: events every store gets at least",
    )
    a("--backlog-windows", type=float, default=4, help="windows of event time the backlog spans")
    a("--window-seconds", type=float, default=300.0, help="monitor window of the backlog runs")
    a("--stream-batch", type=int, default=50_000, help="stream micro-batch size (enriched records)")
    a(
        "--stream-rate",
        type=float,
        default=20_000.0,
        help="the Spark stream's steady input events/s",
    )
    a(
        "--customer-version",
        choices=("named", "null"),
        default="named",
        help="customer profiles name the served version (as the stream does) or none (work-around)",
    )
    a("--worker-cpus", default="0", help="CPUs the worker is pinned to ('' for none)")
    a("--other-cpus", default="", help="CPUs for broker, Redis and the bench (default: the rest)")
    a("--timeout", type=float, default=1800.0, help="longest wait for a backlog to drain (s)")
    a("--worker-loglevel", default="warn", help="storeml monitor run --loglevel")
    a("--linger", type=float, default=5.0, help="seconds to watch window closes after a drain")
    a("--poll", type=float, default=0.25, help="seconds between /metrics polls")
    a("--skip-backlog", action="store_true")
    a("--skip-drift", action="store_true")
    a("--skip-evidently", action="store_true")
    a("--drift-stores", type=int, default=1_000)
    a("--drift-history", type=int, default=200_000)
    a("--drift-rate", type=float, default=2_000.0, help="input events/s produced (wall clock)")
    a("--drift-speed", type=float, default=1.0, help="event-time seconds per wall second")
    a("--drift-window-seconds", type=float, default=60.0)
    a("--drift-grace-seconds", type=float, default=5.0)
    a("--drift-windows", type=int, default=5, help="windows of live events in the drift run")
    a("--drift-after-windows", type=int, default=2, help="full live windows before the drift")
    a("--drift-factor", type=float, default=4.0, help="price factor of the drifted store")
    a("--evidently-windows", type=int, default=4, help="windows compared with Evidently")
    a("--evidently-max-stores", type=int, default=200, help="stores per window, most rows first")
    a("--evidently-methods", default="jensenshannon,default", help="preset methods to run")
    a("--evidently-venv", type=Path, default=None)
    a("--seed", type=int, default=7)
    a("--workdir", type=Path, default=None)
    a("--keep", action="store_true", help="keep the work folder (logs, parquet frames)")
    a("--json", type=Path, default=None, help="also write every result to this JSON file")
    return p


QUICK = {
    "stores": "200",
    "history_events": 6_000,
    "live_events": 6_000,
    "stream_batch": 2_000,
    "drift_stores": 40,
    "drift_history": 12_000,
    "drift_rate": 400.0,
    "drift_window_seconds": 8.0,
    "drift_grace_seconds": 2.0,
    "drift_windows": 4,
    "drift_after_windows": 1,
    "evidently_windows": 3,
    "evidently_max_stores": 8,
    "timeout": 300.0,
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.monitor_procs import pin, start_services
    from bench.monitor_runs import backlog_run, drift_run

    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == build_parser().get_default(k):
                setattr(args, k, v)
    args.worker_cpus = _cpus(args.worker_cpus)
    all_cpus = set(os.sched_getaffinity(0))
    others = _cpus(args.other_cpus) or (all_cpus - (args.worker_cpus or set())) or all_cpus
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="storeml-monitor-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.workdir_path = workdir
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": os.getloadavg(),
            "worker_cpus": sorted(args.worker_cpus or []),
            "other_cpus": sorted(others),
        },
        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "backlog": [],
        "notes": [],
    }
    pin(0, others)
    services = start_services(workdir)
    for pid in services.pids():
        pin(pid, others)
    try:
        if not args.skip_backlog:
            for stores in [int(s) for s in args.stores.split(",") if s]:
                try:
                    results["backlog"].append(
                        backlog_run(
                            services, args, stores, args.history_events, args.live_events, say
                        )
                    )
                except RuntimeError as exc:
                    say(f"backlog run of {stores:,} stores failed: {exc}")
                    results["notes"].append(f"backlog {stores}: failed: {str(exc)[:2000]}")
        if not args.skip_drift:
            drift, context = drift_run(services, args, say)
            results["drift"] = drift
            if not args.skip_evidently:
                results["evidently"] = _evidently(args, workdir, context, results["notes"])
    finally:
        services.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            results["notes"].append(f"work folder kept: {workdir}")
    results["finished"] = datetime.now(UTC).isoformat()
    return results


def _evidently(
    args: argparse.Namespace, workdir: Path, context: dict[str, Any], notes: list
) -> Any:
    from bench.monitor_peer import compare, default_venv, ensure_venv
    from bench.monitor_runs import pick_pairs, storeml_window_seconds

    try:
        venv = ensure_venv(args.evidently_venv or default_venv(), say)
    except (RuntimeError, OSError) as exc:
        notes.append(f"evidently: not run: {exc}")
        return None
    monitor = context["monitor"]
    windows, pairs = pick_pairs(
        context, args.evidently_windows, args.evidently_max_stores, monitor.min_rows
    )
    out: dict[str, Any] = {
        "venv": venv,
        "windows": windows,
        "pairs": len(pairs),
        "storeml_per_window": storeml_window_seconds(monitor, context["live"], windows),
        "worker_alerts_per_window": {
            str(w): sum(1 for (_, ww), r in context["verdicts"].items() if ww == w and r["alert"])
            for w in windows
        },
        "runs": [],
    }
    for method in [m for m in args.evidently_methods.split(",") if m]:
        say(f"evidently ({method}): {len(pairs)} (store, window) pairs over {len(windows)} windows")
        out["runs"].append(
            compare(
                venv,
                workdir,
                monitor,
                context["reference"],
                context["live"],
                context["verdicts"],
                pairs,
                method=method,
            )
        )
    return out


# --- report ------------------------------------------------------------------------------------
def _n(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _confusion(label: str, c: dict[str, Any]) -> str:
    return (
        f"  {label}: agreement {_n(c['agreement'], 3)} (both {c['both']}, monitor only"
        f" {c['monitor_only']}, Evidently only {c['evidently_only']}, neither {c['neither']})"
    )


def format_report(results: dict[str, Any], stream_rate: float) -> str:
    lines = ["# storeml monitor benchmark", ""]
    m = results["machine"]
    lines.append(
        f"{m['cpus']} CPUs, worker pinned to {m['worker_cpus'] or 'none'}, broker/Redis/bench on"
        f" {m['other_cpus']}; load at start {', '.join(f'{x:.2f}' for x in m['load_at_start'])}"
    )
    for run in results["backlog"]:
        lines += [
            "",
            f"## Backlog: {run['stores']:,} stores ({run['live_stores']:,} in the live data)",
        ]
        r = run.get("enriched_per_input_event")
        lines.append(
            f"produced {sum(run['produced'].values()):,} records ({run['live_events']:,} input"
            f" events, {_n(r, 3)} enriched records per input event at batches of"
            f" {results['args']['stream_batch']:,}); event time spans"
            f" {_n(run['windows_spanned'], 1)} windows"
        )
        lines.append(f"{'topic':10} {'records':>10} {'seconds':>9} {'records/s':>11}")
        for kind, t in run["per_topic"].items():
            lines.append(
                f"{kind:10} {t['records']:>10,.0f} {_n(t['seconds'], 1):>9}"
                f" {_n(t['records_per_s']):>11}"
            )
        lines.append(
            f"{'total':10} {sum(run['consumed'].values()):>10,.0f} {_n(run['seconds'], 1):>9}"
            f" {_n(run['records_per_s']):>11}   steady (10-90%):"
            f" {_n(run['steady_records_per_s'])}/s"
        )
        lines.append(
            f"drained: {run['drained']}; worker CPU {_n(run['worker_cpu_share'], 2)} cores, broker"
            f" {_n(run['broker_cpu_share'], 2)}; windows evaluated at the drain"
            f" {run['windows_evaluated_at_drain']}, {_n(results['args']['linger'])}s later"
            f" {run['windows_evaluated']}"
        )
        need = stream_rate * (1 + r) if r is not None else None
        got = run["steady_records_per_s"] or run["records_per_s"]
        ratio = got / need if got and need else None
        lines.append(
            f"the stream at {stream_rate:,.0f} events/s publishes {_n(need)} records/s for the"
            f" monitor (inputs + enriched): monitor/stream = {_n(ratio, 2)}"
            f" -> {'keeps up' if ratio and ratio >= 1 else 'falls behind'}"
        )
        lines.append(f"peak RSS {run['peak_rss_bytes'] / 2**20:,.0f} MiB")
        if run["crashed"]:
            lines.append(
                "THE MONITOR'S APP CRASHED during this run (see its log): numbers are void"
            )
    big = [b for b in results["backlog"] if b["stores"] >= 100_000]
    if big:
        peak = max(b["peak_rss_bytes"] for b in big)
        ok = peak < TARGET_RSS_BYTES
        lines.append(
            f"target RSS < 1 GiB at 100,000 stores: {peak / 2**20:,.0f} MiB"
            f" -> {'met' if ok else 'NOT met'}"
        )
    d = results.get("drift")
    if d:
        lines += [
            "",
            f"## Drift: {d['stores']:,} stores, store {d['drift_store']} x prices from mid-window",
        ]
        lines.append(
            f"window {d['window_s']:g}s, grace {d['grace_s']:g}s, {d['rate']:,.0f} events/s, event"
            f" time x{d['speed']:g}; {d['windows_evaluated']} windows evaluated"
        )
        if d["alerted"]:
            lines.append(
                f"alert on window {d['windows_after_drift_window']} after the drift's own window"
                f" (column {d['alert_column']}); event time from drift start to that window's end:"
                f" {d['event_time_to_close_windows']:.2f} windows; wall time from producing the"
                f" first drifted order to the alert on the topic: {d['seconds']:.2f}s"
                f" ({d['seconds'] / (d['window_s'] / d['speed']):.2f} windows of wall time)"
            )
        else:
            lines.append("NO alert for the drifted store within the run")
        lines.append(
            f"firing alerts of other stores: {len(d['false_alerts'])} {d['false_alerts'][:5]}"
        )
    e = results.get("evidently")
    if e:
        lines += ["", f"## Evidently {e['venv']['version']} on {e['pairs']} (store, window) pairs"]
        for w, s in e["storeml_per_window"].items():
            lines.append(
                f"storeml window {w}: {s['stores']} stores, {s['rows']:,} rows in"
                f" {s['seconds'] * 1000:.1f} ms (counts + predict, all stores); stores alerting:"
                f" in-process {s['alerts']}, worker {e['worker_alerts_per_window'].get(w)}"
            )
        for r in e["runs"]:
            sl, cl = r["store_level"], r["column_level"]
            per = r["seconds_per_pair"]
            lines.append(
                f"{r['method']} ({', '.join(r['methods_used'])}):"
                f" {_n(per * 1000 if per else None, 1)} ms per (store, window),"
                f" run wall {r['wall_s']:.1f}s (import {r['import_s']:.1f}s)"
            )
            for w, s in e["storeml_per_window"].items():
                whole = per * s["stores"] if per else None
                lines.append(
                    f"  window {w}: Evidently on all {s['stores']} stores (extrapolated from the"
                    f" pairs) {_n(whole, 2)}s vs storeml {s['seconds']:.4f}s:"
                    f" {_n(whole / s['seconds'] if whole else None)}x"
                )
            lines.append(_confusion("store level", sl))
            lines.append(_confusion("column level", cl))
    for note in results["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    results = run(args)
    emit(results, format_report(results, args.stream_rate), args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
