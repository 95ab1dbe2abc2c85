-- Token buckets, checked and charged atomically: a request takes `cost`
-- tokens from every bucket in KEYS, or from none when any is short.
--
-- ARGV[1] = cost, ARGV[2] = now in ms ("" to use the server's clock, which
-- every Caddy instance then shares), then per key: capacity, refill rate
-- in tokens per second.
-- Returns: allowed (1/0), then per key: remaining tokens (floored),
-- ms until the bucket is full, ms until `cost` tokens are available.
local cost = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local tokens = {}
local allowed = 1
for i = 1, #KEYS do
  local cap = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t = tonumber(state[1])
  local ts = tonumber(state[2])
  if t == nil or ts == nil then
    t = cap
    ts = now
  end
  if now > ts then
    t = math.min(cap, t + (now - ts) * rate / 1000)
  end
  tokens[i] = t
  if t < cost then
    allowed = 0
  end
end

local out = { allowed }
for i = 1, #KEYS do
  local cap = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  local t = tokens[i]
  if allowed == 1 then
    t = t - cost
  end
  redis.call('HSET', KEYS[i], 't', tostring(t), 'ts', tostring(now))
  -- A full bucket is the same as no bucket: let Redis forget it then.
  local full_ms = math.ceil((cap - t) * 1000 / rate)
  redis.call('PEXPIRE', KEYS[i], full_ms + 1000)
  out[#out + 1] = math.floor(t)
  out[#out + 1] = full_ms
  if t >= cost then
    out[#out + 1] = 0
  else
    out[#out + 1] = math.ceil((cost - t) * 1000 / rate)
  end
end
return out
