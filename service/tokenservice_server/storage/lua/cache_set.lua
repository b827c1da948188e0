-- cache_set.lua: write values of one namespace, all or none, evicting LRU entries beyond its cap.
-- KEYS: [1] cache_generations, [2] cache_stats, [3] cache_config
-- ARGV: [1] namespace, [2] default entry cap, [3] fill-lease token to release ('' for none), [4] retired entries to reclaim per written entry, [5..] key, value, TTL in ms (distinct keys)
-- Returns: {entries evicted, entry cap in force}, or {-1, cap} when the keys outnumber the cap (nothing written)
--
-- Eviction happens in this same atomic step: while the namespace is full, the entry with
-- the lowest access sequence (the least recently used) goes. Every key of this write is
-- newer than anything else and there are at most cap of them, so a write never evicts
-- its own keys. A namespace far above its cap (an operator just lowered it) shrinks by at
-- most 1000 extra entries per write, so no single script blocks the server for long. Each
-- write also deletes a few entries of an invalidated generation (cache_retired:{ns}), so
-- old generations are gone well before their TTLs end.
-- include: _cache.lua
local generations, stats, config = KEYS[1], KEYS[2], KEYS[3]
local ns = ARGV[1]
local names = cache_names(ns, cache_generation(generations, ns))
local now = cache_now()
local cap = cache_cap(config, ns, ARGV[2])
local writes = (#ARGV - 4) / 3
if writes > cap then
  return {-1, cap}
end

local function reclaim(budget)
  while budget > 0 do
    local oldest = redis.call('ZRANGE', names.retired, 0, 0)[1]
    if not oldest then return end
    local old = cache_names(ns, oldest)
    local victims = redis.call('ZRANGE', old.lru, 0, budget - 1)
    for _, key in ipairs(victims) do redis.call('DEL', old.value .. key) end
    if #victims < budget then
      redis.call('DEL', old.lru, old.exp, old.sizes)
      redis.call('ZREM', names.retired, oldest)
    else
      redis.call('ZREM', old.lru, unpack(victims))
      redis.call('ZREM', old.exp, unpack(victims))
      redis.call('HDEL', old.sizes, unpack(victims))
    end
    budget = budget - #victims
  end
end

-- Entries whose values expired no longer count against the cap.
cache_drop_expired(names, stats, now, 100)

local count = redis.call('ZCARD', names.lru)
local sequence = cache_last_sequence(names)
local evicted, latest, added_bytes = 0, 0, 0
local eviction_budget = writes + 1000
for i = 5, #ARGV, 3 do
  local key, value, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local previous = redis.call('HGET', names.sizes, key)
  if previous then
    added_bytes = added_bytes - tonumber(previous)
  else
    while count >= cap and eviction_budget > 0 do
      local victim = redis.call('ZPOPMIN', names.lru)[1]
      if not victim then break end
      eviction_budget = eviction_budget - 1
      -- DEL answers 0 for a value that expired or vanished: that frees a slot, evicts nothing.
      evicted = evicted + redis.call('DEL', names.value .. victim)
      cache_forget(names, stats, victim)
      count = count - 1
    end
    count = count + 1
  end
  redis.call('SET', names.value .. key, value, 'PX', ttl)
  sequence = sequence + 1
  redis.call('ZADD', names.lru, sequence, key)
  redis.call('ZADD', names.exp, now + ttl, key)
  redis.call('HSET', names.sizes, key, #value)
  added_bytes = added_bytes + #value
  latest = math.max(latest, now + ttl)
end

if ARGV[3] ~= '' then
  local lease = names.lease .. ARGV[5]
  if redis.call('GET', lease) == ARGV[3] then redis.call('DEL', lease) end
end
if evicted > 0 then redis.call('HINCRBY', stats, ns .. ':evictions', evicted) end
redis.call('HINCRBY', stats, ns .. ':bytes', added_bytes)
cache_extend_index(names, latest)
reclaim(tonumber(ARGV[4]) * writes)
return {evicted, cap}
