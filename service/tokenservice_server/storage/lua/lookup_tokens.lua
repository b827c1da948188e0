-- lookup_tokens.lua: the records of one or more tokens, read in one step (introspection
--                    and caller authentication, the hot-token cache's misses).
-- KEYS: pairs of [2i-1] the token's record, auth:access_token:{sha256} or
--       auth:refresh_token:{sha256}, and [2i] its marker auth:blacklist:{sha256}
-- ARGV: none
-- Returns: for each pair, ten values: the record's fields c s i e j u a n f st in this
--          order ('' for an absent one: token_store.ACCESS_FIELDS and the rotation
--          state); all ten '' when there is no record or the token is blacklisted.
--          Expiry is the caller's to judge.
--
-- Revocation deletes the record and leaves the blacklist marker; checking both keeps a
-- token revoked even if a stale replica or a restored backup still held its record.
local reply = {}
for i = 1, #KEYS, 2 do
  local values = redis.call('HMGET', KEYS[i], 'c', 's', 'i', 'e', 'j', 'u', 'a', 'n', 'f', 'st')
  local live = values[1] and redis.call('EXISTS', KEYS[i + 1]) == 0
  for j = 1, 10 do
    reply[#reply + 1] = live and (values[j] or '') or ''
  end
end
return reply
