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

Once every process has finished every message, the run is made compact
(``_compact``): ``B:log`` becomes a string holding the log and ``B:reg``,
``B:chg`` keeps one entry, and the other keys are deleted. Scripts that store
something rebuild it first (``expand``); the others read it as it is.

Every script gets ``KEYS = [log, n, reg, topics, chg, (mark,) B:t:<topic>,
B:r:<topic> ...]`` and ``ARGV = [B, ttl_ms, serializer, max_stream_length,
...]``. A script touches only declared keys: one that would touch a topic whose
keys were not declared changes nothing and returns ``NEED`` and those topics,
for the client to send it again with them.

Inflight deliveries are the pending-entries lists of the consumer groups; the
consumer is the owner string. Released deliveries move to the consumer
``RELEASED`` so any owner can take them at once.

Work distribution has scripts of its own (``_work_scripts``); the marks
``B:failed`` and ``B:stop`` are set here (``MARK``) and deleted with the run.
"""

from __future__ import annotations

from ._script_lib import FETCH_LIB, PRELUDE, STORE_LIB
from ._start_scripts import PUBLISH, REGISTER, REPUBLISH, RESTART, START

__all__ = [
    "ACK_FETCH",
    "CHARGE",
    "COMMIT",
    "DELETE",
    "FETCH",
    "MARK",
    "NEED",
    "OUTSTANDING",
    "PUBLISH",
    "REACK_FETCH",
    "RECOMMIT",
    "REFETCH",
    "REGISTER",
    "RELEASE",
    "RELEASED",
    "RENEW",
    "RESTART",
    "REPUBLISH",
    "SKIP",
    "START",
    "UNFETCH",
]

RELEASED = "permflow:released"
#: The first item of the reply of a script that was not given the keys of some
#: topics it needs (the other items): nothing was changed.
NEED = b"permflow:need-keys"

_COMMIT_LIB = """
local function commit(again)
  -- Sent again: what the first send did may have been made compact since.
  if again then
    local missing = expand()
    if missing then return missing end
  end
  local process, topic, owner = ARGV[5], ARGV[6], ARGV[7]
  local n = tonumber(ARGV[10])
  local stream = tkey(topic)
  local j = 12 + n + 5 * tonumber(ARGV[11 + n])
  local lease, released, last = tonumber(ARGV[j]), ARGV[j + 1], j + 2 + tonumber(ARGV[j + 2])
  local q = tonumber(ARGV[last + 1])
  -- At most this many deliveries fetched ahead per reader (0: all there are).
  local ahead = tonumber(ARGV[last + 3 + q])
  local wanted = message_topics({topic}, 11 + n)
  for r = j + 3, last do read_topic(wanted, ARGV[r]) end
  local missing = undeclared(wanted)
  if missing then return missing end
  -- KEYS[6]: the stop mark. A stopped run (its client left) stores nothing more.
  if redis.call('EXISTS', KEYS[6]) == 1 then return false end
  local ok, ids = held(stream, process, owner, n)
  local stored
  if ok then
    chunks(ids, 1000, function(part) redis.call('XACK', stream, process, unpack(part)) end)
    uncount(process, n)
    if maxlen > 0 then trim(stream) end
    -- Readers fetched for below without a limit get their counts set by that
    -- fetch; with a limit, some may stay unread: counted here.
    local recount = {}
    if ahead == 0 then
      for r = j + 3, last do recount[ARGV[r]] = true end
    end
    stored = store(11 + n, recount)
    changed()
    touch()
  elseif again then
    -- Sent again after a lost reply: did the first send commit? Then its outputs
    -- are in the log, and its fetch for the readers handed owner deliveries
    -- whose reply was lost too: take those back so the fetch below returns them.
    stored = find_stored(11 + n, ARGV[8], ALL)
    if not stored then return false end
    for r = j + 3, last do
      local spec = redis.call('HGET', REG, ARGV[r])
      if spec then give_back(tkey(string.sub(spec, 2)), ARGV[r], owner, released) end
    end
  else
    return false
  end
  local reply = {stored}
  for r = j + 3, last do
    for _, x in ipairs(fetch(ARGV[r], owner, lease, ahead, released)) do reply[#reply + 1] = x end
  end
  -- ARGV[last + 2 + q]: 0 if the run is deleted when it ends (no compact form).
  if ARGV[last + 2 + q] ~= '0' then settle() end
  -- The outstanding counts of processes ARGV[last + 2..], after all of it.
  if q > 0 then
    local change = redis.call('XREVRANGE', CHG, '+', '-', 'COUNT', 1)[1]
    reply[#reply + 1] = change and change[1] or ''
    for k = last + 2, last + 1 + q do reply[#reply + 1] = redis.call('HGET', COUNT, ARGV[k]) or '0' end
  end
  return reply
end
"""

# KEYS[6]: the stop mark. ARGV[5..]: process, topic, owner, first id, last id, n,
# ids..., then messages, then lease_ms, released consumer, k, k reader processes,
# q, q processes to count, 1 (0: the run is deleted when it ends, so it is not
# made compact when it finishes), the most deliveries to fetch ahead per reader
# (0: all). Returns false if owner lost the delivery or the run
# was stopped, else {log ids of the stored messages, then per reader its fetch
# reply (mode, topic, packed), then (if q > 0) the last change id and the q
# outstanding counts}: the readers of what was just stored are fetched for owner
# in the same round trip, as its next fetch would, and with none to fetch, what
# the engine asks next (what is outstanding) is answered too.
COMMIT = PRELUDE + STORE_LIB + FETCH_LIB + _COMMIT_LIB + "return commit(false)"

# COMMIT sent again after its reply was lost (same arguments, same reply).
RECOMMIT = PRELUDE + STORE_LIB + FETCH_LIB + _COMMIT_LIB + "return commit(true)"

_ACK_FETCH_LIB = """
local function ack_fetch(again)
  local process, topic, owner, n = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[10])
  local lease, limit, released = tonumber(ARGV[11 + n]), tonumber(ARGV[12 + n]), ARGV[13 + n]
  local missing = undeclared(read_topic({topic}, process))
  if missing then return missing end
  -- KEYS[6]: the stop mark (a stopped run acks nothing more); KEYS[7]: the topic's stream.
  if redis.call('EXISTS', KEYS[6]) == 1 then return false end
  local stream = KEYS[7]
  local ok, ids = held(stream, process, owner, n)
  if ok then
    chunks(ids, 1000, function(part) redis.call('XACK', stream, process, unpack(part)) end)
    uncount(process, n)
    if maxlen > 0 then trim(stream) end
    changed()
    touch()
  elseif again then
    -- Sent again after a lost reply: the first send acked it and handed owner
    -- deliveries whose reply was lost too: take those back so the fetch returns them.
    give_back(stream, process, owner, released)
  else
    return false
  end
  local reply = fetch(process, owner, lease, limit, released)
  settle()
  return reply
end
"""

# KEYS[6]: the stop mark, KEYS[7]: the topic stream. ARGV[5..]: process, topic,
# owner, first id, last id, n, ids..., lease_ms, limit (0 = none), released
# consumer. A delivery its process's predicate rejected: acked with no outputs,
# then the process fetched for owner, in one round trip. Returns false if owner
# lost the delivery or the run was stopped, else the fetch reply.
ACK_FETCH = PRELUDE + FETCH_LIB + _ACK_FETCH_LIB + "return ack_fetch(false)"

# ACK_FETCH sent again after its reply was lost (same arguments, same reply).
REACK_FETCH = PRELUDE + FETCH_LIB + _ACK_FETCH_LIB + "return ack_fetch(true)"

# ARGV[5..]: process, owner, lease_ms, limit (0 = none), released consumer.
FETCH = (
    PRELUDE
    + FETCH_LIB
    + """
local missing = undeclared(read_topic({}, ARGV[5]))
if missing then return missing end
return fetch(ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9])
"""
)

# FETCH sent again after its reply was lost: what owner holds of the process is
# handed back first (counts kept), so this fetch returns it again. A delivery
# another task of owner is running may then run twice; its outputs are stored
# once (the first commit acks it, the second is refused).
REFETCH = (
    PRELUDE
    + FETCH_LIB
    + """
local missing = undeclared(read_topic({}, ARGV[5]))
if missing then return missing end
local spec = redis.call('HGET', REG, ARGV[5])
if spec then give_back(tkey(string.sub(spec, 2)), ARGV[5], ARGV[6], ARGV[9]) end
return fetch(ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9])
"""
)

# ARGV[5..]: process, topic, owner, then pairs (entry id, delivery count). Charges
# an attempt to deliveries owner holds (sets their delivery count) right before
# their step starts: a suspect's crash is counted only when it ran.
CHARGE = (
    PRELUDE
    + """
local missing = undeclared({ARGV[6]})
if missing then return missing end
local process, stream, owner = ARGV[5], tkey(ARGV[6]), ARGV[7]
local charged = 0
for k = 8, #ARGV, 2 do
  local held = redis.pcall('XPENDING', stream, process, ARGV[k], ARGV[k], 1, owner)
  if not held.err and #held == 1 then
    claim(stream, process, owner, {ARGV[k]}, {'RETRYCOUNT', ARGV[k + 1], 'JUSTID'})
    charged = charged + 1
  end
end
return charged
"""
)

# ARGV[5..]: processes. Returns {last change id or '', then each process's
# count of messages not yet acked}, read together.
OUTSTANDING = (
    PRELUDE
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
    PRELUDE
    + """
local owner = ARGV[5]
local specs = redis.call('HGETALL', REG)
local wanted = {}
for k = 2, #specs, 2 do wanted[#wanted + 1] = string.sub(specs[k], 2) end
local missing = undeclared(wanted)
if missing then return missing end
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
    PRELUDE
    + """
local owner, released = ARGV[5], ARGV[6]
local specs = redis.call('HGETALL', REG)
if #specs == 0 then return 0 end
local wanted = {}
for k = 2, #specs, 2 do wanted[#wanted + 1] = string.sub(specs[k], 2) end
local missing = undeclared(wanted)
if missing then return missing end
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
settle()
return moved
"""
)

# ARGV[5..]: process, topic, released consumer, n bad ids, bad ids..., then
# (id, delivery count before this fetch) of the good ones. Acks the unreadable
# entries and hands the good ones back untouched, after a fetch that met garbage.
SKIP = (
    PRELUDE
    + """
local missing = undeclared({ARGV[6]})
if missing then return missing end
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
    PRELUDE
    + """
local missing = undeclared({ARGV[6]})
if missing then return missing end
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

# KEYS[6], KEYS[7]: the failure and stop marks. Deletes every key of the run.
DELETE = (
    PRELUDE
    + """
local topics = redis.call('SMEMBERS', TOPICS)
local missing = undeclared(topics)
if missing then return missing end
for _, topic in ipairs(topics) do
  redis.call('DEL', tkey(topic), rkey(topic))
end
return redis.call('DEL', LOG, COUNT, REG, TOPICS, CHG, KEYS[6], KEYS[7])
"""
)

# KEYS[6]: the mark (B:failed or B:stop); ARGV[5]: its value. Sets it (with the
# ttl, if any) and records a change, so wait_for_change wakes.
# The mark is set even if the run's other keys are corrupt (a quarantined run).
MARK = (
    PRELUDE
    + """
local ok, missing = pcall(undeclared, {})
if ok and missing then return missing end
redis.call('SET', KEYS[6], ARGV[5])
redis.pcall('XADD', CHG, 'MAXLEN', '~', 32, '*', 'c', '')
if ttl > 0 then redis.call('PEXPIRE', KEYS[6], ttl) end
pcall(touch)
return 1
"""
)
