-- cache_delete.lua: remove one value of a namespace and its index entry.
-- KEYS: [1] cache_generations, [2] cache_stats
-- ARGV: [1] namespace, [2] key
-- Returns: 1 when a live value was removed, 0 when there was none
-- include: _cache.lua
local names = cache_names(ARGV[1], cache_generation(KEYS[1], ARGV[1]))
local removed = redis.call('DEL', names.value .. ARGV[2])
cache_forget(names, KEYS[2], ARGV[2])
return removed
