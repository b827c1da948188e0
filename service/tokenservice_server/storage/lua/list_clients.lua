-- list_clients.lua: one page of clients in id order, after a given id.
-- KEYS: [1] auth:clients (sorted set of ids, all scores 0)
-- ARGV: [1] exclusive lower bound id ('' = from the start), [2] page length,
--       [3] client key prefix ('auth:client:')
-- Returns: array of HGETALL replies (flat field/value arrays), in id order
--
-- Paging by id rather than by offset keeps pages stable under concurrent inserts:
-- no client is returned twice and none that existed before the listing is skipped.
local low = '-'
if ARGV[1] ~= '' then
  low = '(' .. ARGV[1]
end
local ids = redis.call('ZRANGE', KEYS[1], low, '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[2]))
local page = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HGETALL', ARGV[3] .. id)
  if #fields > 0 then
    page[#page + 1] = fields
  end
end
return page
