-- cache_get.lua: read keys of one namespace; every hit becomes the most recently used entry.
-- KEYS: [1] cache_generations, [2] cache_stats
-- ARGV: [1] namespace, [2] TTL in ms for a live value found without one, [3] fill-lease token ('' for none; one key only), [4] lease TTL in ms, [5..] keys
-- Returns: {lease status (0 none, 1 granted, 2 held elsewhere), then per key: found (1 or 0), value, remaining TTL in ms}
--
-- A value the index does not know (written before the index existed, such as the existing
-- cache:resource:* keys, or by hand) is adopted on its first hit, and one without a TTL
-- gets ARGV[2], so no cache key lives forever. A miss drops a stale index entry.
-- include: _cache.lua
local generations, stats = KEYS[1], KEYS[2]
local names = cache_names(ARGV[1], cache_generation(generations, ARGV[1]))
local now = cache_now()
local adopt_ttl = tonumber(ARGV[2])

local sequence = cache_last_sequence(names)
local hits, misses, latest = 0, 0, 0
local reply = {0}
for i = 5, #ARGV do
  local key = ARGV[i]
  local name = names.value .. key
  local value = redis.pcall('GET', name)
  if type(value) == 'table' then
    value = false -- another type under a cache name (WRONGTYPE) is not a cache value: a miss
  end
  if value then
    local ttl = redis.call('PTTL', name)
    if ttl < 0 then
      redis.call('PEXPIRE', name, adopt_ttl)
      ttl = adopt_ttl
    end
    sequence = sequence + 1
    if redis.call('ZADD', names.lru, sequence, key) == 1 then
      redis.call('ZADD', names.exp, now + ttl, key)
      redis.call('HSET', names.sizes, key, #value)
      redis.call('HINCRBY', stats, names.ns .. ':bytes', #value)
      latest = math.max(latest, now + ttl)
    end
    hits = hits + 1
    reply[#reply + 1] = 1
    reply[#reply + 1] = value
    reply[#reply + 1] = ttl
  else
    if redis.call('ZSCORE', names.exp, key) then cache_forget(names, stats, key) end
    misses = misses + 1
    reply[#reply + 1] = 0
    reply[#reply + 1] = ''
    reply[#reply + 1] = 0
  end
end

if ARGV[3] ~= '' and #ARGV == 5 and misses == 1 then
  if redis.call('SET', names.lease .. ARGV[5], ARGV[3], 'NX', 'PX', tonumber(ARGV[4])) then
    reply[1] = 1
  else
    reply[1] = 2
  end
end
if hits > 0 then redis.call('HINCRBY', stats, names.ns .. ':hits', hits) end
if misses > 0 then redis.call('HINCRBY', stats, names.ns .. ':misses', misses) end
if latest > 0 then cache_extend_index(names, latest) end
return reply
