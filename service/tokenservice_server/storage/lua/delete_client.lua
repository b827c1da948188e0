-- delete_client.lua: remove a client and revoke every live token it holds.
-- KEYS: [1] auth:client:{client_id}, [2] auth:client_tokens:{client_id},
--       [3] auth:clients, [4] auth_stats
-- ARGV: [1] client_id, [2] key root ('auth:')
-- Returns: number of tokens revoked, or -1 when the client does not exist
-- include: _tokens.lua
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local revoked = revoke_index(ARGV[2], KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'clients_deleted', 1)
return revoked
