"""Lua scripts of work distribution on the Redis connection.

Work for workers lives apart from the runs, in a few streams per prefix
(``_work.work_keys``, each its own hash tag): one entry ``s <state id>`` per
announcement, read by the consumer group ``workers`` (one consumer per worker).
The scripts get ``KEYS = [work stream]`` and ``ARGV = [group, worker, ...]``
and touch nothing else.
"""

from __future__ import annotations

from ._script_lib import PRELUDE

__all__ = ["ANNOUNCE", "CLAIM", "FINISH", "HEARTBEAT", "LIVE_WORKERS", "PROGRESS", "RENEW_CLAIMS", "UNMARK"]

_WORK = """
local WORK, GROUP, ALL = KEYS[1], ARGV[1], 1000000000
"""

# ARGV: group, worker, lease_ms (0: never reclaim), limit. Creates the group if
# needed, then hands worker the entries of workers silent for lease, then new
# ones. Returns {{id, fields} entries, the stream's last entry id}.
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
local info = redis.call('XINFO', 'STREAM', WORK)
local last = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
return {out, last}
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


# A state id's script (KEYS and ARGV[1..4] as the run scripts; KEYS[6]: the
# failure mark), for clients of workers. ARGV[5]: last log id seen ('' for none); ARGV[6..]: processes.
# Returns {log entries after it (up to 1,000), failure mark or false, last
# change id, count of each process} read atomically.
PROGRESS = (
    PRELUDE
    + """
local reply = {log_after(ARGV[5], 1000)}
reply[2] = redis.call('GET', KEYS[6])
local last = redis.call('XREVRANGE', CHG, '+', '-', 'COUNT', 1)
reply[3] = ''
if last[1] then reply[3] = last[1][1] end
for k = 6, #ARGV do reply[#reply + 1] = redis.call('HGET', COUNT, ARGV[k]) or '0' end
return reply
"""
)


# KEYS: [work]; ARGV[1]: state id, ARGV[2]: 1 for a worker's call for help.
ANNOUNCE = """
return redis.call('XADD', KEYS[1], '*', 's', ARGV[1], 'h', ARGV[2])
"""

# KEYS: [failed mark, stop mark] of one state id. Clears both.
UNMARK = """
return redis.call('DEL', KEYS[1], KEYS[2])
"""


# KEYS: [workers hash]; ARGV: worker, 1 (alive) or 0 (stopped). The time is the
# server's, so workers on machines with skewed clocks compare fairly.
HEARTBEAT = """
if ARGV[2] == '0' then return redis.call('HDEL', KEYS[1], ARGV[1]) end
local t = redis.call('TIME')
return redis.call('HSET', KEYS[1], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))
"""

# KEYS: [workers hash]; ARGV: within_ms, forget_ms. Workers whose heartbeat is at
# most within_ms old; entries older than forget_ms are removed.
LIVE_WORKERS = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local within, forget = tonumber(ARGV[1]), tonumber(ARGV[2])
local live, all = {}, redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local age = now - tonumber(all[i + 1])
  if age <= within then live[#live + 1] = all[i]
  elseif age > forget then redis.call('HDEL', KEYS[1], all[i]) end
end
return live
"""
