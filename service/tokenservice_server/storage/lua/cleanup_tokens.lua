-- cleanup_tokens.lua: one batch of the token cleanup job: forget what expired, atomically.
-- KEYS: [1] auth_index_cleanup, [2] auth_token_cleanup, [3] auth_refresh_token_cleanup,
--       [4] auth_session_cleanup, [5] the job's lock key
-- ARGV: [1] batch size (entries per sorted set), [2] key root ('auth:'), [3] lock token
--       held by the caller, [4] lock TTL (ms)
-- Returns: {lock held (1, or 0: nothing done), index entries removed, index set
--   memberships removed, access tokens removed, refresh tokens removed, sessions removed,
--   entries rescheduled (record still alive), expired entries left for the next batch}
--
-- Each sorted set scores its members by expiry, so ZRANGEBYSCORE -inf..now LIMIT batch
-- reads only what expired: the cost is proportional to what expired, never to what
-- exists. A cleanup entry names the token and every index set it was added to (see
-- _tokens.lua: an access token's 'auth_token_cleanup' member 'A<raw sha256>|...', a
-- refresh or legacy access token's 'auth_index_cleanup' entry), so the token leaves
-- exactly those sets; a set left empty disappears. A record still alive (the issuing server's clock ran ahead of Redis's) is
-- not touched: its entry is rescored to the record's real expiry. The lock check makes a
-- run that lost its lock (it expired during a pause) stop instead of racing another run.
-- include: _tokens.lua
local index, access, refresh, sessions, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
-- "Now" is the server's clock, the one the expiry scores and TTLs are measured against.
local now = tonumber(redis.call('TIME')[1])
local batch, root = tonumber(ARGV[1]), ARGV[2]
if redis.call('GET', lock) ~= ARGV[3] then
  return { 0, 0, 0, 0, 0, 0, 0, 0 }
end
redis.call('PEXPIRE', lock, tonumber(ARGV[4]))

local RECORD = { a = 'access_token:', r = 'refresh_token:' }
local rescheduled = 0

-- Seconds the key still lives (0 when gone or without a TTL).
local function remaining(key)
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then return math.ceil(ttl / 1000) end
  return 0
end

local function expired(set)
  return redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, batch)
end

-- Remove expired members of a plain cleanup set whose record key is prefix .. member_tail.
local function sweep(set, prefix, skip)
  local removed = 0
  for _, member in ipairs(expired(set)) do
    local left = remaining(prefix .. string.sub(member, skip))
    if left > 0 then
      redis.call('ZADD', set, now + left, member)
      rescheduled = rescheduled + 1
    else
      removed = removed + redis.call('ZREM', set, member)
    end
  end
  return removed
end

-- Split an entry '<member>|<client>|<family>|<session>|<subject>' into the member, its
-- record key and the other parts; a plain legacy member ('a:<hex>') yields no parts but
-- its record key; nil, nil when malformed. A compact member is 33 bytes whatever they are
-- (raw digest bytes may include '|'); the subject may contain '|'.
local function parse(entry)
  local parts, start = {}, 1
  local letter = string.sub(entry, 1, 1)
  if letter == 'A' then
    if string.sub(entry, 34, 34) ~= '|' then return nil, nil end
    parts[1] = string.sub(entry, 1, 33)
    start = 35
  elseif RECORD[letter] and #entry == 66 and string.sub(entry, 2, 2) == ':' then
    return nil, RECORD[letter] .. string.sub(entry, 3)
  end
  while #parts < 4 do
    local bar = string.find(entry, '|', start, true)
    if bar == nil then return nil, nil end
    parts[#parts + 1] = string.sub(entry, start, bar - 1)
    start = bar + 1
  end
  parts[5] = string.sub(entry, start)
  local kind, digest = member_digest(parts[1])
  if RECORD[kind] == nil then
    return nil, nil
  end
  return parts, RECORD[kind] .. digest
end

-- Forget expired entries of a set of cleanup entries: each token leaves the index sets
-- its entry names. Returns the entries removed and the set memberships removed.
local function sweep_entries(set)
  local removed, unindexed = 0, 0
  for _, entry in ipairs(expired(set)) do
    local parts, record = parse(entry)
    local left = 0
    if record then
      left = remaining(root .. record)
    end
    if left > 0 then
      redis.call('ZADD', set, now + left, entry)
      rescheduled = rescheduled + 1
    else
      if parts then
        local member = parts[1]
        unindexed = unindexed + redis.call('SREM', root .. 'client_tokens:' .. parts[2], member)
        if parts[3] ~= '' then
          unindexed = unindexed + redis.call('SREM', root .. 'family:' .. parts[3], member)
        end
        if parts[4] ~= '' then
          unindexed = unindexed + redis.call('SREM', root .. 'session_tokens:' .. parts[4], member)
        end
        if parts[5] ~= '' then
          unindexed = unindexed + redis.call('SREM', root .. 'subject_tokens:' .. parts[5], member)
        end
      end
      removed = removed + redis.call('ZREM', set, entry)
    end
  end
  return removed, unindexed
end

local entries, memberships = sweep_entries(index)

-- auth_token_cleanup holds compact entries ('A...|...', which carry the index sets) and
-- legacy plain members ('a:<hex>', whose sets are named in auth_index_cleanup).
local access_removed, access_memberships = sweep_entries(access)
memberships = memberships + access_memberships
local refresh_removed = sweep(refresh, root .. RECORD.r, 3)
local sessions_removed = sweep(sessions, root .. 'session:', 1)

local left = 0
for _, set in ipairs({ index, access, refresh, sessions }) do
  left = left + redis.call('ZCOUNT', set, '-inf', now)
end
return { 1, entries, memberships, access_removed, refresh_removed, sessions_removed,
  rescheduled, left }
