-- revoke_index.lua: revoke every token of an index (a session, a subject or a client).
-- KEYS: [1] the index set (auth:session_tokens:*, auth:subject_tokens:*,
--       auth:client_tokens:*), [2] a key to delete with it (the session hash when a
--       session ends; the key root ARGV[1] for none: a declared key outside the auth
--       key space, even '', is refused by a least-privilege ACL user), [3]
--       auth_session_cleanup
-- ARGV: [1] key root ('auth:'), [2] member to remove from KEYS[3] ('' for none)
-- Returns: number of live tokens revoked, or -1 when KEYS[2] was named but did not exist
-- include: _tokens.lua
local existed = 1
if KEYS[2] ~= '' and KEYS[2] ~= ARGV[1] then
  existed = redis.call('DEL', KEYS[2])
end
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
local revoked = revoke_index(ARGV[1], KEYS[1])
if existed == 0 and revoked == 0 then
  return -1
end
return revoked
