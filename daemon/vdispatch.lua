#!lua name=vdispatch
--[[
The vdispatch Redis Function library: every state change of volunteers and requests, each
one atomic. vdispatchd loads it at start (FUNCTION LOAD REPLACE) and on every reconnect.

Keys (P is the configured key prefix, "vd:" by default):
  P.."vol:"..vid        hash: lat lon skills languages max_tasks team event_id avail task pool
                        (skills/languages are comma-joined; task = request holding the volunteer)
  P.."pool:city"        GEO set of the city's volunteers who are available and not held
  P.."pool:ev:"..eid    GEO set of one event's (concert, expo) available, unheld volunteers
  POOL..":s:"..skill    GEO set of the pooled volunteers of POOL who have that skill: a request
                        that needs a rare skill searches there, not among everyone nearby
  P.."tasks:"..vid      sorted set: request_id scored by assignment time (ms), rolling 24 h
  P.."req:"..rid        hash: state needed held done unmatched (held/done comma-joined vids)

A volunteer is in exactly one pool (and its skill sets) while available and not held, and in
none otherwise: that is the invariant that makes "no volunteer is held by two requests" a local check. Every
function that changes a request is idempotent by request_id, so a replayed Kafka message gets
the answer the first delivery got.
]]

local DAY_MS = 86400000

local function split(s)
  local t = {}
  if s == nil or s == false or s == '' then return t end
  for part in string.gmatch(s, '[^,]+') do t[#t + 1] = part end
  return t
end

-- The notes recorded at claim time, comma-joined in the order of the held list.
local function dists(rkey, held)
  local out = {}
  for _, vid in ipairs(split(held)) do out[#out + 1] = redis.call('HGET', rkey, 'd:' .. vid) or '0' end
  return table.concat(out, ',')
end

local function pool_key(p, event_id)
  if event_id == nil or event_id == false or event_id == '' then return p .. 'pool:city' end
  return p .. 'pool:ev:' .. event_id
end

-- Adds a volunteer to a pool and to the pool's set of each of their skills.
local function pool_add(pool, vid, lon, lat, skills)
  redis.call('GEOADD', pool, lon, lat, vid)
  for _, sk in ipairs(split(skills)) do redis.call('GEOADD', pool .. ':s:' .. sk, lon, lat, vid) end
end

local function pool_rem(pool, vid, skills)
  redis.call('ZREM', pool, vid)
  for _, sk in ipairs(split(skills)) do redis.call('ZREM', pool .. ':s:' .. sk, vid) end
end

-- Puts a volunteer back in their pool if they are available and hold no task.
local function repool(p, vkey, vid)
  local v = redis.call('HMGET', vkey, 'avail', 'task', 'lat', 'lon', 'event_id', 'skills')
  if v[1] ~= '1' or (v[2] and v[2] ~= '') or not v[3] then return 0 end
  local pool = pool_key(p, v[5])
  pool_add(pool, vid, v[4], v[3], v[6])
  redis.call('HSET', vkey, 'pool', pool)
  return 1
end

local function unpool(vkey, vid)
  local v = redis.call('HMGET', vkey, 'pool', 'skills')
  if v[1] and v[1] ~= '' then pool_rem(v[1], vid, v[2]) end
  redis.call('HSET', vkey, 'pool', '')
end

-- vd_vol_available KEYS: vol  ARGV: prefix vid lat lon skills languages max_tasks team event_id
local function vol_available(keys, args)
  local p, vkey, vid = args[1], keys[1], args[2]
  local task = redis.call('HGET', vkey, 'task')
  unpool(vkey, vid)
  redis.call('HSET', vkey, 'lat', args[3], 'lon', args[4], 'skills', args[5],
             'languages', args[6], 'max_tasks', args[7], 'team', args[8],
             'event_id', args[9], 'avail', '1')
  if task and task ~= '' then return 'held' end
  repool(p, vkey, vid)
  return 'pooled'
end

-- vd_vol_location KEYS: vol  ARGV: prefix vid lat lon
local function vol_location(keys, args)
  local vkey, vid = keys[1], args[2]
  if redis.call('EXISTS', vkey) == 0 then return 'unknown' end
  redis.call('HSET', vkey, 'lat', args[3], 'lon', args[4])
  local v = redis.call('HMGET', vkey, 'pool', 'skills')
  if v[1] and v[1] ~= '' then
    pool_add(v[1], vid, args[4], args[3], v[2])
    return 'moved'
  end
  return 'stored'
end

-- vd_vol_unavailable KEYS: vol  ARGV: prefix vid
local function vol_unavailable(keys, args)
  local vkey = keys[1]
  if redis.call('EXISTS', vkey) == 0 then return 'unknown' end
  unpool(vkey, args[2])
  redis.call('HSET', vkey, 'avail', '0')
  return 'left'
end

--[[ vd_search KEYS: pool req [skill-set ...]  ARGV: prefix lat lon radius_m offset count now_ms check_state
With skill sets given (the pool's sets of the request's required skills), searches the
smallest of them instead of the whole pool: everyone there has at least that rare skill.
Returns {'state', state, held, unmatched, notes} when check_state is 1 and the request already has a
record (a replay), else {'ok', total, without, id, dist, skills, languages, max_tasks,
tasks_24h, ...} for the candidates offset+1 .. offset+count nearest within radius_m. total is
how many the search returned before the offset was skipped; without counts volunteers in
range who lack the searched skill (only when nobody has it). Read-only. ]]
local function search(keys, args)
  local p, pool, rkey = args[1], keys[1], keys[2]
  if args[8] == '1' then
    local r = redis.call('HMGET', rkey, 'state', 'held', 'unmatched')
    if r[1] then return {'state', r[1], r[2] or '', r[3] or '', dists(rkey, r[2])} end
  end
  local best = nil
  for i = 3, #keys do
    local n = redis.call('ZCARD', keys[i])
    if best == nil or n < best then best, pool = n, keys[i] end
  end
  local offset, count = tonumber(args[5]), tonumber(args[6])
  local found = redis.call('GEOSEARCH', pool, 'FROMLONLAT', args[3], args[2],
                           'BYRADIUS', args[4], 'm', 'ASC', 'COUNT', offset + count, 'WITHDIST')
  -- Nobody with the rare skill in range: say how many without it were there (up to count),
  -- so that the outcome tells "no eligible volunteer" from "nobody in range".
  local without = 0
  if #found == 0 and pool ~= keys[1] then
    without = #redis.call('GEOSEARCH', keys[1], 'FROMLONLAT', args[3], args[2],
                          'BYRADIUS', args[4], 'm', 'COUNT', count, 'ANY')
  end
  local out = {'ok', #found, without}
  local since = tonumber(args[7]) - DAY_MS
  for i = offset + 1, #found do
    local vid, dist = found[i][1], found[i][2]
    local v = redis.call('HMGET', p .. 'vol:' .. vid, 'skills', 'languages', 'max_tasks')
    local n = redis.call('ZCOUNT', p .. 'tasks:' .. vid, '(' .. since, '+inf')
    out[#out + 1] = vid
    out[#out + 1] = dist
    out[#out + 1] = v[1] or ''
    out[#out + 1] = v[2] or ''
    out[#out + 1] = v[3] or '0'
    out[#out + 1] = n
  end
  return out
end

--[[ vd_claim KEYS: req  ARGV: prefix rid needed now_ms ttl_s default_cap vid note vid note ...
A note is "distance/radius/considered" as the search saw it; it is kept (field d:<vid>) so that
a replay republishes exactly what the first run published.
Claims, in the order given, volunteers who are still pooled and under their daily cap, until
the request holds `needed`. Idempotent: a request that already holds enough claims nobody new.
Returns {state, held, notes} with held comma-joined; state 'cancelled' or another end
state if the request ended meanwhile (then nobody is claimed). ]]
local function claim(keys, args)
  local p, rkey, rid = args[1], keys[1], args[2]
  local needed, now, ttl, cap0 = tonumber(args[3]), tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  local r = redis.call('HMGET', rkey, 'state', 'held')
  local state = r[1] or 'searching'
  if state ~= 'searching' then return {state, r[2] or '', dists(rkey, r[2])} end
  local held = split(r[2])
  local have = {}
  for _, v in ipairs(held) do have[v] = true end
  for i = 7, #args - 1, 2 do
    if #held >= needed then break end
    local vid = args[i]
    local vkey = p .. 'vol:' .. vid
    local v = redis.call('HMGET', vkey, 'avail', 'task', 'pool', 'max_tasks')
    if not have[vid] and v[1] == '1' and (not v[2] or v[2] == '') and v[3] and v[3] ~= ''
       and redis.call('ZSCORE', v[3], vid) then
      local tkey = p .. 'tasks:' .. vid
      redis.call('ZREMRANGEBYSCORE', tkey, '-inf', now - DAY_MS)
      local cap = tonumber(v[4]) or 0
      if cap <= 0 then cap = cap0 end
      if redis.call('ZCARD', tkey) < cap then
        unpool(vkey, vid)
        redis.call('HSET', vkey, 'task', rid)
        redis.call('HSET', rkey, 'd:' .. vid, args[i + 1])
        redis.call('ZADD', tkey, now, rid)
        redis.call('PEXPIRE', tkey, DAY_MS + 3600000)
        held[#held + 1] = vid
        have[vid] = true
      end
    end
  end
  if #held >= needed then state = 'confirmed' end
  redis.call('HSET', rkey, 'state', state, 'needed', needed, 'held', table.concat(held, ','))
  redis.call('EXPIRE', rkey, ttl)
  local joined = table.concat(held, ',')
  return {state, joined, dists(rkey, joined)}
end

--[[ vd_finish KEYS: req  ARGV: prefix rid needed unmatched_json ttl_s
Ends a request that could not get all its volunteers: records the unmatched outcome once.
Returns {state, held, unmatched, notes} as recorded (the earlier record on a replay). ]]
local function finish(keys, args)
  local rkey = keys[1]
  local r = redis.call('HMGET', rkey, 'state', 'held', 'unmatched')
  if r[1] and r[1] ~= 'searching' then return {r[1], r[2] or '', r[3] or '', dists(rkey, r[2])} end
  redis.call('HSET', rkey, 'state', 'unmatched', 'needed', args[3], 'held', r[2] or '',
             'unmatched', args[4])
  redis.call('EXPIRE', rkey, tonumber(args[5]))
  return {'unmatched', r[2] or '', args[4], dists(rkey, r[2])}
end

--[[ vd_cancel KEYS: req  ARGV: prefix rid ttl_s
Cancels a request and releases every volunteer it holds back to their pool; a released
assignment no longer counts toward the volunteer's daily cap. A cancel that arrives before its
request leaves a 'cancelled' record, so the request is never matched.
Returns {'cancelled', released, 'first'|'replay'}: a cancel seen again returns what the first
one released (its outputs may not have reached Kafka), or {'ended', state} when the request
had already ended otherwise. ]]
local function cancel(keys, args)
  local p, rkey, rid = args[1], keys[1], args[2]
  local r = redis.call('HMGET', rkey, 'state', 'held', 'done', 'released')
  if r[1] == 'cancelled' then return {'cancelled', r[4] or '', 'replay'} end
  if r[1] == 'completed' then return {'ended', r[1]} end
  local done = {}
  for _, v in ipairs(split(r[3])) do done[v] = true end
  local released = {}
  for _, vid in ipairs(split(r[2])) do
    local vkey = p .. 'vol:' .. vid
    if not done[vid] and redis.call('HGET', vkey, 'task') == rid then
      redis.call('HSET', vkey, 'task', '')
      redis.call('ZREM', p .. 'tasks:' .. vid, rid)
      repool(p, vkey, vid)
      released[#released + 1] = vid
    end
  end
  local joined = table.concat(released, ',')
  redis.call('HSET', rkey, 'state', 'cancelled', 'released', joined)
  redis.call('EXPIRE', rkey, tonumber(args[3]))
  return {'cancelled', joined, 'first'}
end

--[[ vd_complete KEYS: req  ARGV: prefix rid vid
A volunteer finished their task: they return to the pool (if still available). The request is
'completed' once every volunteer it held has finished.
Returns {'completed'|'partial', done, 'first'|'replay'} (a completion seen again answers as the
first did), or {'mismatch', reason} when the volunteer does not hold this request (a wrong
report: nothing changes). ]]
local function complete(keys, args)
  local p, rkey, rid, vid = args[1], keys[1], args[2], args[3]
  local vkey = p .. 'vol:' .. vid
  local task = redis.call('HGET', vkey, 'task')
  if task ~= rid then
    local c = redis.call('HGET', rkey, 'c:' .. vid)
    if c then return {c == '1' and 'completed' or 'partial', '', 'replay'} end
    return {'mismatch', 'volunteer does not hold this request'}
  end
  local r = redis.call('HMGET', rkey, 'state', 'held', 'done')
  redis.call('HSET', vkey, 'task', '')
  repool(p, vkey, vid)
  local done = split(r[3])
  done[#done + 1] = vid
  local state = 'partial'
  if #done >= #split(r[2]) and r[1] == 'confirmed' then state = 'completed' end
  if r[1] then
    redis.call('HSET', rkey, 'done', table.concat(done, ','), 'c:' .. vid,
               state == 'completed' and '1' or '0')
    if state == 'completed' then redis.call('HSET', rkey, 'state', 'completed') end
  end
  return {state, table.concat(done, ','), 'first'}
end

redis.register_function('vd_vol_available', vol_available)
redis.register_function('vd_vol_location', vol_location)
redis.register_function('vd_vol_unavailable', vol_unavailable)
redis.register_function{function_name = 'vd_search', callback = search, flags = {'no-writes'}}
redis.register_function('vd_claim', claim)
redis.register_function('vd_finish', finish)
redis.register_function('vd_cancel', cancel)
redis.register_function('vd_complete', complete)
