"""The two Lua scripts that make limits atomic across replicas: one call to admit, one to settle.

A script runs alone on the Redis server, so "check every limit, then record into every one" cannot
interleave with another replica's admission: N replicas overspend a budget by at most what requests
already in flight cost above their estimates. Time comes in as an argument (`now`, milliseconds), which
keeps the scripts deterministic for replication and lets tests move the clock.

Budget (per tenant or team, per UTC day or month), two keys:
  hash  B      spent, reserved (micro-dollars), `r:<admission id>` -> that reservation, soft (flag)
  zset  B:res  admission id scored by its expiry; expired ones are purged (their amount given back)
               on every admission, so a replica that crashed mid-request leaks its hold only for a while.
Requests per minute, one key: a zset of admission ids scored by admission time (an exact sliding log).
Tokens per minute, one key: a hash of one-second buckets (epoch second -> tokens); the window is the
last 60 buckets, so a use leaves it between 59 and 60 seconds after it was made.
"""

from __future__ import annotations

# KEYS: per budget its hash and its zset (2 * nb), then one key per rate limit (nr).
# ARGV: now_ms, admission id, cost, tokens, reservation expiry ms, nb, nr,
#       per budget: limit, ttl_s; per rate limit: kind ('r' requests, 't' tokens), limit.
# Returns {failed, retry_ms, values...}: failed is 0 (admitted) or the 1-based index of the first check
# that refused (budgets, then rates); values are per budget spent, reserved and per rate used, reset_ms.
ADMIT = """
local now = tonumber(ARGV[1])
local id = ARGV[2]
local cost = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local expiry = tonumber(ARGV[5])
local nb = tonumber(ARGV[6])
local nr = tonumber(ARGV[7])
local window = 60000
local now_s = math.floor(now / 1000)
local out = {}
local failed, retry = 0, 0

for i = 1, nb do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local limit = tonumber(ARGV[7 + 2 * i - 1])
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #gone > 0 then
    local freed = 0
    for _, rid in ipairs(gone) do
      local field = 'r:' .. rid
      freed = freed + (tonumber(redis.call('HGET', h, field)) or 0)
      redis.call('HDEL', h, field)
    end
    if freed > 0 then redis.call('HINCRBY', h, 'reserved', -freed) end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  end
  local row = redis.call('HMGET', h, 'spent', 'reserved')
  local spent, reserved = tonumber(row[1]) or 0, tonumber(row[2]) or 0
  if failed == 0 and spent + reserved + cost > limit then failed = i end
  out[#out + 1] = spent
  out[#out + 1] = reserved
end

local base = 7 + 2 * nb
local live = {}
for j = 1, nr do
  local key = KEYS[2 * nb + j]
  local kind = ARGV[base + 2 * j - 1]
  local limit = tonumber(ARGV[base + 2 * j])
  local used, reset = 0, 0
  if kind == 'r' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    used = redis.call('ZCARD', key)
    if used > 0 then
      reset = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + window - now
    end
    if failed == 0 and used + 1 > limit then
      failed = nb + j
      local rank = used - limit
      retry = tonumber(redis.call('ZRANGE', key, rank, rank, 'WITHSCORES')[2]) + window - now
    end
  else
    local flat = redis.call('HGETALL', key)
    local buckets = {}
    for k = 1, #flat, 2 do
      local second, count = tonumber(flat[k]), tonumber(flat[k + 1])
      if second < now_s - 59 then
        redis.call('HDEL', key, flat[k])
      else
        used = used + count
        buckets[#buckets + 1] = {second, count}
      end
    end
    table.sort(buckets, function(a, b) return a[1] < b[1] end)
    live[j] = buckets
    if #buckets > 0 then reset = (buckets[1][1] + 60) * 1000 - now end
    if failed == 0 and used + tokens > limit then
      failed = nb + j
      retry = window
      if tokens <= limit then
        local need = used + tokens - limit
        for _, b in ipairs(buckets) do
          need = need - b[2]
          if need <= 0 then
            retry = (b[1] + 60) * 1000 - now
            break
          end
        end
      end
    end
  end
  out[#out + 1] = used
  out[#out + 1] = reset
end

if failed > 0 then
  return {failed, retry, unpack(out)}
end

for i = 1, nb do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local ttl = tonumber(ARGV[7 + 2 * i])
  if cost > 0 then
    out[2 * i] = redis.call('HINCRBY', h, 'reserved', cost)
    redis.call('HSET', h, 'r:' .. id, cost)
    redis.call('ZADD', z, expiry, id)
  end
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
end
for j = 1, nr do
  local key = KEYS[2 * nb + j]
  local slot = 2 * nb + 2 * j - 1
  if ARGV[base + 2 * j - 1] == 'r' then
    redis.call('ZADD', key, now, id)
    redis.call('PEXPIRE', key, window + 1000)
    out[slot] = out[slot] + 1
    out[slot + 1] = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + window - now
  else
    if tokens > 0 then
      redis.call('HINCRBY', key, now_s, tokens)
      redis.call('PEXPIRE', key, window + 2000)
      out[slot] = out[slot] + tokens
      local oldest = now_s
      if #live[j] > 0 then oldest = live[j][1][1] end
      out[slot + 1] = (oldest + 60) * 1000 - now
    end
  end
end
return {0, 0, unpack(out)}
"""

# KEYS: per budget its hash and its zset (2 * nb), then one key per tokens-per-minute limit (nt).
# ARGV: admission id, actual cost, token bucket (epoch second), token delta, create ('1': add the bucket
#       if missing), nb, nt, per budget: soft threshold, ttl_s.
# Returns per budget: spent after the charge, 1 if this charge crossed its soft threshold first.
SETTLE = """
local id = ARGV[1]
local actual = tonumber(ARGV[2])
local bucket = ARGV[3]
local delta = tonumber(ARGV[4])
local create = ARGV[5] == '1'
local nb = tonumber(ARGV[6])
local nt = tonumber(ARGV[7])
local out = {}

for i = 1, nb do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local soft = tonumber(ARGV[7 + 2 * i - 1])
  local ttl = tonumber(ARGV[7 + 2 * i])
  local field = 'r:' .. id
  local held = tonumber(redis.call('HGET', h, field))
  if held then
    redis.call('HDEL', h, field)
    redis.call('HINCRBY', h, 'reserved', -held)
    redis.call('ZREM', z, id)
  end
  local spent = redis.call('HINCRBY', h, 'spent', actual)
  local crossed = 0
  if spent > 0 and spent >= soft and redis.call('HSETNX', h, 'soft', 1) == 1 then crossed = 1 end
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
  out[#out + 1] = spent
  out[#out + 1] = crossed
end

for j = 1, nt do
  local key = KEYS[2 * nb + j]
  if delta ~= 0 and (create or redis.call('HEXISTS', key, bucket) == 1) then
    if redis.call('HINCRBY', key, bucket, delta) < 0 then redis.call('HSET', key, bucket, 0) end
    redis.call('PEXPIRE', key, 62000)
  end
end
return out
"""
