-- cleanup_cache.lua: one batch of the cache cleanup job for one namespace.
-- KEYS: [1] cache_generations, [2] cache_stats, [3] the job's lock key
-- ARGV: [1] namespace, [2] batch size, [3] lock token held by the caller, [4] lock TTL (ms)
-- Returns: {lock held (1, or 0: nothing done), expired index entries removed, entries of
--   invalidated generations deleted, invalidated generations finished, work left (1/0)}
--
-- The current generation's cache_exp index scores keys by expiry, so only the entries
-- that expired are read (cost proportional to them); each leaves cache_lru, cache_exp
-- and cache_sizes, and the namespace's byte count drops by its size. A value still alive
-- (its TTL was set by hand) is rescored instead. Invalidated generations listed in
-- cache_retired:{ns} are unreachable: their values and index keys are deleted, oldest
-- generation first, within the same batch budget (their bytes were already zeroed).
-- A namespace whose index expired altogether (every entry did) gets its byte count reset.
-- include: _cache.lua
local generations, stats, lock = KEYS[1], KEYS[2], KEYS[3]
local ns, batch = ARGV[1], tonumber(ARGV[2])
if redis.call('GET', lock) ~= ARGV[3] then
  return { 0, 0, 0, 0, 0 }
end
redis.call('PEXPIRE', lock, tonumber(ARGV[4]))
local names = cache_names(ns, cache_generation(generations, ns))
local now = cache_now()

local expired_removed = 0
local due = redis.call('ZRANGEBYSCORE', names.exp, '-inf', now, 'LIMIT', 0, batch)
for _, key in ipairs(due) do
  local ttl = redis.call('PTTL', names.value .. key)
  if ttl > 0 then
    redis.call('ZADD', names.exp, now + ttl, key)
  else
    cache_forget(names, stats, key)
    expired_removed = expired_removed + 1
  end
end

-- The index expires with its longest-lived entry: once it is gone, so are the bytes.
if redis.call('EXISTS', names.lru) == 0 and tonumber(redis.call('HGET', stats, ns .. ':bytes') or '0') ~= 0 then
  redis.call('HSET', stats, ns .. ':bytes', 0)
end

local budget, retired_removed, finished = batch, 0, 0
while budget > 0 do
  local oldest = redis.call('ZRANGE', names.retired, 0, 0)[1]
  if not oldest then break end
  local old = cache_names(ns, oldest)
  local victims = redis.call('ZRANGE', old.lru, 0, budget - 1)
  for _, key in ipairs(victims) do redis.call('DEL', old.value .. key) end
  retired_removed = retired_removed + #victims
  if #victims < budget then
    -- Values no longer in the LRU (already expired) still have exp/size entries: gone too.
    redis.call('DEL', old.lru, old.exp, old.sizes)
    redis.call('ZREM', names.retired, oldest)
    finished = finished + 1
  else
    redis.call('ZREM', old.lru, unpack(victims))
    redis.call('ZREM', old.exp, unpack(victims))
    redis.call('HDEL', old.sizes, unpack(victims))
  end
  budget = budget - #victims
  if #victims == 0 then budget = budget - 1 end
end

local more = 0
if redis.call('ZCOUNT', names.exp, '-inf', now) > 0 or redis.call('EXISTS', names.retired) == 1 then
  more = 1
end
return { 1, expired_removed, retired_removed, finished, more }
