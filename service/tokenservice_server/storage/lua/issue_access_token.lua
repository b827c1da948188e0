-- issue_access_token.lua: store and index an access token, iff the client is unchanged.
-- KEYS: [1] auth:client:{client_id}, [2] auth:access_token:{sha256},
--       [3] auth:client_tokens:{client_id}, [4] auth_token_cleanup, [5] auth_stats,
--       [6] client rate-limit bucket, [7] peer-IP rate-limit bucket
-- ARGV: [1] client generation the token was authorized against, [2] TTL seconds,
--       [3] expiry (Unix seconds), [4] the token's sha256 (hex),
--       [5] rate-limit period (ms), [6] client limit, [7] IP limit (0 = none),
--       [8..n] field, value pairs of the token hash
-- Returns: 1 issued, 0 the client changed or vanished (caller re-reads it and retries),
--   or {microseconds until a retry is admitted, refusing bucket} when rate limited
--
-- Checking the generation here makes a secret rotation, scope change or deletion
-- effective for the very next request on every server, with no extra round trip.
-- (client_credentials tokens have no family, subject or session, so only the client
-- index applies; see _tokens.lua for the compact member 'A' .. raw digest and for the
-- cleanup entry '<member>|<client>|||' that is the token's 'auth_token_cleanup' member.)
-- include: _gcra.lua
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
local admitted, wait, refused_by = admit_token_request(KEYS[1], KEYS[6], KEYS[7], ARGV[5],
  ARGV[6], ARGV[7])
if not admitted then
  return { wait, refused_by }
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[2], ttl)
local member = 'A' .. string.gsub(ARGV[4], '%x%x',
  function(h) return string.char(tonumber(h, 16)) end)
redis.call('SADD', KEYS[3], member)
if redis.call('TTL', KEYS[3]) < ttl then
  redis.call('EXPIRE', KEYS[3], ttl)
end
-- Where it is indexed, for the cleanup job (see _tokens.lua): the client index only.
redis.call('ZADD', KEYS[4], ARGV[3], member .. '|' .. string.match(KEYS[3], '([^:]*)$') .. '|||')
redis.call('HINCRBY', KEYS[5], 'access_tokens_issued', 1)
return 1
