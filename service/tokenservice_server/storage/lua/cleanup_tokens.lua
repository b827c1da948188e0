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
-- exists. An 'auth_index_cleanup' entry names the token and every index set it was added
-- to (see _tokens.lua), so the token leaves exactly those sets; a set left empty
-- disappears. A record still alive (the issuing server's clock ran ahead of Redis's) is
-- not touched: its entry is rescored to the record's real expiry. The lock check makes a
-- run that lost its lock (it expired during a pause) stop instead of racing another run.
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

local entries, memberships = 0, 0
for _, entry in ipairs(expired(index)) do
  local parts, start = {}, 1
  for _ = 1, 4 do
    local bar = string.find(entry, '|', start, true)
    if bar == nil then break end
    parts[#parts + 1] = string.sub(entry, start, bar - 1)
    start = bar + 1
  end
  local member = parts[1]
  local record = member and RECORD[string.sub(member, 1, 1)]
  local left = 0
  if #parts == 4 and record then
    left = remaining(root .. record .. string.sub(member, 3))
  end
  if left > 0 then
    redis.call('ZADD', index, now + left, entry)
    rescheduled = rescheduled + 1
  else
    if #parts == 4 and record then
      local subject = string.sub(entry, start)
      memberships = memberships + redis.call('SREM', root .. 'client_tokens:' .. parts[2], member)
      if parts[3] ~= '' then
        memberships = memberships + redis.call('SREM', root .. 'family:' .. parts[3], member)
      end
      if parts[4] ~= '' then
        memberships = memberships
          + redis.call('SREM', root .. 'session_tokens:' .. parts[4], member)
      end
      if subject ~= '' then
        memberships = memberships + redis.call('SREM', root .. 'subject_tokens:' .. subject, member)
      end
    end
    entries = entries + redis.call('ZREM', index, entry)
  end
end

local access_removed = sweep(access, root .. RECORD.a, 3)
local refresh_removed = sweep(refresh, root .. RECORD.r, 3)
local sessions_removed = sweep(sessions, root .. 'session:', 1)

local left = 0
for _, set in ipairs({ index, access, refresh, sessions }) do
  left = left + redis.call('ZCOUNT', set, '-inf', now)
end
return { 1, entries, memberships, access_removed, refresh_removed, sessions_removed,
  rescheduled, left }
