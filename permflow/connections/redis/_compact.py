"""The compact form of a finished run, in Lua (``COMPACT_LIB``) and Python (``parse``).

A run whose every registered process has finished every message (nothing
unread, nothing held) needs only its log and who reads what. Its streams, their
consumer groups, reader sets and counts are then dropped, and the log key
``B:log`` holds one string instead of a stream::

    <len>:<bytes> pieces: 'c1', 2n, n (process, spec) pairs,
                          then per log entry: id, field count, fields...

The change stream ``B:chg`` stays with its last entry only (so a driver that
saw an earlier change finds a newer one and stops waiting), copied
(``COPY``) so that its node takes its own size. A compact run costs one short string
and one one-entry stream, about 1.5 KB, instead of a dozen keys and streams
whose first node alone takes about 4 KB each.

A script that must store or hand out something new in a compact run
(``expand``) first rebuilds the run as it was: the log with the same ids, each
topic stream from the log (an entry's id in it is its log id), and each
process's consumer group at the end of its topic: everything stays consumed,
while a process registered later reads its topic from the beginning. With
``max_stream_length``, the compact log keeps the newest that many entries, and
the rebuilt topic streams hold only what it kept. A run whose kept log is
longer than ``COMPACT_MAX`` entries stays in stream form (its consumers are
removed and its streams trimmed instead).
"""

from __future__ import annotations

__all__ = ["COMPACT_LIB", "COMPACT_MAX", "parse"]

#: Log entries a finished run may keep and still be compacted.
COMPACT_MAX = 1000

COMPACT_LIB = """
local COMPACT_MAX = @COMPACT_MAX@
-- The first ``limit`` (or all) <len>:<bytes> pieces of s.
local function pieces(s, limit)
  local out, pos, n = {}, 1, #s
  while pos <= n and (not limit or #out < limit) do
    local colon = string.find(s, ':', pos, true)
    local len = tonumber(string.sub(s, pos, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return out
end
local function is_compact()
  return redis.call('TYPE', LOG).ok == 'string'
end
-- The compact run: {reg = process -> spec, p = its pieces, first = index of its
-- first entry}, or nil if the run is not compact. ``whole``: parse the entries too.
local function compact_form(whole)
  if not is_compact() then return nil end
  local blob = redis.call('GET', LOG)
  local head = pieces(blob, 2)
  local limit = nil
  if not whole then limit = 2 + tonumber(head[2]) end
  local p = pieces(blob, limit)
  local reg = {}
  for k = 3, 2 + tonumber(p[2]), 2 do reg[p[k]] = p[k + 1] end
  return {reg = reg, p = p, first = 3 + tonumber(p[2])}
end
-- Each entry of a compact form c: fn(id, fields).
local function compact_entries(c, fn)
  local p, i = c.p, c.first
  while i <= #p do
    local n = tonumber(p[i + 1])
    fn(p[i], {unpack(p, i + 2, i + 1 + n)})
    i = i + 2 + n
  end
end
local function field(fields, name)
  for k = 1, #fields, 2 do
    if fields[k] == name then return fields[k + 1] end
  end
  return nil
end
-- Rebuild a compact run in stream form. Returns NEED (changing nothing) if
-- the keys of one of its topics were not declared, else nil.
local function expand()
  local c = compact_form(true)
  if not c then return nil end
  local topics, seen = {}, {}
  local function add(topic)
    if not seen[topic] then seen[topic] = true; topics[#topics + 1] = topic end
  end
  for _, spec in pairs(c.reg) do add(string.sub(spec, 2)) end
  compact_entries(c, function(_, fields) add(field(fields, 't')) end)
  local missing = undeclared(topics)
  if missing then return missing end
  redis.call('DEL', LOG)
  compact_entries(c, function(id, fields)
    redis.call('XADD', LOG, id, unpack(fields))
    redis.call('XADD', tkey(field(fields, 't')), id, 'l', id, unpack(fields))
  end)
  chunks(topics, 1000, function(part) redis.call('SADD', TOPICS, unpack(part)) end)
  for process, spec in pairs(c.reg) do
    local topic = string.sub(spec, 2)
    redis.call('HSET', REG, process, spec)
    redis.call('SADD', rkey(topic), process)
    redis.call('XGROUP', 'CREATE', tkey(topic), process, '$', 'MKSTREAM')
  end
  return nil
end
-- Log entries after id ``after`` ('' = all), at most ``count``, in either form.
local function log_after(after, count)
  local c = compact_form(true)
  if not c then
    local start = '-'
    if after ~= '' then start = '(' .. after end
    return redis.call('XRANGE', LOG, start, '+', 'COUNT', count)
  end
  local out = {}
  compact_entries(c, function(id, fields)
    if #out < count and (after == '' or before(after, id)) then out[#out + 1] = {id, fields} end
  end)
  return out
end
-- Has every process that reads one of ``topics`` finished every message of it
-- (nothing unread, nothing pending)? Only topics whose keys were declared can
-- be checked: otherwise, not known (false).
local function finished(topics)
  for _, topic in ipairs(topics) do
    local stream = tkey(topic)
    if not (DECLARED[stream] and DECLARED[rkey(topic)]) then return false end
    if redis.call('EXISTS', stream) == 1 then
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
        local info = {}
        for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
        if tonumber(info['pending']) > 0 then return false end
        if last and before(info['last-delivered-id'], last[1]) then return false end
      end
    end
  end
  return true
end
-- A run whose processes have finished every message is made compact (or, if
-- its log is too long for that, loses its consumers and what its readers
-- finished beyond max_stream_length). Called at the end of scripts that may
-- finish a run; does nothing otherwise.
local function settle()
  -- the counts first: the cheap check that rules out a run going on
  for _, left in ipairs(redis.call('HVALS', COUNT)) do
    if tonumber(left) > 0 then return end
  end
  if redis.call('TYPE', LOG).ok ~= 'stream' then return end
  local topics = redis.call('SMEMBERS', TOPICS)
  if not finished(topics) then return end
  local n = redis.call('XLEN', LOG)
  if maxlen > 0 and n > maxlen then n = maxlen end
  if n > COMPACT_MAX then
    for _, topic in ipairs(topics) do
      local stream = tkey(topic)
      local groups = {}
      if redis.call('EXISTS', stream) == 1 then groups = redis.call('XINFO', 'GROUPS', stream) end
      for _, g in ipairs(groups) do
        local name = field(g, 'name')
        for _, who in ipairs(redis.call('XINFO', 'CONSUMERS', stream, name)) do
          redis.call('XGROUP', 'DELCONSUMER', stream, name, field(who, 'name'))
        end
      end
      if maxlen > 0 then redis.call('XTRIM', stream, 'MAXLEN', maxlen) end
    end
    if maxlen > 0 then redis.call('XTRIM', LOG, 'MAXLEN', maxlen) end
    return
  end
  local parts = {}
  local function put(s) parts[#parts + 1] = #s .. ':' .. s end
  put('c1')
  local reg = redis.call('HGETALL', REG)
  put(tostring(#reg))
  for _, x in ipairs(reg) do put(x) end
  local entries
  if n == 0 then entries = {}
  else entries = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', n) end
  for k = #entries, 1, -1 do
    local e = entries[k]
    put(e[1]); put(tostring(#e[2]))
    for _, f in ipairs(e[2]) do put(f) end
  end
  for _, topic in ipairs(topics) do redis.call('DEL', tkey(topic), rkey(topic)) end
  redis.call('DEL', LOG, COUNT, REG, TOPICS)
  redis.call('SET', LOG, table.concat(parts))
  -- The change that wakes waiting drivers, kept alone: a reader that saw an
  -- earlier change still finds a newer one. Copied (through REG, deleted above
  -- and declared by every script), its node takes its size, not the 4 KB an
  -- appended-to node is given.
  redis.call('XADD', CHG, '*', 'c', '')
  redis.call('XTRIM', CHG, 'MAXLEN', 1)
  redis.call('RENAME', CHG, REG)
  redis.call('COPY', REG, CHG)
  redis.call('DEL', REG)
  if ttl > 0 then
    redis.call('PEXPIRE', LOG, ttl)
    redis.call('PEXPIRE', CHG, ttl)
  end
end
""".replace("@COMPACT_MAX@", str(COMPACT_MAX))


def parse(blob: bytes) -> tuple[dict[bytes, bytes], list[tuple[bytes, list[bytes]]]]:
    """The registrations (process -> spec) and log entries (id, fields) of a
    compact run's ``B:log`` string."""
    pieces: list[bytes] = []
    i, end = 0, len(blob)
    while i < end:
        colon = blob.index(b":", i)
        stop = colon + 1 + int(blob[i:colon])
        pieces.append(blob[colon + 1 : stop])
        i = stop
    if not pieces or pieces[0] != b"c1":
        raise ValueError("not a compact permflow run")
    n = int(pieces[1])
    reg = dict(zip(pieces[2 : 2 + n : 2], pieces[3 : 3 + n : 2], strict=True))
    entries = []
    k = 2 + n
    while k < len(pieces):
        count = int(pieces[k + 1])
        entries.append((pieces[k], pieces[k + 2 : k + 2 + count]))
        k += 2 + count
    return reg, entries
