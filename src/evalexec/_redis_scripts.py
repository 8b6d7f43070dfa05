"""The Lua scripts behind `evalexec.limits.RedisLimiter`.

Each script runs atomically on the Redis server and reads the time from the server
itself (``redis.call('TIME')``): no client ever sends a timestamp, so hosts whose
clocks disagree still share one schedule. Times are microseconds since 2025-01-01
(rebased, so that a double keeps sub-microsecond precision); durations sent to the
server are relative.

The algorithm is the one `LocalLimiter` runs in process (see `limits._Schedule`):
GCRA pacing per budget with a burst allowance, plus a log of the starts of the last
period, so that no window of one period ever holds more than the budget. Log members
are ``"<permit id>:<tokens>"`` scored by their start time; ``sum`` holds the tokens of
the whole log. Leases (the in-flight cap) are permit ids scored by their expiry.

Keys (all under one hash tag, so a Redis Cluster keeps them in one slot):
``pause``, ``stop``, ``lease``, ``log``, ``sum``, ``rtat`` (requests), ``ttat`` (tokens).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "EPOCH", "HEARTBEAT", "KEY_NAMES", "PAUSE", "RELEASE", "STOP"]

EPOCH = 1_735_689_600
"""2025-01-01T00:00:00Z in Unix seconds: the origin of the scripts' time."""

KEY_NAMES = ("pause", "stop", "lease", "log", "sum", "rtat", "ttat")

_NOW = f"""
local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - {EPOCH}) * 1000000 + tonumber(clock[2])
"""

_COST = """
local function cost_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end
"""

ACQUIRE = (
    _NOW
    + _COST
    + """
-- KEYS: pause stop lease log sum rtat ttat
-- ARGV: id tokens rpm tpm period_us burst_us max_inflight lease_us max_wait_us poll_us
local id = ARGV[1]
local cost = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local period = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local max_inflight = tonumber(ARGV[7])
local lease = tonumber(ARGV[8])
local max_wait = tonumber(ARGV[9])
local poll = tonumber(ARGV[10])

local reason = redis.call('GET', KEYS[2])
if reason then return {'stop', reason} end
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return {'pause', tostring(paused * 1000)} end

if max_inflight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_inflight then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local wait = tonumber(first[2]) - now
    if wait > poll then wait = poll end
    return {'busy', tostring(wait)}
  end
end

-- GCRA: the earliest start each budget's pace allows.
local start = now
local rtat = 0
local ttat = 0
if rpm > 0 then
  local step = period / rpm
  rtat = tonumber(redis.call('GET', KEYS[6]) or '0')
  start = math.max(start, rtat - math.max(0, burst - step))
end
if tpm > 0 and cost > 0 then
  ttat = tonumber(redis.call('GET', KEYS[7]) or '0')
  start = math.max(start, ttat - math.max(0, burst - cost * period / tpm))
end

-- The log: no window of one period may hold more than the budget.
local logged = rpm > 0 or tpm > 0
local total = 0
local keep = math.ceil((max_wait + period) / 1000) + 1000
if logged then
  total = tonumber(redis.call('GET', KEYS[5]) or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - period)
  if #old > 0 then
    for _, member in ipairs(old) do total = total - cost_of(member) end
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - period)
  end
  local count = redis.call('ZCARD', KEYS[4])
  if count == 0 then total = 0 end
  if rpm > 0 and count >= rpm then
    local entry = redis.call('ZRANGE', KEYS[4], count - rpm, count - rpm, 'WITHSCORES')
    start = math.max(start, tonumber(entry[2]) + period)
  end
  if tpm > 0 and total + cost > tpm then
    local need = total + cost - tpm
    local offset = 0
    while need > 0 do
      local chunk = redis.call('ZRANGE', KEYS[4], offset, offset + 63, 'WITHSCORES')
      if #chunk == 0 then break end
      for j = 1, #chunk, 2 do
        need = need - cost_of(chunk[j])
        if need <= 0 then
          start = math.max(start, tonumber(chunk[j + 1]) + period)
          break
        end
      end
      offset = offset + 64
    end
  end
  if #old > 0 then redis.call('SET', KEYS[5], total, 'PX', keep) end
end

if start - now > max_wait then return {'later', tostring(start - now - max_wait)} end

-- Commit: this permit starts at `start` (now, or a reservation up to max_wait ahead).
if rpm > 0 then
  local tat = math.max(rtat, start) + period / rpm
  redis.call('SET', KEYS[6], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
if tpm > 0 and cost > 0 then
  local tat = math.max(ttat, start) + cost * period / tpm
  redis.call('SET', KEYS[7], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
if logged then
  redis.call('ZADD', KEYS[4], start, id .. ':' .. cost)
  redis.call('PEXPIRE', KEYS[4], keep)
  redis.call('SET', KEYS[5], total + cost, 'PX', keep)
end
if max_inflight > 0 then
  redis.call('ZADD', KEYS[3], start + lease, id)
  redis.call('PEXPIRE', KEYS[3], math.ceil((max_wait + lease) / 1000) + 1000)
end
return {'ok', tostring(start - now), string.format('%.3f', start)}
"""
)

RELEASE = (
    _NOW
    + _COST
    + """
-- KEYS: lease log sum rtat ttat
-- ARGV: id estimate used(-1: as estimated) never_started(0/1) rpm tpm period_us
local id = ARGV[1]
local estimate = tonumber(ARGV[2])
local used = tonumber(ARGV[3])
local never_started = ARGV[4] == '1'
local rpm = tonumber(ARGV[5])
local tpm = tonumber(ARGV[6])
local period = tonumber(ARGV[7])

redis.call('ZREM', KEYS[1], id)
if never_started then
  used = 0
elseif used < 0 or used == estimate then
  return 0
end

local member = id .. ':' .. estimate
local start = redis.call('ZSCORE', KEYS[2], member)
if start then
  redis.call('ZREM', KEYS[2], member)
  if not never_started then redis.call('ZADD', KEYS[2], start, id .. ':' .. used) end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('INCRBY', KEYS[3], used - estimate) end
end

local function move(key, by)
  local raw = redis.call('GET', key)
  local tat = raw and tonumber(raw)
  if by < 0 then
    if not tat then return end
    tat = math.max(tat + by, now)
  else
    tat = math.max(tat or now, now) + by
  end
  redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
if never_started and rpm > 0 then move(KEYS[4], -period / rpm) end
if tpm > 0 and used ~= estimate then move(KEYS[5], (used - estimate) * period / tpm) end
return 1
"""
)

HEARTBEAT = (
    _NOW
    + """
-- KEYS: lease
-- ARGV: lease_us keep_ms id...
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return renewed
"""
)

PAUSE = """
-- KEYS: pause
-- ARGV: ms
-- A pause only ever grows: a shorter hint leaves a longer pause alone.
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return ms
end
return left
"""

STOP = """
-- KEYS: stop
-- ARGV: reason ms
-- The first reason stays: later reports do not overwrite it.
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2]))
return redis.call('GET', KEYS[1])
"""
