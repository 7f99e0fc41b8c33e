"""API keys of the serving API, kept in Redis as hashes of the keys (never the keys themselves).

A key reads ``sml_<key id>_<secret>``: 12 hex characters that name it (shown by ``storeml keys
list`` and in logs) and 32 random bytes, url-safe base64. Redis keeps one hash,
``<prefix>:apikeys``, whose field is the key id and whose value is JSON::

    {"sha256": "<hex of sha256(key)>", "store": "<store id>" | "*", "scopes": ["read", ...],
     "created": "<ISO 8601>", "revoked": null | "<ISO 8601>", "label": null | "<text>"}

``store`` ``"*"`` is an admin key (every store). The server compares digests in constant time
(``hmac.compare_digest``). A plain sha256 suffices because a key carries 256 random bits: there is
nothing to guess a dictionary from, unlike a password.

:class:`KeyStore` manages keys with a synchronous client (the ``storeml keys`` commands, which need
write access to this one Redis key); :class:`KeyLookup` checks presented keys with the server's
async client and read access only, caching each answer for ``cache_seconds``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storeml.errors import ConfigError, ConnectorError

__all__ = ["SCOPES", "ADMIN", "ApiKey", "KeyStore", "KeyLookup", "key_id_of", "keys_hash"]

#: What a key may be allowed to do: lookups, real-time predict, segment pages and exports.
SCOPES = ("read", "predict", "segments")
#: The ``store`` of an admin key.
ADMIN = "*"

_KEY = re.compile(r"^sml_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    """A stored key's record (never the key)."""

    key_id: str
    sha256: str
    store: str
    scopes: frozenset[str]
    created: str
    revoked: str | None = None
    label: str | None = None

    @property
    def admin(self) -> bool:
        return self.store == ADMIN

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "store": self.store,
            "scopes": sorted(self.scopes),
            "created": self.created,
            "revoked": self.revoked,
            "label": self.label,
        }


def keys_hash(prefix: str) -> str:
    """The Redis hash holding the keys under ``prefix``."""
    return f"{prefix}:apikeys"


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse(key_id: str, raw: bytes | str) -> ApiKey:
    data = json.loads(raw)
    return ApiKey(
        key_id=key_id,
        sha256=str(data["sha256"]),
        store=str(data["store"]),
        scopes=frozenset(data.get("scopes", ())),
        created=str(data.get("created", "")),
        revoked=data.get("revoked"),
        label=data.get("label"),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyStore:
    """Create, list and revoke keys (synchronous: the CLI)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.hash = keys_hash(prefix)

    def create(
        self, store: str, scopes: tuple[str, ...] | list[str], label: str | None = None
    ) -> tuple[str, ApiKey]:
        """A new key and its record; the key is returned once and stored only as a digest."""
        from storeml.schemas.rules import id_problem

        bad = sorted(set(scopes) - set(SCOPES))
        if bad or not scopes:
            raise ConfigError(
                f"scope(s) {', '.join(bad) or '(none)'} unknown; choose from {', '.join(SCOPES)}"
            )
        if store != ADMIN and (problem := id_problem("store", store, store=True)):
            raise ConfigError(problem)
        key_id = secrets.token_hex(6)
        key = f"sml_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, _digest(key), store, frozenset(scopes), _now(), None, label)
        body = {k: v for k, v in record.as_dict().items() if k != "key_id"}
        body["sha256"] = record.sha256
        self._call(lambda: self.client.hset(self.hash, key_id, json.dumps(body, sort_keys=True)))
        return key, record

    def list(self) -> list[ApiKey]:
        """Every key's record, oldest first."""
        raw = self._call(lambda: self.client.hgetall(self.hash))
        records = [_parse(k.decode() if isinstance(k, bytes) else k, v) for k, v in raw.items()]
        return sorted(records, key=lambda r: (r.created, r.key_id))

    def revoke(self, key_id: str) -> ApiKey:
        """Mark ``key_id`` revoked (kept for the record); raises when there is no such key."""
        raw = self._call(lambda: self.client.hget(self.hash, key_id))
        if raw is None:
            raise ConfigError(f"no API key with id {key_id!r}; see `storeml keys list`")
        data = json.loads(raw)
        if not data.get("revoked"):
            data["revoked"] = _now()
            self._call(
                lambda: self.client.hset(self.hash, key_id, json.dumps(data, sort_keys=True))
            )
        return _parse(key_id, json.dumps(data))

    def _call(self, run: Any) -> Any:
        import redis

        try:
            return run()
        except redis.RedisError as exc:
            raise ConnectorError(
                f"Redis access to the API keys ({self.hash}) failed: {exc}"
            ) from exc


class KeyLookup:
    """Checks presented keys against the store (async, read-only), caching each answer."""

    def __init__(self, client: Any, prefix: str, cache_seconds: float = 2.0) -> None:
        self.client = client
        self.hash = keys_hash(prefix)
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def check(self, key: str) -> ApiKey | None:
        """The record of a valid, unrevoked ``key``; None for any other string."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        record = await self._record(key_id)
        if record is None or record.revoked:
            return None
        if not hmac.compare_digest(record.sha256, _digest(key)):
            return None
        return record

    async def _record(self, key_id: str) -> ApiKey | None:
        import redis

        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            raw = await self.client.hget(self.hash, key_id)
        except redis.RedisError as exc:
            raise ConnectorError(f"Redis read of the API keys failed: {exc}") from exc
        record = _parse(key_id, raw) if raw is not None else None
        if len(self._cache) > 100_000:  # unknown ids are cached too; keep it bounded
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record
