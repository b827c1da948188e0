-- rate_limit.lua: count one request in a fixed window and say whether it is within the limit.
-- KEYS: [1] counter, auth:rate_limit:{scope}:{id}
-- ARGV: [1] window length in milliseconds (> 0), [2] requests allowed per window (>= 0)
-- Returns: {allowed (1 or 0), requests counted in this window, milliseconds until it resets}
--
-- Counting and setting the expiry happen in one atomic step, so a counter never exists
-- without a TTL (SPEC section 4: no key grows or lives without bound). Requests over the
-- limit are still counted: a client hammering the service stays limited for the window.
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if window == nil or window <= 0 or window % 1 ~= 0 then
  return redis.error_reply('ERR rate_limit: window must be a positive integer (ms)')
end
if limit == nil or limit < 0 then
  return redis.error_reply('ERR rate_limit: limit must be a non-negative number')
end

local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  -- First request of a window (or a counter that somehow lost its TTL): start the window.
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
end

local allowed = 0
if count <= limit then
  allowed = 1
end
return {allowed, count, ttl}
