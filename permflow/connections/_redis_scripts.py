"""Lua scripts of the Redis connection: every state change is one script.

Key layout of one state id (``B`` is ``{prefix:state_id}``, a Redis Cluster
hash tag, so every key of a run lives in one slot)::

    B:log        stream   every message, global publish order (peek)
    B:t:<topic>  stream   the messages of one topic; one consumer group per reader
    B:r:<topic>  set      processes that read <topic>
    B:topics     set      topics that have a stream (for delete and expiry)
    B:reg        hash     process -> 's<topic>' (subscribe) or 'j<topic>' (join)
    B:n          hash     process -> messages not yet acked (outstanding)
    B:chg        stream   one tiny entry per change, for wait_for_change
    B:failed     string   JSON failure record of the run (workers)
    B:stop       string   set when a client asked the workers to stop the run

Every script gets ``KEYS = [log, n, reg, topics, chg]`` and
``ARGV = [B, ttl_ms, serializer, max_stream_length, ...]``; topic keys are
derived from ``B`` inside the script (same slot).

Inflight deliveries are the pending-entries lists of the consumer groups; the
consumer is the owner string. Released deliveries move to the consumer
``RELEASED`` so any owner can take them at once.

Work for workers lives apart, in one stream per prefix, ``{prefix}:work`` (its
own hash tag): one entry ``s <state id>`` per announcement, read by the consumer
group ``workers`` (one consumer per worker). The scripts ``CLAIM``,
``RENEW_CLAIMS`` and ``FINISH`` get ``KEYS = [work]`` and touch nothing else.
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "COMMIT",
    "DELETE",
    "FETCH",
    "FINISH",
    "MARK",
    "OUTSTANDING",
    "PUBLISH",
    "REGISTER",
    "RELEASE",
    "RELEASED",
    "RENEW",
    "RENEW_CLAIMS",
    "SKIP",
    "UNFETCH",
]

RELEASED = "permflow:released"

_PRELUDE = """
local base, ttl, fmt, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local LOG, COUNT, REG, TOPICS, CHG = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ALL = 1000000000
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
local function owned(stream, process, owner)
  local held = redis.pcall('XPENDING', stream, process, '-', '+', ALL, owner)
  local ids = {}
  if held.err then return ids end
  for _, p in ipairs(held) do ids[#ids + 1] = p[1] end
  return ids
end
"""

_STORE = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
-- Trim a topic stream only below what every reader has finished with.
local function trim(stream)
  if redis.call('XLEN', stream) <= maxlen then return end
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
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
  redis.call('XTRIM', stream, 'MINID', '~', keep)
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
      id = redis.call('XADD', LOG, 'MAXLEN', '~', maxlen, '*', unpack(fields))
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

_FETCH = """
-- Hand owner what process has not finished: released or lease-expired entries
-- first, then new ones. Returns {mode, topic, packed entries}; mode '-' =
-- unknown state, '?' = unknown process, 's' or 'j'.
local function fetch(process, owner, lease, limit, released)
  local spec = redis.call('HGET', REG, process)
  if not spec then
    if redis.call('EXISTS', REG) == 0 then return {'-', '', ''} end
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
      if room > 0 and #ids >= room then break end
      local who = p[2]
      if who == released or (who ~= owner and p[3] >= lease) then
        ids[#ids + 1] = p[1]
        attempts[p[1]] = p[4] + 1
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

# ARGV[5..]: pairs (process, 's'|'j' .. topic). Returns {} or {process, known spec}.
REGISTER = (
    _PRELUDE
    + """
local names = {}
for i = 5, #ARGV, 2 do names[#names + 1] = ARGV[i] end
local known = {}
chunks(names, 1000, function(part)
  for _, spec in ipairs(redis.call('HMGET', REG, unpack(part))) do known[#known + 1] = spec end
end)
local new = false
for i = 5, #ARGV, 2 do
  local spec = known[(i - 3) / 2]
  if spec and spec ~= ARGV[i + 1] then return {ARGV[i], spec} end
  if not spec then new = true end
end
if not new then return {} end
-- New processes, grouped by topic; a name given twice keeps its first spec.
local specs, counts, topics, readers, seen = {}, {}, {}, {}, {}
for i = 5, #ARGV, 2 do
  local process, spec = ARGV[i], ARGV[i + 1]
  if not known[(i - 3) / 2] and not seen[process] then
    seen[process] = true
    local topic = string.sub(spec, 2)
    if not readers[topic] then
      readers[topic] = {}
      topics[#topics + 1] = topic
    end
    table.insert(readers[topic], process)
    specs[#specs + 1] = process
    specs[#specs + 1] = spec
  end
end
chunks(specs, 1000, function(part) redis.call('HSET', REG, unpack(part)) end)
chunks(topics, 1000, function(part) redis.call('SADD', TOPICS, unpack(part)) end)
for _, topic in ipairs(topics) do
  local stream, names = tkey(topic), readers[topic]
  chunks(names, 1000, function(part) redis.call('SADD', rkey(topic), unpack(part)) end)
  for _, process in ipairs(names) do
    redis.pcall('XGROUP', 'CREATE', stream, process, '0', 'MKSTREAM')
  end
  local backlog = redis.call('XLEN', stream)
  for _, process in ipairs(names) do
    counts[#counts + 1] = process
    counts[#counts + 1] = backlog
  end
end
chunks(counts, 1000, function(part) redis.call('HSET', COUNT, unpack(part)) end)
touch()
return {}
"""
)

PUBLISH = (
    _PRELUDE
    + _STORE
    + """
local ids = store(5, {})
changed()
touch()
return ids
"""
)

# ARGV[5..]: process, topic, owner, first id, last id, n, ids..., then messages,
# then lease_ms, released consumer, k, k reader processes. Returns false if owner
# lost the delivery, else {log ids of the stored messages, then per reader its
# fetch reply (mode, topic, packed)}: the readers of what was just stored are
# fetched for owner in the same round trip, as its next fetch would.
COMMIT = (
    _PRELUDE
    + _STORE
    + _FETCH
    + """
local process, topic, owner = ARGV[5], ARGV[6], ARGV[7]
local n = tonumber(ARGV[10])
local stream = tkey(topic)
local held = redis.pcall('XPENDING', stream, process, ARGV[8], ARGV[9], ALL, owner)
if held.err then return false end
local mine = {}
for _, p in ipairs(held) do mine[p[1]] = true end
local ids = {}
for k = 11, 10 + n do
  if not mine[ARGV[k]] then return false end
  ids[#ids + 1] = ARGV[k]
end
chunks(ids, 1000, function(part) redis.call('XACK', stream, process, unpack(part)) end)
uncount(process, n)
local j = 12 + n + 5 * tonumber(ARGV[11 + n])
local lease, released, last = tonumber(ARGV[j]), ARGV[j + 1], j + 2 + tonumber(ARGV[j + 2])
local recount = {}
for r = j + 3, last do recount[ARGV[r]] = true end
local stored = store(11 + n, recount)
changed()
touch()
local reply = {stored}
for r = j + 3, last do
  for _, x in ipairs(fetch(ARGV[r], owner, lease, 0, released)) do reply[#reply + 1] = x end
end
return reply
"""
)

# ARGV[5..]: process, owner, lease_ms, limit (0 = none), released consumer.
FETCH = (
    _PRELUDE
    + _FETCH
    + """
return fetch(ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9])
"""
)

# ARGV[5..]: processes. Returns {last change id or '', then each process's
# count of messages not yet acked}, read together.
OUTSTANDING = (
    _PRELUDE
    + """
local last = redis.call('XREVRANGE', CHG, '+', '-', 'COUNT', 1)
local reply = {''}
if last[1] then reply[1] = last[1][1] end
for k = 5, #ARGV do reply[#reply + 1] = redis.call('HGET', COUNT, ARGV[k]) or '0' end
return reply
"""
)

# ARGV[5]: owner. Restarts the idle clock of every delivery owner holds.
RENEW = (
    _PRELUDE
    + """
local owner = ARGV[5]
local specs = redis.call('HGETALL', REG)
for k = 1, #specs, 2 do
  local process, stream = specs[k], tkey(string.sub(specs[k + 1], 2))
  chunks(owned(stream, process, owner), 500, function(part)
    claim(stream, process, owner, part, {'IDLE', 0, 'JUSTID'})
  end)
end
touch()
return 1
"""
)

# ARGV[5..]: owner, released consumer. Hands owner's deliveries back at once.
RELEASE = (
    _PRELUDE
    + """
local owner, released = ARGV[5], ARGV[6]
local specs = redis.call('HGETALL', REG)
if #specs == 0 then return 0 end
local moved = 0
for k = 1, #specs, 2 do
  local process, stream = specs[k], tkey(string.sub(specs[k + 1], 2))
  local ids = owned(stream, process, owner)
  chunks(ids, 500, function(part)
    claim(stream, process, released, part, {'IDLE', 0, 'JUSTID'})
  end)
  moved = moved + #ids
  redis.pcall('XGROUP', 'DELCONSUMER', stream, process, owner)
end
changed()
touch()
return moved
"""
)

# ARGV[5..]: process, topic, released consumer, n bad ids, bad ids..., then
# (id, delivery count before this fetch) of the good ones. Acks the unreadable
# entries and hands the good ones back untouched, after a fetch that met garbage.
SKIP = (
    _PRELUDE
    + """
local process, stream, released, n = ARGV[5], tkey(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local bad = {}
for k = 9, 8 + n do bad[#bad + 1] = ARGV[k] end
local acked = redis.call('XACK', stream, process, unpack(bad))
if acked > 0 then uncount(process, acked) end
for k = 9 + n, #ARGV, 2 do
  claim(stream, process, released, {ARGV[k]}, {'IDLE', 0, 'RETRYCOUNT', ARGV[k + 1], 'JUSTID'})
end
changed()
return acked
"""
)

# ARGV[5..]: process, topic, owner, released consumer, then pairs (id, delivery
# count before it was fetched). Hands fetched-ahead deliveries nobody asked for
# back as if never fetched, if owner still holds them.
UNFETCH = (
    _PRELUDE
    + """
local process, stream, owner, released = ARGV[5], tkey(ARGV[6]), ARGV[7], ARGV[8]
local moved = 0
for k = 9, #ARGV, 2 do
  local held = redis.pcall('XPENDING', stream, process, ARGV[k], ARGV[k], 1, owner)
  if not held.err and #held == 1 then
    claim(stream, process, released, {ARGV[k]}, {'IDLE', 0, 'RETRYCOUNT', ARGV[k + 1], 'JUSTID'})
    moved = moved + 1
  end
end
if moved > 0 then changed() end
return moved
"""
)

DELETE = (
    _PRELUDE
    + """
for _, topic in ipairs(redis.call('SMEMBERS', TOPICS)) do
  redis.call('DEL', tkey(topic), rkey(topic))
end
return redis.call('DEL', LOG, COUNT, REG, TOPICS, CHG, base .. ':failed', base .. ':stop')
"""
)

# KEYS[6]: the mark (B:failed or B:stop); ARGV[5]: its value. Sets it (with the
# ttl, if any) and records a change, so wait_for_change wakes.
MARK = (
    _PRELUDE
    + """
redis.call('SET', KEYS[6], ARGV[5])
changed()
touch()
return 1
"""
)

_WORK = """
local WORK, GROUP, ALL = KEYS[1], ARGV[1], 1000000000
"""

# ARGV: group, worker, lease_ms (0: never reclaim), limit. Creates the group if
# needed, then hands worker the entries of workers silent for lease, then new
# ones. Returns {id, fields} entries.
CLAIM = (
    _WORK
    + """
local worker, lease, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.pcall('XGROUP', 'CREATE', WORK, GROUP, '0', 'MKSTREAM')
local out = {}
if lease > 0 then
  local cursor = '0-0'
  for _ = 1, 10 do
    local r = redis.call('XAUTOCLAIM', WORK, GROUP, worker, lease, cursor, 'COUNT', limit - #out)
    for _, e in ipairs(r[2]) do
      if e and e[2] then out[#out + 1] = e end
    end
    cursor = r[1]
    if cursor == '0-0' or #out >= limit then break end
  end
end
if #out < limit then
  local r = redis.call('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', limit - #out, 'STREAMS', WORK, '>')
  if r then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = e end
  end
end
return out
"""
)

# ARGV: group, worker, entry ids. Restarts the idle clock of those entries
# that worker still holds (one lost to another worker stays lost).
RENEW_CLAIMS = (
    _WORK
    + """
local worker = ARGV[2]
local wanted = {}
for k = 3, #ARGV do wanted[ARGV[k]] = true end
local held = redis.pcall('XPENDING', WORK, GROUP, '-', '+', ALL, worker)
if held.err then return 0 end
local ids = {}
for _, p in ipairs(held) do
  if wanted[p[1]] then ids[#ids + 1] = p[1] end
end
for i = 1, #ids, 500 do
  local args = {'XCLAIM', WORK, GROUP, worker, 0}
  for k = i, math.min(i + 499, #ids) do args[#args + 1] = ids[k] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = 0
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return #ids
"""
)

# ARGV: group, worker, entry id, '1' to hand back. If worker still holds the
# entry: ack and delete it, and with hand back add it again for any worker.
FINISH = (
    _WORK
    + """
local worker, id, hand_back = ARGV[2], ARGV[3], ARGV[4] == '1'
local held = redis.pcall('XPENDING', WORK, GROUP, id, id, 1, worker)
if held.err or #held == 0 then return 0 end
local entry = redis.call('XRANGE', WORK, id, id)
redis.call('XACK', WORK, GROUP, id)
redis.call('XDEL', WORK, id)
if hand_back and entry[1] then redis.call('XADD', WORK, '*', unpack(entry[1][2])) end
return 1
"""
)
