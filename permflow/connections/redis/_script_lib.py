"""Lua functions the run scripts of the Redis connection share.

``PRELUDE`` names the keys and arguments every run script gets (see
``_scripts``) and the small helpers; ``STORE_LIB`` appends messages to the
log and topic streams (trimming them if asked); ``FETCH_LIB`` hands a process's
deliveries to an owner. A script is the concatenation of the pieces it uses.
"""

from __future__ import annotations

from ._compact import COMPACT_LIB

__all__ = ["FETCH_LIB", "PRELUDE", "STORE_LIB"]

PRELUDE = (
    """
local base, ttl, fmt, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local LOG, COUNT, REG, TOPICS, CHG = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ALL = 1000000000
local NEED = 'permflow:need-keys'
local function tkey(topic) return base .. ':t:' .. topic end
local function rkey(topic) return base .. ':r:' .. topic end
local function touch()
  if ttl <= 0 then return end
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ttl) end
  for _, topic in ipairs(redis.call('SMEMBERS', TOPICS)) do
    redis.call('PEXPIRE', tkey(topic), ttl)
    redis.call('PEXPIRE', rkey(topic), ttl)
  end
end
-- Every key a script touches is declared in KEYS (the EVAL contract: a
-- cluster routes and migrates by them). Topic keys are declared by the client,
-- which may not know every topic of the run: a script first checks the topics
-- it will touch (and, with a ttl, every topic of the run, which touch()
-- refreshes) and, if one's keys are missing, changes nothing and returns NEED
-- and those topics; the client sends it again with them.
local DECLARED = {}
for _, k in ipairs(KEYS) do DECLARED[k] = true end
local function undeclared(topics)
  local missing, seen = {NEED}, {}
  local function check(topic)
    if not seen[topic] then
      seen[topic] = true
      if not (DECLARED[tkey(topic)] and DECLARED[rkey(topic)]) then missing[#missing + 1] = topic end
    end
  end
  for _, topic in ipairs(topics) do check(topic) end
  if ttl > 0 then
    for _, topic in ipairs(redis.call('SMEMBERS', TOPICS)) do check(topic) end
  end
  if #missing > 1 then return missing end
  return nil
end
-- The topic a registered process reads, appended to list (if registered).
local function read_topic(list, process)
  local spec = redis.call('HGET', REG, process)
  if spec then list[#list + 1] = string.sub(spec, 2) end
  return list
end
-- The topics of the messages ARGV[i..] (as store() takes them).
local function message_topics(list, i)
  for m = 0, tonumber(ARGV[i]) - 1 do list[#list + 1] = ARGV[i + 1 + m * 5] end
  return list
end
local function changed()
  redis.call('XADD', CHG, 'MAXLEN', '~', 32, '*', 'c', '')
end
local function uncount(process, n)
  if redis.call('HINCRBY', COUNT, process, -n) < 0 then redis.call('HSET', COUNT, process, 0) end
end
local function chunks(list, size, fn)
  for i = 1, #list, size do fn({unpack(list, i, math.min(i + size - 1, #list))}) end
end
local function claim(stream, process, consumer, ids, tail)
  local args = {'XCLAIM', stream, process, consumer, 0}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  for _, a in ipairs(tail) do args[#args + 1] = a end
  return redis.call(unpack(args))
end
-- Move what owner holds of process to the released consumer, keeping each
-- entry's delivery count, so that the next fetch hands it out again.
local function give_back(stream, process, owner, released)
  local held = redis.pcall('XPENDING', stream, process, '-', '+', ALL, owner)
  if held.err then return end
  for _, p in ipairs(held) do
    claim(stream, process, released, {p[1]}, {'IDLE', 0, 'RETRYCOUNT', p[4] - 1, 'JUSTID'})
  end
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
-- Trim a topic stream longer than max_stream_length, only below what every
-- reader has finished with (after an append, and after its readers ack).
local function trim(stream)
  if redis.call('XLEN', stream) <= maxlen then return end
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then
    redis.call('XTRIM', stream, 'MAXLEN', maxlen)
    return
  end
  local keep
  for _, g in ipairs(groups) do
    local info = {}
    for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
    local need
    if tonumber(info['pending']) > 0 then
      need = redis.call('XPENDING', stream, info['name'])[2]
    else
      local ms, seq = parse(info['last-delivered-id'])
      need = string.format('%.0f-%.0f', ms, seq + 1)
    end
    if keep == nil or before(need, keep) then keep = need end
  end
  redis.call('XTRIM', stream, 'MINID', keep)
end
local function owned(stream, process, owner)
  local held = redis.pcall('XPENDING', stream, process, '-', '+', ALL, owner)
  local ids = {}
  if held.err then return ids end
  for _, p in ipairs(held) do ids[#ids + 1] = p[1] end
  return ids
end
"""
    + COMPACT_LIB
)

STORE_LIB = """
-- The log ids of messages ARGV[i..] (as ``store`` takes them) if they were
-- stored already: one script stores a call's messages as consecutive log
-- entries, and an entry's published_at, topic and payload identify it. Looks
-- back from the newest entry, down to entry id ``floor`` ('-': none) or at most
-- ``budget`` entries.
local function find_stored(i, floor, budget)
  if tonumber(ARGV[i]) == 0 then return nil end
  local topic, payload, at = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local top, seen = '+', 0
  while seen < budget do
    local batch = redis.call('XREVRANGE', LOG, top, floor, 'COUNT', 1000)
    for _, e in ipairs(batch) do
      local f = e[2]
      if f[2] == topic and f[4] == at and f[12] == payload then
        local ids = {}
        for _, x in ipairs(redis.call('XRANGE', LOG, e[1], '+', 'COUNT', tonumber(ARGV[i]))) do
          ids[#ids + 1] = x[1]
        end
        return ids
      end
    end
    seen = seen + #batch
    if #batch < 1000 then return nil end
    top = '(' .. batch[#batch][1]
  end
  return nil
end
-- ARGV[i] = message count, then per message: topic, payload, published_at, depth, trail.
-- Readers in ``recount`` are not counted here: their fetch that follows sets their count.
local function store(i, recount)
  local ids = {}
  for m = 0, tonumber(ARGV[i]) - 1 do
    local j = i + 1 + m * 5
    local topic = ARGV[j]
    local fields = {'t', topic, 'p', ARGV[j + 2], 'd', ARGV[j + 3], 'r', ARGV[j + 4],
                    's', fmt, 'v', ARGV[j + 1]}
    local id
    if maxlen > 0 then
      id = redis.call('XADD', LOG, 'MAXLEN', maxlen, '*', unpack(fields))
    else
      id = redis.call('XADD', LOG, '*', unpack(fields))
    end
    local stream = tkey(topic)
    redis.call('XADD', stream, '*', 'l', id, unpack(fields))
    local readers = redis.call('SMEMBERS', rkey(topic))
    -- A topic with readers was added to TOPICS when they registered.
    if #readers == 0 then redis.call('SADD', TOPICS, topic) end
    for _, reader in ipairs(readers) do
      if not recount[reader] then redis.call('HINCRBY', COUNT, reader, 1) end
    end
    if maxlen > 0 then trim(stream) end
    ids[#ids + 1] = id
  end
  return ids
end
"""

FETCH_LIB = """
-- Whether owner holds every delivery ARGV[11..10+n] of process on stream (its
-- pending entries between ARGV[8] and ARGV[9]), and those ids: a commit or an
-- ack by anyone else is refused.
local function held(stream, process, owner, n)
  local pending = redis.pcall('XPENDING', stream, process, ARGV[8], ARGV[9], ALL, owner)
  local mine, ids, ok = {}, {}, not pending.err
  if ok then
    for _, p in ipairs(pending) do mine[p[1]] = true end
  end
  for k = 11, 10 + n do
    if not mine[ARGV[k]] then ok = false end
    ids[#ids + 1] = ARGV[k]
  end
  return ok, ids
end
-- Hand owner what process has not finished: released or lease-expired entries
-- first, then new ones. Returns {mode, topic, packed entries}; mode '-' =
-- unknown state, '?' = unknown process, 's' or 'j'. A lease-expired entry's
-- attempt is negative: a suspect.
local function fetch(process, owner, lease, limit, released)
  local spec = redis.call('HGET', REG, process)
  if not spec then
    local c = compact_form(false)
    -- a compact run: every process has finished everything
    local known = c and c.reg[process]
    if known then return {string.sub(known, 1, 1), string.sub(known, 2), ''} end
    if not c and redis.call('EXISTS', REG) == 0 then return {'-', '', ''} end
    return {'?', '', ''}
  end
  local mode, topic = string.sub(spec, 1, 1), string.sub(spec, 2)
  local stream = tkey(topic)
  local room = -1
  if limit > 0 and mode == 's' then room = limit end
  local out = {}
  local summary = redis.call('XPENDING', stream, process)
  local others = {}
  local any = false
  if summary[4] then
    for _, h in ipairs(summary[4]) do
      if h[1] ~= owner then others[h[1]] = tonumber(h[2]); any = true end
    end
  end
  if any and room ~= 0 then
    local ids, attempts, taken = {}, {}, {}
    for _, p in ipairs(redis.call('XPENDING', stream, process, '-', '+', summary[1])) do
      if room > 0 and #ids + #out >= room then break end
      local who = p[2]
      if who == released then
        ids[#ids + 1] = p[1]
        attempts[p[1]] = p[4] + 1
        taken[who] = (taken[who] or 0) + 1
      elseif who ~= owner and p[3] >= lease then
        -- Its holder went silent holding it: a suspect (it may be what killed the
        -- holder). Taken without charging an attempt: CHARGE does, when it runs.
        local e = claim(stream, process, owner, {p[1]}, {'RETRYCOUNT', p[4]})[1]
        if e then out[#out + 1] = {e[1], -(p[4] + 1), e[2]} end
        taken[who] = (taken[who] or 0) + 1
      end
    end
    chunks(ids, 500, function(part)
      for _, e in ipairs(claim(stream, process, owner, part, {})) do
        if e then out[#out + 1] = {e[1], attempts[e[1]], e[2]} end
      end
    end)
    for who, n in pairs(taken) do
      if others[who] == n then redis.call('XGROUP', 'DELCONSUMER', stream, process, who) end
    end
  end
  local exhausted = false
  local fresh = 0
  local left = room
  if room > 0 then left = room - #out end
  if left ~= 0 then
    local r
    if left > 0 then
      r = redis.call('XREADGROUP', 'GROUP', process, owner, 'COUNT', left, 'STREAMS', stream, '>')
    else
      r = redis.call('XREADGROUP', 'GROUP', process, owner, 'STREAMS', stream, '>')
    end
    local got = 0
    if r then
      for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], 1, e[2]}; got = got + 1 end
    end
    fresh = got
    exhausted = left < 0 or got < left
  end
  if exhausted then
    -- Nothing unread is left: outstanding is exactly what is pending (self-healing count).
    -- Claims only move entries between consumers, so pending grew by what was read.
    redis.call('HSET', COUNT, process, tonumber(summary[1]) + fresh)
  end
  if #out == 0 then return {mode, topic, ''} end
  touch()
  -- One length-prefixed string ('<len>:<bytes>' pieces: id, attempt, field count,
  -- fields...) per fetch: far cheaper for the client to parse than nested arrays.
  local parts = {}
  local function put(s) parts[#parts + 1] = #s .. ':' .. s end
  for _, e in ipairs(out) do
    local fields = e[3] or {}
    put(e[1]); put(tostring(e[2])); put(tostring(#fields))
    for _, f in ipairs(fields) do put(f) end
  end
  return {mode, topic, table.concat(parts)}
end
"""
