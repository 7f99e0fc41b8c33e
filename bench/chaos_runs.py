"""The chaos run's two runs: their settings, the killed run's loop, the uninterrupted run's steps.

:class:`KilledRun` runs ``storeml stream run`` for one production step, kills it at the batches
and kinds of moment it is given (:class:`~bench.chaos_kill.KillPoints`), records the evidence of
each kill and restarts it, then stops it with SIGTERM once the step is processed.
:func:`clean_step` runs the same CLI with ``--available-now`` for the uninterrupted run. Both see
only what the shared input topics held when the step started; ``bench/chaos.py`` drives them.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_compare import Comparison
from bench.chaos_kill import KILL_KINDS, Kill, KillPoints, StreamProcess
from bench.chaos_watch import Checkpoint, OutputWatch

__all__ = [
    "ChaosConfig",
    "ChaosWorld",
    "ChaosResult",
    "KilledRun",
    "clean_step",
    "compact_lake_cli",
    "run_values",
    "variant_values",
    "batch_plans",
]


@dataclass(frozen=True)
class ChaosConfig:
    """Size and tuning of one chaos run."""

    stores: int = 200
    events: int = 12_000
    steps: int = 4
    kills: int = 12
    kinds: tuple[str, ...] = KILL_KINDS
    max_records: int = 300
    task_records: int = 100  # 2-3 read and enrich tasks per batch: a kill meets some mid-write
    snapshot_every: int = 3
    retain_batches: int = 4
    compact_seconds: float = 2.0
    malformed: float = 0.01
    seed: int = 7
    train_events: int = 8_000
    patience: int = 4  # batches to wait for the aimed kind before a random kill instead
    step_timeout: float = 1_200.0


@dataclass(frozen=True)
class ChaosWorld:
    """The services a run uses; the Redis must be private to it (keyspace notifications)."""

    workdir: Path
    kafka_bootstrap: str
    redis_url: str
    tracking_uri: str
    artifact_root: str


@dataclass
class ChaosResult:
    """What a run did and found."""

    config: dict[str, Any]
    kills: list[Kill] = field(default_factory=list)
    restarts: int = 0
    crashes: list[str] = field(default_factory=list)
    survivors: int = 0
    batches_killed_run: int = 0
    batches_clean_run: int = 0
    plans_differing: list[int] = field(default_factory=list)
    comparison: Comparison | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.crashes
            and not self.survivors
            and not self.plans_differing
            and self.comparison is not None
            and self.comparison.ok
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kills"] = [{**asdict(k), "kinds": k.kinds} for k in self.kills]
        if self.comparison is not None:
            c = self.comparison
            out["figures"] = {
                "lost": c.lost,
                "duplicated": c.duplicated,
                "differing_keys": c.differing_keys,
            }
        out["ok"] = self.ok
        return out


# --- settings and environment --------------------------------------------------------------------
def run_values(world: ChaosWorld, config: ChaosConfig, run_id: str) -> dict[str, Any]:
    """``load_settings`` arguments shared by both runs (the input topics and models)."""
    return {
        "home": world.workdir / "home",
        "kafka_bootstrap": world.kafka_bootstrap,
        "kafka_flavor": "tansu",
        "redis_url": world.redis_url,
        "mlflow_tracking_uri": world.tracking_uri,
        "mlflow_artifact_root": world.artifact_root,
        "topic_orders": f"chaos.{run_id}.orders",
        "topic_products": f"chaos.{run_id}.products",
        "customer_model": f"chaos-{run_id}-customers",
        "product_model": f"chaos-{run_id}-products",
        "shadow_alias": "",
        "max_records_per_batch": config.max_records,
        "task_records": config.task_records,
        "state_snapshot_every": config.snapshot_every,
        "state_retain_batches": config.retain_batches,
        "lake_compact_seconds": config.compact_seconds,
    }


def variant_values(values: dict[str, Any], name: str, run_id: str, workdir: Path) -> dict[str, Any]:
    return {
        **values,
        "topic_customer_profiles": f"chaos.{run_id}.{name}.customer-profiles",
        "topic_product_profiles": f"chaos.{run_id}.{name}.product-profiles",
        "topic_dead_letter": f"chaos.{run_id}.{name}.dead-letter",
        "redis_prefix": f"chaos:{run_id}:{name}",
        "checkpoint_dir": workdir / name / "checkpoint",
        "lake_dir": workdir / name / "lake",
    }


def _env(values: dict[str, Any]) -> dict[str, str]:
    """The child's environment: ours without STOREML_*, plus one variable per setting."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREML_")}
    for name, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"STOREML_{name.upper()}"] = text
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the two runs --------------------------------------------------------------------------------
def _step_done(cp: Checkpoint, target: dict[tuple[str, int], int]) -> bool:
    committed = cp.committed()
    if committed < 0:
        return False
    end = cp.end_offsets(committed)
    return all(end.get(key, 0) >= offset for key, offset in target.items())


class KilledRun:
    """The run that is killed: one long-lived stream per step, restarted after each kill."""

    def __init__(
        self,
        values: dict[str, Any],
        settings: Any,
        config: ChaosConfig,
        result: ChaosResult,
        watch: OutputWatch,
        rng: random.Random,
        say: Callable[[str], None],
    ) -> None:
        self.env = _env(values)
        self.settings, self.config, self.result, self.rng, self.say = (
            settings,
            config,
            result,
            rng,
            say,
        )
        self.log = Path(values["checkpoint_dir"]).parent / "stream.log"
        self.cp = Checkpoint(settings.checkpoint_path, settings.lake_path)
        self.points = KillPoints(
            self.cp,
            watch,
            rng,
            state_buckets=settings.state_buckets,
            snapshot_every=config.snapshot_every,
        )

    def _start(self) -> StreamProcess:
        stream = StreamProcess(self.env, self.log)
        stream.start()
        return stream

    def step(
        self, target: dict[tuple[str, int], int], kinds: list[str], plan: list[int], last: int
    ) -> None:
        """Process the step to ``target``, killing once at or after each batch of ``plan``.

        ``kinds`` holds the kind each kill aims at (taken from its front as kills land); ``last``
        is the step's last batch: an aimed kind waits only as long as leaves a batch to each kill
        still planned, then the kill lands at random.
        """
        deadline = time.monotonic() + self.config.step_timeout
        stream = self._start()
        done = lambda: _step_done(self.cp, target)  # noqa: E731
        while not done():
            if time.monotonic() > deadline:
                stream.kill9()
                raise RuntimeError(f"step not processed in {self.config.step_timeout:.0f}s")
            if not stream.alive():
                self._crashed(stream)
                stream = self._start()
                continue
            if not plan or not kinds:
                time.sleep(0.1)
                continue
            aimed = kinds[0]
            left = deadline - time.monotonic()
            first = max(plan[0], self.cp.committed() + 1)
            patience = max(0, min(self.config.patience, last - first - (len(plan) - 1)))
            batch = self.points.wait(
                stream, aimed, first=first, done=done, timeout=left, patience=patience
            )
            if batch is None and stream.alive() and not done():
                aimed = f"{aimed}->random"  # the aimed moment did not come: kill at random
                batch = self.points.wait(stream, "random", first=0, done=done, timeout=left)
            if batch is None:
                continue  # done, or the stream died on its own (handled above)
            if aimed == "compaction":
                time.sleep(self.rng.uniform(0.0, 0.25))
            compacting = self.cp.compaction_locked() or self.cp.staging_busy()
            at_s = time.monotonic() - stream.started
            survivors = stream.kill9()
            kill = Kill(aimed=aimed, batch=batch, at_s=at_s, compaction_running=compacting)
            kill.survivors = survivors
            self.points.evidence(kill, stream.pid, cleaning=batch % self.config.snapshot_every == 0)
            self.result.kills.append(kill)
            self.result.survivors += len(survivors)
            self.say(
                f"  kill {len(self.result.kills)}: aimed {aimed}, batch {batch} reached"
                f" {kill.stage} ({', '.join(kill.kinds)}) after {at_s:.1f}s"
            )
            kinds.pop(0)
            plan.pop(0)
            self.result.restarts += 1
            stream = self._start()
        code = stream.stop()
        if code not in (0, None):
            self.result.crashes.append(f"graceful stop exited {code}: {stream.tail(1500)}")

    def _crashed(self, stream: StreamProcess) -> None:
        message = (
            f"the stream exited on its own with {stream.proc.returncode if stream.proc else '?'}"
        )
        self.result.crashes.append(f"{message}: {stream.tail(3000)}")
        self.say(f"  {message}; restarting")
        if len(self.result.crashes) > 3:
            raise RuntimeError(f"{message} 4 times; last log:\n{stream.tail(3000)}")


def clean_step(values: dict[str, Any], settings: Any, target: dict[tuple[str, int], int]) -> None:
    stream = StreamProcess(
        _env(values), Path(values["checkpoint_dir"]).parent / "stream.log", "--available-now"
    )
    stream.start()
    assert stream.proc is not None
    try:
        code = stream.proc.wait(3_600)
    except subprocess.TimeoutExpired:
        stream.kill9()
        raise RuntimeError("the uninterrupted run did not finish a step within an hour") from None
    stream.wait_group()  # its last lake compaction may still run
    if code != 0 or not _step_done(Checkpoint(settings.checkpoint_path, None), target):
        raise RuntimeError(f"the uninterrupted run failed (exit {code}):\n{stream.tail(3000)}")


def compact_lake_cli(values: dict[str, Any]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "storeml.cli", "lake", "compact"],
        env=_env(values),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"storeml lake compact failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


def batch_plans(cp: Checkpoint) -> dict[int, str]:
    folder = cp.root / "offsets"
    return {
        int(p.name): p.read_text().splitlines()[2] for p in folder.iterdir() if p.name.isdigit()
    }
