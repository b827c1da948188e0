-- extend_session.lua: push a live session's expiry forward (sliding TTL).
-- KEYS: [1] auth:session:{session_id}, [2] auth_session_cleanup,
--       [3] auth:session_tokens:{session_id}
-- ARGV: [1] session id, [2] TTL seconds, [3] new expiry (Unix milliseconds)
-- Returns: the session hash (flat field/value list), or an empty list if it is gone
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'et', ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], math.floor(tonumber(ARGV[3]) / 1000), ARGV[1])
if redis.call('TTL', KEYS[3]) > 0 and redis.call('TTL', KEYS[3]) < ttl then
  redis.call('EXPIRE', KEYS[3], ttl)
end
return redis.call('HGETALL', KEYS[1])
