"""Lua scripts that begin a run: register its readers, publish its input.

``REGISTER`` declares processes, ``PUBLISH`` stores messages no delivery
caused, and ``START`` does both for a run's input and fetches, for the run's
driver, what that input gave its readers: a new run costs one round trip
before its first step, not three. Key and argument conventions are those of
``_scripts``.
"""

from __future__ import annotations

from ._script_lib import FETCH_LIB, PRELUDE, STORE_LIB

__all__ = ["PUBLISH", "REGISTER", "REPUBLISH", "RESTART", "START"]

# register(first, last): declare the processes of the pairs ARGV[first..last]
# (process, 's'|'j' .. topic). Returns nil, NEED and topics (nothing changed), or
# {process, known spec} for a process known with another topic or mode.
_REGISTER_LIB = """
local function register(first, last)
  local wanted = {}
  for i = first + 1, last, 2 do wanted[#wanted + 1] = string.sub(ARGV[i], 2) end
  local missing = undeclared(wanted)
  if missing then return missing end
  local c = compact_form(false)
  if c then
    -- A compact run is rebuilt only for a process it does not know yet.
    local new = false
    for i = first, last, 2 do
      local spec = c.reg[ARGV[i]]
      if spec and spec ~= ARGV[i + 1] then return {ARGV[i], spec} end
      if not spec then new = true end
    end
    if not new then
      redis.call('DEL', KEYS[6])
      return nil
    end
    missing = expand()
    if missing then return missing end
  end
  -- KEYS[6]: the stop mark. A run starting here is no longer stopped.
  redis.call('DEL', KEYS[6])
  local names = {}
  for i = first, last, 2 do names[#names + 1] = ARGV[i] end
  local known = {}
  chunks(names, 1000, function(part)
    for _, spec in ipairs(redis.call('HMGET', REG, unpack(part))) do known[#known + 1] = spec end
  end)
  local new = false
  for i = first, last, 2 do
    local spec = known[(i - first) / 2 + 1]
    if spec and spec ~= ARGV[i + 1] then return {ARGV[i], spec} end
    if not spec then new = true end
  end
  if not new then return nil end
  -- New processes, grouped by topic; a name given twice keeps its first spec.
  local specs, counts, topics, readers, seen = {}, {}, {}, {}, {}
  for i = first, last, 2 do
    local process, spec = ARGV[i], ARGV[i + 1]
    if not known[(i - first) / 2 + 1] and not seen[process] then
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
  return nil
end
"""

# KEYS[6]: the stop mark. ARGV[5..]: pairs (process, 's'|'j' .. topic).
# Returns {} or {process, known spec}.
REGISTER = PRELUDE + _REGISTER_LIB + "return register(5, #ARGV) or {}"

_PUBLISH_LIB = """
local function publish(again)
  local missing = expand() or undeclared(message_topics({}, 5))
  if missing then return missing end
  if again then
    local ids = find_stored(5, '-', 1000)
    if ids then return ids end
  end
  local ids = store(5, {})
  changed()
  touch()
  settle()
  return ids
end
"""

# ARGV[5..]: the messages (count, then topic, payload, published_at, depth, trail
# each). Returns their log ids.
PUBLISH = PRELUDE + STORE_LIB + _PUBLISH_LIB + "return publish(false)"

# PUBLISH sent again after its reply was lost: if the first send stored the
# messages, their ids; else it stores them now.
REPUBLISH = PRELUDE + STORE_LIB + _PUBLISH_LIB + "return publish(true)"

_START_LIB = """
local function start(again)
  local pairs_end = 5 + 2 * tonumber(ARGV[5])
  local m = pairs_end + 1
  local j = m + 1 + 5 * tonumber(ARGV[m])
  local owner, lease, released = ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2]
  local last = j + 3 + tonumber(ARGV[j + 3])
  local missing = undeclared(message_topics({}, m))
  if missing then return missing end
  local refused = register(6, pairs_end)
  if refused then return refused end
  missing = expand()
  if missing then return missing end
  local ids
  if again then
    -- Sent again after a lost reply: did the first send store the input? Then
    -- the readers' fetch handed owner deliveries whose reply was lost too:
    -- take those back so the fetch below returns them.
    ids = find_stored(m, '-', 1000)
    if ids then
      for r = j + 4, last do
        local spec = redis.call('HGET', REG, ARGV[r])
        if spec then give_back(tkey(string.sub(spec, 2)), ARGV[r], owner, released) end
      end
    end
  end
  if not ids then
    local recount = {}
    for r = j + 4, last do recount[ARGV[r]] = true end
    ids = store(m, recount)
    changed()
    touch()
  end
  local reply = {ids}
  for r = j + 4, last do
    for _, x in ipairs(fetch(ARGV[r], owner, lease, 0, released)) do reply[#reply + 1] = x end
  end
  settle()
  return reply
end
"""

# KEYS[6]: the stop mark. ARGV[5..]: k, k pairs (process, 's'|'j' .. topic), the
# messages (as PUBLISH takes them), owner, lease_ms, released consumer, r, r
# reader processes. REGISTER, then PUBLISH, then each reader fetched for owner,
# in one round trip. Returns {process, known spec} (nothing stored) for a
# process known with another topic or mode, else {log ids of the stored
# messages, then per reader its fetch reply (mode, topic, packed)}.
START = PRELUDE + STORE_LIB + FETCH_LIB + _REGISTER_LIB + _START_LIB + "return start(false)"

# START sent again after its reply was lost (same arguments, same reply).
RESTART = PRELUDE + STORE_LIB + FETCH_LIB + _REGISTER_LIB + _START_LIB + "return start(true)"
