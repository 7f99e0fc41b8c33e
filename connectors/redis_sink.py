"""Redis feature store: one hash per (store, entity), written in pipelined, replay-safe batches.

Key layout (``prefix`` defaults to ``storeml``)::

    <prefix>:{<store_id>}:customer:<customer_id>   -> hash of CustomerProfile fields
    <prefix>:{<store_id>}:product:<product_id>     -> hash of ProductProfile fields
    <prefix>:{<store_id>}:index:customer:propensity              -> sorted set (score index)
    <prefix>:{<store_id>}:index:product:category:<category>      -> sorted set (score index)

Every key of a store carries the ``{store_id}`` hash tag, so a store's hashes and indexes live in
one Redis Cluster slot and the guard below (one Lua call per profile) may touch them together.

Scalars are stored as their string form, lists and records (top_categories, predicted_categories,
model, source) as JSON; null fields are absent. ``written_at`` (epoch milliseconds, the writer's
wall clock) says when the hash was last written; it is no profile field. Every write goes through
a Lua guard that replaces the hash only when the incoming ``profile_version`` is not older than
the stored one, so a replayed or late write can never overwrite a newer profile, and a replay of
the same batch rewrites identical values (``written_at`` aside). A profile published unscored
because its model failed (``model.scope`` "unavailable") keeps the stored score and the ``model``
that produced it (:data:`KEEP_WHEN_UNAVAILABLE`).

**Score index** (read by ``connectors/segment_reader.py``): a sorted set per store and score,
member the entity id, score the model's output: customers' ``propensity``; products' predicted
categories (one set per category, score = its probability, so a product is in up to 5 sets). The
guard maintains it in the same Lua call, only when it accepts a write, and derives it from the
hash: when the score field's text changed, the member leaves the sets the old text put it in and
joins those of the new text. So the index equals what the hashes say: a kept score (scope
"unavailable") keeps its entries, a null propensity or an empty ``predicted_categories`` removes
them, a refused (older) write changes nothing, and the guarded delete (idle expiry) removes the
entity from its sets. No hidden field is needed; ``written_at`` doubles as the mark that a hash's
entries are in the index (a hash written before the index existed has none, and is indexed on its
next accepted write). An index set deleted by hand is not rebuilt by writes that leave the score
unchanged. The old category sets are learned from the stored hash, so the script touches keys it
does not declare in ``KEYS``; Redis (7.0, in cluster mode too) allows that for keys in the
declared key's slot, which the shared hash tag guarantees. A NaN score is not indexed (Redis
refuses it), and scores are written with 17 significant digits, so the index holds exactly the
doubles the hash holds.

Writes ride out a Redis outage: a connection error or timeout is retried with exponential backoff
(0.2 s doubling to 5 s) for up to ``retry_seconds``; the guard makes the repeated part of a
pipeline harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from storeml.connectors.base import Sink
from storeml.connectors.redis_client import RedisTarget, redis_error
from storeml.errors import ConnectorError

__all__ = [
    "RedisProfileSink",
    "FeatureStore",
    "KEEP_WHEN_UNAVAILABLE",
    "SCORE_INDEX",
    "profile_key",
    "profile_pattern",
    "index_key",
    "is_index_key",
    "encode_fields",
    "decode_fields",
]

log = logging.getLogger("storeml.redis")

# The score index, shared by both guards. ``mode`` is "" (kind not indexed), "score" (the score
# field's text is one number; ``index`` is the sorted set) or "ranked" (a JSON list of
# {category, probability}; ``index`` is the key prefix of the per-category sets). The entries
# are a table index key -> score text; ``reindex`` moves ``member`` from one set of entries to
# the other.
_INDEX_LUA = """
local function index_entries(mode, value, index)
  local out = {}
  if mode == '' or value == '' then return out end
  if mode == 'score' then
    local n = tonumber(value)
    if n and n == n then out[index] = value end
    return out
  end
  local ok, items = pcall(cjson.decode, value)
  if not ok or type(items) ~= 'table' then return out end
  for _, item in ipairs(items) do
    if type(item) == 'table' then
      local c, p = item['category'], item['probability']
      if type(c) == 'string' and type(p) == 'number' and p == p then
        out[index .. c] = string.format('%.17g', p)
      end
    end
  end
  return out
end
local function reindex(before, after, member)
  for key, _ in pairs(before) do
    if not after[key] then redis.call('ZREM', key, member) end
  end
  for key, score in pairs(after) do
    redis.call('ZADD', key, score, member)
  end
end
"""

# ARGV: profile_version, index mode, score field, index key (prefix), member (the entity id),
# K, K field names to keep when the hash has them, then field/value pairs. The index is touched
# only when the score field's text changed, or when the old hash has no ``written_at``: it was
# written before the index existed, so its entries are not there yet.
_GUARDED_REPLACE = (
    _INDEX_LUA
    + """
local mode, field, index = ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HMGET', KEYS[1], 'profile_version', 'written_at', field)
if current[1] and tonumber(current[1]) > tonumber(ARGV[1]) then
  return 0
end
local keep = tonumber(ARGV[6])
local kept = {}
for i = 7, 6 + keep do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    kept[#kept + 1] = ARGV[i]
    kept[#kept + 1] = value
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7 + keep))
if #kept > 0 then
  redis.call('HSET', KEYS[1], unpack(kept))
end
if mode ~= '' then
  local old = current[3] or ''
  local new = redis.call('HGET', KEYS[1], field) or ''
  if not current[2] then
    reindex({}, index_entries(mode, new, index), ARGV[5])
  elseif old ~= new then
    reindex(index_entries(mode, old, index), index_entries(mode, new, index), ARGV[5])
  end
end
return 1
"""
)

#: Fields an unscored write keeps from the stored hash (scope "unavailable": the model that
#: should have scored the profile failed), so that a failure never erases a score.
KEEP_WHEN_UNAVAILABLE = {
    "customer": ("propensity", "model"),
    "product": ("predicted_categories", "model"),
}

_RAISE_GENERATION = """
local current = redis.call('HGET', KEYS[1], 'generation')
if not current or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'generation', ARGV[1])
end
return 1
"""

# ARGV: profile_version, index mode, score field, index key (prefix), member.
_GUARDED_DELETE = (
    _INDEX_LUA
    + """
local current = redis.call('HGET', KEYS[1], 'profile_version')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
if ARGV[2] ~= '' then
  local old = redis.call('HGET', KEYS[1], ARGV[3]) or ''
  reindex(index_entries(ARGV[2], old, ARGV[4]), {}, ARGV[5])
end
return redis.call('DEL', KEYS[1])
"""
)

#: The score index of each kind: ``(segment field, hash field holding the score, mode)``.
#: Customers: one set of propensities; products: one set per predicted category.
SCORE_INDEX = {
    "customer": ("propensity", "propensity", "score"),
    "product": ("category", "predicted_categories", "ranked"),
}

_JSON_FIELDS = {"top_categories", "predicted_categories", "model", "source", "shadow"}


#: One encoder for every JSON field (``json.dumps`` with options builds a new one per call).
_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def profile_key(prefix: str, kind: str, store_id: str, entity_id: str) -> str:
    """The Redis key of one profile (``kind`` is "customer" or "product")."""
    return f"{prefix}:{{{store_id}}}:{kind}:{entity_id}"


def profile_pattern(prefix: str, kind: str, store_id: str | None = None) -> str:
    """A SCAN pattern of the profile hashes of ``kind`` (one store, or all), never an index."""
    # ids and store ids cannot hold "}" (docs/ids.md), so "}:<kind>:" only follows the tag
    return f"{prefix}:{{{store_id or '*'}}}:{kind}:*"


def index_key(
    prefix: str, kind: str, store_id: str, field: str, category: str | None = None
) -> str:
    """The sorted set of one score index: ``kind`` "customer" with ``field`` "propensity", or
    "product" with ``field`` "category" and a ``category``; anything else is a ``ValueError``."""
    if (kind, field) == ("customer", "propensity") and category is None:
        return f"{prefix}:{{{store_id}}}:index:customer:propensity"
    if (kind, field) == ("product", "category") and category is not None:
        return f"{prefix}:{{{store_id}}}:index:product:category:{category}"
    raise ValueError(f"no score index for kind {kind!r}, field {field!r}, category {category!r}")


def is_index_key(key: str | bytes, prefix: str) -> bool:
    """Whether ``key`` (under ``prefix``) is a score index rather than a profile hash."""
    text = key.decode() if isinstance(key, bytes) else key
    head, sep, rest = text[len(prefix) :].partition("}:")
    return bool(sep) and head.startswith(":{") and rest.startswith("index:")


def _index_args(prefix: str, kind: str, store_id: str) -> tuple[str, str, str]:
    """``(mode, score field, index key or key prefix)`` of the guard for one store's ``kind``."""
    spec = SCORE_INDEX.get(kind)
    if spec is None:
        return "", "", ""
    _, field, mode = spec
    tail = "customer:propensity" if mode == "score" else "product:category:"
    return mode, field, f"{prefix}:{{{store_id}}}:index:{tail}"


def encode_fields(record: Mapping[str, Any]) -> list[str]:
    """Flatten a profile record into HSET arguments (field, value, ...); nulls are left out."""
    args: list[str] = []
    for name, value in record.items():
        if value is None:
            continue
        if name in _JSON_FIELDS:
            text = _json(value)
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        args.extend((name, text))
    return args


def decode_fields(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """Inverse of :func:`encode_fields` for the fields whose type is not plain text."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        text = value.decode() if isinstance(value, bytes) else value
        if name in _JSON_FIELDS:
            out[name] = json.loads(text)
        else:
            out[name] = text
    return out


def _kept(record: Mapping[str, Any], keep: tuple[str, ...]) -> tuple[str, ...]:
    """The fields this write keeps from the stored hash: the score, when the model failed."""
    model = record.get("model")
    if keep and isinstance(model, Mapping) and model.get("scope") == "unavailable":
        return keep
    return ()


#: One guarded write: key, profile_version, (mode, score field, index, member), kept fields,
#: field/value pairs.
_Call = tuple[str, Any, tuple[str, ...], tuple[str, ...], list[str]]


class RedisProfileSink(Sink):
    """Writes profiles to Redis through the version guard, one pipeline per call."""

    def __init__(
        self, target: RedisTarget | str, prefix: str, retry_seconds: float = 300.0
    ) -> None:
        """``target``: the settings' ``redis`` (ACL user, password, TLS) or a plain URL."""
        self.target = target if isinstance(target, RedisTarget) else RedisTarget.parse(target)
        self.url = self.target.url  # never holds a password
        self.prefix = prefix
        self.retry_seconds = retry_seconds

    def setup(self) -> None:
        import redis

        try:
            self._client = self.target.connect(socket_timeout=30)
            # loaded on first use (NoScriptError), so that a worker starting while Redis is
            # down waits for it like any write does
            self._sha = hashlib.sha1(_GUARDED_REPLACE.encode()).hexdigest()
        except redis.RedisError as exc:
            raise redis_error("reach", self.target, exc) from exc

    def write(
        self, kind: str, records: Iterable[Mapping[str, Any]], id_field: str
    ) -> tuple[int, int]:
        """Write profile records; returns (written, skipped because a newer one was stored)."""

        self.ensure_setup()
        keep = KEEP_WHEN_UNAVAILABLE.get(kind, ())
        written_at = ("written_at", str(time.time_ns() // 1_000_000))
        indexes: dict[str, tuple[str, str, str]] = {}
        calls: list[_Call] = []
        for record in records:
            store, entity = record["store_id"], record[id_field]
            index = indexes.get(store)
            if index is None:
                index = indexes[store] = _index_args(self.prefix, kind, store)
            fields = encode_fields(record)
            fields.extend(written_at)
            calls.append(
                (
                    profile_key(self.prefix, kind, store, entity),
                    record["profile_version"],
                    (*index, entity),
                    _kept(record, keep),
                    fields,
                )
            )
        if not calls:
            return 0, 0
        results = self._with_retry(
            lambda: self._execute(calls), f"Redis write of {len(calls)} {kind} profiles"
        )
        written = sum(1 for r in results if r == 1)
        return written, len(calls) - written

    def _with_retry(self, run: Any, what: str) -> Any:
        """``run()``, retried through connection errors and timeouts for ``retry_seconds``."""
        import redis

        deadline = time.monotonic() + self.retry_seconds
        pause = 0.2
        while True:
            try:
                try:
                    return run()
                except redis.exceptions.NoScriptError:
                    # Redis restarted or flushed its scripts: load the guard again and rerun
                    # (the guard makes the writes that did go through harmless to repeat)
                    self._sha = self._client.script_load(_GUARDED_REPLACE)
                    return run()
            except redis.exceptions.AuthenticationError as exc:
                # a ConnectionError to redis-py, but waiting does not fix a wrong password
                raise redis_error(f"write ({what}) to", self.target, exc) from exc
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    raise ConnectorError(
                        f"{what} failed: Redis unreachable for {self.retry_seconds:.0f}s: {exc}"
                    ) from exc
                log.warning("%s: %s; retrying in %.1fs", what, exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
            except redis.RedisError as exc:
                raise ConnectorError(f"{what} failed: {exc}") from exc

    def delete(self, kind: str, entities: Iterable[tuple[str, str, int]]) -> int:
        """Delete the profiles of ``(store_id, entity_id, profile_version)`` (idle expiry).

        Guarded like the writes: a profile newer than the given version stays. Returns how many
        were deleted.
        """

        self.ensure_setup()
        calls = [
            (
                profile_key(self.prefix, kind, store, entity),
                int(version),
                (*_index_args(self.prefix, kind, store), entity),
            )
            for store, entity, version in entities
        ]
        if not calls:
            return 0

        def run() -> int:
            pipe = self._client.pipeline(transaction=False)
            for key, version, index in calls:
                pipe.eval(_GUARDED_DELETE, 1, key, version, *index)
            return sum(int(r) for r in pipe.execute())

        return int(self._with_retry(run, f"Redis delete of {len(calls)} expired {kind} profiles"))

    def generation(self) -> int | None:
        """The highest profile generation recorded under this prefix, None when none is."""
        self.ensure_setup()
        value = self._with_retry(
            lambda: self._client.hget(self._meta_key, "generation"), "Redis read of the generation"
        )
        return None if value is None else int(value)

    def record_generation(self, generation: int) -> None:
        """Record ``generation`` as in use (the record only ever rises)."""
        self.ensure_setup()
        self._with_retry(
            lambda: self._client.eval(_RAISE_GENERATION, 1, self._meta_key, int(generation)),
            "Redis write of the generation",
        )

    @property
    def _meta_key(self) -> str:
        return f"{self.prefix}:meta"

    def _execute(self, calls: list[_Call]) -> list[Any]:
        """One pipeline of EVALSHA calls of the guard (cheaper per call than redis-py's Script)."""
        pipe = self._client.pipeline(transaction=False)
        command = pipe.execute_command
        for key, version, index, keep, fields in calls:
            command("EVALSHA", self._sha, 1, key, version, *index, len(keep), *keep, *fields)
        return pipe.execute()

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class FeatureStore:
    """Online lookups of profiles, for services and the CLI."""

    def __init__(self, target: RedisTarget | str, prefix: str) -> None:
        """``target``: the settings' ``redis`` (ACL user, password, TLS) or a plain URL."""
        self.target = target if isinstance(target, RedisTarget) else RedisTarget.parse(target)
        self.prefix = prefix
        self._client = self.target.connect()  # connects (and authenticates) on first use

    def get(self, kind: str, store_id: str, entity_id: str) -> dict[str, Any] | None:
        """The profile hash, decoded, or None when the entity has no profile yet."""
        import redis

        try:
            raw = self._client.hgetall(profile_key(self.prefix, kind, store_id, entity_id))
        except redis.RedisError as exc:
            raise redis_error("read a profile from", self.target, exc) from exc
        return decode_fields(raw) if raw else None

    def customer(self, store_id: str, customer_id: str) -> dict[str, Any] | None:
        return self.get("customer", store_id, customer_id)

    def product(self, store_id: str, product_id: str) -> dict[str, Any] | None:
        return self.get("product", store_id, product_id)

    def scan(self, kind: str, store_id: str | None = None, count: int = 1000) -> list[str]:
        """Keys of profiles of ``kind`` (optionally one store), for tools and tests; the score
        indexes are not profiles and are left out."""
        pattern = profile_pattern(self.prefix, kind, store_id)
        return [k.decode() for k in self._client.scan_iter(match=pattern, count=count)]

    def close(self) -> None:
        self._client.close()
