"""Async reads of the Redis feature store for the serving API (redis.asyncio with hiredis).

One ``HGETALL`` per profile; a batch is one pipeline (no transaction: each hash is replaced whole
by the stream's Lua guard, so every read sees one complete profile). Values come back typed as
the Avro schema says (:func:`storeml.schemas.typed.from_redis`). Only read commands are sent, so
the API's Redis user can be read-only (docs/serving.md gives the ACL line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storeml.connectors.redis_client import RedisTarget
from storeml.connectors.redis_sink import profile_key
from storeml.errors import ConnectorError
from storeml.schemas.typed import from_redis

__all__ = ["ProfileReader", "connect_async"]


def connect_async(target: RedisTarget, **overrides: Any) -> Any:
    """A ``redis.asyncio.Redis`` for ``target`` (ACL user, password, TLS); connects on first use.

    hiredis parses the replies when it is installed (it is a dependency of storeml).
    """
    import redis.asyncio

    options = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0, "health_check_interval": 30}
    options.update(overrides)
    return redis.asyncio.Redis.from_url(target.url, **target.client_options(**options))


class ProfileReader:
    """Typed profile lookups; ``client`` is a ``redis.asyncio.Redis`` (bytes replies)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def get(self, kind: str, store: str, entity_id: str) -> dict[str, Any] | None:
        """The profile record (``written_at`` included), or None when there is none."""
        return (await self.get_many(kind, store, [entity_id]))[0]

    async def get_many(
        self, kind: str, store: str, ids: Sequence[str]
    ) -> list[dict[str, Any] | None]:
        """The records of ``ids`` in request order (None where missing), in one pipeline."""
        import redis

        keys = [profile_key(self.prefix, kind, store, entity) for entity in ids]
        try:
            if len(keys) == 1:
                raws = [await self.client.hgetall(keys[0])]
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hgetall(key)
                    raws = await pipe.execute()
        except redis.RedisError as exc:
            raise ConnectorError(
                f"Redis read of {len(keys)} {kind} profile(s) failed: {exc}"
            ) from exc
        out: list[dict[str, Any] | None] = []
        for raw in raws:
            if not raw:
                out.append(None)
                continue
            record, written_at = from_redis(kind, raw)
            record["written_at"] = written_at
            out.append(record)
        return out

    async def ping(self) -> None:
        """Raise :class:`ConnectorError` unless Redis answers."""
        import redis

        try:
            await self.client.ping()
        except redis.RedisError as exc:
            raise ConnectorError(f"Redis does not answer: {exc}") from exc
