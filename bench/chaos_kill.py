"""The chaos run's knife: the stream as a child process, kill points watched for, and evidence.

:class:`StreamProcess` runs ``storeml stream run`` the way a user does, in a process group of its
own (the CLI's Python, Spark's JVM, its Python workers and the lake-compaction child), so one
``killpg(SIGKILL)`` takes all of it down, as a machine losing power would.

:class:`KillPoints` waits for one kind of moment and kills then. The moments are read from what
the stream leaves behind, never from its code:

=============  ==================================================================================
kind           fires when (batch N is planned, ``offsets/N``, and not yet committed, ``commits/N``)
=============  ==================================================================================
lake           an ``_incoming`` lake file of batch N appears (the enrich task archived its events)
changelog      a state changelog file of batch N appears, its manifest not yet
snapshot       a state snapshot of batch N is being written (its ``.sqlite`` without its marker)
dead-letter    a dead letter appears on the run's dead-letter topic
kafka          an enriched record appears on the run's profile topics (other tasks still writing)
redis          the first Redis hash of the batch is written (a keyspace notification)
manifest       the state manifest of batch N is written (state committed, Spark's commit not yet)
compaction     a lake compaction child holds the lake's lock (0-0.25 s later: it is reading or writing)
random         a random delay (0 .. 1.2 x the median batch time) after batch N is planned
=============  ==================================================================================

After each kill :meth:`KillPoints.evidence` records what batch N had reached (the furthest stage
found on disk, in Kafka and in Redis), so the report says which points were really hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_watch import Checkpoint, OutputWatch, secret_value

__all__ = ["KILL_KINDS", "StreamProcess", "KillPoints", "Kill"]

KILL_KINDS = (
    "lake",
    "changelog",
    "snapshot",
    "dead-letter",
    "kafka",
    "redis",
    "manifest",
    "compaction",
    "random",
)
#: Stages a batch goes through, in order (evidence: the furthest one reached).
STAGES = ("planned", "lake", "changelog", "kafka", "redis", "manifest", "committed")
_POLL_S = 0.004


# --- the child process ---------------------------------------------------------------------------
class StreamProcess:
    """``python -m storeml.cli stream run`` with ``env``, in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.env, self.log, self.args = env, log, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "storeml.cli", "-v", "stream", "run", *self.args],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # pgid == pid: killpg reaches the JVM and every worker
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def group(self) -> list[int]:
        """Pids still in the process group (the JVM and workers outlive a dead parent)."""
        import psutil

        out = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if os.getpgid(proc.pid) == self.pid:
                    out.append(proc.pid)
        return out

    def kill9(self) -> list[int]:
        """SIGKILL the whole group; returns the pids that were still there a second later."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()
        deadline = time.monotonic() + 5
        left = self.group()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.group()
        return left

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM (the CLI stops the query and Spark); SIGKILL after ``timeout``. Exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return None
        self.wait_group()
        return self.proc.returncode

    def wait_group(self, timeout: float = 180.0) -> list[int]:
        """After the CLI exited: wait for the rest of its group (a lake compaction it started
        outlives it), SIGKILL what is left after ``timeout``; returns the pids that were left."""
        deadline = time.monotonic() + timeout
        left = self.group()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.group()
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        return left

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


# --- kill points ---------------------------------------------------------------------------------
@dataclass
class Kill:
    """One kill: what it aimed at, when it landed, and what batch N had reached by then."""

    aimed: str
    batch: int
    at_s: float  # seconds after the process started
    stage: str = ""
    compaction_running: bool = False
    snapshot_in_flight: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    survivors: list[int] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        """Every kind of point this kill hit (the stage reached, plus what was running)."""
        out = [self.stage]
        if self.compaction_running:
            out.append("compaction")
        if self.snapshot_in_flight:
            out.append("snapshot")
        if self.evidence.get("dead_letters"):
            out.append("dead-letter")
        if self.stage == "manifest" and self.evidence.get("cleaning_batch"):
            out.append("cleaning")
        return out


class KillPoints:
    """Waits, in a running :class:`StreamProcess`, for a point of one kind, then kills there."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        watch: OutputWatch,
        rng: random.Random,
        *,
        state_buckets: int,
        snapshot_every: int,
    ) -> None:
        self.cp = checkpoint
        self.watch = watch
        self.rng = rng
        self.state_buckets = state_buckets
        self.snapshot_every = snapshot_every
        self.batch_seconds: list[float] = []

    def median_batch_s(self) -> float:
        if not self.batch_seconds:
            return 1.5
        ordered = sorted(self.batch_seconds)
        return ordered[len(ordered) // 2]

    def _fired(self, kind: str, batch: int, since: dict[str, Any]) -> bool:
        """Whether the moment ``kind`` has come in (uncommitted) batch ``batch``."""
        cp = self.cp
        if kind == "lake":
            return cp.incoming_of(batch) > 0
        if kind == "changelog":
            return bool(cp.changelog_files(batch)) and not cp.manifest(batch)
        if kind == "snapshot":
            buckets = [
                b
                for b in range(self.state_buckets)
                if b % self.snapshot_every == batch % self.snapshot_every
            ]
            return cp.snapshot_in_flight(batch, buckets)
        if kind == "dead-letter":
            return self.watch.kafka["dead-letter"] > since["dead-letter"]
        if kind == "kafka":
            return self.watch.kafka["profiles"] > since["profiles"]
        if kind == "redis":
            return self.watch.redis > since["redis"]
        if kind == "manifest":
            return cp.manifest(batch)
        if kind == "compaction":
            return cp.compaction_locked() or cp.staging_busy()
        if kind == "random":
            return time.monotonic() >= since["due"]
        raise ValueError(f"unknown kill kind {kind!r}; choose from {', '.join(KILL_KINDS)}")

    def wait(
        self,
        stream: StreamProcess,
        kind: str,
        *,
        first: int,
        done: Any,
        timeout: float,
        patience: int | None = None,
    ) -> int | None:
        """Wait until ``kind`` fires in batch ``first`` or a later one.

        Returns the batch it fired in, or None when ``done()`` became true (the input is
        processed), the process exited, ``patience`` batches passed without the moment (after the
        first one eligible), or ``timeout`` passed first. Records batch times.
        """
        deadline = time.monotonic() + timeout
        current, planned_at = -1, time.monotonic()
        since: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not stream.alive():
                return None
            planned, committed = self.cp.planned(), self.cp.committed()
            if planned > committed and planned != current:
                if current >= 0 and committed >= current:
                    self.batch_seconds.append(time.monotonic() - planned_at)
                current, planned_at = planned, time.monotonic()
                since = {
                    **self.watch.kafka,
                    "redis": self.watch.redis,
                    "due": planned_at + self.rng.uniform(0.0, 1.2) * self.median_batch_s(),
                }
            if current >= first and committed < current and self._fired(kind, current, since):
                return current
            if patience is not None and committed >= first + patience:
                return None
            if committed >= current and done():
                return None
            time.sleep(_POLL_S)
        return None

    def evidence(self, kill: Kill, stream_pid: int, cleaning: bool) -> None:
        """Fill ``kill`` with what batch ``kill.batch`` had reached (call right after the kill)."""
        cp, batch = self.cp, kill.batch
        ranges = cp.ranges(batch)

        def in_batch(source: str) -> bool:
            try:  # profiles: [[topic, partition, first, last], ...]; dead letters: topic:p:offset
                spans = json.loads(source)
                return any(
                    ranges.get((t, int(p)), (0, 0))[0]
                    <= int(first)
                    < ranges.get((t, int(p)), (0, 0))[1]
                    for t, p, first, _ in spans
                )
            except ValueError:
                topic, part, offset = source.rsplit(":", 2)
                lo, hi = ranges.get((topic, int(part)), (0, 0))
                return lo <= int(offset) < hi

        s = self.watch.settings
        kafka_records = dead = 0
        for _, topic, source in list(self.watch.kafka_sources):
            if source and in_batch(source):
                if topic == s.topic_dead_letter:
                    dead += 1
                else:
                    kafka_records += 1
        redis_keys = _redis_keys_of(s, ranges)
        tables, markers = cp.snapshots_of(batch)
        kill.evidence = {
            "incoming_files": cp.incoming_of(batch),
            "changelog_files": len(
                [n for n in cp.changelog_files(batch) if n.endswith(".parquet")]
            ),
            "snapshot_tables": tables,
            "snapshot_markers": markers,
            "kafka_records": kafka_records,
            "dead_letters": dead,
            "redis_hashes": redis_keys,
            "manifest": cp.manifest(batch),
            "committed": cp.committed() >= batch,
            "cleaning_batch": cleaning,
        }
        e = kill.evidence
        reached = {
            "planned": True,
            "lake": e["incoming_files"] > 0,
            "changelog": e["changelog_files"] > 0,
            "kafka": kafka_records > 0,
            "redis": redis_keys > 0,
            "manifest": e["manifest"],
            "committed": e["committed"],
        }
        kill.stage = [stage for stage in STAGES if reached[stage]][-1]
        kill.snapshot_in_flight = tables > markers


def _redis_keys_of(settings: Any, ranges: dict[tuple[str, int], tuple[int, int]]) -> int:
    """Redis hashes whose ``source`` names an event of the batch with ``ranges``."""
    import redis

    from storeml.connectors.redis_sink import is_index_key

    client = redis.Redis.from_url(secret_value(settings.redis_url))
    try:
        keys = [
            key
            for key in client.scan_iter(match=f"{settings.redis_prefix}:*", count=5000)
            if not is_index_key(key, settings.redis_prefix)
        ]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "source")
        sources = pipe.execute()
    finally:
        client.close()
    count = 0
    for raw in sources:
        if not raw:
            continue
        for span in json.loads(raw):
            lo, hi = ranges.get((span["topic"], int(span["partition"])), (0, 0))
            if lo <= int(span["first_offset"]) < hi:
                count += 1
                break
    return count
