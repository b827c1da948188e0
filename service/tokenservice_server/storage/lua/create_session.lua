-- create_session.lua: store a new session hash with its TTL and its cleanup entry.
-- KEYS: [1] auth:session:{session_id}, [2] auth_session_cleanup
-- ARGV: [1] session_id, [2] TTL seconds, [3] expiry (Unix seconds, the cleanup score),
--       [4...] field, value pairs of the session hash
-- Returns: 1
--
-- A script rather than MULTI/EXEC so that durability 'replicated' covers it like every
-- other state change (scripts.py pipelines it with WAIT); the hash never exists without
-- its TTL. Running it twice with the same arguments (a resend) stores the same session.
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
