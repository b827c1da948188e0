-- check_access_token.lua: resolve a bearer token and admit the request against the
--                         Check rate limits, in one step (Envoy ext_authz).
-- KEYS: [1] auth:access_token:{sha256}, [2] auth:blacklist:{sha256},
--       [3] auth:rate_limit:ip:{ip} the source IP's bucket
-- ARGV: [1] period of the limits in milliseconds, [2] requests per period per IP,
--       [3] per client (the client record's 'rate_limit', per minute, replaces it),
--       [4] per route and client (each 0: unlimited), [5] route key ('' for none),
--       [6] the key root 'auth:'
-- Returns: {verdict, microseconds until a retry can be allowed, refusing bucket
--          ('ip', 'client' or 'route')}, and for a live token the values of its fields
--          c s i e j u a n f in this order ('' for an absent one: the order of
--          token_store.ACCESS_FIELDS), then the client's own rate limit (0 for none),
--          for the hot-token cache to know whether a cached check may skip Redis:
--          verdict 1 a live token, admitted; 0 no live token (unknown, expired or
--          revoked); -1 rate limited.
--
-- The client's buckets depend on the token, so their keys ('auth:client:{id}',
-- 'auth:rate_limit:client:{id}', 'auth:rate_limit:route:{route}:{id}') are derived
-- here: fine on standalone Redis and Sentinel (SPEC section 5), never Redis Cluster.
-- The IP bucket counts every request that reaches Redis, live token or not, so guessing
-- tokens from one address is limited too; malformed tokens never get here.
-- include: _gcra.lua
local period_ms = tonumber(ARGV[1])
if period_ms == nil or period_ms <= 0 then
  return redis.error_reply('ERR check_access_token: period must be a positive number (ms)')
end
local period_us = period_ms * 1000
local now = gcra_now()

local token = redis.call('HMGET', KEYS[1], 'c', 's', 'i', 'e', 'j', 'u', 'a', 'n', 'f')
local client_id = token[1]
local expires = tonumber(token[4])
local live = client_id ~= false and expires ~= nil and expires * 1000000 > now
  and redis.call('EXISTS', KEYS[2]) == 0

local override = nil
local buckets = { { KEYS[3], tonumber(ARGV[2]) or 0, period_us, 'ip' } }
if live then
  local root = ARGV[6]
  local client_bucket = { root .. 'rate_limit:client:' .. client_id, tonumber(ARGV[3]) or 0,
    period_us, 'client' }
  override = tonumber(redis.call('HGET', root .. 'client:' .. client_id, 'rate_limit'))
  if override ~= nil and override > 0 then
    client_bucket[2], client_bucket[3] = override, 60000000
  end
  buckets[2] = client_bucket
  if ARGV[5] ~= '' then
    buckets[3] = { root .. 'rate_limit:route:' .. ARGV[5] .. ':' .. client_id,
      tonumber(ARGV[4]) or 0, period_us, 'route' }
  end
end

local admitted, wait, refused_by = gcra_admit(buckets, now)
if not admitted then
  return { -1, wait, refused_by }
end
if not live then
  return { 0, 0, '' }
end
local reply = { 1, 0, '' }
for i = 1, 9 do
  reply[3 + i] = token[i] or ''
end
reply[13] = tostring(override or 0)
return reply
