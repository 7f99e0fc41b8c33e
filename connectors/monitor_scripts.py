"""The Lua scripts behind :class:`~storeml.connectors.monitor_store.MonitorStore`'s writes.

Each runs atomically in Redis, so a series' hash, its retention index and the ``latest`` field
never disagree, and a replayed (older) window never replaces a newer one. A ``latest`` value is
``"<window_start>|<JSON>"``; the scripts compare the number before the ``|``.
"""

from __future__ import annotations

__all__ = ["SERIES", "LATEST", "ALERT"]

# KEYS: data hash, index zset, latest hash; ARGV: window, JSON, keep, latest field
SERIES = """
local ws = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ws, ARGV[1])
local keep = tonumber(ARGV[3])
local n = redis.call('ZCARD', KEYS[2])
if n > keep then
  local old = redis.call('ZRANGE', KEYS[2], 0, n - keep - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
end
local cur = redis.call('HGET', KEYS[3], ARGV[4])
if cur then
  local seen = tonumber(string.match(cur, '^(%-?%d+)|'))
  if seen and seen > ws then return 0 end
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1] .. '|' .. ARGV[2])
return 1
"""

# KEYS: hash; ARGV: field, window, JSON
LATEST = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local seen = tonumber(string.match(cur, '^(%-?%d+)|'))
  if seen and seen > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1
"""

# KEYS: alerts hash, log zset, open hash, state hash
# ARGV: alert_id, JSON, score, keep, series, window_start, status
ALERT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
local keep = tonumber(ARGV[4])
local n = redis.call('ZCARD', KEYS[2])
if n > keep then
  local old = redis.call('ZRANGE', KEYS[2], 0, n - keep - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
end
local ws = tonumber(ARGV[6])
local cur = redis.call('HGET', KEYS[4], ARGV[5])
if cur then
  local seen, status = string.match(cur, '^(%-?%d+)|(%a+)$')
  seen = tonumber(seen)
  if seen and seen > ws then return 0 end
  if seen == ws and status == 'resolved' and ARGV[7] ~= 'resolved' then return 0 end
end
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6] .. '|' .. ARGV[7])
if ARGV[7] == 'firing' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[2])
else
  redis.call('HDEL', KEYS[3], ARGV[5])
end
return 1
"""
