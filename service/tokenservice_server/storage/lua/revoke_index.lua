-- revoke_index.lua: revoke every token of an index (a session, a subject or a client),
-- and write the action's audit entry in the same atomic step.
-- KEYS: [1] the index set (auth:session_tokens:*, auth:subject_tokens:*,
--       auth:client_tokens:*), [2] a key to delete with it (the session hash when a
--       session ends; the key root ARGV[1] for none: a declared key outside the auth
--       key space, even '', is refused by a least-privilege ACL user), [3]
--       auth_session_cleanup, [4] auth_audit
-- ARGV: [1] key root ('auth:'), [2] member to remove from KEYS[3] ('' for none),
--       [3] audit stream bound ('' for no audit entry), [4] the entry's count field,
--       [5...] the entry's other fields and values (outcome and reason are added here)
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
local result = revoked
if existed == 0 and revoked == 0 then
  result = -1
end
if ARGV[3] ~= '' then
  local entry = {}
  for i = 5, #ARGV do
    entry[#entry + 1] = ARGV[i]
  end
  if result < 0 then
    entry[#entry + 1] = 'outcome'; entry[#entry + 1] = 'failed'
    entry[#entry + 1] = 'reason'; entry[#entry + 1] = 'NOT_FOUND'
  else
    entry[#entry + 1] = 'outcome'; entry[#entry + 1] = 'ok'
    entry[#entry + 1] = 'reason'; entry[#entry + 1] = ''
    entry[#entry + 1] = ARGV[4]; entry[#entry + 1] = tostring(result)
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
end
return result
