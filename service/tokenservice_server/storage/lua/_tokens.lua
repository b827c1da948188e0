-- _tokens.lua: library of token issuing and revocation steps, included by other scripts.
-- KEYS: none of its own (key names derive from the 'auth:' root passed by the caller)
-- ARGV: none of its own
-- Returns: defines local functions; include it before first use
--
-- Index members name a token. An access token is 'A' followed by the raw 32-byte SHA-256
-- (33 bytes: every live token costs memory, see docs/performance.md); a refresh token is
-- 'r:<sha256 hex>'. Access tokens stored before this form existed are 'a:<sha256 hex>'
-- (data model 1): every step here still understands them. Revoking deletes the record,
-- removes the token from its cleanup set and leaves a blacklist marker
-- 'auth:blacklist:<sha256 hex>' until the token's natural expiry, so a revoked token never
-- becomes valid again, even from a stale record copy.
--
-- A stored token's cleanup entry says which index sets name it, '<member>|<client>|
-- <family>|<session>|<subject>' (empty parts for indexes it is not in; the subject last,
-- as it may contain '|'), so the cleanup job (cleanup_tokens.lua) can remove it from
-- exactly those sets once it has expired, without reading the expired record. For an
-- access token this entry *is* its 'auth_token_cleanup' member (score: its expiry);
-- revoking reads the record, removes the token from its index sets at once and the entry
-- with it. A refresh token has the plain member 'r:<hex>' in 'auth_refresh_token_cleanup'
-- (rotation removes it: no longer live) and the entry in 'auth_index_cleanup', which
-- revocation and rotation leave alone (the sets still name a rotated token); legacy
-- 'a:<hex>' access tokens have the same two-entry layout.
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

-- Raw digest bytes <-> lowercase hex (record and blacklist keys use hex).
local function digest_hex(raw)
  return (string.gsub(raw, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

local function digest_raw(hex)
  return (string.gsub(hex, '%x%x', function(h) return string.char(tonumber(h, 16)) end))
end

-- The compact index member of an access token, from its hex digest.
local function access_member(hex)
  return 'A' .. digest_raw(hex)
end

-- Kind letter and hex digest of an index member in either form ('A' + raw, or 'x:' + hex).
local function member_digest(member)
  local letter = string.sub(member, 1, 1)
  if letter == 'A' then
    return 'a', digest_hex(string.sub(member, 2, 33))
  end
  return letter, string.sub(member, 3)
end

-- An access token's 'auth_token_cleanup' entry (see above); fields: record field map.
local function access_entry(member, fields)
  return member .. '|' .. (fields.c or '') .. '|' .. (fields.f or '') .. '|'
    .. (fields.n or '') .. '|' .. (fields.u or '')
end

-- Remove a live access token (both member forms) from the index sets its record names,
-- and its entry from 'auth_token_cleanup' (revoke_member removes a legacy plain member).
local function unindex_access(root, hex, fields)
  local members = { access_member(hex), 'a:' .. hex }
  local sets = { 'client_tokens:' .. (fields.c or '') }
  if (fields.f or '') ~= '' then sets[#sets + 1] = 'family:' .. fields.f end
  if (fields.n or '') ~= '' then sets[#sets + 1] = 'session_tokens:' .. fields.n end
  if (fields.u or '') ~= '' then sets[#sets + 1] = 'subject_tokens:' .. fields.u end
  for _, set in ipairs(sets) do
    redis.call('SREM', root .. set, unpack(members))
  end
  redis.call('ZREM', KINDS.a.cleanup, access_entry(members[1], fields))
end

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
  local letter, digest = member_digest(member)
  local kind = KINDS[letter]
  if kind == nil then
    return 0
  end
  local key = root .. kind.record .. digest
  local ttl = redis.call('TTL', key)
  if kind == KINDS.a then
    -- Expired (ttl <= 0): its cleanup entry, unknown without the record, stays for the
    -- cleanup job; a legacy plain member can go at once.
    redis.call('ZREM', kind.cleanup, 'a:' .. digest)
    if ttl > 0 then
      unindex_access(root, digest, hash_to_map(redis.call('HGETALL', key)))
    end
  else
    redis.call('ZREM', kind.cleanup, member)
  end
  if ttl <= 0 then
    return 0
  end
  local rotated = kind == KINDS.r and redis.call('HGET', key, 'st') == 'rotated'
  redis.call('DEL', key)
  redis.call('SET', root .. 'blacklist:' .. digest, letter, 'EX', ttl)
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
  -- Where the member is indexed, for the cleanup job once the record has expired.
  if kind == 'a' then
    member = access_member(digest)
    redis.call('ZADD', KINDS.a.cleanup, expires_at, access_entry(member,
      { c = client_id, f = family, n = session, u = subject }))
  else
    redis.call('ZADD', KINDS[kind].cleanup, expires_at, member)
    redis.call('ZADD', 'auth_index_cleanup', expires_at,
      member .. '|' .. client_id .. '|' .. family .. '|' .. session .. '|' .. subject)
  end
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
-- access/refresh: { sha256, jti ('' = derived from the digest, not stored), ttl, scope };
-- audiences: space separated or ''.
local function store_pair(root, client_id, now, family, subject, session, audiences, access,
                          refresh)
  local common = grant_fields(client_id, now, family, subject, session)
  local fields = { 'e', tostring(now + access[3]), 's', access[4] }
  if access[2] ~= '' then
    table.insert(fields, 'j'); table.insert(fields, access[2])
  end
  if audiences ~= '' then
    table.insert(fields, 'a'); table.insert(fields, audiences)
  end
  for _, v in ipairs(common) do table.insert(fields, v) end
  store_token(root, 'a', access[1], fields, access[3], now + access[3], client_id, family,
    subject, session)
  if refresh[3] > 0 then
    fields = { 'e', tostring(now + refresh[3]), 's', refresh[4], 'st', 'live' }
    if refresh[2] ~= '' then
      table.insert(fields, 'j'); table.insert(fields, refresh[2])
    end
    for _, v in ipairs(common) do table.insert(fields, v) end
    store_token(root, 'r', refresh[1], fields, refresh[3], now + refresh[3], client_id, family,
      subject, session)
  end
end
