-- create_client.lua: register a client unless its id is taken.
-- KEYS: [1] auth:client:{client_id}, [2] auth:clients (sorted set of ids)
-- ARGV: [1] client_id, [2..n] field, value pairs of the client hash
-- Returns: 1 created, 0 the id already exists
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
