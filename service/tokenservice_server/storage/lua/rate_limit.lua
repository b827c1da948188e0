-- rate_limit.lua: admit one request against a client's bucket and further buckets (GCRA).
-- KEYS: [1] auth:client:{id}, [2] auth:rate_limit:{scope}:{id}, [3..n] auth:rate_limit:...
-- ARGV: [1] period of the limits in milliseconds, [2..n] requests per period of KEYS[2..n]
-- Returns: {allowed (1 or 0), microseconds until a retry can be allowed, refusing KEYS index}
--
-- KEYS[2] is the client's bucket; a 'rate_limit' field (requests per minute) in the
-- client record KEYS[1] replaces its default limit ARGV[2]. Further buckets (e.g. the
-- peer IP's) follow. A limit of 0 is unlimited. The refusing index is 0 when allowed.
-- All or nothing: a request refused by one bucket consumes nothing from the others.
-- include: _gcra.lua
local period_ms = tonumber(ARGV[1])
if period_ms == nil or period_ms <= 0 then
  return redis.error_reply('ERR rate_limit: period must be a positive number (ms)')
end
local period_us = period_ms * 1000

local client_limit = tonumber(ARGV[2]) or 0
local override = tonumber(redis.call('HGET', KEYS[1], 'rate_limit'))
local buckets = {}
if override ~= nil and override > 0 then
  buckets[1] = { KEYS[2], override, 60000000, 2 }
else
  buckets[1] = { KEYS[2], client_limit, period_us, 2 }
end
for index = 3, #KEYS do
  buckets[#buckets + 1] = { KEYS[index], tonumber(ARGV[index]) or 0, period_us, index }
end

local now = gcra_now()
local admitted, wait, refused_by = gcra_admit(buckets, now)
if admitted then
  return { 1, 0, 0 }
end
return { 0, wait, refused_by }
