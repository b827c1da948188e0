-- _grant.lua: library of the first step every grant script takes; include it after
--             _tokens.lua and _gcra.lua, whose functions it uses.
-- KEYS: none of its own (the caller passes its KEYS table: client record, presented
--       code/token record, client rate-limit bucket, peer-IP rate-limit bucket)
-- ARGV: none of its own
-- Returns: defines open_grant(); include it before first use

-- The client must be unchanged since the caller authenticated it (its generation), the
-- request within its rate limits, and the presented record must exist and belong to
-- that client. Returns the record as a map, or nil and the script's error reply.
local function open_grant(keys, generation, client_id, period_ms, client_limit, ip_limit)
  if redis.call('HGET', keys[1], 'gen') ~= generation then
    return nil, { 'stale' }
  end
  local admitted, wait, refused_by = admit_token_request(keys[1], keys[3], keys[4],
    period_ms, client_limit, ip_limit)
  if not admitted then
    return nil, { 'limited', wait, refused_by }
  end
  local flat = redis.call('HGETALL', keys[2])
  if #flat == 0 then
    return nil, { 'invalid' }
  end
  local record = hash_to_map(flat)
  if record.c ~= client_id then
    return nil, { 'invalid' }
  end
  return record, nil
end
