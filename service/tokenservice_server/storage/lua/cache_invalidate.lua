-- cache_invalidate.lua: make every value of a namespace unreachable in O(1).
-- KEYS: [1] cache_generations, [2] cache_stats
-- ARGV: [1] namespace
-- Returns: the number of live entries that became unreachable
--
-- Every value name carries the namespace's generation, so moving to the next generation
-- is all it takes: nothing is deleted here, however much the namespace holds. The old
-- generation's values and index keep their TTLs and expire on their own; it is also
-- listed in cache_retired:{ns}, so later writes delete its entries a few at a time
-- (cache_set.lua), long before those TTLs run out.
-- include: _cache.lua
local generations, stats = KEYS[1], KEYS[2]
local ns = ARGV[1]
local gen = cache_generation(generations, ns)
local names = cache_names(ns, gen)

local live = redis.call('ZCOUNT', names.exp, cache_now(), '+inf')
redis.call('HINCRBY', generations, ns, 1)
local index_expires = redis.call('PEXPIRETIME', names.lru)
if index_expires ~= -2 then
  redis.call('ZADD', names.retired, gen, gen)
  local current = redis.call('PEXPIRETIME', names.retired)
  if index_expires > 0 and (current == -1 or current < index_expires) then
    redis.call('PEXPIREAT', names.retired, index_expires)
  end
end
redis.call('HINCRBY', stats, ns .. ':invalidations', 1)
redis.call('HSET', stats, ns .. ':bytes', 0)
return live
