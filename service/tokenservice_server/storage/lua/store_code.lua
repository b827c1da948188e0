-- store_code.lua: remember a single-use authorization code (RFC 6749 section 4.1.2).
-- KEYS: [1] auth:client:{client_id}, [2] auth:code:{sha256(code)},
--       [3] auth:session:{session_id} (any key when there is no session), [4] auth_stats
-- ARGV: [1] client generation, [2] TTL seconds, [3] session id ('' for none),
--       [4] subject, [5..n] field, value pairs of the code hash
-- Returns: 1 stored, 0 the client changed (re-read and retry), -1 the session is gone,
--   -2 the session belongs to another subject (a code must not join a stranger's session)
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
if ARGV[3] ~= '' then
  local owner = redis.call('HGET', KEYS[3], 'u')
  if not owner then
    return -1
  end
  if owner ~= ARGV[4] then
    return -2
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[4], 'authorization_codes_issued', 1)
return 1
