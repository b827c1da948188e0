-- _cache.lua: library of cache-database names and index upkeep, included by the cache_* scripts.
-- KEYS: none of its own (names follow storage/cache_keys.py exactly)
-- ARGV: none of its own
-- Returns: defines local functions; include it before first use
--
-- Per namespace and generation, the index is three keys: cache_lru (key -> access
-- sequence, the LRU order), cache_exp (key -> expiry in Unix ms) and cache_sizes (key ->
-- value bytes). They expire with their longest-lived entry, like the values they index.

-- Milliseconds of the server clock (frozen for the duration of a script).
local function cache_now()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end

-- The namespace's current generation: how many times it was invalidated.
local function cache_generation(generations, ns)
  return tonumber(redis.call('HGET', generations, ns) or '0')
end

-- Names of namespace ns at generation gen. Generation 0 keeps the plain cache:{ns}:{key}.
local function cache_names(ns, gen)
  local value = 'cache:' .. ns .. ':'
  if tonumber(gen) > 0 then value = 'cache:' .. ns .. '@' .. gen .. ':' end
  local suffix = ns .. ':' .. gen
  return {
    ns = ns,
    value = value,
    lease = 'cache_lease:' .. suffix .. ':',
    lru = 'cache_lru:' .. suffix,
    exp = 'cache_exp:' .. suffix,
    sizes = 'cache_sizes:' .. suffix,
    retired = 'cache_retired:' .. ns,
  }
end

-- The entry cap in force: cache_config's {ns}:max_entries when it is a positive number.
local function cache_cap(config, ns, default)
  local cap = tonumber(redis.call('HGET', config, ns .. ':max_entries') or '')
  if cap == nil or cap < 1 then cap = tonumber(default) end
  return math.floor(cap)
end

-- Drop a key's index entry, keeping the namespace's byte count right.
local function cache_forget(names, stats, key)
  local size = redis.call('HGET', names.sizes, key)
  if size then
    redis.call('HDEL', names.sizes, key)
    redis.call('HINCRBY', stats, names.ns .. ':bytes', -tonumber(size))
  end
  redis.call('ZREM', names.lru, key)
  redis.call('ZREM', names.exp, key)
end

-- Drop up to limit index entries whose values have expired.
local function cache_drop_expired(names, stats, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', names.exp, '-inf', '(' .. now, 'LIMIT', 0, limit)
  for _, key in ipairs(expired) do cache_forget(names, stats, key) end
end

-- Keep the index alive at least until until_ms (its entries' longest expiry).
local function cache_extend_index(names, until_ms)
  for _, name in ipairs({names.lru, names.exp, names.sizes}) do
    local current = redis.call('PEXPIRETIME', name)
    if current == -1 or (current >= 0 and current < until_ms) then
      redis.call('PEXPIREAT', name, until_ms)
    end
  end
end

-- The highest access sequence in use (0 for an empty namespace).
local function cache_last_sequence(names)
  local top = redis.call('ZRANGE', names.lru, -1, -1, 'WITHSCORES')
  return tonumber(top[2] or '0')
end
