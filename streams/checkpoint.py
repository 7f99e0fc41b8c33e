"""The stream's checkpoint: its storeml metadata, its profile generation, and a safe reset.

``<checkpoint>/storeml.json`` records what Spark's own checkpoint does not: the state layout
(``state_buckets``), the id naming the hosts' working copies of the state (``state_id``) and the
**generation** of the profiles it produces.

``profile_version`` counts the events folded into a profile, so a new checkpoint would start every
count at zero again: the Redis guard would then refuse every write, and consumers following the
"keep the highest version" rule would drop every record. A generation ``g`` adds ``g × 10^12``
(:data:`GENERATION_STEP`) to every published ``profile_version``, so the profiles of a new
checkpoint rank above all of the old one's (10^12 events per entity and generation; versions stay
below 2^53, exact in Redis' Lua numbers, for 9,000 generations). The highest generation in use
is also kept in Redis (hash ``<prefix>:meta``, field ``generation``), so that even a checkpoint
deleted by hand starts above it.

:func:`reset_checkpoint` (``storeml stream reset``) moves a checkpoint aside and starts a new one
one generation up. The new state begins with what the input topics still hold (from
``starting_offsets``); history older than the topics' retention stays in the event lake but is
not in the new profiles (seeding the state from the lake is not built; ``docs/faults.md``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storeml.errors import ConfigError
from storeml.settings import Settings

__all__ = [
    "GENERATION_STEP",
    "CheckpointMeta",
    "check_checkpoint",
    "read_checkpoint_meta",
    "current_generation",
    "reset_checkpoint",
    "ResetOutcome",
    "read_batch_models",
    "latest_batch_models",
    "write_batch_models",
]

#: What one generation adds to ``profile_version``.
GENERATION_STEP = 10**12

_META = "storeml.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """The storeml metadata of a checkpoint."""

    state_buckets: int
    state_id: str
    generation: int = 0

    @property
    def version_base(self) -> int:
        """Added to every ``profile_version`` the checkpoint's stream publishes."""
        return self.generation * GENERATION_STEP

    def as_dict(self) -> dict[str, Any]:
        return {
            "state_buckets": self.state_buckets,
            "state_id": self.state_id,
            "generation": self.generation,
        }


def read_checkpoint_meta(checkpoint: str | Path) -> CheckpointMeta | None:
    """The metadata of ``checkpoint``, or None when it has none (a new checkpoint)."""
    path = Path(checkpoint) / _META
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        return CheckpointMeta(
            state_buckets=int(stored["state_buckets"]),
            state_id=str(stored.get("state_id") or ""),
            generation=int(stored.get("generation", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: unreadable checkpoint metadata ({exc}); restore it, or start a new"
            " checkpoint with `storeml stream reset`"
        ) from exc


def _write_meta(checkpoint: Path, meta: CheckpointMeta) -> None:
    checkpoint.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint / f"{_META}.tmp"
    tmp.write_text(json.dumps(meta.as_dict()))
    tmp.replace(checkpoint / _META)


def _generations(settings: Settings) -> Any:
    from storeml.connectors.redis_sink import RedisProfileSink

    return RedisProfileSink(settings.redis, settings.redis_prefix, settings.redis_retry_seconds)


def check_checkpoint(checkpoint: str | Path, settings: Settings) -> CheckpointMeta:
    """The checkpoint's metadata, made when the checkpoint is new; refuses another state layout.

    A new checkpoint takes the generation after the highest one recorded in Redis (0 when none
    is), and records its own there.
    """
    root = Path(checkpoint)
    if (root / "profile-state" / "bucket=00000").exists():
        raise ConfigError(
            f"{checkpoint}: the checkpoint holds profile state in the layout of storeml before"
            " entity-keyed state; start a new one with `storeml stream reset` (run `storeml"
            " recompute` to rebuild the profiles from the event lake)"
        )
    meta = read_checkpoint_meta(root)
    if meta is not None and meta.state_buckets != settings.state_buckets:
        raise ConfigError(
            f"{root / _META}: checkpoint was written with state_buckets={meta.state_buckets},"
            f" settings say {settings.state_buckets}; keep STOREML_STATE_BUCKETS as it was or"
            " start a new checkpoint with `storeml stream reset`"
        )
    if meta is not None and meta.state_id:
        return meta
    if meta is not None:  # written before state ids: keep its generation
        meta = CheckpointMeta(meta.state_buckets, uuid.uuid4().hex, meta.generation)
    else:
        sink = _generations(settings)
        recorded = sink.generation()
        meta = CheckpointMeta(
            settings.state_buckets, uuid.uuid4().hex, 0 if recorded is None else recorded + 1
        )
        sink.record_generation(meta.generation)
        sink.close()
    _write_meta(root, meta)
    return meta


def current_generation(settings: Settings, *, ask_redis: bool = True) -> int:
    """The generation of the live profiles: the checkpoint's, else the one Redis records, else 0.

    The recompute publishes with it, so that its versions equal the stream's.
    """
    meta = read_checkpoint_meta(settings.checkpoint_path)
    if meta is not None:
        return meta.generation
    if not ask_redis:
        return 0
    sink = _generations(settings)
    try:
        return sink.generation() or 0
    finally:
        sink.close()


@dataclass(frozen=True)
class ResetOutcome:
    """What :func:`reset_checkpoint` did."""

    checkpoint: Path
    moved_to: Path | None
    old_generation: int | None
    meta: CheckpointMeta


def reset_checkpoint(settings: Settings, *, delete: bool = False) -> ResetOutcome:
    """Start a new checkpoint one generation above the old one and Redis' record.

    The old checkpoint is moved to ``<checkpoint>.reset-<UTC time>`` (or deleted with ``delete``).
    The stream must be stopped: a running query would go on writing into the moved folder.
    """
    import shutil

    root = settings.checkpoint_path
    old = read_checkpoint_meta(root) if root.exists() else None
    sink = _generations(settings)
    recorded = sink.generation()
    highest = max(
        [g for g in (recorded, None if old is None else old.generation) if g is not None],
        default=-1,
    )
    moved: Path | None = None
    if root.exists():
        if delete:
            shutil.rmtree(root)
        else:
            moved = root.with_name(
                f"{root.name}.reset-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            )
            root.rename(moved)
    meta = CheckpointMeta(settings.state_buckets, uuid.uuid4().hex, highest + 1)
    sink.record_generation(meta.generation)
    sink.close()
    _write_meta(root, meta)
    return ResetOutcome(root, moved, None if old is None else old.generation, meta)


# --- the model versions each micro-batch used -------------------------------------------------
#: Batches whose model versions are kept (a replay is never further back than the last commit).
_KEEP_BATCH_MODELS = 100


def _models_dir(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "models"


def _handles_from(data: dict[str, Any]) -> dict[str, Any]:
    from storeml.connectors.mlflow_registry import ModelHandle

    return {kind: None if h is None else ModelHandle(**h) for kind, h in data.items()}


def read_batch_models(
    checkpoint: str | Path, batch_id: int
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (served, shadow) handles micro-batch ``batch_id`` was scored with, when it ran before.

    A replayed batch uses them again, so that it publishes what its first attempt did even when
    an alias moved in between.
    """
    path = _models_dir(checkpoint) / f"{batch_id}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return _handles_from(data["served"]), _handles_from(data["shadow"])


def latest_batch_models(
    checkpoint: str | Path, before: int
) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """The handles of the latest batch before ``before`` that recorded them (registry down)."""
    folder = _models_dir(checkpoint)
    if not folder.exists():
        return None
    ids = sorted(
        (int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit() and int(p.stem) < before),
        reverse=True,
    )
    for batch_id in ids:
        found = read_batch_models(checkpoint, batch_id)
        if found is not None:
            return batch_id, *found
    return None


def write_batch_models(
    checkpoint: str | Path, batch_id: int, served: dict[str, Any], shadow: dict[str, Any]
) -> None:
    """Record the handles batch ``batch_id`` is scored with (before it runs); prune old ones."""
    from dataclasses import asdict

    folder = _models_dir(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "served": {k: None if h is None else asdict(h) for k, h in served.items()},
        "shadow": {k: None if h is None else asdict(h) for k, h in shadow.items()},
    }
    tmp = folder / f"{batch_id}.json.tmp"
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(folder / f"{batch_id}.json")
    for old in folder.glob("*.json"):
        if old.stem.isdigit() and int(old.stem) < batch_id - _KEEP_BATCH_MODELS:
            old.unlink(missing_ok=True)
