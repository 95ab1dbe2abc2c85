-- Token buckets, checked and charged atomically: each decision takes one
-- token from every one of its buckets, or from none when any is short.
-- One call decides a batch of decisions, in order, as if each were a call
-- of its own: a batch of concurrent requests costs Redis one script call
-- and one read and one write of each bucket, not one of each per request.
--
-- KEYS = every decision's buckets, decision after decision (a bucket may
-- come again in a later decision).
-- ARGV[1] = now in ms ("" to use the server's clock, which every Caddy
-- instance then shares); then per decision: its number of buckets n, then
-- n times: capacity, refill rate in tokens per second.
-- Returns, per decision: allowed (1/0), then per bucket: remaining tokens
-- (floored), ms until the bucket is full, ms until a token is available.
--
-- A bucket is one string of 16 bytes, its tokens and the ms of its last
-- charge as two little-endian doubles, so that all buckets are read by one
-- MGET and each written by one SET with its expiry. The keys say so
-- (limiter.go's bucketKind), so an older version never reads them; a key
-- holding anything else all the same reads as a full bucket and is
-- replaced.
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Each bucket once, however many decisions name it.
local index, distinct = {}, {}
for i = 1, #KEYS do
  local k = KEYS[i]
  if not index[k] then
    distinct[#distinct + 1] = k
    index[k] = #distinct
  end
end
local states = redis.call('MGET', unpack(distinct))
local tokens, at, caps, rates = {}, {}, {}, {}
for j = 1, #distinct do
  local s = states[j]
  if s and #s == 16 then
    local t, ts = struct.unpack('<dd', s)
    if t == t and ts == ts then -- not NaN: a bucket this script wrote
      tokens[j], at[j] = t, ts
    end
  end
end

local out, a, k = {}, 2, 0
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  a = a + 1
  local allowed = 1
  local js, ts, dcaps, drates = {}, {}, {}, {}
  for i = 1, n do
    local j = index[KEYS[k + i]]
    local cap, rate = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    -- The shape the bucket is written with is its last decision's.
    caps[j], rates[j], dcaps[i], drates[i] = cap, rate, cap, rate
    local t, last = tokens[j], at[j]
    if t == nil then
      t, last = cap, now
    end
    if now > last then
      t = t + (now - last) * rate / 1000
    end
    -- Never above capacity, even when the capacity was lowered since.
    t = math.min(cap, t)
    js[i], ts[i] = j, t
    if t < 1 then
      allowed = 0
    end
  end
  k = k + n
  out[#out + 1] = allowed
  for i = 1, n do
    local j, t = js[i], ts[i]
    if allowed == 1 then
      t = t - 1
    end
    tokens[j], at[j] = t, now
    local rate = drates[i]
    out[#out + 1] = math.floor(t)
    out[#out + 1] = math.ceil((dcaps[i] - t) * 1000 / rate)
    if t >= 1 then
      out[#out + 1] = 0
    else
      out[#out + 1] = math.ceil((1 - t) * 1000 / rate)
    end
  end
end

for j = 1, #distinct do
  if caps[j] ~= nil then -- charged or refused by a decision above
    -- A full bucket is the same as no bucket: let Redis forget it then.
    local full_ms = math.ceil((caps[j] - tokens[j]) * 1000 / rates[j])
    redis.call('SET', distinct[j], struct.pack('<dd', tokens[j], now), 'PX', full_ms + 1000)
  end
end
return out
