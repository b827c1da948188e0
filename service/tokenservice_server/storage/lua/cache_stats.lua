-- cache_stats.lua: counters and size of one namespace.
-- KEYS: [1] cache_generations, [2] cache_stats, [3] cache_config
-- ARGV: [1] namespace, [2] default entry cap, [3] most expired index entries to drop first
-- Returns: {hits, misses, live entries, evictions, bytes of live values, entry cap in force, invalidations}
--
-- Index entries whose values expired are dropped first (up to ARGV[3]), so the byte count
-- matches the live entries.
-- include: _cache.lua
local generations, stats, config = KEYS[1], KEYS[2], KEYS[3]
local ns = ARGV[1]
local names = cache_names(ns, cache_generation(generations, ns))
local now = cache_now()
cache_drop_expired(names, stats, now, tonumber(ARGV[3]))

local counters = redis.call('HMGET', stats, ns .. ':hits', ns .. ':misses', ns .. ':evictions',
  ns .. ':bytes', ns .. ':invalidations')
local function number(text) return tonumber(text or '0') or 0 end
return {
  number(counters[1]), number(counters[2]), redis.call('ZCOUNT', names.exp, now, '+inf'),
  number(counters[3]), number(counters[4]), cache_cap(config, ns, ARGV[2]), number(counters[5]),
}
