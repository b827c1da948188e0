-- delete_client.lua: remove a client and revoke every live token it holds.
-- KEYS: [1] auth:client:{client_id}, [2] auth:client_tokens:{client_id},
--       [3] auth:clients, [4] auth_stats
-- ARGV: [1] client_id, [2] access token key prefix, [3] refresh token key prefix,
--       [4] blacklist key prefix
-- Returns: number of tokens revoked, or -1 when the client does not exist
--
-- Token keys are derived from the index members inside the script (standalone and
-- Sentinel deployments only; this data model is not meant for Redis Cluster).
-- Each revoked token leaves a blacklist marker until its natural expiry.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local prefixes = { a = ARGV[2], r = ARGV[3] }
local revoked = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local kind, digest = string.sub(member, 1, 1), string.sub(member, 3)
  local prefix = prefixes[kind]
  if prefix then
    local key = prefix .. digest
    local ttl = redis.call('TTL', key)
    if ttl > 0 then
      redis.call('DEL', key)
      redis.call('SET', ARGV[4] .. digest, kind, 'EX', ttl)
      revoked = revoked + 1
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if revoked > 0 then
  redis.call('HINCRBY', KEYS[4], 'tokens_revoked', revoked)
end
redis.call('HINCRBY', KEYS[4], 'clients_deleted', 1)
return revoked
