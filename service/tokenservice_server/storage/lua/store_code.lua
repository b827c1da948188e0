-- store_code.lua: remember a single-use authorization code (RFC 6749 section 4.1.2).
-- KEYS: [1] auth:client:{client_id}, [2] auth:code:{sha256(code)},
--       [3] auth:session:{session_id} (any key when there is no session), [4] auth_stats
-- ARGV: [1] client generation, [2] TTL seconds, [3] session id ('' for none),
--       [4..n] field, value pairs of the code hash
-- Returns: 1 stored, 0 the client changed (re-read and retry), -1 the session is gone
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 0 then
  return -1
end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[4], 'authorization_codes_issued', 1)
return 1
