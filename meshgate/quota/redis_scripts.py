"""The shared ledger's Lua scripts: each runs atomically in Redis, so N gateway processes see one ledger.

A request costs two of them: RESERVE (check both limits, hold the tokens) and SETTLE (charge the
usage, free the hold, queue the charge for the SQL history). TICK is each process's once-a-second
housekeeping (renew its reservations, record their progress, expire dead processes' ones, find
orphaned outbox entries); WINDOW reads; SEED rebuilds a window from the history; ACK removes
outbox entries once they are in the history. Key layout: `redis_keys.py`.

Time is Redis's own (TIME), so every process agrees on deadlines whatever its clock says.
"""

from __future__ import annotations

# Lua helpers shared by the scripts (prepended to each; a script cannot call another).
# Each redis.call costs ~2 µs inside a script, so the hot paths read a hash once (HMGET) and write it once (HSET).
_COMMON = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A number as Redis wants an integer argument (tostring would give "1e+15" for large ones).
local function int(n)
  return string.format('%d', n)
end

local function split(s)
  local parts = {}
  for part in string.gmatch(s .. '\31', '([^\31]*)\31') do parts[#parts + 1] = part end
  return parts
end

-- A window or budget hash: used (nil if Redis does not have it: rebuild it), reserved, v.
local function load(key)
  local h = redis.call('HMGET', key, 'used', 'reserved', 'v')
  if not h[1] then return nil, 0, 0 end
  return tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
end

-- `v` counts the changes, so a process keeps the newest of the replies it has seen.
local function store(key, used, reserved, v)
  redis.call('HSET', key, 'used', int(used), 'reserved', int(math.max(reserved, 0)), 'v', int(v))
end

-- Change a counter of a hash that Redis has; one it lost is left alone (the history has the
-- change, and the rebuild reads it back).
local function add(key, field, n)
  if key == '' then return end
  local used, reserved, v = load(key)
  if used == nil then return end
  if field == 'used' then used = used + n else reserved = reserved + n end
  store(key, used, reserved, v + 1)
end

-- Expire the reservations whose deadline has passed: their process stopped renewing them (it was
-- killed, or hung for a whole TTL). Each is released from its window and budget and charged what
-- it had delivered (its last recorded progress); that charge is queued in the outbox for the
-- history with outcome "recovered", and the marker remembers it so a late settle adds only the rest.
local function sweep(prefix, now, limit, marker_ttl)
  local deadlines = prefix .. 'deadlines'
  local expired = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)
  for _, m in ipairs(expired) do
    redis.call('ZREM', deadlines, m)
    local f = split(m)
    local rid, amount, window, budget = f[1], tonumber(f[2]), f[3], f[4] or ''
    add(window, 'reserved', -amount)
    add(budget, 'reserved', -amount)
    local record = prefix .. 'r:' .. rid
    local raw = redis.call('GET', record)
    redis.call('DEL', record)
    if raw then
      -- account, api key id, model, bucket, day, budget key id, budget period, prompt, completion
      local r = split(raw)
      local p, c = tonumber(r[8]) or 0, tonumber(r[9]) or 0
      if p + c > 0 and redis.call('SET', prefix .. 's:' .. rid, 'r:' .. int(p + c), 'NX', 'EX', marker_ttl) then
        add(window, 'used', p + c)
        add(budget, 'used', p + c)
        redis.call('XADD', prefix .. 'outbox', '*', 'rid', rid, 'a', r[1], 'k', r[2], 'm', r[3], 'u', r[4],
          'd', r[5], 'bk', r[6], 'bp', r[7], 'p', int(p), 'c', int(c), 'o', 'recovered',
          'ts', string.format('%.3f', now / 1000), 'x', int(p + c), 'rc', '', 'w', window, 'b', budget)
      end
    end
  end
  return #expired
end
"""

# KEYS: window, record, deadlines[, budget]
# ARGV: prefix, limit, minimum, maximum, budget limit, ttl ms, request id, marker ttl s, record
#       (the history fields joined by \x1f: account, api key id, model, bucket, day, budget key id,
#       budget period, then progress 0, 0)
# -> {-1, window missing, budget missing} (rebuild them, then call again), or
#    {amount, remaining, refused (0, 1 window, 2 budget), window used, reserved, v, budget used, reserved, v}
RESERVE = (
    _COMMON
    + r"""
local window, record, deadlines, budget = KEYS[1], KEYS[2], KEYS[3], KEYS[4] or ''
local prefix = ARGV[1]
local limit, minimum, maximum = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local budget_limit, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
-- Expired reservations must not count in what is checked below.
sweep(prefix, now, 64, ARGV[8])

-- Nothing is touched before both hashes are known: a missing one is rebuilt by the caller first.
local w_used, w_reserved, w_v = load(window)
local b_used, b_reserved, b_v = 0, 0, 0
if budget ~= '' then b_used, b_reserved, b_v = load(budget) end
if w_used == nil or b_used == nil then return {-1, w_used == nil and 1 or 0, b_used == nil and 1 or 0} end

local free = limit - w_used - w_reserved
local refused = 0
if free < minimum or free <= 0 then refused = 1 end
if budget ~= '' then
  local b_free = budget_limit - b_used - b_reserved
  if refused == 0 and (b_free < minimum or b_free <= 0) then refused = 2 end
  if b_free < free then free = b_free end
end
-- A request id that holds a reservation is refused like a short window (the Ledger contract). The
-- record is the id's lock: SET NX creates it only if the id holds none.
if refused == 0 then
  if not redis.call('SET', record, ARGV[9], 'NX', 'PX', ttl + 86400000) then refused = 1 end
elseif refused == 2 and redis.call('EXISTS', record) == 1 then
  refused = 1
end
if refused ~= 0 then
  return {0, math.max(free, 0), refused, w_used, w_reserved, w_v, b_used, b_reserved, b_v}
end

-- Both have room: hold the same amount on each (both or neither, in one atomic step). The record's
-- PX only keeps it from outliving a lost deadline entry; the deadline is the real expiry.
local amount = math.min(maximum, free)
store(window, w_used, w_reserved + amount, w_v + 1)
if budget ~= '' then store(budget, b_used, b_reserved + amount, b_v + 1) end
redis.call('ZADD', deadlines, now + ttl, ARGV[7] .. '\31' .. int(amount) .. '\31' .. window .. '\31' .. budget)
return {amount, free - amount, 0, w_used, w_reserved + amount, w_v + 1, b_used, b_reserved + amount, b_v + 1}
"""
)

# KEYS: window, record, marker, deadlines, outbox[, budget]
# ARGV: prefix, member, amount, charge, record ("1", or "0": release only), marker ttl s, then the
#       history fields: request id, account, api key id, model, bucket, day, budget key id,
#       budget period, prompt, completion, outcome, created_at
# -> {-1, window missing, budget missing}, or
#    {charge (0: settled before), outbox id ('' if nothing recorded), redis charge, recovered ('' or tokens),
#     window used, reserved, v, budget used, reserved, v}
SETTLE = (
    _COMMON
    + r"""
local window, record, marker, deadlines, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local budget = KEYS[6] or ''
local w_used, w_reserved, w_v = load(window)
local b_used, b_reserved, b_v = 0, 0, 0
if budget ~= '' then b_used, b_reserved, b_v = load(budget) end
if w_used == nil or b_used == nil then return {-1, w_used == nil and 1 or 0, b_used == nil and 1 or 0} end

-- Still open: free the hold. (If its deadline passed, the sweep freed it already.)
local released = redis.call('ZREM', deadlines, ARGV[2]) == 1
if released then
  local amount = tonumber(ARGV[3])
  w_reserved, b_reserved = w_reserved - amount, b_reserved - amount
  redis.call('DEL', record)
end

local function reply(charge, extra, id, recovered)
  if extra ~= 0 or released then  -- write each hash once, with everything that changed
    w_used, w_v = w_used + extra, w_v + 1
    store(window, w_used, w_reserved, w_v)
    if budget ~= '' then
      b_used, b_v = b_used + extra, b_v + 1
      store(budget, b_used, b_reserved, b_v)
    end
  end
  return {charge, id, extra, recovered, w_used, math.max(w_reserved, 0), w_v,
    b_used, math.max(b_reserved, 0), b_v}
end
if ARGV[5] == '0' then return reply(0, 0, '', '') end  -- nothing used, nothing to record

local charge = tonumber(ARGV[4])
local extra, recovered = charge, ''
if not redis.call('SET', marker, '1', 'NX', 'EX', ARGV[6]) then
  local seen = redis.call('GET', marker)
  if string.sub(seen, 1, 2) ~= 'r:' then return reply(0, 0, '', '') end  -- settled before: idempotent
  -- The sweep expired it and charged its progress: add only the rest of the real usage.
  recovered = string.sub(seen, 3)
  extra = charge - tonumber(recovered)
  redis.call('SET', marker, '1', 'EX', ARGV[6])
end
-- The outbox entry stays until the charge is in the SQL history, so a process killed between this
-- script and its commit loses nothing: another process adopts the entry (TICK) and writes it.
local id = redis.call('XADD', outbox, '*', 'rid', ARGV[7], 'a', ARGV[8], 'k', ARGV[9], 'm', ARGV[10],
  'u', ARGV[11], 'd', ARGV[12], 'bk', ARGV[13], 'bp', ARGV[14], 'p', ARGV[15], 'c', ARGV[16], 'o', ARGV[17],
  'ts', ARGV[18], 'x', int(extra), 'rc', recovered, 'w', window, 'b', budget)
return reply(charge, extra, id, recovered)
"""
)

# KEYS: deadlines, outbox
# ARGV: prefix, ttl ms, marker ttl s, adopt-after ms, n, then n deadlines members to renew, then
#       (request id, prompt, completion) triples of progress
# -> {reservations expired, outbox entries older than adopt-after: {{id, {field, value, ...}}, ...}}
TICK = (
    _COMMON
    + r"""
local deadlines, outbox, prefix = KEYS[1], KEYS[2], ARGV[1]
local ttl, adopt_after, n = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
-- Renew this process's reservations: XX, so one settled (removed) meanwhile is not brought back.
for i = 6, 5 + n do
  redis.call('ZADD', deadlines, 'XX', 'GT', now + ttl, ARGV[i])
  redis.call('PEXPIRE', prefix .. 'r:' .. string.match(ARGV[i], '^([^\31]*)'), ttl + 86400000)
end
-- Progress goes only into records that still exist (a settled request's record is gone for good).
for i = 6 + n, #ARGV, 3 do
  local record = prefix .. 'r:' .. ARGV[i]
  local raw = redis.call('GET', record)
  if raw then
    local r = split(raw)
    r[8], r[9] = ARGV[i + 1], ARGV[i + 2]
    redis.call('SET', record, table.concat(r, '\31'), 'KEEPTTL')
  end
end
local swept = sweep(prefix, now, 1000, ARGV[3])
return {swept, redis.call('XRANGE', outbox, '-', int(now - adopt_after), 'COUNT', 500)}
"""
)

# KEYS: a window or budget hash, deadlines. ARGV: prefix, marker ttl s
# -> {-1} (missing: rebuild it), or {used, reserved, v}
WINDOW = (
    _COMMON
    + r"""
sweep(ARGV[1], now_ms(), 64, ARGV[2])
local used, reserved, v = load(KEYS[1])
if used == nil then return {-1} end
return {used, reserved, v}
"""
)

# KEYS: window or budget hashes. ARGV: (used from the history, expire-at epoch s) per key.
# SETNX-style: a hash that has `used` keeps it, so two processes rebuilding the same window at
# once cannot count its history twice, and a rebuild never overwrites settlements made since.
SEED = r"""
for i, key in ipairs(KEYS) do
  if redis.call('HSETNX', key, 'used', ARGV[2 * i - 1]) == 1 then redis.call('EXPIREAT', key, ARGV[2 * i]) end
end
return #KEYS
"""

# KEYS: outbox. ARGV: (entry id, window key, budget key, correction) quads.
# Removes entries that are in the history now. Whoever removes an entry applies its correction
# (tokens Redis counted that the history did not, e.g. a replayed request id after Redis lost its
# marker), so two processes that both wrote one entry correct the counters once.
ACK = (
    _COMMON
    + r"""
for i = 1, #ARGV, 4 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    local correction = tonumber(ARGV[i + 3])
    if correction ~= 0 then
      add(ARGV[i + 1], 'used', -correction)
      add(ARGV[i + 2], 'used', -correction)
    end
  end
end
return 1
"""
)
