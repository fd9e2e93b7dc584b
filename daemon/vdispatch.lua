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
  P.."req:"..rid        hash, one per request: state needed ev (the original event) at exp
                        (start and end, ms) held (confirmed) offers (outstanding) tried (declined
                        or timed out) attempts, o:<vid> "offer_id|attempt|deadline_ms",
                        d:<vid> the match note, unmatched (outcome JSON), done c:<vid> released,
                        f:<n> the facts (event log) with seq and pub (see fact())
  P.."due"              sorted set: request_id scored by when an instance must look at it next
                        (scheduled start, offer deadline, expires_at, lease of a running step)

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
  unmatched = {cancelled = true},
  expired   = {cancelled = true},
  completed = {}, cancelled = {},
}
local ACTIVE = {scheduled = true, searching = true, offered = true}

-- The one place a request changes state: refuses a move the table does not allow.
local function move(r, to)
  if r.state == to then return end
  if not MOVES[r.state][to] then
    error('vdispatch: request ' .. r.rid .. ': illegal move ' .. r.state .. ' -> ' .. to)
  end
  r.state = to
end

local F = {'state', 'needed', 'held', 'offers', 'tried', 'attempts', 'at', 'exp', 'seq', 'pub', 'ev'}

--[[ Common ARGV of the request functions: prefix rid now_ms ttl_s lease_ms max_offers
offer_timeout_ms; KEYS[1] is the request's hash, KEYS[2] the due set. ]]
local function context(keys, args)
  return {p = args[1], rid = args[2], now = tonumber(args[3]), ttl = tonumber(args[4]),
          lease = tonumber(args[5]), max_offers = tonumber(args[6]), timeout = tonumber(args[7]),
          rkey = keys[1], due = keys[2]}
end

local function load(c)
  local v = redis.call('HMGET', c.rkey, unpack(F))
  return {rid = c.rid, state = v[1] or 'received', needed = tonumber(v[2]) or 1,
          held = split(v[3]), offers = split(v[4]), tried = split(v[5]),
          attempts = tonumber(v[6]) or 0, at = tonumber(v[7]) or 0, exp = tonumber(v[8]) or 0,
          seq = tonumber(v[9]) or 0, seq0 = tonumber(v[9]) or 0, pub = tonumber(v[10]) or 0, ev = v[11] or '', facts = {}}
end

local function save(c, r)
  redis.call('HSET', c.rkey, 'state', r.state, 'needed', r.needed, 'held', table.concat(r.held, ','),
             'offers', table.concat(r.offers, ','), 'tried', table.concat(r.tried, ','),
             'attempts', r.attempts, 'seq', r.seq)
  -- A request scheduled further ahead than the TTL is kept until its start, and the TTL after.
  local ttl = c.ttl
  if r.at > c.now then ttl = ttl + math.ceil((r.at - c.now) / 1000) end
  redis.call('EXPIRE', c.rkey, ttl)
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

--[[ Facts are the request's event log: one line per output-worthy change, "kind|vid|...",
kept in f:<n>. Those after `pub` are not known to have reached Kafka yet; every function
returns them, so whoever runs next publishes them again (same event ids) until vd_settle
says they were acknowledged. ]]
local function fact(c, r, line)
  r.seq = r.seq + 1
  redis.call('HSET', c.rkey, 'f:' .. r.seq, line)
end

-- Facts to publish: the unacknowledged ones, or (replay) every one of the given kinds too.
-- Those this call added are marked "+": news, the others are published again.
local function facts(c, r, kinds)
  local out = {}
  for n = 1, r.seq do
    if n > r.pub or kinds then
      local line = redis.call('HGET', c.rkey, 'f:' .. n)
      if line and (n > r.pub or kinds[string.match(line, '^[^|]*')]) then
        out[#out + 1] = (n > r.seq0 and '+' or '') .. n .. '|' .. line
      end
    end
  end
  return out
end

-- Frees a volunteer the request holds (offered or confirmed): back to their pool, and the
-- slot in their daily cap freed.
local function release(c, vid)
  local vkey = c.p .. 'vol:' .. vid
  if redis.call('HGET', vkey, 'task') ~= c.rid then return end
  redis.call('HSET', vkey, 'task', '')
  redis.call('ZREM', c.p .. 'tasks:' .. vid, c.rid)
  repool(c.p, vkey, vid)
end

-- offer_id attempt deadline_ms of an outstanding offer.
local function offer_of(c, vid)
  local o = redis.call('HGET', c.rkey, 'o:' .. vid) or ''
  local oid, attempt, deadline = string.match(o, '^([^|]*)|([^|]*)|([^|]*)$')
  return oid or '', tonumber(attempt) or 0, tonumber(deadline) or 0
end

--[[ When someone must look at the request next: the scheduled start, the earliest offer
deadline, expires_at; and at most a lease away while a search runs or facts wait for Kafka,
so that a request whose worker died is taken up again by any instance. ]]
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
  if r.seq > r.pub then at(c.now + c.lease) end
  if t and t <= c.now and keep_lease then
    -- Overdue, but an instance holds it under a lease (vd_settle): leave it theirs.
    local cur = tonumber(redis.call('ZSCORE', c.due, c.rid))
    if cur and cur > c.now then t = cur end
  end
  if t then redis.call('ZADD', c.due, t, c.rid) else redis.call('ZREM', c.due, c.rid) end
end

local function request_data(r)
  local ok, doc = pcall(cjson.decode, r.ev)
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
  fact(c, r, 'unmatched|' .. json)
end

local function lua_unmatched(c, r, reason)
  local data = request_data(r)
  local doc = {request_id = c.rid, reason = reason, radius_m = 0, candidates_considered = 0,
               filtered = {}}
  if type(data.service) == 'string' then doc.service = data.service end
  doc.priority = type(data.priority) == 'string' and data.priority or 'normal'
  return doc
end

-- Withdraws an outstanding offer: the volunteer is freed and never offered this request again.
local function withdraw(c, r, vid, why)
  local oid = offer_of(c, vid)
  release(c, vid)
  r.offers = without(r.offers, vid)
  if why ~= 'cancelled' then r.tried[#r.tried + 1] = vid end
  fact(c, r, 'withdrawn|' .. vid .. '|' .. oid .. '|' .. why)
end

-- Applies what time did: an expired request ends, a scheduled one starts, offers time out.
local function advance(c, r)
  if not ACTIVE[r.state] then return end
  if r.exp > 0 and c.now >= r.exp and #r.held < r.needed then
    for _, vid in ipairs(r.offers) do withdraw(c, r, vid, 'expired') end
    end_unmatched(c, r, lua_unmatched(c, r, 'expired'))
    return
  end
  if r.state == 'scheduled' and c.now >= r.at then move(r, 'searching') end
  for _, vid in ipairs(r.offers) do
    local _, _, deadline = offer_of(c, vid)
    if c.now >= deadline then withdraw(c, r, vid, 'timeout') end
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
  if #r.offers == 0 then end_unmatched(c, r, lua_unmatched(c, r, 'all_declined')) end
  return 0
end

local function finish_call(c, r)
  save(c, r)
  set_due(c, r)
end

--[[ The reply of every request function:
{tag, state, open, search, exclude, ev, {facts}, {page}, extra}: open is how many volunteers
are still to find, search 1 when the caller should search and offer now, exclude the
comma-joined volunteers never to offer again (held, offered, declined, timed out), ev the
request's original event, facts "n|kind|..." lines to publish, page a search page when the
function ran one. ]]
local function reply(c, r, tag, search, list, page, extra)
  local ex = {}
  for _, l in ipairs({r.held, r.offers, r.tried}) do
    for _, v in ipairs(l) do ex[#ex + 1] = v end
  end
  return {tag, r.state, math.max(r.needed - #r.held - #r.offers, 0), search,
          table.concat(ex, ','), r.ev, list, page or {}, extra or ''}
end

-- What a replayed vd.request.created publishes again: the request's whole log but cancels
-- (an offer is never republished without what ended it).
local OUTCOMES = {offered = true, confirmed = true, withdrawn = true, unmatched = true}

--[[ One search page: the candidates offset+1 .. offset+count nearest within radius_m of
pool (or of the smallest of the skill sets, when given: everyone there has at least that
rare skill). Returns {'ok', total, without, id, dist, skills, languages, max_tasks,
tasks_24h, ...}: total is how many the search returned before the offset was skipped;
without counts volunteers in range who lack the searched skill (only when nobody has it). ]]
local function search_page(p, pool, skill_sets, lat, lon, radius, offset, count, now)
  local base = pool
  local best = nil
  for _, k in ipairs(skill_sets) do
    local n = redis.call('ZCARD', k)
    if best == nil or n < best then best, pool = n, k end
  end
  local found = redis.call('GEOSEARCH', pool, 'FROMLONLAT', lon, lat,
                           'BYRADIUS', radius, 'm', 'ASC', 'COUNT', offset + count, 'WITHDIST')
  -- Nobody with the rare skill in range: say how many without it were there (up to count),
  -- so that the outcome tells "no eligible volunteer" from "nobody in range".
  local nwithout = 0
  if #found == 0 and pool ~= base then
    nwithout = #redis.call('GEOSEARCH', base, 'FROMLONLAT', lon, lat,
                           'BYRADIUS', radius, 'm', 'COUNT', count, 'ANY')
  end
  local out = {'ok', #found, nwithout}
  local since = now - DAY_MS
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

-- vd_search KEYS: pool [skill-set ...]  ARGV: prefix lat lon radius_m offset count now_ms
-- A further search page (read-only).
local function search(keys, args)
  local sets = {}
  for i = 2, #keys do sets[#sets + 1] = keys[i] end
  return search_page(args[1], keys[1], sets, args[2], args[3], args[4], tonumber(args[5]),
                     tonumber(args[6]), tonumber(args[7]))
end

--[[ vd_admit KEYS: req due pool [skill-set ...]
ARGV: common, needed at_ms exp_ms ev lat lon radius_m count
A new request gets its record: scheduled until at_ms (not_before less the lead time), else
searching, with the first search page in the same call. A request seen again (redelivery,
duplicate) answers 'replay' with its recorded outcome facts to publish again, or 'resume'
when an earlier run stopped in the middle of a search. ]]
local function admit(keys, args)
  local c = context(keys, args)
  local r = load(c)
  local tag, list = 'new', nil
  if r.state == 'received' then
    r.needed, r.at, r.exp, r.ev = tonumber(args[8]), tonumber(args[9]), tonumber(args[10]), args[11]
    redis.call('HSET', c.rkey, 'at', r.at, 'exp', r.exp, 'ev', r.ev)
    move(r, r.at > c.now and 'scheduled' or 'searching')
  elseif r.state == 'searching' then
    tag = 'resume'
  else
    tag = 'replay'
  end
  if r.ev == '' and r.state ~= 'received' then
    -- A record made before its request (a cancel that came first) learns what it asked for.
    r.ev, r.needed = args[11], tonumber(args[8])
    redis.call('HSET', c.rkey, 'ev', r.ev)
  end
  advance(c, r)
  local s = resolve(c, r)
  list = facts(c, r, tag == 'replay' and OUTCOMES or nil)
  local page = nil
  if s == 1 then
    local sets = {}
    for i = 4, #keys do sets[#sets + 1] = keys[i] end
    page = search_page(c.p, keys[3], sets, args[12], args[13], args[14], 0, tonumber(args[15]), c.now)
  end
  finish_call(c, r)
  return reply(c, r, tag, s, list, page)
end

--[[ vd_offer KEYS: req due  ARGV: common, default_cap, vid note vid note ...
A note is "distance/radius/considered" as the search saw it; it is kept (d:<vid>) with the
offer. Offers the request, in the order given, to volunteers who are still pooled, under
their daily cap and never tried for it, until no slot is open. Each offer holds the
volunteer (out of every pool). With offer_timeout_ms 0 the offer is confirmed at once
(direct mode); else it waits for an answer until its deadline (never after expires_at).
extra is how many were offered now. ]]
local function offer(keys, args)
  local c = context(keys, args)
  local r = load(c)
  local cap0 = tonumber(args[8])
  advance(c, r)
  local made = 0
  if r.state == 'searching' or r.state == 'offered' then
    local have = {}
    for _, l in ipairs({r.held, r.offers, r.tried}) do for _, v in ipairs(l) do have[v] = true end end
    for i = 9, #args - 1, 2 do
      if r.needed - #r.held - #r.offers <= 0 or r.attempts >= c.max_offers * r.needed then break end
      local vid = args[i]
      local vkey = c.p .. 'vol:' .. vid
      local v = redis.call('HMGET', vkey, 'avail', 'task', 'pool', 'max_tasks')
      if not have[vid] and v[1] == '1' and (not v[2] or v[2] == '') and v[3] and v[3] ~= ''
         and redis.call('ZSCORE', v[3], vid) then
        local tkey = c.p .. 'tasks:' .. vid
        redis.call('ZREMRANGEBYSCORE', tkey, '-inf', c.now - DAY_MS)
        local cap = tonumber(v[4]) or 0
        if cap <= 0 then cap = cap0 end
        if redis.call('ZCARD', tkey) < cap then
          unpool(vkey, vid)
          redis.call('HSET', vkey, 'task', c.rid)
          redis.call('ZADD', tkey, c.now, c.rid)
          redis.call('PEXPIRE', tkey, DAY_MS + 3600000)
          r.attempts = r.attempts + 1
          have[vid] = true
          made = made + 1
          local oid = 'of-' .. string.sub(redis.sha1hex(c.rid .. '/' .. vid), 1, 16)
          local note = args[i + 1]
          redis.call('HSET', c.rkey, 'd:' .. vid, note)
          if c.timeout <= 0 then
            r.held[#r.held + 1] = vid
            fact(c, r, 'confirmed|' .. vid .. '|' .. oid .. '|' .. r.attempts .. '|' .. note)
          else
            local deadline = c.now + c.timeout
            if r.exp > 0 and r.exp < deadline then deadline = r.exp end
            r.offers[#r.offers + 1] = vid
            redis.call('HSET', c.rkey, 'o:' .. vid, oid .. '|' .. r.attempts .. '|' .. deadline)
            fact(c, r, 'offered|' .. vid .. '|' .. oid .. '|' .. r.attempts .. '|' .. deadline .. '|' .. note)
          end
        end
      end
    end
  end
  local s = resolve(c, r)
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, 'ok', s, list, nil, tostring(made))
end

--[[ vd_respond KEYS: req due  ARGV: common, vid offer_id accept|decline
The volunteer's answer to an offer. Accepted: confirmed. Declined: released, never offered
this request again, and a search for the next one is due. An answer to no outstanding offer
(wrong offer_id, another volunteer, past its deadline, already answered, an ended request)
changes nothing: tag 'ignored', extra says why. ]]
local function respond(keys, args)
  local c = context(keys, args)
  local r = load(c)
  local vid, oid, kind = args[8], args[9], args[10]
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
      local note = redis.call('HGET', c.rkey, 'd:' .. vid) or '0'
      fact(c, r, 'confirmed|' .. vid .. '|' .. oid .. '|' .. attempt .. '|' .. note)
    else
      release(c, vid)
      r.tried[#r.tried + 1] = vid
      fact(c, r, 'withdrawn|' .. vid .. '|' .. oid .. '|declined')
    end
  end
  local s = resolve(c, r)
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, why and 'ignored' or 'ok', s, list, nil, why or '')
end

--[[ vd_tick KEYS: req due  ARGV: common
Run for a request taken from the due set: applies what time did (start, expiry, offer
timeouts) and returns what is left to publish and whether to search. ]]
local function tick(keys, args)
  local c = context(keys, args)
  local r = load(c)
  if r.state == 'received' then
    redis.call('ZREM', c.due, c.rid)
    return reply(c, r, 'gone', 0, {}, nil)
  end
  advance(c, r)
  local s = resolve(c, r)
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, 'ok', s, list, nil)
end

--[[ vd_finish KEYS: req due  ARGV: common, unmatched_json needed ev
The daemon found nobody more to offer: the request ends unmatched with the outcome document
it built (volunteers_missing is set here; a request that had offers declined or timed out
ends all_declined), unless offers are still outstanding: then it waits for their answers.
A request with no record yet (expired on arrival) gets one. ]]
local function finish(keys, args)
  local c = context(keys, args)
  local r = load(c)
  local doc = cjson.decode(args[8])
  if r.state == 'received' then
    r.needed, r.ev = tonumber(args[9]), args[10]
    redis.call('HSET', c.rkey, 'ev', r.ev)
    move(r, doc.reason == 'expired' and 'expired' or 'searching')
    if r.state == 'expired' then
      end_unmatched(c, r, doc)
      local list = facts(c, r, nil)
      finish_call(c, r)
      return reply(c, r, 'ok', 0, list, nil)
    end
  end
  if r.state ~= 'searching' and r.state ~= 'offered' then
    return reply(c, r, 'replay', 0, facts(c, r, OUTCOMES), nil)
  end
  advance(c, r)
  if ACTIVE[r.state] and #r.offers == 0 then
    if #r.tried > 0 and doc.reason ~= 'expired' then doc.reason = 'all_declined' end
    end_unmatched(c, r, doc)
  end
  local list = facts(c, r, nil)
  finish_call(c, r)
  return reply(c, r, ACTIVE[r.state] and 'wait' or 'ok', 0, list, nil)
end

--[[ vd_settle KEYS: due req...  ARGV: prefix now_ms lease_ms rid seq rid seq ...
The facts up to seq of each request reached Kafka: they are not published again, and the
request's due time drops back to its next deadline (or it leaves the due set). ]]
local function settle(keys, args)
  for i = 2, #keys do
    local k = 4 + (i - 2) * 2
    local c = {p = args[1], rid = args[k], now = tonumber(args[2]), lease = tonumber(args[3]),
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

--[[ vd_due KEYS: due  ARGV: now_ms lease_ms limit
Takes up to limit requests whose due time has come, and moves each a lease ahead: two
instances never take the same request at once, and one that dies holding it only delays it
by the lease. ]]
local function due(keys, args)
  local now, lease = tonumber(args[1]), tonumber(args[2])
  local rids = redis.call('ZRANGEBYSCORE', keys[1], '-inf', now, 'LIMIT', 0, tonumber(args[3]))
  for _, rid in ipairs(rids) do redis.call('ZADD', keys[1], now + lease, rid) end
  return rids
end

--[[ vd_cancel KEYS: req due  ARGV: common
Cancels a request and releases every volunteer it holds or has an offer out to, back to their
pool; a released assignment no longer counts toward the volunteer's daily cap. A cancel that
arrives before its request leaves a 'cancelled' record, so the request is never matched.
Returns {'cancelled', released, 'first'|'replay'}: a cancel seen again returns what the first
one released (its outputs may not have reached Kafka), or {'ended', state} when the request
had already ended otherwise (an unmatched or expired request that holds nobody, a completed
one). Facts not yet settled keep the request due, so that they are published still. ]]
local function cancel(keys, args)
  local c = context(keys, args)
  local r = load(c)
  if r.state == 'cancelled' then
    return {'cancelled', redis.call('HGET', c.rkey, 'released') or '', 'replay'}
  end
  local ended = r.state == 'unmatched' or r.state == 'expired'
  if not MOVES[r.state].cancelled or (ended and #r.held == 0) then return {'ended', r.state} end
  local done = {}
  for _, v in ipairs(split(redis.call('HGET', c.rkey, 'done'))) do done[v] = true end
  local released = {}
  for _, l in ipairs({r.held, r.offers}) do
    for _, vid in ipairs(l) do
      if not done[vid] and redis.call('HGET', c.p .. 'vol:' .. vid, 'task') == c.rid then
        release(c, vid)
        released[#released + 1] = vid
      end
    end
  end
  move(r, 'cancelled')
  r.offers = {}
  local joined = table.concat(released, ',')
  redis.call('HSET', c.rkey, 'state', 'cancelled', 'released', joined, 'offers', '')
  redis.call('EXPIRE', c.rkey, c.ttl)
  set_due(c, r)
  return {'cancelled', joined, 'first'}
end

--[[ vd_complete KEYS: req  ARGV: prefix rid vid
A volunteer finished their task: they return to the pool (if still available). The request is
'completed' once every volunteer it held has finished.
Returns {'completed'|'partial', done, 'first'|'replay'} (a completion seen again answers as the
first did), or {'mismatch', reason} when the volunteer is not confirmed for this request (a
wrong report: nothing changes). ]]
local function complete(keys, args)
  local c = {p = args[1], rid = args[2], rkey = keys[1]}
  local vid = args[3]
  local vkey = c.p .. 'vol:' .. vid
  local r = load(c)
  local gone = r.state == 'received' -- the record expired (request_ttl_s): trust the volunteer's task
  if redis.call('HGET', vkey, 'task') ~= c.rid or (not gone and not has(r.held, vid)) then
    local was = redis.call('HGET', c.rkey, 'c:' .. vid)
    if was then return {was == '1' and 'completed' or 'partial', '', 'replay'} end
    return {'mismatch', 'volunteer does not hold this request'}
  end
  redis.call('HSET', vkey, 'task', '')
  repool(c.p, vkey, vid)
  if gone then return {'partial', vid, 'first'} end
  local done = split(redis.call('HGET', c.rkey, 'done'))
  done[#done + 1] = vid
  local all = #done >= #r.held and r.state == 'confirmed'
  redis.call('HSET', c.rkey, 'done', table.concat(done, ','), 'c:' .. vid, all and '1' or '0')
  if all then
    move(r, 'completed')
    redis.call('HSET', c.rkey, 'state', r.state)
  end
  return {all and 'completed' or 'partial', table.concat(done, ','), 'first'}
end

redis.register_function('vd_vol_available', vol_available)
redis.register_function('vd_vol_location', vol_location)
redis.register_function('vd_vol_unavailable', vol_unavailable)
redis.register_function{function_name = 'vd_search', callback = search, flags = {'no-writes'}}
redis.register_function('vd_admit', admit)
redis.register_function('vd_offer', offer)
redis.register_function('vd_respond', respond)
redis.register_function('vd_tick', tick)
redis.register_function('vd_finish', finish)
redis.register_function('vd_settle', settle)
redis.register_function('vd_due', due)
redis.register_function('vd_cancel', cancel)
redis.register_function('vd_complete', complete)
