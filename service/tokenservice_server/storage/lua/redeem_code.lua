-- redeem_code.lua: exchange an authorization code for tokens, exactly once.
-- KEYS: [1] auth:client:{client_id}, [2] auth:code:{sha256(code)},
--       [3] client rate-limit bucket, [4] peer-IP rate-limit bucket
-- ARGV: [1] client generation, [2] client_id, [3] redirect_uri, [4] BASE64URL(SHA256(
--       code_verifier)) or '', [5] code_verifier or '', [6] now (Unix seconds),
--       [7] access TTL, [8] refresh TTL (0: no refresh token), [9] access sha256,
--       [10] refresh sha256, [11] access jti, [12] refresh jti, [13] audiences (space
--       separated), [14] key root ('auth:'), [15] rate-limit period (ms),
--       [16] client limit, [17] IP limit (0 = none)
-- Returns: {'ok', scope, subject, session_id, family_id} or {error} with error one of
--   'stale' (client changed: re-read, retry), 'invalid' (unknown, expired or bound to
--   another client or redirect URI), 'reused' (second redemption: the grant is revoked),
--   'pkce_required', 'pkce_mismatch', 'pkce_unexpected', 'session_ended', or
--   {'limited', microseconds until a retry is admitted, refusing bucket}
--
-- "If an authorization code is used more than once, the authorization server MUST deny
-- the request and SHOULD revoke (when possible) all tokens previously issued based on
-- that authorization code" (RFC 6749 section 4.1.2). One script makes "check unused,
-- mark used, issue" a single step, so 50 concurrent redemptions yield one success.
-- include: _tokens.lua
-- include: _gcra.lua
-- include: _grant.lua
local code, refusal = open_grant(KEYS, ARGV[1], ARGV[2], ARGV[15], ARGV[16], ARGV[17])
if refusal then
  return refusal
end
local root = ARGV[14]
-- The same request again (a resend after a lost reply; the access digest is random per
-- RPC): answer as the first run did instead of treating it as a second redemption.
if code.st == 'redeemed' and code.na == ARGV[9] then
  return { 'ok', code.s or '', code.u or '', code.n or '', code.f }
end
if code.st == 'redeemed' then
  revoke_index(root, root .. 'family:' .. code.f)
  redis.call('HINCRBY', 'auth_stats', 'authorization_code_reuse', 1)
  return { 'reused', '', '', '', code.f or '' }
end
if code.r ~= ARGV[3] then
  return { 'invalid' }
end
-- PKCE (RFC 7636 section 4.6; RFC 9700 section 2.1.1: a verifier without a challenge
-- is refused, so an attacker cannot strip PKCE from a flow).
local challenge = code.ch or ''
if challenge ~= '' then
  if ARGV[5] == '' then
    return { 'pkce_required' }
  end
  local presented = ARGV[4]
  if code.cm == 'plain' then
    presented = ARGV[5]
  end
  if presented ~= challenge then
    return { 'pkce_mismatch' }
  end
elseif ARGV[5] ~= '' then
  return { 'pkce_unexpected' }
end
local session = code.n or ''
if session ~= '' and redis.call('EXISTS', root .. 'session:' .. session) == 0 then
  redis.call('HSET', KEYS[2], 'st', 'redeemed')
  return { 'session_ended' }
end
redis.call('HSET', KEYS[2], 'st', 'redeemed', 'na', ARGV[9])

local now = tonumber(ARGV[6])
store_pair(root, ARGV[2], now, code.f, code.u or '', session, ARGV[13],
  { ARGV[9], ARGV[11], tonumber(ARGV[7]), code.s or '' },
  { ARGV[10], ARGV[12], tonumber(ARGV[8]), code.s or '' })
return { 'ok', code.s or '', code.u or '', session, code.f }
