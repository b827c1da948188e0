-- issue_access_token.lua: store and index an access token, iff the client is unchanged.
-- KEYS: [1] auth:client:{client_id}, [2] auth:access_token:{sha256},
--       [3] auth:client_tokens:{client_id}, [4] auth_token_cleanup, [5] auth_stats
-- ARGV: [1] client generation the token was authorized against, [2] TTL seconds,
--       [3] expiry (Unix seconds), [4] index member ('a:' .. sha256),
--       [5..n] field, value pairs of the token hash
-- Returns: 1 issued, 0 the client changed or vanished (caller re-reads it and retries)
--
-- Checking the generation here makes a secret rotation, scope change or deletion
-- effective for the very next request on every server, with no extra round trip.
-- (client_credentials tokens have no family, subject or session, so only the client
-- index applies; see _tokens.lua store_token for the general case.)
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('TTL', KEYS[3]) < ttl then
  redis.call('EXPIRE', KEYS[3], ttl)
end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
redis.call('HINCRBY', KEYS[5], 'access_tokens_issued', 1)
return 1
