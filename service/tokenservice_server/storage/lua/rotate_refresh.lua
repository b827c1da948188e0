-- rotate_refresh.lua: use a refresh token once, replacing it and issuing an access token.
-- KEYS: [1] auth:client:{client_id}, [2] auth:refresh_token:{sha256(presented token)},
--       [3] client rate-limit bucket, [4] peer-IP rate-limit bucket
-- ARGV: [1] client generation, [2] client_id, [3] requested scope ('' = as granted),
--       [4] now (Unix milliseconds), [5] reuse grace (milliseconds, 0 = none),
--       [6] access TTL, [7] refresh TTL, [8] new access sha256, [9] new refresh sha256,
--       [10] access jti, [11] refresh jti, [12] audiences (space separated),
--       [13] key root ('auth:'), [14] rate-limit period (ms), [15] client limit,
--       [16] IP limit (0 = none)
-- Returns: {'ok', access scope, subject, session_id, family_id} or {error} with error one
--   of 'stale' (client changed: re-read, retry), 'invalid' (unknown, expired, revoked or
--   another client's), 'reused' (a rotated token came back: the family is revoked),
--   'invalid_scope' (wider than the grant), 'session_ended', or
--   {'limited', microseconds until a retry is admitted, refusing bucket}
--
-- Rotation on every use with reuse detection (RFC 9700 section 4.14.2): the presented
-- token is marked rotated in the same step that issues its successor, so concurrent
-- refreshes cannot both succeed, and a replayed rotated token revokes the whole family.
-- Times are milliseconds, so "rotated just now" is exact, not rounded to seconds.
-- A grace period lets a client whose response was lost retry once: the successor pair
-- it never received is revoked and a fresh pair issued, so one family never has two
-- live refresh tokens.
-- include: _tokens.lua
-- include: _gcra.lua
-- include: _grant.lua
local old, refusal = open_grant(KEYS, ARGV[1], ARGV[2], ARGV[14], ARGV[15], ARGV[16])
if refusal then
  return refusal
end
local root = ARGV[13]
local family, subject, session = old.f or '', old.u or '', old.n or ''
local now_ms = tonumber(ARGV[4])
-- The same request again: the new digests are random per RPC, so only a retry of this
-- very call (the client library resends after a lost reply, e.g. the master died between
-- running the script and answering) presents them. Answer as the first run did and change
-- nothing; treating it as a reuse would revoke the family the caller just extended.
if old.st == 'rotated' and old.na == ARGV[8] and old.nr == ARGV[9] then
  return { 'ok', ARGV[3] ~= '' and ARGV[3] or (old.s or ''), subject, session, family }
end
if old.st == 'rotated' then
  local grace = tonumber(ARGV[5])
  local rotated_at = tonumber(old.rt or '0')
  -- Only while the successor is unused and unrevoked: once it was used the response
  -- evidently arrived, and a retry would leave two live refresh tokens in the family.
  local successor = redis.call('HGET', root .. 'refresh_token:' .. (old.nr or ''), 'st')
  if grace > 0 and now_ms - rotated_at <= grace and old.g ~= '1' and successor == 'live' then
    revoke_member(root, 'a:' .. old.na)
    revoke_member(root, 'r:' .. old.nr)
    redis.call('HSET', KEYS[2], 'g', '1')
  else
    if family ~= '' then
      revoke_index(root, root .. 'family:' .. family)
    end
    redis.call('HINCRBY', 'auth_stats', 'refresh_token_reuse', 1)
    return { 'reused', '', '', '', family }
  end
end
if session ~= '' and redis.call('EXISTS', root .. 'session:' .. session) == 0 then
  if family ~= '' then
    revoke_index(root, root .. 'family:' .. family)
  end
  return { 'session_ended', '', '', '', family }
end
-- RFC 6749 section 6: the new scope MUST NOT include any scope not originally granted.
local granted = {}
for token in string.gmatch(old.s or '', '%S+') do
  granted[token] = true
end
local scope = old.s or ''
if ARGV[3] ~= '' then
  for token in string.gmatch(ARGV[3], '%S+') do
    if not granted[token] then
      return { 'invalid_scope' }
    end
  end
  scope = ARGV[3]
end

redis.call('HSET', KEYS[2], 'st', 'rotated', 'rt', ARGV[4], 'na', ARGV[8], 'nr', ARGV[9])
-- No longer live: out of the live count (the record stays, to recognise a reuse).
redis.call('ZREM', KINDS.r.cleanup, 'r:' .. string.sub(KEYS[2], #root + #KINDS.r.record + 1))
-- The refresh token keeps the originally granted scope, so a narrowed access token can
-- later be widened again up to (never beyond) the original grant.
store_pair(root, ARGV[2], math.floor(now_ms / 1000), family, subject, session, ARGV[12],
  { ARGV[8], ARGV[10], tonumber(ARGV[6]), scope },
  { ARGV[9], ARGV[11], tonumber(ARGV[7]), old.s or '' })
return { 'ok', scope, subject, session, family }
