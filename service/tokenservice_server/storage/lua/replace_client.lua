-- replace_client.lua: overwrite a client record iff nobody changed it since it was read.
-- KEYS: [1] auth:client:{client_id}
-- ARGV: [1] generation the caller read, [2..n] field, value pairs of the new record
-- Returns: 1 replaced, 0 missing or changed meanwhile (re-read and retry)
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
