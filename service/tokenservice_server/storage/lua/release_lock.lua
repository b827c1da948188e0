-- release_lock.lua: release a job lock, only if the caller still holds it.
-- KEYS: [1] the lock key
-- ARGV: [1] the caller's lock token
-- Returns: 1 released, 0 held by someone else or already expired
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
