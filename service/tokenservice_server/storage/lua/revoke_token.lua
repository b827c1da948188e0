-- revoke_token.lua: revoke one token on behalf of the client it was issued to (RFC 7009).
-- KEYS: [1] auth:access_token:{sha256} or auth:refresh_token:{sha256}
-- ARGV: [1] requesting client_id, [2] index member ('a:' or 'r:' .. sha256),
--       [3] key root ('auth:')
-- Returns: { number of tokens revoked, the grant family revoked with it or '' } (0 for
--   unknown, expired, already revoked or another client's token: RFC 7009 answers all of
--   these with success, revealing nothing)
--
-- Revoking a refresh token revokes its whole grant family, including the access tokens
-- issued from it (RFC 7009 section 2.1: "SHOULD also invalidate all access tokens based
-- on the same authorization grant").
-- include: _tokens.lua
local owner = redis.call('HGET', KEYS[1], 'c')
if not owner or owner ~= ARGV[1] then
  return { 0, '' }
end
local root = ARGV[3]
if string.sub(ARGV[2], 1, 1) == 'r' then
  local family = redis.call('HGET', KEYS[1], 'f')
  if family and family ~= '' then
    local revoked = revoke_member(root, ARGV[2])
    return { revoked + revoke_index(root, root .. 'family:' .. family), family }
  end
end
return { revoke_member(root, ARGV[2]), '' }
