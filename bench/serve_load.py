"""Open-loop (constant arrival rate) and closed-loop load generator for the serving benchmark.

Runs in its own process, so that its CPU time is not the server's and a stall of one is not
hidden by the other: ``bench.serve_bench`` starts ``python -m bench.serve_load``, writes one JSON
spec on its standard input and reads one JSON result from its standard output.

**Open loop.** Request *i* has an intended start time ``t0 + i / rate``, fixed before the run
begins. A Linux ``timerfd`` (nanosecond absolute deadlines, watched by the event loop like a
socket; asyncio's own timers round to whole milliseconds) wakes the loop at each intended time,
and every request that is due is sent at once on an idle keep-alive connection; when none is idle
and fewer than ``connections`` are open, a new one is opened; otherwise the request waits in a
queue. **Latency is measured from the intended start time** to the last byte of the answer, so
time spent waiting behind a slow answer (in the server, in the kernel, in this queue) counts:
a stall cannot make the generator send less and thereby hide itself (coordinated omission).
``lag`` (when the generator handled a request minus its intended start) shows how late the
generator itself was; ``queue`` (actual send minus that) is the wait for a free connection, i.e.
back-pressure from a server that does not keep up; ``service`` (answer minus actual send) is what
a closed-loop tool would have reported. Requests still unanswered when the drain ends count as
errors (``unfinished``) with the drain's end as their answer time (a lower bound).

**Closed loop** (saturation): ``connections`` connections each send the next request as soon as
the previous answer arrived, for ``duration`` seconds; the completion rate is the throughput.

Requests are taken round-robin from a list built by the caller (random ids, drawn once). HTTP is
plain HTTP/1.1 on raw asyncio transports, parsed with httptools (uvicorn's parser); the event loop
is uvloop. Target ``redis`` sends HGETALL (one key) or a pipeline of HGETALLs (several keys) with
redis-py's asyncio client and hiredis, straight from this process: the floor under any server.

Spec (JSON)::

    {"target": {"kind": "http", "host": "127.0.0.1", "port": 8000,
                "headers": {"Authorization": "Bearer ..."}}
              | {"kind": "redis", "url": "redis://127.0.0.1:6379/0"},
     "requests": [{"method": "GET", "path": "/v1/...", "body": null | "<json text>"}, ...]
               | [["key1"], ["key1", ..., "key50"]]            (redis: keys per request),
     "mode": "open" | "closed", "rate": 1000, "duration": 10, "warmup": 2,
     "connections": 64, "drain": 5, "realtime": true, "nice": -10}

``realtime`` (open loop only) and ``nice`` put the generator ahead of the servers, see
:func:`_prioritise` (default: neither).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections import deque
from typing import Any

import numpy as np

from bench.serve_http import Deadline, HttpConn, HttpTarget

__all__ = ["run_spec", "summarize", "main"]


class _Recorder:
    """Per-request times, indexed by request number."""

    def __init__(self, n: int) -> None:
        self.intended = np.full(n, np.nan)
        self.dispatched = np.full(n, np.nan)
        self.sent = np.full(n, np.nan)
        self.done = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int32)
        self.errors: dict[str, int] = {}

    def finish(self, slot: int, status: int, error: str | None) -> None:
        self.done[slot] = time.monotonic()
        self.status[slot] = status
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1


class Runner:
    """One run of a spec on the running event loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode = spec.get("mode", "open")
        self.rate = float(spec.get("rate", 0))
        self.duration = float(spec["duration"])
        self.warmup = float(spec.get("warmup", 1.0))
        self.max_conns = int(spec.get("connections", 64))
        self.drain = float(spec.get("drain", 5.0))
        self.kind = spec["target"]["kind"]
        if self.kind == "http":
            self.http = HttpTarget(spec["target"], spec["requests"])
            self.count = len(self.http.payloads)
        else:
            self.keys: list[list[str]] = [list(k) for k in spec["requests"]]
            self.count = len(self.keys)
        total = self.warmup + self.duration
        n = int(total * self.rate) + 1 if self.mode == "open" else int(total * 100_000)
        self.rec = _Recorder(n)
        self.next = 0
        self.queue: deque[int] = deque()
        self.idle: list[HttpConn] = []
        self.open_conns = 0
        self.opening = 0
        self.max_in_flight = 0
        self.in_flight = 0
        self.closing = False
        self.started = False
        self.loop = asyncio.get_running_loop()

    # --- http plumbing
    async def _open(self) -> None:
        self.opening += 1
        try:
            _, conn = await self.loop.create_connection(
                lambda: HttpConn(self._http_done), self.http.host, self.http.port
            )
        except OSError as exc:
            self.opening -= 1
            name = f"connect:{type(exc).__name__}"
            self.rec.errors[name] = self.rec.errors.get(name, 0) + 1
            if self.queue:
                self._fail(self.queue.popleft(), name)
            return
        self.opening -= 1
        self.open_conns += 1
        if self.mode == "closed" and self.started:
            self._closed_next(conn)
        else:
            self._release(conn)

    def _fail(self, slot: int, error: str) -> None:
        self.rec.sent[slot] = time.monotonic()
        self.rec.finish(slot, 0, error)

    def _release(self, conn: HttpConn) -> None:
        if not conn.alive:
            self.open_conns -= 1
            if (self.queue or self.mode == "closed") and not self.closing:
                self.loop.create_task(self._open())
            return
        if self.queue:
            self._send(conn, self.queue.popleft())
        else:
            self.idle.append(conn)

    def _take_idle(self) -> HttpConn | None:
        """An idle connection still open (the server may have closed some after its keep-alive)."""
        while self.idle:
            conn = self.idle.pop()
            if conn.alive:
                return conn
            self.open_conns -= 1
        return None

    def _send(self, conn: HttpConn, slot: int) -> None:
        self.rec.sent[slot] = time.monotonic()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        conn.send(slot, self.http.payloads[slot % self.count])

    def _http_done(self, conn: HttpConn, status: int, error: str | None) -> None:
        self.in_flight -= 1
        self.rec.finish(conn.slot, status, error)
        if self.mode == "closed" and not self.closing and conn.alive:
            self._closed_next(conn)
        else:
            self._release(conn)

    def _dispatch(self, slot: int) -> None:
        self.rec.dispatched[slot] = time.monotonic()
        if self.kind == "redis":
            self._start_redis(slot)
        elif conn := self._take_idle():
            self._send(conn, slot)
        else:
            self.queue.append(slot)
            if self.open_conns + self.opening < self.max_conns:
                self.loop.create_task(self._open())

    # --- redis
    def _start_redis(self, slot: int) -> None:
        self.in_flight += 1  # counted from now, so that the drain waits for tasks not yet run
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.loop.create_task(self._redis_one(slot))

    async def _redis_one(self, slot: int) -> None:
        keys = self.keys[slot % self.count]
        self.rec.sent[slot] = time.monotonic()
        try:
            if len(keys) == 1:
                await self.redis.hgetall(keys[0])
            else:
                pipe = self.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hgetall(key)
                await pipe.execute()
            self.rec.finish(slot, 200, None)
        except Exception as exc:  # any client error is a failed request, counted by class
            self.rec.finish(slot, 0, type(exc).__name__)
        finally:
            self.in_flight -= 1
        if self.mode == "closed" and not self.closing:
            self._closed_next(None)

    # --- modes
    def _closed_next(self, conn: HttpConn | None) -> None:
        slot = self.next
        if slot >= len(self.rec.done) or time.monotonic() >= self.stop_at:
            if conn is not None:
                self.idle.append(conn)
            return
        self.next += 1
        self.rec.intended[slot] = self.rec.dispatched[slot] = time.monotonic()
        if conn is None:
            self._start_redis(slot)
        else:
            self._send(conn, slot)

    def _preopen(self) -> int:
        """Connections opened before the clock starts: all of a closed loop's, else up to 8
        (an open loop opens more when a request finds none idle)."""
        return self.max_conns if self.mode == "closed" else min(self.max_conns, 8)

    async def run(self) -> dict[str, Any]:
        if self.kind == "redis":
            import redis.asyncio as aioredis

            pool = aioredis.BlockingConnectionPool.from_url(
                self.spec["target"]["url"], max_connections=self.max_conns, timeout=self.drain
            )
            self.redis = aioredis.Redis(connection_pool=pool)
            await asyncio.gather(*(self.redis.ping() for _ in range(self._preopen())))
        else:
            await asyncio.gather(*(self._open() for _ in range(self._preopen())))
        cpu0 = _cpu()
        t0 = time.monotonic() + 0.05
        self.t0 = t0
        self.stop_at = t0 + self.warmup + self.duration
        if self.mode == "open":
            await self._open_loop(t0)
        else:
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            self.started = True
            starters = self.idle[:] if self.kind == "http" else [None] * self.max_conns
            self.idle.clear()
            for conn in starters:
                self._closed_next(conn)
            await asyncio.sleep(max(0.0, self.stop_at - time.monotonic()))
        drain_until = time.monotonic() + self.drain
        while (self.in_flight or self.queue) and time.monotonic() < drain_until:
            await asyncio.sleep(0.005)
        self.closing = True
        cpu = _cpu() - cpu0
        wall = time.monotonic() - t0
        if self.kind == "redis":
            await self.redis.aclose()
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        result = summarize(self.rec, self.next, t0 + self.warmup, self.stop_at)
        result.update(
            {
                "mode": self.mode,
                "offered_rate": self.rate if self.mode == "open" else None,
                "connections": self.max_conns,
                "connections_opened": self.open_conns if self.kind == "http" else None,
                "max_in_flight": self.max_in_flight,
                "in_flight_at_end": int(self.in_flight),
                "generator_cpu": cpu / wall if wall > 0 else None,
            }
        )
        return result

    async def _open_loop(self, t0: float) -> None:
        deadline = Deadline()
        total = len(self.rec.done)
        interval = 1.0 / self.rate
        finished = self.loop.create_future()

        def tick() -> None:
            deadline.consume()
            now = time.monotonic()
            while self.next < total:
                due = t0 + self.next * interval
                if due > now:
                    deadline.arm(due)
                    return
                slot = self.next
                self.next += 1
                self.rec.intended[slot] = due
                self._dispatch(slot)
            if not finished.done():
                finished.set_result(None)

        self.loop.add_reader(deadline.fd, tick)
        deadline.arm(t0)
        try:
            await finished
        finally:
            self.loop.remove_reader(deadline.fd)
            deadline.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {k: None for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    ms = values * 1000.0
    p50, p90, p99, p999 = np.percentile(ms, [50, 90, 99, 99.9])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "p999": float(p999),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def summarize(rec: _Recorder, issued: int, start: float, stop: float) -> dict[str, Any]:
    """Latency (from intended start), lag and service statistics of the requests intended in
    ``[start, stop)``; unfinished ones count with the time at the end of the drain (a lower
    bound) and as errors ``unfinished``."""
    intended = rec.intended[:issued]
    window = (intended >= start) & (intended < stop)
    done = rec.done[:issued][window]
    sent = rec.sent[:issued][window]
    dispatched = rec.dispatched[:issued][window]
    intended = intended[window]
    status = rec.status[:issued][window]
    end = time.monotonic()
    missing = np.isnan(done)
    unfinished = int(missing.sum())
    done = np.where(missing, end, done)
    sent = np.where(np.isnan(sent), end, sent)
    dispatched = np.where(np.isnan(dispatched), end, dispatched)
    ok = status == 200
    statuses: dict[str, int] = {}
    answered = (~ok) & (status != 0)
    for code, n in zip(*np.unique(status[answered], return_counts=True), strict=True):
        statuses[str(int(code))] = int(n)
    all_done = rec.done[:issued]
    all_ok = rec.status[:issued] == 200
    in_window = int(((all_done >= start) & (all_done < stop) & all_ok).sum())
    seconds = stop - start
    return {
        "requests": int(window.sum()),
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "error_statuses": statuses,
        "unfinished": unfinished,
        "failed": int(((status == 0) & ~missing).sum()),
        "error_kinds": dict(rec.errors),
        "achieved_rate": in_window / seconds if seconds > 0 else None,
        "window_s": seconds,
        "latency_ms": _stats(done - intended),
        "service_ms": _stats(done - sent),
        "lag_ms": _stats(dispatched - intended),
        "queue_ms": _stats(sent - dispatched),
    }


async def _main_async(spec: dict[str, Any]) -> dict[str, Any]:
    return await Runner(spec).run()


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec in this process (uvloop when installed)."""
    try:
        import uvloop

        return uvloop.run(_main_async(spec))
    except ImportError:
        return asyncio.run(_main_async(spec))


def _prioritise(nice: int, realtime: bool) -> str:
    """Put this process ahead of the servers; returns what is in force ("fifo" or "nice N").

    The generator stands in for clients on other machines. On a shared 2-core machine a busy
    server (or anything else) would otherwise delay the generator's wake-ups, and that delay
    would be counted as the server's latency (measured: generator lag p99 1-2 ms at 1,000/s
    with ``nice`` alone, 0.05 ms with SCHED_FIFO). An open loop needs a few per cent of a core,
    so ``realtime`` (SCHED_FIFO, priority 1; the kernel's RT throttling still leaves 5% to
    others) costs the servers little; a closed loop never asks for it. Without the permission
    (not root) the lower ``nice`` value is tried, and else nothing changes.
    """
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "fifo"
        except (OSError, AttributeError):
            pass
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def main() -> int:
    spec = json.load(sys.stdin)
    realtime = bool(spec.get("realtime")) and spec.get("mode", "open") == "open"
    priority = _prioritise(int(spec.get("nice", 0)), realtime)
    result = run_spec(spec)
    result["priority"] = priority
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
