-- _gcra.lua: library of the GCRA rate limiter (generic cell rate algorithm), included by
--            the scripts that limit requests (rate_limit.lua, check_access_token.lua).
-- KEYS: none of its own (buckets are keys 'auth:rate_limit:{scope}:{id}' of the caller)
-- ARGV: none of its own
-- Returns: defines local functions gcra_now() and gcra_admit(buckets, now)
--
-- A bucket {key, limit, period_us, label} admits `limit` requests per `period_us`
-- microseconds, up to `limit` of them at once, refilled evenly (one every period/limit).
-- Its key holds one number, the theoretical arrival time (TAT, Unix microseconds) of the
-- next request, and expires when the bucket is full again, so an idle bucket costs
-- nothing. Time is the server's TIME, the same for every replica of the service.
-- Everything runs inside one script, so admission is exact under any concurrency.

local function gcra_now()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000000 + tonumber(time[2])
end

-- Admit one request in every bucket, or in none: a request refused by one bucket takes
-- nothing from the others. Buckets with a limit of 0 are unlimited and skipped.
-- Returns: admitted (true/false), microseconds until a retry can be admitted, and the
-- label of the bucket that refused (the one with the longest wait).
local function gcra_admit(buckets, now)
  local updates = {}
  local wait, refused_by = 0, nil
  for _, bucket in ipairs(buckets) do
    local key, limit, period = bucket[1], bucket[2], bucket[3]
    if limit > 0 then
      -- Integer microseconds: `limit` emissions always fit the burst exactly.
      local interval = math.max(1, math.floor(period / limit))
      local tat = tonumber(redis.call('GET', key)) or now
      if tat < now then
        tat = now
      end
      local next_tat = tat + interval
      local conforming_at = next_tat - limit * interval
      if conforming_at > now then
        if refused_by == nil or conforming_at - now > wait then
          wait, refused_by = conforming_at - now, bucket[4]
        end
      else
        updates[#updates + 1] = { key, next_tat }
      end
    end
  end
  if refused_by ~= nil then
    return false, wait, refused_by
  end
  for _, update in ipairs(updates) do
    local ttl_ms = math.ceil((update[2] - now) / 1000)
    redis.call('SET', update[1], string.format('%.0f', update[2]), 'PX', ttl_ms)
  end
  return true, 0, nil
end

-- Admit one token-endpoint request against the client's bucket (a 'rate_limit' field,
-- requests per minute, in the client record replaces the default) and the peer IP's.
-- Returns what gcra_admit returns, with bucket labels 'issue_client' and 'issue_ip'.
local function admit_token_request(client_key, client_bucket, ip_bucket, period_ms,
                                   client_limit, ip_limit)
  local period_us = tonumber(period_ms) * 1000
  local override = tonumber(redis.call('HGET', client_key, 'rate_limit'))
  local client = { client_bucket, tonumber(client_limit), period_us, 'issue_client' }
  if override ~= nil and override > 0 then
    client = { client_bucket, override, 60000000, 'issue_client' }
  end
  local ip = { ip_bucket, tonumber(ip_limit), period_us, 'issue_ip' }
  return gcra_admit({ client, ip }, gcra_now())
end
