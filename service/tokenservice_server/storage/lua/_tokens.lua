-- _tokens.lua: library of token issuing and revocation steps, included by other scripts.
-- KEYS: none of its own (key names derive from the 'auth:' root passed by the caller)
-- ARGV: none of its own
-- Returns: defines local functions; include it before first use
--
-- Index members name a token as '<kind>:<sha256>' with kind 'a' (access token) or
-- 'r' (refresh token). Revoking deletes the record, removes the member from its cleanup
-- set and leaves a blacklist marker 'auth:blacklist:<sha256>' until the token's natural
-- expiry, so a revoked token never becomes valid again, even from a stale record copy.
--
-- Every stored token also gets an entry in 'auth_index_cleanup' (score: its expiry),
-- '<member>|<client>|<family>|<session>|<subject>' (empty parts for indexes it is not in;
-- the subject last, as it may contain '|'). Revocation and rotation leave it alone, so the
-- cleanup job (cleanup_tokens.lua) can remove the member from exactly the index sets
-- that still name it once the token has expired, without reading the expired record.
--
-- Every revocation is also published on the channel '<root>revocations' (one message per
-- revoked access token or per revoked index) so each replica's hot-token cache
-- (domain/token_cache.py) drops it: 't:<sha256>' for one access token, 'f:<family>',
-- 'c:<client>', 'u:<subject>' or 'n:<session>' for an index. PUBLISH runs with pcall: an
-- ACL user without channel rights still revokes (its replicas then cannot subscribe
-- either, so their caches stay bypassed).

local KINDS = {
  a = { record = 'access_token:', cleanup = 'auth_token_cleanup', stat = 'access_tokens_revoked' },
  r = { record = 'refresh_token:', cleanup = 'auth_refresh_token_cleanup',
        stat = 'refresh_tokens_revoked' },
}

local INDEX_ATTRIBUTES = {
  ['family:'] = 'f:', ['client_tokens:'] = 'c:', ['subject_tokens:'] = 'u:',
  ['session_tokens:'] = 'n:',
}

local function publish_revoked(root, message)
  redis.pcall('PUBLISH', root .. 'revocations', message)
end

local function hash_to_map(flat)
  local map = {}
  for i = 1, #flat, 2 do
    map[flat[i]] = flat[i + 1]
  end
  return map
end

-- Revoke one token by index member; returns 1 if a live token was revoked. A rotated
-- refresh token (kept only to detect its reuse) is removed and blacklisted too, but it
-- was no longer live, so it is not counted. A revoked access token is published unless
-- 'quiet' (revoke_index publishes the whole index at once).
local function revoke_member(root, member, quiet)
  local kind = KINDS[string.sub(member, 1, 1)]
  if kind == nil then
    return 0
  end
  local digest = string.sub(member, 3)
  local key = root .. kind.record .. digest
  local ttl = redis.call('TTL', key)
  redis.call('ZREM', kind.cleanup, member)
  if ttl <= 0 then
    return 0
  end
  local rotated = kind == KINDS.r and redis.call('HGET', key, 'st') == 'rotated'
  redis.call('DEL', key)
  redis.call('SET', root .. 'blacklist:' .. digest, string.sub(member, 1, 1), 'EX', ttl)
  if kind == KINDS.a and not quiet then
    publish_revoked(root, 't:' .. digest)
  end
  if rotated then
    return 0
  end
  redis.call('HINCRBY', 'auth_stats', kind.stat, 1)
  return 1
end

-- Revoke every member of an index set and delete the set; returns the number revoked.
local function revoke_index(root, index_key)
  local revoked = 0
  local members = redis.call('SMEMBERS', index_key)
  for _, member in ipairs(members) do
    revoked = revoke_member(root, member, true) + revoked
  end
  redis.call('DEL', index_key)
  if #members > 0 then
    local name = string.sub(index_key, #root + 1)
    for prefix, attribute in pairs(INDEX_ATTRIBUTES) do
      if string.sub(name, 1, #prefix) == prefix then
        publish_revoked(root, attribute .. string.sub(name, #prefix + 1))
      end
    end
  end
  return revoked
end

-- Add a token member to an index set whose lifetime must cover the token's.
local function index_member(index_key, member, ttl)
  redis.call('SADD', index_key, member)
  if redis.call('TTL', index_key) < ttl then
    redis.call('EXPIRE', index_key, ttl)
  end
end

-- Store a token record (flat field list) and index it everywhere it must be findable:
-- its client, its grant family, its subject and its session (the last three optional).
local function store_token(root, kind, digest, fields, ttl, expires_at, client_id, family,
                           subject, session)
  local member = kind .. ':' .. digest
  local key = root .. KINDS[kind].record .. digest
  redis.call('HSET', key, unpack(fields))
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', KINDS[kind].cleanup, expires_at, member)
  -- Where the member is indexed, for the cleanup job once the record has expired.
  redis.call('ZADD', 'auth_index_cleanup', expires_at,
    member .. '|' .. client_id .. '|' .. family .. '|' .. session .. '|' .. subject)
  index_member(root .. 'client_tokens:' .. client_id, member, ttl)
  if family ~= '' then
    index_member(root .. 'family:' .. family, member, ttl)
  end
  if subject ~= '' then
    index_member(root .. 'subject_tokens:' .. subject, member, ttl)
  end
  if session ~= '' then
    index_member(root .. 'session_tokens:' .. session, member, ttl)
  end
  redis.call('HINCRBY', 'auth_stats', kind == 'a' and 'access_tokens_issued'
    or 'refresh_tokens_issued', 1)
end

-- Fields every token of a grant carries: client, issue time, family, subject, session.
local function grant_fields(client_id, issued_at, family, subject, session)
  local fields = { 'c', client_id, 'i', tostring(issued_at), 'f', family }
  if subject ~= '' then
    table.insert(fields, 'u'); table.insert(fields, subject)
  end
  if session ~= '' then
    table.insert(fields, 'n'); table.insert(fields, session)
  end
  return fields
end

-- Store the access token and (when refresh_ttl > 0) the refresh token of one grant step.
-- access/refresh: { sha256, jti, ttl, scope }; audiences: space separated or ''.
local function store_pair(root, client_id, now, family, subject, session, audiences, access,
                          refresh)
  local common = grant_fields(client_id, now, family, subject, session)
  local fields = { 'e', tostring(now + access[3]), 'j', access[2], 's', access[4] }
  if audiences ~= '' then
    table.insert(fields, 'a'); table.insert(fields, audiences)
  end
  for _, v in ipairs(common) do table.insert(fields, v) end
  store_token(root, 'a', access[1], fields, access[3], now + access[3], client_id, family,
    subject, session)
  if refresh[3] > 0 then
    fields = { 'e', tostring(now + refresh[3]), 'j', refresh[2], 's', refresh[4], 'st', 'live' }
    for _, v in ipairs(common) do table.insert(fields, v) end
    store_token(root, 'r', refresh[1], fields, refresh[3], now + refresh[3], client_id, family,
      subject, session)
  end
end
