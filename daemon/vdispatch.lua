#!lua name=vdispatch_7
--[[
The vdispatch Redis Function library, version 7: every state change of volunteers and
requests, each one atomic. Version 7 keeps the keys and data of versions 4 to 6 (they run
side by side); a new request with nobody within its range ends in its round call. Version 6's
round call took one more argument (at_once: a round of one request claims its certain choice
in the same call). Version 5 added a coordinator's assignment
(vd7_assign) and the set of requests a person must staff (P.."unstaffed"). The version is in
the library's name and in every function's name (vd7_*), so that two versions can run side by
side during a rolling upgrade: vdispatchd loads its own version when it is missing and never
replaces another one (see daemon/vd_redis.c).

Keys (P is the configured key prefix, "vd:" by default; it ends with ':' and holds no '/'; IDs
are [A-Za-z0-9._:-] and never hold '/', so no ID can make one key look like another, and no
deployment's prefix can reach another deployment's keys):
  P.."vol/"..vid        hash: lat lon skills languages max_tasks team event_id avail task pool
                        (skills/languages are comma-joined; task = request holding the volunteer)
  P.."vols"             sorted set: every volunteer with a record, scored by the last event
                        about them (ms): records nobody refreshed for redis.volunteer_ttl_s go
  P.."pool/city"        GEO set of the city's volunteers who are available and not held
  P.."pool/ev/"..eid    GEO set of one event's (concert, expo) available, unheld volunteers
  POOL.."/s/"..skill    GEO set of the pooled volunteers of POOL who have that skill: a request
                        that needs a rare skill searches there, not among everyone nearby
  POOL.."/open"         GEO set of the requests of POOL that wait with an open place and nobody
                        to offer it to (their offers are out): a volunteer joining the pool
                        near one makes it due, so it joins the next round
  P.."tasks/"..vid      sorted set: request_id scored by assignment time (ms), rolling 24 h
  P.."req/"..rid        hash, one per request: state needed rq (what matching and the outputs
                        need of the request, never the resident's own data) need (its need
                        score, computed by the daemon at admission) at exp (start and
                        end, ms) w (its pool's open set while it waits there) held
                        (volunteers confirmed) offers (outstanding) tried
                        (declined or timed out) done (finished: completed or released)
                        attempts, o:<vid> "offer_id|attempt|deadline_ms", d:<vid> the match
                        note, t:<vid> when the volunteer was confirmed, c:<vid> how their task
                        ended, unmatched (outcome JSON), f:<n> the facts (event log) with seq
                        and pub (see fact()), b:<vid> the coordinator who assigned the
                        volunteer, x:<sha1 of an assignment's event id> the fact it made
  P.."due"              sorted set: request_id scored by when an instance must look at it next
                        (scheduled start, offer deadline, expires_at, task timeout, lease)
  P.."res/"..resident   the volunteer who last completed a task for that resident (an ID; it
                        expires after matching.continuity_days): continuity for the next request
  P.."probe"            a short-lived key vd7_probe writes to learn that Redis takes writes
  P.."events"           set: the events whose pool has volunteers (for the pool gauges)
  P.."unstaffed"        sorted set: the requests that ended unmatched or expired with volunteers
                        missing, scored by when (ms): what a coordinator must staff or cancel
                        (vd7_assign and vd7_cancel take them out; vd7_sweep drops those whose
                        record's time is over)

Matching runs in rounds, per pool: vd7_round admits the round's new requests and returns the
candidate edges of every request that needs a volunteer, the daemon solves the assignment
(common/vd_assign.c), and vd7_claim applies it, each pair re-checked atomically.

A volunteer is in exactly one pool (and its skill sets) while available and not held, and in
none otherwise: that is the invariant that makes "no volunteer is held by two requests" a local
check. Every function that changes a request is idempotent by request_id, so a replayed Kafka
message gets the answer the first delivery got.

Redis does not roll back a function that raises after a write, so every function checks its
arguments (IDs, numbers, coordinates within what GEOADD accepts) and its keys before its first
write, and answers "VDINPUT <what>" when one is bad. Nothing after the first write raises.
Time is Redis's own (TIME), so instances with skewed clocks agree on every deadline.
]]

local DAY_MS = 86400000
local GEO_LAT = 85.05112878 -- the latitudes GEOADD accepts
local EARTH_R = 6372797.560856 -- the radius Redis' GEO distances use

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ---- arguments, checked before anything is written --------------------------------------

local function is_id(s)
  return type(s) == 'string' and #s >= 1 and #s <= 64 and not string.find(s, '[^%w._:-]')
end

local function is_id_or_empty(s) return s == '' or is_id(s) end

-- A comma-joined list of IDs (may be empty).
local function is_ids(s)
  if type(s) ~= 'string' then return false end
  if s == '' then return true end
  for part in string.gmatch(s .. ',', '([^,]*),') do
    if not is_id(part) then return false end
  end
  return true
end

local function int(s, lo, hi)
  local n = tonumber(s)
  if n == nil or n ~= n or n ~= math.floor(n) or n < lo or n > hi then return nil end
  return n
end

local function real(s, lo, hi)
  local n = tonumber(s)
  if n == nil or n ~= n or n < lo or n > hi then return nil end
  return n
end

local function lat_ok(s) return real(s, -GEO_LAT, GEO_LAT) end
local function lon_ok(s) return real(s, -180, 180) end

-- Collects what is wrong with the arguments; bad() turns it into the error reply.
local function checker()
  local ch = {}
  function ch.need(ok, what)
    if not ok and not ch.err then ch.err = what end
    return ok
  end
  return ch
end

local function bad(ch) return redis.error_reply('VDINPUT ' .. ch.err) end

local function split(s)
  local t = {}
  if s == nil or s == false or s == '' then return t end
  for part in string.gmatch(s, '[^,]+') do t[#t + 1] = part end
  return t
end

local function has(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

local function without(list, x)
  local out = {}
  for _, v in ipairs(list) do if v ~= x then out[#out + 1] = v end end
  return out
end

-- ---- keys ---------------------------------------------------------------------------------

local K = {}
function K.vol(p, vid) return p .. 'vol/' .. vid end
function K.tasks(p, vid) return p .. 'tasks/' .. vid end
function K.req(p, rid) return p .. 'req/' .. rid end
function K.pool(p, event_id)
  if event_id == nil or event_id == false or event_id == '' then return p .. 'pool/city' end
  return p .. 'pool/ev/' .. event_id
end

-- ---- volunteers ---------------------------------------------------------------------------

-- Adds a volunteer to a pool and to the pool's set of each of their skills. An event's pool
-- is listed in P.."events" (for the pool gauges; vd7_sweep drops it once the pool is empty).
local function pool_add(pool, vid, lon, lat, skills)
  redis.call('GEOADD', pool, lon, lat, vid)
  local p, ev = string.match(pool, '^(.*)pool/ev/([^/]+)$')
  if ev then redis.call('SADD', p .. 'events', ev) end
  for _, sk in ipairs(split(skills)) do redis.call('GEOADD', pool .. '/s/' .. sk, lon, lat, vid) end
end

local function pool_rem(pool, vid, skills)
  redis.call('ZREM', pool, vid)
  for _, sk in ipairs(split(skills)) do redis.call('ZREM', pool .. '/s/' .. sk, vid) end
end

--[[ Puts a volunteer back in their pool if they are available and hold no task. A location
stored out of GEO range (written by an older version) is not pooled: the volunteer waits,
unpooled, for an event with a valid place. ]]
--[[ A volunteer who just joined a pool (or moved in it) may serve a request that waits with an
open place (an offer-mode request with nothing more to offer while its offers are out): those
within rmax of them are made due now, so that any instance takes them up into a round. ]]
local function nudge(pool, lon, lat, rmax)
  if not rmax or rmax <= 0 then return end
  local rids = redis.call('GEOSEARCH', pool .. '/open', 'FROMLONLAT', lon, lat, 'BYRADIUS', rmax,
                          'm', 'COUNT', 16, 'ANY')
  if #rids == 0 then return end
  local due = string.match(pool, '^(.*)pool/') .. 'due'
  local now = now_ms()
  for _, rid in ipairs(rids) do redis.call('ZADD', due, 'LT', now, rid) end
end

local function repool(p, vkey, vid, rmax)
  local v = redis.call('HMGET', vkey, 'avail', 'task', 'lat', 'lon', 'event_id', 'skills')
  if v[1] ~= '1' or (v[2] and v[2] ~= '') or not lat_ok(v[3]) or not lon_ok(v[4]) then
    return 0
  end
  local pool = K.pool(p, v[5])
  pool_add(pool, vid, v[4], v[3], v[6])
  redis.call('HSET', vkey, 'pool', pool)
  nudge(pool, v[4], v[3], rmax)
  return 1
end

-- Takes the volunteer out of their pool; pool and skills as the caller read them, if it did.
local function unpool(vkey, vid, pool, skills)
  if pool == nil then
    local v = redis.call('HMGET', vkey, 'pool', 'skills')
    pool, skills = v[1], v[2]
  end
  if pool and pool ~= '' then pool_rem(pool, vid, skills) end
  redis.call('HSET', vkey, 'pool', '')
end

-- KEYS: vol vols; ARGV: prefix vid ...: the common checks of the volunteer functions.
local function vol_args(keys, args, ch)
  local p, vid = args[1], args[2]
  ch.need(is_id(vid), 'volunteer_id')
  ch.need(is_id(vid) and keys[1] == K.vol(p, vid) and keys[2] == p .. 'vols', 'keys')
  return p, vid
end

-- vd7_vol_available KEYS: vol vols  ARGV: prefix vid lat lon skills languages max_tasks team event_id
-- radius_max_m
local function vol_available(keys, args)
  local ch = checker()
  local p, vid = vol_args(keys, args, ch)
  ch.need(lat_ok(args[3]), 'location.lat')
  ch.need(lon_ok(args[4]), 'location.lon')
  ch.need(is_ids(args[5]), 'skills')
  ch.need(is_ids(args[6]), 'languages')
  ch.need(int(args[7], 0, 100), 'max_tasks_per_day')
  ch.need(is_id_or_empty(args[8]), 'team')
  ch.need(is_id_or_empty(args[9]), 'event_id')
  local rmax = int(args[10], 1, 1e7)
  ch.need(rmax, 'radius_max_m')
  if ch.err then return bad(ch) end
  local vkey = keys[1]
  local task = redis.call('HGET', vkey, 'task')
  unpool(vkey, vid)
  redis.call('HSET', vkey, 'lat', args[3], 'lon', args[4], 'skills', args[5],
             'languages', args[6], 'max_tasks', args[7], 'team', args[8],
             'event_id', args[9], 'avail', '1')
  redis.call('ZADD', keys[2], now_ms(), vid)
  if task and task ~= '' then return 'held' end
  repool(p, vkey, vid, rmax)
  return 'pooled'
end

-- vd7_vol_location KEYS: vol vols  ARGV: prefix vid lat lon radius_max_m
local function vol_location(keys, args)
  local ch = checker()
  local _, vid = vol_args(keys, args, ch)
  ch.need(lat_ok(args[3]), 'location.lat')
  ch.need(lon_ok(args[4]), 'location.lon')
  local rmax = int(args[5], 1, 1e7)
  ch.need(rmax, 'radius_max_m')
  if ch.err then return bad(ch) end
  local vkey = keys[1]
  if redis.call('EXISTS', vkey) == 0 then return 'unknown' end
  redis.call('HSET', vkey, 'lat', args[3], 'lon', args[4])
  redis.call('ZADD', keys[2], now_ms(), vid)
  local v = redis.call('HMGET', vkey, 'pool', 'skills')
  if v[1] and v[1] ~= '' then
    pool_add(v[1], vid, args[4], args[3], v[2])
    nudge(v[1], args[4], args[3], rmax)
    return 'moved'
  end
  return 'stored'
end

-- vd7_vol_unavailable KEYS: vol vols  ARGV: prefix vid
local function vol_unavailable(keys, args)
  local ch = checker()
  local _, vid = vol_args(keys, args, ch)
  if ch.err then return bad(ch) end
  local vkey = keys[1]
  if redis.call('EXISTS', vkey) == 0 then return 'unknown' end
  unpool(vkey, vid)
  redis.call('HSET', vkey, 'avail', '0')
  redis.call('ZADD', keys[2], now_ms(), vid)
  return 'left'
end

--[[ vd7_sweep KEYS: vols unstaffed  ARGV: prefix ttl_ms limit request_ttl_ms
Removes up to limit volunteer records that no event refreshed for ttl_ms: out of their pool,
record deleted. One who holds a task stays until it ends (a task timeout ends it at the latest)
and is looked at again a ttl later, unless the request holding them has no record any more.
Their rolling 24 h task count expires on its own. Unstaffed requests that ended longer than
request_ttl_ms ago and whose record is gone leave the unstaffed set (up to limit). ]]
local function sweep(keys, args)
  local ch = checker()
  local p = args[1]
  local ttl, limit = int(args[2], 1, 1e12), int(args[3], 1, 10000)
  local rttl = int(args[4], 1, 1e12)
  ch.need(ttl and limit and rttl, 'ttl/limit/request_ttl')
  ch.need(keys[1] == p .. 'vols' and keys[2] == p .. 'unstaffed', 'keys')
  if ch.err then return bad(ch) end
  local now = now_ms()
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', keys[2], '-inf', now - rttl, 'LIMIT', 0, limit)) do
    if redis.call('EXISTS', K.req(p, rid)) == 0 then redis.call('ZREM', keys[2], rid) end
  end
  -- One listed event a call: dropped once nobody is in its pool.
  local ev = redis.call('SRANDMEMBER', p .. 'events')
  if ev and redis.call('EXISTS', K.pool(p, ev)) == 0 then redis.call('SREM', p .. 'events', ev) end
  local vids = redis.call('ZRANGEBYSCORE', keys[1], '-inf', now - ttl, 'LIMIT', 0, limit)
  local gone = 0
  for _, vid in ipairs(vids) do
    local vkey = K.vol(p, vid)
    local task = redis.call('HGET', vkey, 'task')
    if task and task ~= '' and redis.call('EXISTS', K.req(p, task)) == 1 then
      redis.call('ZADD', keys[1], now, vid)
    else
      unpool(vkey, vid)
      redis.call('DEL', vkey)
      redis.call('ZREM', keys[1], vid)
      gone = gone + 1
    end
  end
  return gone
end

-- vd7_probe KEYS: probe  A write that tells the daemon Redis takes writes (and has this library).
local function probe(keys, args)
  redis.call('SET', keys[1], '1', 'PX', 10000)
  return 'ok'
end

-- ---- requests ----------------------------------------------------------------------------

--[[ The request's states and the moves between them; vd_state.h has the same table with a
comment per state, and docs/states.dot draws it (unit tests check the three agree).
"received" is the state of a request with no record yet. ]]
local MOVES = {
  received  = {scheduled = true, searching = true, expired = true, cancelled = true},
  scheduled = {searching = true, expired = true, cancelled = true},
  searching = {offered = true, confirmed = true, unmatched = true, expired = true, cancelled = true},
  offered   = {searching = true, confirmed = true, unmatched = true, expired = true, cancelled = true},
  confirmed = {completed = true, cancelled = true},
  unmatched = {confirmed = true, cancelled = true}, -- confirmed: a coordinator staffed it
  expired   = {confirmed = true, cancelled = true},
  completed = {}, cancelled = {},
}
local ACTIVE = {scheduled = true, searching = true, offered = true}
-- Ended, or confirmed: what a task timeout can still free volunteers of.
local HOLDING = {confirmed = true, unmatched = true, expired = true}

-- The one place a request changes state: refuses a move the table does not allow. Every
-- caller moves only along the table, so this never fires after a write.
local function move(r, to)
  if r.state == to then return end
  if not MOVES[r.state][to] then
    error('vdispatch: request ' .. r.rid .. ': illegal move ' .. r.state .. ' -> ' .. to)
  end
  r.state = to
end

local F = {'state', 'needed', 'held', 'offers', 'tried', 'done', 'attempts', 'at', 'exp', 'seq', 'pub',
           'w'}

--[[ Common ARGV of the request functions: prefix rid ttl_s lease_ms max_offers
offer_timeout_ms task_timeout_ms want_rq radius_max_m; KEYS[1] is the request's hash, KEYS[2]
the due set.
want_rq 1 asks for the request's stored description in the reply (a job that is not the
request's own event needs it). Returns the context, or nil after noting the error in ch. ]]
local function context(keys, args, ch)
  local p, rid = args[1], args[2]
  local c = {p = p, rid = rid, now = now_ms(), ttl = int(args[3], 1, 1e9),
             lease = int(args[4], 1, 1e9), max_offers = int(args[5], 1, 1000),
             timeout = int(args[6], 0, 1e12), task_ms = int(args[7], 0, 1e12),
             want_rq = args[8] == '1', rmax = int(args[9], 1, 1e7), rkey = keys[1], due = keys[2]}
  ch.need(is_id(rid), 'request_id')
  ch.need(c.ttl and c.lease and c.max_offers and c.timeout and c.task_ms and c.rmax,
          'common arguments')
  ch.need(is_id(rid) and keys[1] == K.req(p, rid) and keys[2] == p .. 'due', 'keys')
  return c
end

local function load(c)
  local v = redis.call('HMGET', c.rkey, unpack(F))
  return {rid = c.rid, state = v[1] or 'received', needed = tonumber(v[2]) or 1,
          held = split(v[3]), offers = split(v[4]), tried = split(v[5]), done = split(v[6]),
          attempts = tonumber(v[7]) or 0, at = tonumber(v[8]) or 0, exp = tonumber(v[9]) or 0,
          seq = tonumber(v[10]) or 0, seq0 = tonumber(v[10]) or 0, pub = tonumber(v[11]) or 0,
          w = v[12]}
end

local function save(c, r)
  redis.call('HSET', c.rkey, 'state', r.state, 'needed', r.needed, 'held', table.concat(r.held, ','),
             'offers', table.concat(r.offers, ','), 'tried', table.concat(r.tried, ','),
             'done', table.concat(r.done, ','), 'attempts', r.attempts, 'seq', r.seq)
  -- A request waiting with an open place (w: its pool's open set) leaves it once the place is
  -- filled or the request no longer searches.
  if r.w and r.w ~= '' and not ((r.state == 'searching' or r.state == 'offered')
                                and r.needed - #r.held - #r.offers > 0) then
    redis.call('ZREM', r.w, c.rid)
    redis.call('HDEL', c.rkey, 'w')
    r.w = nil
  end
  -- A request scheduled further ahead than the TTL is kept until its start, and the TTL after;
  -- one whose volunteers' tasks still run, until they time out at the latest.
  local ttl = c.ttl
  if r.at > c.now then ttl = ttl + math.ceil((r.at - c.now) / 1000) end
  if #r.held > #r.done then ttl = ttl + math.ceil(c.task_ms / 1000) end
  redis.call('EXPIRE', c.rkey, ttl)
end

--[[ Facts are the request's event log: one line per output-worthy change, "kind|vid|...",
kept in f:<n>; n is the request's sequence, which every output of the fact carries. Those
after `pub` are not known to have reached Kafka yet; every function returns them, so whoever
runs next publishes them again (same event ids) until vd7_settle says they were acknowledged.
Kinds: offered|vid|offer_id|attempt|deadline|note  confirmed|vid|offer_id|attempt|note
withdrawn|vid|offer_id|why  unmatched|json  cancelled|vid (vid empty: nobody was held)
completed|vid|all(0/1)  released|vid|why (a task past task_timeout_s) ]]
local function fact(c, r, line)
  r.seq = r.seq + 1
  redis.call('HSET', c.rkey, 'f:' .. r.seq, line)
  r.lines = r.lines or {}
  r.lines[r.seq] = line -- facts() needs not read back what this call wrote
end

-- Facts to publish: the unacknowledged ones, or (replay) every one of the given kinds too.
-- Those this call added are marked "+": news, the others are published again.
local function facts(c, r, kinds)
  local out = {}
  for n = 1, r.seq do
    if n > r.pub or kinds then
      local line = r.lines and r.lines[n] or redis.call('HGET', c.rkey, 'f:' .. n)
      if line and (n > r.pub or kinds[string.match(line, '^[^|]*')]) then
        out[#out + 1] = (n > r.seq0 and '+' or '') .. n .. '|' .. line
      end
    end
  end
  return out
end

-- Frees a volunteer the request holds (offered or confirmed): back to their pool. The slot in
-- their daily cap is freed too, unless the task counts (it ran: a task timeout).
local function release(c, vid, counts)
  local vkey = K.vol(c.p, vid)
  if redis.call('HGET', vkey, 'task') ~= c.rid then return false end
  redis.call('HSET', vkey, 'task', '')
  if not counts then redis.call('ZREM', K.tasks(c.p, vid), c.rid) end
  repool(c.p, vkey, vid, c.rmax)
  return true
end

-- offer_id attempt deadline_ms of an outstanding offer.
local function offer_of(c, vid)
  local o = redis.call('HGET', c.rkey, 'o:' .. vid) or ''
  local oid, attempt, deadline = string.match(o, '^([^|]*)|([^|]*)|([^|]*)$')
  return oid or '', tonumber(attempt) or 0, tonumber(deadline) or 0
end

-- Volunteers confirmed whose task is still running, with when it started.
local function running_tasks(c, r)
  local out = {}
  for _, vid in ipairs(r.held) do
    if not has(r.done, vid) then
      out[#out + 1] = {vid, tonumber(redis.call('HGET', c.rkey, 't:' .. vid)) or c.now}
    end
  end
  return out
end

--[[ When someone must look at the request next: the scheduled start, the earliest offer
deadline, expires_at, the earliest task timeout; and at most a lease away while a search runs
or facts wait for Kafka, so that a request whose worker died is taken up again by any
instance. ]]
local function set_due(c, r, keep_lease)
  local t = nil
  local function at(x) if x > 0 and (t == nil or x < t) then t = x end end
  if ACTIVE[r.state] then
    if r.state == 'scheduled' then at(r.at) end
    for _, vid in ipairs(r.offers) do
      local _, _, deadline = offer_of(c, vid)
      at(deadline)
    end
    if r.state ~= 'scheduled' then at(r.exp) end
    if r.state == 'searching' or r.busy then at(c.now + c.lease) end
  end
  if HOLDING[r.state] and c.task_ms > 0 then
    for _, task in ipairs(running_tasks(c, r)) do at(task[2] + c.task_ms) end
  end
  if r.seq > r.pub then at(c.now + c.lease) end
  if t and t <= c.now and keep_lease then
    -- Overdue, but an instance holds it under a lease (vd7_settle): leave it theirs.
    local cur = tonumber(redis.call('ZSCORE', c.due, c.rid))
    if cur and cur > c.now then t = cur end
  end
  if t then redis.call('ZADD', c.due, t, c.rid) else redis.call('ZREM', c.due, c.rid) end
end

-- The request's stored description (a CloudEvent the daemon made of the request's own event,
-- with only what matching and the outputs need).
local function request_data(c)
  local rq = redis.call('HGET', c.rkey, 'rq') or ''
  local ok, doc = pcall(cjson.decode, rq)
  if ok and type(doc) == 'table' and type(doc.data) == 'table' then return doc.data end
  return {}
end

-- Ends the request unmatched (or expired) with the outcome document doc.
local function end_unmatched(c, r, doc)
  doc.volunteers_needed = r.needed
  doc.volunteers_missing = r.needed - #r.held
  local json = cjson.encode(doc)
  move(r, doc.reason == 'expired' and 'expired' or 'unmatched')
  redis.call('HSET', c.rkey, 'unmatched', json)
  redis.call('ZADD', c.p .. 'unstaffed', c.now, c.rid) -- a person must staff or cancel it
  fact(c, r, 'unmatched|' .. json)
end

local function lua_unmatched(c, reason)
  local data = request_data(c)
  local doc = {request_id = c.rid, reason = reason, radius_m = 0, candidates_considered = 0,
               filtered = {}}
  if type(data.service) == 'string' then doc.service = data.service end
  doc.priority = type(data.priority) == 'string' and data.priority or 'normal'
  return doc
end

-- Withdraws an outstanding offer: the volunteer is freed and never offered this request again.
local function withdraw(c, r, vid, why)
  local oid = offer_of(c, vid)
  release(c, vid, false)
  r.offers = without(r.offers, vid)
  r.tried[#r.tried + 1] = vid
  fact(c, r, 'withdrawn|' .. vid .. '|' .. oid .. '|' .. why)
end

--[[ Applies what time did: an expired request ends, a scheduled one starts, offers time out,
and a task past task_timeout_s frees its volunteer (the coordinator is told: nobody said the
task was done); a confirmed request whose tasks all ended is completed. ]]
local function advance(c, r)
  if ACTIVE[r.state] then
    if r.exp > 0 and c.now >= r.exp and #r.held < r.needed then
      for _, vid in ipairs(r.offers) do withdraw(c, r, vid, 'expired') end
      end_unmatched(c, r, lua_unmatched(c, 'expired'))
    else
      if r.state == 'scheduled' and c.now >= r.at then move(r, 'searching') end
      for _, vid in ipairs(r.offers) do
        local _, _, deadline = offer_of(c, vid)
        if c.now >= deadline then withdraw(c, r, vid, 'timeout') end
      end
    end
  end
  if HOLDING[r.state] and c.task_ms > 0 then
    for _, task in ipairs(running_tasks(c, r)) do
      local vid = task[1]
      if c.now >= task[2] + c.task_ms then
        release(c, vid, true)
        r.done[#r.done + 1] = vid
        redis.call('HSET', c.rkey, 'c:' .. vid, 'timeout')
        fact(c, r, 'released|' .. vid .. '|task_timeout')
      end
    end
    if r.state == 'confirmed' and #r.done >= #r.held then move(r, 'completed') end
  end
end

--[[ Settles the state after a change and says whether a search should run now: while a
slot is open and offers are left to make. With no offer left to make and none outstanding,
a request that still misses volunteers ends unmatched: all_declined. ]]
local function resolve(c, r)
  if r.state ~= 'searching' and r.state ~= 'offered' then return 0 end
  if #r.held >= r.needed then move(r, 'confirmed') return 0 end
  move(r, #r.offers > 0 and 'offered' or 'searching')
  local open = r.needed - #r.held - #r.offers
  if open > 0 and r.attempts < c.max_offers * r.needed then
    r.busy = true -- the caller searches now: under a lease, in case it dies doing so
    return 1
  end
  if #r.offers == 0 then end_unmatched(c, r, lua_unmatched(c, 'all_declined')) end
  return 0
end

local function finish_call(c, r)
  save(c, r)
  set_due(c, r)
end

--[[ The reply of every request function:
{tag, state, open, search, exclude, rq, {facts}, {page}, extra}: open is how many volunteers
are still to find, search 1 when the caller should search and offer now, exclude the
comma-joined volunteers never to offer again (held, offered, declined, timed out), rq the
request's stored description when asked for (want_rq), facts "[+]n|kind|..." lines to
publish, page a search page when the function ran one. ]]
local function reply(c, r, tag, search, list, page, extra)
  local ex = {}
  for _, l in ipairs({r.held, r.offers, r.tried}) do
    for _, v in ipairs(l) do ex[#ex + 1] = v end
  end
  local rq = ''
  if c.want_rq then rq = redis.call('HGET', c.rkey, 'rq') or '' end
  return {tag, r.state, math.max(r.needed - #r.held - #r.offers, 0), search,
          table.concat(ex, ','), rq, list or {}, page or {}, extra or ''}
end

-- A replayed vd.request.created publishes the request's whole log again.
local ALL = {offered = true, confirmed = true, withdrawn = true, unmatched = true,
             cancelled = true, completed = true, released = true}

-- Great-circle distance in metres, as Redis computes it.
local function distance(lat1, lon1, lat2, lon2)
  local r1, r2 = math.rad(lat1), math.rad(lat2)
  local u = math.sin((r2 - r1) / 2)
  local v = math.sin(math.rad(lon2 - lon1) / 2)
  return 2 * EARTH_R * math.asin(math.sqrt(u * u + math.cos(r1) * math.cos(r2) * v * v))
end

local function set_of(list)
  local t = {}
  for _, x in ipairs(list) do t[x] = true end
  return t
end

local function has_all(set, want)
  for _, x in ipairs(want) do if not set[x] then return false end end
  return true
end

local function has_any(set, want)
  if #want == 0 then return true end
  for _, x in ipairs(want) do if set[x] then return true end end
  return false
end

-- The pool key of a round, checked against the prefix.
local function pool_ok(pool, p)
  return type(pool) == 'string' and (pool == p .. 'pool/city' or
         (string.sub(pool, 1, #p + 8) == p .. 'pool/ev/' and is_id(string.sub(pool, #p + 9))))
end

--[[ Settings every round and claim call starts with, ARGV[1..8]: prefix ttl_s lease_ms
max_offers offer_timeout_ms task_timeout_ms default_cap radius_max_m; KEYS[1] the due set,
KEYS[2] the pool of the round's requests. ]]
local NSET = 8

local function settings(keys, args, ch)
  local p = args[1]
  local st = {p = p, now = now_ms(), ttl = int(args[2], 1, 1e9), lease = int(args[3], 1, 1e9),
              max_offers = int(args[4], 1, 1000), timeout = int(args[5], 0, 1e12),
              task_ms = int(args[6], 0, 1e12), cap0 = int(args[7], 1, 1000),
              rmax = int(args[8], 1, 1e7), due = keys[1], pool = keys[2]}
  ch.need(st.ttl and st.lease and st.max_offers and st.timeout and st.task_ms and st.cap0
          and st.rmax, 'settings')
  ch.need(keys[1] == p .. 'due' and pool_ok(keys[2], p), 'keys')
  return st
end

-- A request's context within a round or a claim (as context() gives a single call).
local function rcontext(st, rid)
  return {p = st.p, rid = rid, now = st.now, ttl = st.ttl, lease = st.lease,
          max_offers = st.max_offers, timeout = st.timeout, task_ms = st.task_ms,
          want_rq = false, rmax = st.rmax, rkey = K.req(st.p, rid), due = st.due}
end

local function open_places(r) return math.max(r.needed - #r.held - #r.offers, 0) end

--[[ A volunteer as the round sees them (read once per call): skills and languages as sets,
their daily cap, their tasks in the last 24 h. nil when they have no record. ]]
local function volunteer(st, cache, vid)
  local v = cache[vid]
  if v == nil then
    local h = redis.call('HMGET', K.vol(st.p, vid), 'skills', 'languages', 'max_tasks')
    if not h[1] and not h[2] then
      v = false
    else
      local cap = tonumber(h[3]) or 0
      if cap <= 0 then cap = st.cap0 end
      v = {skills = set_of(split(h[1])), langs = set_of(split(h[2])), cap = cap,
           tasks = redis.call('ZCOUNT', K.tasks(st.p, vid), '(' .. (st.now - DAY_MS), '+inf')}
    end
    cache[vid] = v
  end
  return v
end

--[[ The candidate edges of one request: its count nearest eligible volunteers in the round's
pool (at least one per open place), searched from radius_start and doubling up to rmax, and
every one within cover (a widened search: the daemon's solver asked to see that far); at most
8 times as many are looked at.
A rare skill is searched among those who have it (the smallest of the pool's skill sets). A
widened search visits at most max_points points: a probe (ANY) comes first, and when the area
holds more the nearest of those it saw are taken; when it holds no more than may be looked at,
the probe's points, sorted, are the search. A search asks for twice count first, and for all
it may look at only when those fell short. An empty pool is not searched. The request's
preferred volunteer and the one who last served its resident are added when they are eligible
and in range.
The cost of an edge is the distance, plus load_m per task in the last 24 h, less bonus_m for
the preferred or last volunteer (never below 0): the search also widens until as many edges
as the request has open places cost no more than the radius (nobody unseen can cost less).
Returns edges {vid, dist, flag, cost, radius} (flag 1: preferred or last), the radius reached,
the volunteers considered, the counts of those filtered out, whether more may lie beyond, and
seen: every volunteer of the pool nearer than seen metres was considered (rmax when the
whole range was), so any edge left out costs at least that. ]]
local function gather(st, cache, q, r)
  local open = open_places(r)
  local ex = set_of(r.held)
  for _, l in ipairs({r.offers, r.tried}) do for _, v in ipairs(l) do ex[v] = true end end
  local key, best = st.pool, nil
  for _, sk in ipairs(q.skills) do
    local n = redis.call('ZCARD', st.pool .. '/s/' .. sk)
    if best == nil or n < best then best, key = n, st.pool .. '/s/' .. sk end
  end
  -- Nobody to search (an exhausted pool in a surge): the whole range is seen at once.
  local empty = (best or redis.call('ZCARD', st.pool)) == 0
  local edges, seen, filtered = {}, {}, {}
  local considered, radius, more, dense_seen = 0, math.min(q.start, q.rmax), 0, 0
  local want = math.max(q.count, open) -- edges wanted: count, and one per open place at least
  local limit = want * 8
  -- Continuity: the preferred volunteer, and the one who last served the resident.
  local last = nil
  if q.resident ~= '' then last = redis.call('GET', st.p .. 'res/' .. q.resident) end
  -- within: the edges whose cost is at most the radius searched (nobody unseen can cost less)
  local within = 0
  local found_at = 0 -- the radius of the search that found the volunteer
  local function consider(vid, dist)
    local flag = (vid == q.preferred or vid == last) and 1 or 0
    if seen[vid] then return end
    seen[vid] = true
    local v = volunteer(st, cache, vid)
    if not v then return end -- a pool entry without a record (swept meanwhile): nobody
    considered = considered + 1
    local why = nil
    if ex[vid] then why = 'already_tried'
    elseif not has_all(v.skills, q.skills) then why = 'skills'
    elseif not has_any(v.langs, q.langs) then why = 'languages'
    elseif v.tasks >= v.cap then why = 'fatigue'
    else
      local cost = dist + q.load_m * v.tasks - flag * q.bonus_m
      if cost < 0 then cost = 0 end
      edges[#edges + 1] = {vid, dist, v.tasks, flag, cost, found_at}
    end
    if why then filtered[why] = (filtered[why] or 0) + 1 end
  end
  local seen_m = 0
  -- The COUNT a search asks for: enough for most requests at first (a longer list costs
  -- Redis and Lua more than the volunteers it adds), all it may consider once that fell short.
  local ask, again = math.min(want * 2, limit), false
  if empty then radius, seen_m = q.rmax, q.rmax end
  while not empty do
    local found, dense, complete = nil, false, false
    if radius > q.start and q.maxpts > 0 and not again then -- (probed already: not again)
      local probe = redis.call('GEOSEARCH', key, 'FROMLONLAT', q.lon, q.lat, 'BYRADIUS', radius,
                               'm', 'COUNT', q.maxpts, 'ANY', 'WITHDIST')
      -- Bounded by max_points (dense: the nearest of those seen), or every point within the
      -- radius and no more than the nearest-first search would return: sorted here, that
      -- search is not needed.
      if #probe >= q.maxpts or #probe <= limit then
        if #probe >= q.maxpts then dense, dense_seen = true, 1 else complete = true end
        for _, f in ipairs(probe) do f[3] = tonumber(f[2]) end
        table.sort(probe, function(a, b)
          if a[3] ~= b[3] then return a[3] < b[3] end
          return a[1] < b[1]
        end)
        found = probe
      end
    end
    if not found then
      found = redis.call('GEOSEARCH', key, 'FROMLONLAT', q.lon, q.lat, 'BYRADIUS', radius, 'm',
                         'ASC', 'COUNT', ask, 'WITHDIST')
      complete = #found < ask
    end
    found_at = radius
    local all = true
    for _, f in ipairs(found) do
      local fd = tonumber(f[2])
      if considered >= limit or (#edges >= want and fd > q.cover) then
        all = false
        if not dense then seen_m = fd end -- nearest first: everyone nearer was considered
        break
      end
      consider(f[1], fd)
      if not dense then seen_m = fd end
    end
    if all and complete then seen_m = radius end
    within = 0
    for _, e in ipairs(edges) do if e[5] <= radius then within = within + 1 end end
    -- Enough: count edges (the assignment needs alternatives: a request's nearest may serve
    -- a neighbour better), of which as many as the request has open places cost no more than
    -- the radius (whoever lies beyond costs more), and the cover reached. More may lie beyond
    -- what was seen.
    local enough = (#edges >= want and within >= open and radius >= q.cover)
                   or considered >= limit or dense
    if not enough and all and not complete and ask < limit then
      ask, again = limit, true -- more lie within this radius: further down the same list
    elseif enough or radius >= q.rmax then
      if seen_m >= q.rmax then seen_m = q.rmax end
      more = seen_m < q.rmax and 1 or 0
      break
    else
      radius, again = math.min(radius * 2, q.rmax), false
    end
  end
  -- Nobody with the rare skill in range: say how many without it were there (up to count).
  if considered == 0 and key ~= st.pool then
    local n = #redis.call('GEOSEARCH', st.pool, 'FROMLONLAT', q.lon, q.lat, 'BYRADIUS', radius,
                          'm', 'COUNT', q.count, 'ANY')
    if n > 0 then
      considered = n
      filtered.skills = n
    end
  end
  -- The preferred and the last volunteer beyond the radius searched: an edge all the same.
  for _, vid in ipairs({q.preferred, last or ''}) do
    if vid ~= '' and not seen[vid] then
      local pos = redis.call('GEOPOS', st.pool, vid)[1]
      if pos then
        local dist = distance(q.lat, q.lon, tonumber(pos[2]), tonumber(pos[1]))
        if dist <= q.rmax then
          found_at = q.rmax
          consider(vid, math.floor(dist * 10000 + 0.5) / 10000)
        end
      end
    end
  end
  local flat = {}
  for name, n in pairs(filtered) do
    flat[#flat + 1] = name
    flat[#flat + 1] = n
  end
  local out = {}
  for _, e in ipairs(edges) do
    out[#out + 1] = e[1]
    out[#out + 1] = tostring(e[2])
    out[#out + 1] = e[4]
    out[#out + 1] = math.floor(e[5] + 0.5)
    out[#out + 1] = e[6]
  end
  return out, radius, considered, flat, more, dense_seen, math.floor(seen_m)
end

-- The fields of one request in a round call (see round()).
local RFIELDS = 16

local claim_at_once -- (below, with the claim)

--[[ vd7_round KEYS: due pool  ARGV: settings, radius_start count max_points load_cost_m
continuity_bonus_m at_once n, then n requests of RFIELDS: rid new lat lon rmax skills languages needed
at_ms exp_ms time_ms rq need preferred resident cover (0, or the metres a widened search must
cover).
The first half of a matching round: for every request of one pool, at once, what the
assignment needs. A new request (new = 1) is admitted as vd.request.created asks: its record
(scheduled until at_ms, expired at once when exp_ms passed; need and rq kept), or 'replay'
with its recorded facts, or 'resume', or 'stale' (older than the record's TTL and no record:
nothing written). Every request that then has open places and offers left gets its candidate
edges (gather()) and is held under a lease while the daemon solves and claims.
With at_once 1, a round of one request (a lone request: nobody's need weighs against
another's) claims in the same call what the daemon's solve would choose, when that choice is
certain (claim_at_once()): one call and one round trip instead of two. A new request with
nobody at all within its range ends unmatched in the round call (no_volunteer_in_range), as
the claim would end it.
Returns one entry per request: {tag, state, open, search, {facts}, radius, considered,
{filtered name, count ...}, need, more, {edges: vid dist flag cost radius ...}, dense, seen,
pool, made} (radius: the search's that found the volunteer; dense 1: the search was bounded by
max_points; seen: every volunteer nearer was considered; pool: the volunteers in the pool;
made: -1, or how many offers this call made when it claimed at once: then open, search and
the facts are as vd7_claim returns them). ]]
local function round(keys, args)
  local ch = checker()
  local st = settings(keys, args, ch)
  local start, count = int(args[NSET + 1], 1, 1e7), int(args[NSET + 2], 1, 1000)
  local maxpts, load_m = int(args[NSET + 3], 0, 1e6), int(args[NSET + 4], 0, 1e6)
  local bonus_m, at_once = int(args[NSET + 5], 0, 1e6), int(args[NSET + 6], 0, 1)
  local n = int(args[NSET + 7], 0, 100000)
  ch.need(start and count and maxpts and load_m and bonus_m and at_once and n, 'round arguments')
  ch.need(n and #args == NSET + 7 + n * RFIELDS, 'round list')
  local qs = {}
  for i = 1, (n or 0) do
    local b = NSET + 7 + (i - 1) * RFIELDS
    local q = {rid = args[b + 1], new = args[b + 2] == '1', lat = lat_ok(args[b + 3]),
               lon = lon_ok(args[b + 4]), rmax = int(args[b + 5], 1, 1e7),
               skills = split(args[b + 6]), langs = split(args[b + 7]),
               needed = int(args[b + 8], 1, 10), at = int(args[b + 9], 0, 1e15),
               exp = int(args[b + 10], 0, 1e15), time = int(args[b + 11], 0, 1e15),
               rq = args[b + 12], need = int(args[b + 13], 0, 1e7), preferred = args[b + 14],
               resident = args[b + 15], cover = int(args[b + 16], 0, 1e7), start = start,
               count = count, maxpts = maxpts, load_m = load_m, bonus_m = bonus_m}
    ch.need(is_id(q.rid), 'request_id')
    ch.need(q.lat and q.lon and q.rmax, 'location/max_distance_m')
    ch.need(is_ids(args[b + 6]) and is_ids(args[b + 7]), 'skills/languages')
    ch.need(q.needed and q.at and q.exp and q.time and q.need and q.cover,
            'needed/not_before/expires_at/time/need/cover')
    -- The daemon's own JSON object; decoded (under pcall) only when a request ends without a
    -- search (request_data()), so its shape is all that is checked here.
    ch.need(not q.new or (string.sub(q.rq, 1, 1) == '{' and string.sub(q.rq, -1) == '}'), 'rq')
    ch.need(is_id_or_empty(q.preferred) and is_id_or_empty(q.resident), 'preferred/resident')
    qs[i] = q
  end
  if ch.err then return bad(ch) end
  local cache, out = {}, {}
  for i, q in ipairs(qs) do
    local c = rcontext(st, q.rid)
    local r = load(c)
    local tag = 'old'
    if q.new then
      tag = 'new'
      if r.state == 'received' then
        if q.time + c.ttl * 1000 < c.now then tag = 'stale' end
      elseif r.state == 'searching' then
        tag = 'resume'
      else
        tag = 'replay'
      end
    end
    if tag == 'stale' then
      out[i] = {'stale', 'received', 0, 0, {}, 0, 0, {}, 0, 0, {}, 0, 0, 0, -1}
    else
      if tag == 'new' then
        r.needed, r.at, r.exp = q.needed, q.at, q.exp
        redis.call('HSET', c.rkey, 'at', r.at, 'exp', r.exp, 'rq', q.rq, 'need', q.need)
        if r.exp > 0 and c.now >= r.exp then
          end_unmatched(c, r, lua_unmatched(c, 'expired'))
        else
          move(r, r.at > c.now and 'scheduled' or 'searching')
        end
      elseif q.new and redis.call('HEXISTS', c.rkey, 'rq') == 0 then
        -- A record made before its request (a cancel that came first) learns what it asked for.
        r.needed = q.needed
        redis.call('HSET', c.rkey, 'rq', q.rq, 'need', q.need)
      end
      advance(c, r)
      local s = resolve(c, r)
      local list = facts(c, r, tag == 'replay' and ALL or nil)
      local need = tonumber(redis.call('HGET', c.rkey, 'need')) or q.need
      local edges, radius, considered, filtered, more, dense, seen = {}, 0, 0, {}, 0, 0, 0
      local made = -1
      if s == 1 then
        edges, radius, considered, filtered, more, dense, seen = gather(st, cache, q, r)
        if tag == 'new' and #edges == 0 and considered == 0 then
          -- Nobody at all within its range (an exhausted pool in a surge): a new request ends
          -- here as the daemon's claim would end it, without a second call.
          local doc = lua_unmatched(c, 'no_volunteer_in_range')
          doc.radius_m = radius
          end_unmatched(c, r, doc)
          s, r.busy = 0, nil
          list = facts(c, r, nil)
        elseif at_once == 1 and n == 1 then
          made = claim_at_once(c, r, st, q, edges, considered, more, seen)
          if made >= 0 then
            s = resolve(c, r)
            list = facts(c, r, tag == 'replay' and ALL or nil)
          end
        end
      end
      finish_call(c, r)
      out[i] = {tag, r.state, open_places(r), s, list, radius, considered, filtered, need, more,
                edges, dense, seen, 0, made}
    end
  end
  -- The pool's size once this call's changes are made (advance() may return volunteers).
  local pool_n = redis.call('ZCARD', st.pool)
  for _, e in ipairs(out) do e[14] = pool_n end
  return out
end

--[[ Offers the request, in the order given, to volunteers who are still what the search saw:
in the request's own pool (city or its event), within max_distance_m of the request, with
every skill it needs and one of its languages, under their daily cap and never tried for it,
until no place is open. A search result gone stale (the volunteer moved, changed pool or
skills) is skipped. Each offer holds the volunteer (out of every pool). With offer_timeout_ms
0 the offer is confirmed at once (direct mode); else it waits for an answer until its
deadline (never after expires_at). A note ("distance/radius/considered", as the search saw
it) is kept with the offer (d:<vid>). Returns how many were offered. ]]
local function offer_to(c, r, st, q, chosen)
  local made = 0
  if r.state ~= 'searching' and r.state ~= 'offered' then return 0 end
  local have = {}
  for _, l in ipairs({r.held, r.offers, r.tried}) do for _, v in ipairs(l) do have[v] = true end end
  for _, pr in ipairs(chosen) do
    if r.needed - #r.held - #r.offers <= 0 or r.attempts >= c.max_offers * r.needed then break end
    local vid, note = pr[1], pr[2]
    local vkey = K.vol(c.p, vid)
    local v = redis.call('HMGET', vkey, 'avail', 'task', 'pool', 'max_tasks', 'skills', 'languages')
    local pos = nil
    if not have[vid] and v[1] == '1' and (not v[2] or v[2] == '') and v[3] == st.pool then
      pos = redis.call('GEOPOS', st.pool, vid)[1]
    end
    if pos and distance(q.lat, q.lon, tonumber(pos[2]), tonumber(pos[1])) <= q.rmax + 1
       and has_all(set_of(split(v[5])), q.skills) and has_any(set_of(split(v[6])), q.langs) then
      local tkey = K.tasks(c.p, vid)
      redis.call('ZREMRANGEBYSCORE', tkey, '-inf', c.now - DAY_MS)
      local cap = tonumber(v[4]) or 0
      if cap <= 0 then cap = st.cap0 end
      if redis.call('ZCARD', tkey) < cap then
        unpool(vkey, vid, v[3] or '', v[5])
        redis.call('HSET', vkey, 'task', c.rid)
        redis.call('ZADD', tkey, c.now, c.rid)
        redis.call('PEXPIRE', tkey, DAY_MS + 3600000)
        r.attempts = r.attempts + 1
        have[vid] = true
        made = made + 1
        local oid = 'of-' .. string.sub(redis.sha1hex(c.rid .. '/' .. vid), 1, 16)
        if c.timeout <= 0 then
          r.held[#r.held + 1] = vid
          redis.call('HSET', c.rkey, 'd:' .. vid, note, 't:' .. vid, c.now)
          fact(c, r, 'confirmed|' .. vid .. '|' .. oid .. '|' .. r.attempts .. '|' .. note)
        else
          local deadline = c.now + c.timeout
          if r.exp > 0 and r.exp < deadline then deadline = r.exp end
          r.offers[#r.offers + 1] = vid
          redis.call('HSET', c.rkey, 'd:' .. vid, note,
                     'o:' .. vid, oid .. '|' .. r.attempts .. '|' .. deadline)
          fact(c, r, 'offered|' .. vid .. '|' .. oid .. '|' .. r.attempts .. '|' .. deadline .. '|' .. note)
        end
      end
    end
  end
  return made
end

--[[ A round of one request: its choice is the open places' cheapest edges (by cost, then
distance, then ID), as the daemon's solve makes it for a lone row. Claimed at once when that
choice is certain: no volunteer beyond what the search saw can cost less (more is 0, or the
dearest chosen edge costs no more than seen: whoever lies further costs at least their
distance). edges is gather()'s flat list. Returns the offers made, or -1 when the daemon must
solve (nobody to choose, or a wider search could change the answer). ]]
claim_at_once = function(c, r, st, q, edges, considered, more, seen)
  local list = {}
  for b = 1, #edges, 5 do
    list[#list + 1] = {vid = edges[b], dist = tonumber(edges[b + 1]), cost = edges[b + 3],
                       radius = edges[b + 4]}
  end
  local k = math.min(open_places(r), #list)
  if k == 0 then return -1 end
  table.sort(list, function(a, b)
    if a.cost ~= b.cost then return a.cost < b.cost end
    if a.dist ~= b.dist then return a.dist < b.dist end
    return a.vid < b.vid
  end)
  if more == 1 and (#list < open_places(r) or list[k].cost > seen) then return -1 end
  local chosen = {}
  for x = 1, k do
    local e = list[x]
    chosen[x] = {e.vid, string.format('%.1f/%d/%d', e.dist, e.radius, considered)}
  end
  return offer_to(c, r, st, q, chosen)
end

--[[ The daemon found nobody (more) to offer: the request ends unmatched with the outcome
document it built (volunteers_missing is set here; a request that had offers declined or
timed out ends all_declined), unless offers are still outstanding: then it waits for their
answers. ]]
local function finish_unmatched(c, r, doc)
  if ACTIVE[r.state] and #r.offers == 0 then
    if #r.tried > 0 then doc.reason = 'all_declined' end
    end_unmatched(c, r, doc)
  end
end

--[[ vd7_claim KEYS: due pool  ARGV: settings, n, then n blocks: rid lat lon rmax skills
languages kind count, and count "vid note" pairs (kind 'offer') or one outcome document
(kind 'finish', count 1).
The second half of a matching round: the assignment the daemon solved, applied request by
request, each pair re-checked atomically (offer_to()); a request whose chosen volunteers
were taken meanwhile keeps its places open and says so (search 1): it joins the next round.
Returns one entry per request: {tag, state, open, search, {facts}, made} (tag 'wait', search
0, when a finished request still waits for answers to its offers). ]]
local function claim(keys, args)
  local ch = checker()
  local st = settings(keys, args, ch)
  local n = int(args[NSET + 1], 0, 100000)
  ch.need(n, 'claim count')
  local qs, i = {}, NSET + 2
  for _ = 1, (n or 0) do
    local q = {rid = args[i], lat = lat_ok(args[i + 1]), lon = lon_ok(args[i + 2]),
               rmax = real(args[i + 3], 1, 1e8), skills = split(args[i + 4]),
               langs = split(args[i + 5]), kind = args[i + 6]}
    local cnt = int(args[i + 7], 0, 1000)
    ch.need(is_id(q.rid), 'request_id')
    ch.need(q.lat and q.lon and q.rmax, 'location/max_distance_m')
    ch.need(is_ids(args[i + 4]) and is_ids(args[i + 5]), 'skills/languages')
    ch.need((q.kind == 'offer' or q.kind == 'finish') and cnt, 'claim kind')
    if ch.err then return bad(ch) end
    i = i + 8
    if q.kind == 'offer' then
      q.pairs = {}
      for _ = 1, cnt do
        ch.need(is_id(args[i]), 'volunteer_id')
        ch.need(type(args[i + 1]) == 'string' and string.find(args[i + 1], '^[0-9.]+/[0-9]+/[0-9]+$'),
                'note')
        q.pairs[#q.pairs + 1] = {args[i], args[i + 1]}
        i = i + 2
      end
    else
      local ok, doc = pcall(cjson.decode, args[i] or '')
      ch.need(cnt == 1 and ok and type(doc) == 'table' and type(doc.reason) == 'string',
              'outcome document')
      q.doc = doc
      i = i + 1
    end
    qs[#qs + 1] = q
  end
  ch.need(i == #args + 1, 'claim list')
  if ch.err then return bad(ch) end
  local out = {}
  for k, q in ipairs(qs) do
    local c = rcontext(st, q.rid)
    local r = load(c)
    if r.state == 'received' then
      out[k] = {'gone', 'received', 0, 0, {}, 0}
    else
      advance(c, r)
      local made, tag = 0, 'ok'
      if q.kind == 'offer' then
        made = offer_to(c, r, st, q, q.pairs)
      elseif ACTIVE[r.state] then
        finish_unmatched(c, r, q.doc)
        if ACTIVE[r.state] then
          tag = 'wait'
          if open_places(r) > 0 then
            -- Nobody more to offer while offers are out: a volunteer who comes near later
            -- makes it due (nudge()).
            r.w = st.pool .. '/open'
            redis.call('GEOADD', r.w, q.lon, q.lat, c.rid)
            redis.call('HSET', c.rkey, 'w', r.w)
          end
        end
      end
      local s = resolve(c, r)
      if tag == 'wait' then
        -- No search now: an answer, a deadline or a volunteer coming near reopens it.
        s, r.busy = 0, nil
      end
      local list = facts(c, r, nil)
      finish_call(c, r)
      out[k] = {tag, r.state, open_places(r), s, list, made}
    end
  end
  return out
end

--[[ vd7_respond KEYS: req due  ARGV: common, vid offer_id accept|decline
The volunteer's answer to an offer. Accepted: confirmed. Declined: released, never offered
this request again, and a search for the next one is due. An answer to no outstanding offer
(wrong offer_id, another volunteer, past its deadline, already answered, an ended request)
changes nothing: tag 'ignored', extra says why. ]]
local function respond(keys, args)
  local ch = checker()
  local c = context(keys, args, ch)
  local vid, oid, kind = args[10], args[11], args[12]
  ch.need(is_id(vid) and is_id(oid), 'volunteer_id/offer_id')
  ch.need(kind == 'accept' or kind == 'decline', 'answer')
  if ch.err then return bad(ch) end
  local r = load(c)
  if r.state == 'received' then
    return reply(c, r, 'ignored', 0, {}, nil, 'unknown request')
  end
  local was = r.state
  local known, attempt, deadline = offer_of(c, vid)
  advance(c, r)
  local why = nil
  if not has(r.offers, vid) then
    if known == '' then why = 'no offer to this volunteer'
    elseif known ~= oid then why = 'wrong offer_id'
    elseif has(r.tried, vid) and c.now >= deadline and deadline > 0 then why = 'past its deadline'
    elseif not ACTIVE[was] then why = 'request already ' .. was
    else why = 'offer already answered or withdrawn' end
  elseif known ~= oid then
    why = 'wrong offer_id'
  end
  if why == nil then
    r.offers = without(r.offers, vid)
    if kind == 'accept' then
      r.held[#r.held + 1] = vid
      redis.call('HSET', c.rkey, 't:' .. vid, c.now)
      local note = redis.call('HGET', c.rkey, 'd:' .. vid) or '0'
      fact(c, r, 'confirmed|' .. vid .. '|' .. oid .. '|' .. attempt .. '|' .. note)
    else
      release(c, vid, false)
      r.tried[#r.tried + 1] = vid
      fact(c, r, 'withdrawn|' .. vid .. '|' .. oid .. '|declined')
    end
  end
  local s = resolve(c, r)
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, why and 'ignored' or 'ok', s, list, nil, why or '')
end

--[[ vd7_tick KEYS: req due  ARGV: common
Run for a request taken from the due set: applies what time did (start, expiry, offer
timeouts, task timeouts) and returns what is left to publish and whether to search. ]]
local function tick(keys, args)
  local ch = checker()
  local c = context(keys, args, ch)
  if ch.err then return bad(ch) end
  local r = load(c)
  if r.state == 'received' then
    redis.call('ZREM', c.due, c.rid)
    return reply(c, r, 'gone', 0, {})
  end
  advance(c, r)
  local s = resolve(c, r)
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, 'ok', s, list, nil)
end

--[[ vd7_cancel KEYS: req due  ARGV: common
Cancels a request and releases every volunteer it holds or has an offer out to, back to their
pool; a released assignment no longer counts toward the volunteer's daily cap. Facts:
cancelled|vid per volunteer released, or one cancelled| when nobody was. A cancel that arrives
before its request leaves a 'cancelled' record, so the request is never matched. An unmatched
or expired request may be cancelled (it leaves the unstaffed set: nobody need staff it). A
cancel seen again answers 'replay' with the first one's facts; a completed request answers
'ended' and changes nothing. ]]
local function cancel(keys, args)
  local ch = checker()
  local c = context(keys, args, ch)
  if ch.err then return bad(ch) end
  local r = load(c)
  if r.state == 'cancelled' then
    return reply(c, r, 'replay', 0, facts(c, r, {cancelled = true}))
  end
  if not MOVES[r.state].cancelled then return reply(c, r, 'ended', 0, {}, nil, r.state) end
  local released = {}
  for _, l in ipairs({r.held, r.offers}) do
    for _, vid in ipairs(l) do
      if not has(r.done, vid) and release(c, vid, false) then released[#released + 1] = vid end
    end
  end
  move(r, 'cancelled')
  redis.call('ZREM', c.p .. 'unstaffed', c.rid)
  r.offers = {}
  if #released == 0 then fact(c, r, 'cancelled|') end
  for _, vid in ipairs(released) do fact(c, r, 'cancelled|' .. vid) end
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, 'ok', 0, list)
end

--[[ vd7_assign KEYS: req due unstaffed  ARGV: common, vid coordinator_id event_id default_cap
A coordinator sends a named volunteer (vd.request.assign). Applied when the request still
misses a volunteer (searching or offered with a place no offer covers, or ended unmatched or
expired) and the volunteer is free: available, holding no task, of the request's pool (the
city, or the request's event), under their daily cap. The coordinator's judgement stands in
for skills, languages and distance. The volunteer is confirmed at once (fact
confirmed|vid|offer_id|attempt|note|coordinator; an unmatched or expired request that then
has every volunteer is confirmed and leaves the unstaffed set). Otherwise nothing changes but
the log: fact refused|vid|coordinator|why tells the coordinator why. The assignment's event id
(its sha1, x:<sha1>) makes a redelivered assignment answer what the first delivery did:
'replay' with that fact. An unknown request answers 'refused', nothing written. ]]
local function assign(keys, args)
  local ch = checker()
  local c = context(keys, args, ch)
  local vid, by, eid, cap0 = args[10], args[11], args[12], int(args[13], 1, 1000)
  ch.need(is_id(vid) and is_id(by), 'volunteer_id/coordinator_id')
  ch.need(cap0, 'default_cap')
  ch.need(type(eid) == 'string' and #eid >= 1 and #eid <= 256, 'event id')
  ch.need(keys[3] == c.p .. 'unstaffed', 'keys')
  if ch.err then return bad(ch) end
  local r = load(c)
  if r.state == 'received' then return reply(c, r, 'refused', 0, {}, nil, 'unknown request') end
  local ekey = redis.sha1hex(eid)
  local first = tonumber(redis.call('HGET', c.rkey, 'x:' .. ekey))
  if first then
    local list = facts(c, r, nil)
    local line = redis.call('HGET', c.rkey, 'f:' .. first) or ''
    if first <= r.pub then table.insert(list, 1, first .. '|' .. line) end
    return reply(c, r, 'replay', 0, list, nil, string.match(line, '^[^|]*'))
  end
  advance(c, r)
  local data = request_data(c)
  local rev = type(data.event_id) == 'string' and data.event_id or ''
  local vkey = K.vol(c.p, vid)
  local v = redis.call('HMGET', vkey, 'avail', 'task', 'pool', 'max_tasks', 'skills', 'lat', 'lon',
                       'event_id')
  local vev, why = v[8] or '', nil
  if r.state == 'scheduled' then why = 'the request is scheduled: its matching starts at not_before'
  elseif r.state == 'cancelled' or r.state == 'completed' then why = 'the request is ' .. r.state
  elseif #r.held >= r.needed then why = 'the request has every volunteer it needs'
  elseif has(r.held, vid) then why = 'the volunteer already serves this request'
  elseif has(r.offers, vid) then why = 'the volunteer has an offer for this request outstanding'
  elseif ACTIVE[r.state] and open_places(r) <= 0 then why = 'every open place has an offer outstanding'
  elseif not v[1] then why = 'unknown volunteer'
  elseif v[1] ~= '1' then why = 'the volunteer is not available'
  elseif v[2] and v[2] ~= '' then why = 'the volunteer is busy with request ' .. v[2]
  elseif vev ~= rev then
    why = vev ~= '' and 'the volunteer serves event ' .. vev or 'the volunteer serves the city, not event ' .. rev
  else
    local cap = tonumber(v[4]) or 0
    if cap <= 0 then cap = cap0 end
    local n = redis.call('ZCOUNT', K.tasks(c.p, vid), '(' .. (c.now - DAY_MS), '+inf')
    if n >= cap then why = 'the volunteer reached their daily cap (' .. cap .. ' tasks in 24 h)' end
  end
  if why then
    fact(c, r, 'refused|' .. vid .. '|' .. by .. '|' .. why)
  else
    unpool(vkey, vid, v[3] or '', v[5])
    redis.call('HSET', vkey, 'task', c.rid)
    local tkey = K.tasks(c.p, vid)
    redis.call('ZADD', tkey, c.now, c.rid)
    redis.call('PEXPIRE', tkey, DAY_MS + 3600000)
    r.attempts = r.attempts + 1
    r.held[#r.held + 1] = vid
    local dist, loc = 0, data.location
    if type(loc) == 'table' and tonumber(loc.lat) and tonumber(loc.lon) and tonumber(v[6]) then
      dist = distance(tonumber(loc.lat), tonumber(loc.lon), tonumber(v[6]), tonumber(v[7]))
    end
    local note = string.format('%.1f/0/0', dist)
    local oid = 'as-' .. string.sub(redis.sha1hex(c.rid .. '/' .. vid), 1, 16)
    redis.call('HSET', c.rkey, 'd:' .. vid, note, 't:' .. vid, c.now, 'b:' .. vid, by)
    if not ACTIVE[r.state] and #r.held >= r.needed then
      move(r, 'confirmed')
      redis.call('ZREM', keys[3], c.rid)
    end
    fact(c, r, 'confirmed|' .. vid .. '|' .. oid .. '|' .. r.attempts .. '|' .. note .. '|' .. by)
  end
  redis.call('HSET', c.rkey, 'x:' .. ekey, r.seq)
  local s = resolve(c, r)
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, why and 'refused' or 'ok', s, list, nil, why or '')
end

--[[ vd7_complete KEYS: req due  ARGV: common, vid continuity_s
A volunteer finished their task: they return to the pool (if still available); fact
completed|vid|all, all = 1 once every volunteer the request held has finished, and the request
is then 'completed'. A completion seen again answers 'replay' with the completion facts; one
from a volunteer who does not hold the request, or whose task was already released after
task_timeout_s, answers 'ignored' with the reason and changes nothing. When the request's
record expired (request_ttl_s) the volunteer's own task is trusted: they are freed ('gone'). ]]
local function complete(keys, args)
  local ch = checker()
  local c = context(keys, args, ch)
  local vid, memory = args[10], int(args[11], 1, 1e9)
  ch.need(is_id(vid), 'volunteer_id')
  ch.need(memory, 'continuity_s')
  if ch.err then return bad(ch) end
  local vkey = K.vol(c.p, vid)
  local r = load(c)
  if r.state == 'received' then
    if redis.call('HGET', vkey, 'task') ~= c.rid then
      return reply(c, r, 'ignored', 0, {}, nil, 'unknown request')
    end
    redis.call('HSET', vkey, 'task', '')
    repool(c.p, vkey, vid, c.rmax)
    return reply(c, r, 'gone', 0, {})
  end
  local how = redis.call('HGET', c.rkey, 'c:' .. vid)
  if how == 'timeout' then
    return reply(c, r, 'ignored', 0, {}, nil, 'released earlier: the task outlived task_timeout_s')
  elseif how then
    return reply(c, r, 'replay', 0, facts(c, r, {completed = true}))
  end
  if not has(r.held, vid) or redis.call('HGET', vkey, 'task') ~= c.rid then
    return reply(c, r, 'ignored', 0, {}, nil, 'the volunteer does not hold this request')
  end
  redis.call('HSET', vkey, 'task', '')
  repool(c.p, vkey, vid, c.rmax)
  -- Continuity: the resident's next request prefers who served them.
  local resident = request_data(c).resident_id
  if is_id(resident) then redis.call('SET', c.p .. 'res/' .. resident, vid, 'EX', memory) end
  r.done[#r.done + 1] = vid
  local all = #r.done >= #r.held and r.state == 'confirmed'
  redis.call('HSET', c.rkey, 'c:' .. vid, all and 'all' or 'part')
  fact(c, r, 'completed|' .. vid .. '|' .. (all and '1' or '0'))
  if all then move(r, 'completed') end
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, 'ok', 0, list)
end

--[[ vd7_settle KEYS: due req...  ARGV: prefix lease_ms task_timeout_ms rid seq rid seq ...
The facts up to seq of each request reached Kafka: they are not published again, and the
request's due time drops back to its next deadline (or it leaves the due set). ]]
local function settle(keys, args)
  local ch = checker()
  local p = args[1]
  local lease, task_ms = int(args[2], 1, 1e9), int(args[3], 0, 1e12)
  ch.need(lease and task_ms and keys[1] == p .. 'due', 'settle arguments')
  ch.need(#args == 3 + 2 * (#keys - 1), 'settle list')
  for i = 2, #keys do
    local k = 4 + (i - 2) * 2
    ch.need(is_id(args[k]) and keys[i] == K.req(p, args[k]) and int(args[k + 1], 1, 1e9), 'settle entry')
  end
  if ch.err then return bad(ch) end
  local now = now_ms()
  for i = 2, #keys do
    local k = 4 + (i - 2) * 2
    local c = {p = p, rid = args[k], now = now, lease = lease, task_ms = task_ms,
               rkey = keys[i], due = keys[1]}
    local r = load(c)
    if r.state == 'received' then
      redis.call('ZREM', c.due, c.rid)
    else
      local seq = tonumber(args[k + 1])
      if seq > r.pub then
        r.pub = seq
        redis.call('HSET', c.rkey, 'pub', seq)
      end
      set_due(c, r, true)
    end
  end
  return #keys - 1
end

--[[ vd7_due KEYS: due  ARGV: prefix lease_ms limit
Takes up to limit requests whose due time has come, and moves each a lease ahead: two
instances never take the same request at once, and one that dies holding it only delays it
by the lease. ]]
local function due(keys, args)
  local ch = checker()
  local lease, limit = int(args[2], 1, 1e9), int(args[3], 1, 10000)
  ch.need(lease and limit and keys[1] == args[1] .. 'due', 'due arguments')
  if ch.err then return bad(ch) end
  local now = now_ms()
  local rids = redis.call('ZRANGEBYSCORE', keys[1], '-inf', now, 'LIMIT', 0, limit)
  for _, rid in ipairs(rids) do redis.call('ZADD', keys[1], now + lease, rid) end
  return rids
end

-- ---- the coordinators' desk (read only) -------------------------------------------------

-- A request's stored data (the daemon's own JSON) as the desk shows it; nil when it has none.
local function desk_request(p, rid, since)
  local v = redis.call('HMGET', K.req(p, rid), 'state', 'needed', 'held', 'offers', 'rq',
                       'unmatched', 'seq')
  if not v[1] then return nil end
  local ok, doc = pcall(cjson.decode, v[5] or '')
  local d = ok and type(doc) == 'table' and type(doc.data) == 'table' and doc.data or {}
  local loc = type(d.location) == 'table' and d.location or {}
  local e = {id = rid, state = v[1], needed = tonumber(v[2]) or 1, held = #split(v[3]),
             offers = #split(v[4]), lat = tonumber(loc.lat), lon = tonumber(loc.lon),
             service = type(d.service) == 'string' and d.service or '',
             priority = type(d.priority) == 'string' and d.priority or 'normal',
             event = type(d.event_id) == 'string' and d.event_id or '', since = since}
  if v[6] then
    local ok2, u = pcall(cjson.decode, v[6])
    if ok2 and type(u) == 'table' and type(u.reason) == 'string' then e.reason = u.reason end
  end
  -- The last fact, when it is a coordinator's: what came of the last assignment.
  local last = tonumber(v[7]) and redis.call('HGET', K.req(p, rid), 'f:' .. v[7])
  if last and (string.find(last, '^refused|') or string.find(last, '^confirmed|.*|.*|.*|.*|')) then
    e.last = last
  end
  return e
end

--[[ vd7_desk KEYS: unstaffed due  ARGV: prefix max_requests max_volunteers
What the desk shows, as one JSON document: the requests a coordinator must staff (oldest
first) and those being matched (searching or offered, from the due set), each with its place,
service, priority, volunteers needed, held and offered, why unmatched, and the last
coordinator's fact; the available volunteers of the city pool and of the events of those
requests, as [vid, geohash score, ...] per pool (the desk decodes the scores: no GEOPOS per
volunteer); and every listed pool's size. ]]
local function desk(keys, args)
  local ch = checker()
  local p = args[1]
  local maxr, maxv = int(args[2], 1, 10000), int(args[3], 0, 100000)
  ch.need(maxr and maxv, 'limits')
  ch.need(keys[1] == p .. 'unstaffed' and keys[2] == p .. 'due', 'keys')
  if ch.err then return bad(ch) end
  local reqs, pools, seen = {}, {[p .. 'pool/city'] = 'city'}, {}
  local function add(rid, since, only_active)
    if seen[rid] then return end
    seen[rid] = true
    local e = desk_request(p, rid, since)
    if not e or (only_active and e.state ~= 'searching' and e.state ~= 'offered') then return end
    if e.event ~= '' then pools[K.pool(p, e.event)] = 'ev/' .. e.event end
    reqs[#reqs + 1] = e
  end
  local un = redis.call('ZRANGE', keys[1], 0, maxr - 1, 'WITHSCORES')
  for i = 1, #un, 2 do add(un[i], tonumber(un[i + 1]), false) end
  for _, rid in ipairs(redis.call('ZRANGE', keys[2], 0, maxr * 2 - 1)) do
    if #reqs >= maxr * 2 then break end
    add(rid, nil, true)
  end
  local vols, sizes = {}, {}
  for key, name in pairs(pools) do
    sizes[name] = redis.call('ZCARD', key)
    vols[name] = maxv > 0 and redis.call('ZRANGE', key, 0, maxv - 1, 'WITHSCORES') or {}
  end
  return cjson.encode({now = now_ms(), requests = reqs, volunteers = vols, pools = sizes,
                       unstaffed = redis.call('ZCARD', keys[1])})
end

--[[ vd7_gauges KEYS: unstaffed due vols  ARGV: prefix
The city at a glance, for /metrics: {requests to staff, requests in the due set, volunteers
with a record, then pool name, available ... for the city and each listed event}. ]]
local function gauges(keys, args)
  local p = args[1]
  if not (keys[1] == p .. 'unstaffed' and keys[2] == p .. 'due' and keys[3] == p .. 'vols') then
    return redis.error_reply('VDINPUT keys')
  end
  local out = {redis.call('ZCARD', keys[1]), redis.call('ZCARD', keys[2]),
               redis.call('ZCARD', keys[3]), 'city', redis.call('ZCARD', K.pool(p, ''))}
  for _, ev in ipairs(redis.call('SRANDMEMBER', p .. 'events', 200)) do
    out[#out + 1] = 'ev/' .. ev
    out[#out + 1] = redis.call('ZCARD', K.pool(p, ev))
  end
  return out
end

--[[ vd7_near KEYS: req  ARGV: prefix rid count default_cap
The free volunteers nearest a request, in its pool (the city or its event), for a coordinator
to choose from: up to count, searched within 2, 8, 32 and then 128 km, each with distance,
skills, languages, team, tasks in the last 24 h, daily cap, and whether they have the skills
and a language the request asks for; with the request's state and its last fact (an
unmatched fact's document left out). One JSON document. ]]
local function near(keys, args)
  local ch = checker()
  local p, rid = args[1], args[2]
  local count, cap0 = int(args[3], 1, 100), int(args[4], 1, 1000)
  ch.need(is_id(rid) and keys[1] == K.req(p, rid), 'request_id/keys')
  ch.need(count and cap0, 'count/default_cap')
  if ch.err then return bad(ch) end
  local v = redis.call('HMGET', keys[1], 'state', 'rq', 'seq')
  if not v[1] then return cjson.encode({request = rid, error = 'unknown request'}) end
  local last = tonumber(v[3]) and redis.call('HGET', keys[1], 'f:' .. v[3]) or ''
  if string.find(last, '^unmatched|') then last = 'unmatched' end
  local ok, doc = pcall(cjson.decode, v[2] or '')
  local d = ok and type(doc) == 'table' and type(doc.data) == 'table' and doc.data or {}
  local loc = type(d.location) == 'table' and d.location or {}
  if not (lat_ok(loc.lat) and lon_ok(loc.lon)) then
    return cjson.encode({request = rid, state = v[1], error = 'the request has no place'})
  end
  local want_sk = type(d.skills) == 'table' and d.skills or {}
  local want_lang = type(d.languages) == 'table' and d.languages or {}
  local pool, found = K.pool(p, d.event_id), {}
  for _, r in ipairs({2000, 8000, 32000, 128000}) do
    found = redis.call('GEOSEARCH', pool, 'FROMLONLAT', loc.lon, loc.lat, 'BYRADIUS', r, 'm',
                       'ASC', 'COUNT', count, 'WITHDIST')
    if #found >= count then break end
  end
  local now, out = now_ms(), {}
  for _, f in ipairs(found) do
    local h = redis.call('HMGET', K.vol(p, f[1]), 'skills', 'languages', 'max_tasks', 'team')
    local cap = tonumber(h[3]) or 0
    if cap <= 0 then cap = cap0 end
    local sk, lg = split(h[1]), split(h[2])
    out[#out + 1] = {id = f[1], distance_m = tonumber(f[2]), skills = table.concat(sk, ','),
                     languages = table.concat(lg, ','), team = h[4] or '', cap = cap,
                     tasks_24h = redis.call('ZCOUNT', K.tasks(p, f[1]), '(' .. (now - DAY_MS), '+inf'),
                     skills_ok = has_all(set_of(sk), want_sk), languages_ok = has_any(set_of(lg), want_lang)}
  end
  return cjson.encode({request = rid, state = v[1], last = last, volunteers = out})
end

redis.register_function('vd7_vol_available', vol_available)
redis.register_function('vd7_vol_location', vol_location)
redis.register_function('vd7_vol_unavailable', vol_unavailable)
redis.register_function('vd7_sweep', sweep)
redis.register_function('vd7_probe', probe)
redis.register_function('vd7_round', round)
redis.register_function('vd7_claim', claim)
redis.register_function('vd7_respond', respond)
redis.register_function('vd7_tick', tick)
redis.register_function('vd7_settle', settle)
redis.register_function('vd7_due', due)
redis.register_function('vd7_cancel', cancel)
redis.register_function('vd7_complete', complete)
redis.register_function('vd7_assign', assign)
redis.register_function{function_name = 'vd7_desk', callback = desk, flags = {'no-writes'}}
redis.register_function{function_name = 'vd7_near', callback = near, flags = {'no-writes'}}
redis.register_function{function_name = 'vd7_gauges', callback = gauges, flags = {'no-writes'}}
