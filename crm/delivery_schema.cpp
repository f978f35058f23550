#include "crm/delivery_schema.hpp"

namespace paybridge::crm {

std::string ShardKeys::index(std::string_view state) const
{
    if (state == kStatePending) {
        return idx_pending;
    }
    if (state == kStateRetrying) {
        return idx_retrying;
    }
    if (state == kStateDelivered) {
        return idx_delivered;
    }
    if (state == kStateDead) {
        return dead;
    }
    return {};
}

DeliveryKeys::DeliveryKeys(std::string prefix, int shards)
{
    const store::Keys keys(prefix, shards);
    shards_.reserve(static_cast<std::size_t>(keys.shards()));
    for (int s = 0; s < keys.shards(); ++s) {
        const std::string base = prefix + store::Keys::tag(s) + ":crm:";
        shards_.push_back(ShardKeys{
            .shard = s,
            .stream = keys.outbox(s),
            .retry = base + "retry",
            .tries = base + "tries",
            .dead = base + "dead",
            .idx_pending = base + "idx:pending",
            .idx_retrying = base + "idx:retrying",
            .idx_delivered = base + "idx:delivered",
            .sweep = base + "sweep",
            .delivery_prefix = base + "delivery:",
            .attempts_prefix = base + "attempts:",
        });
    }
}

namespace scripts {

// Lua prepended to the scripts that check an attempt still holds its entry (kRenew before the
// POST, kRecord before a failure is written), so that the two agree on what holding means:
//   holds(stream, retry, group, consumer, entry, token)
//     token ~= '' (a popped retry): the entry's score in the retry zset is still `token`;
//     token == '' (read or reclaimed): the entry is pending for `consumer` and not in the retry zset.
constexpr std::string_view kHoldsHelper = R"lua(
local function holds(stream, retry, group, consumer, entry, token)
  local score = redis.call('ZSCORE', retry, entry)
  if token ~= '' then
    return score ~= false and tonumber(score) == tonumber(token)
  end
  if score ~= false then
    return false
  end
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
)lua";

// A failure is only recorded while the attempt still holds the entry, as kRenew checked before the
// POST: a late failure from a slow attempt must neither re-queue an entry another instance delivered
// meanwhile nor take one from the instance now sending it (a third would then send it at the same
// time, and the schedule would lose a step).
const std::string kRecord = std::string(kHoldsHelper) + R"lua(
local outcome, group, entry, event_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(ARGV[5])
local ttl = tonumber(ARGV[10])
if outcome ~= 'delivered' and not holds(KEYS[1], KEYS[2], group, ARGV[15], entry, ARGV[16]) then
  return -1
end
local attempts = redis.call('HINCRBY', KEYS[8], 'attempts', 1)
redis.call('RPUSH', KEYS[9], ARGV[7])
redis.call('LTRIM', KEYS[9], -tonumber(ARGV[11]), -1)
redis.call('HSET', KEYS[8], 'event_id', event_id, 'entry_id', entry, 'bill_id', ARGV[12], 'type', ARGV[13],
           'last_status', ARGV[9], 'last_error', ARGV[8], 'last_attempt_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('HSETNX', KEYS[8], 'first_seen_at', ARGV[5])
redis.call('ZREM', KEYS[4], event_id)
redis.call('ZREM', KEYS[5], event_id)
redis.call('ZREM', KEYS[6], event_id)
if outcome == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[6], entry)
  -- Out of the instance's PEL: only what instances hold in flight stays there (reclaim scans it).
  -- pcall: the writes above are done, and a group lost with the stream must not stop the rest.
  redis.pcall('XCLAIM', KEYS[1], group, ARGV[14], 0, entry, 'JUSTID')
  redis.call('HINCRBY', KEYS[3], entry, 1)
  redis.call('HSET', KEYS[8], 'state', 'retrying', 'next_at', ARGV[6])
  redis.call('ZADD', KEYS[6], now, event_id)
  redis.call('PERSIST', KEYS[8])
  redis.call('PERSIST', KEYS[9])
  return attempts
end
redis.call('XACK', KEYS[1], group, entry)
redis.call('ZREM', KEYS[2], entry)
redis.call('HDEL', KEYS[3], entry)
if outcome == 'delivered' then
  redis.call('HSET', KEYS[8], 'state', 'delivered', 'delivered_at', ARGV[5], 'next_at', '')
  redis.call('ZADD', KEYS[7], now, event_id)
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. string.format('%d', now - ttl))
  redis.call('PEXPIRE', KEYS[8], ttl)
  redis.call('PEXPIRE', KEYS[9], ttl)
else
  redis.call('HSET', KEYS[8], 'state', 'dead', 'dead_at', ARGV[5], 'next_at', '')
  redis.call('ZADD', KEYS[4], now, event_id)
  redis.call('PERSIST', KEYS[8])
  redis.call('PERSIST', KEYS[9])
end
return attempts
)lua";

const std::string_view kPopDue = R"lua(
local now = tonumber(ARGV[1])
local lease_until = string.format('%d', now + tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i, id in ipairs(due) do
  redis.call('ZADD', KEYS[2], lease_until, id)
  local e = redis.call('XRANGE', KEYS[1], id, id)
  local fields = false
  if e[1] then
    fields = e[1][2]
  end
  out[i] = {id, fields, redis.call('HGET', KEYS[3], id) or '0'}
end
return out
)lua";

// XCLAIM with min-idle 0 would take the entry from whoever holds it, so ownership is checked first.
const std::string kRenew = std::string(kHoldsHelper) + R"lua(
local group, consumer, entry, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not holds(KEYS[1], KEYS[2], group, consumer, entry, token) then
  return 0
end
if token ~= '' then
  redis.call('ZADD', KEYS[2], 'XX', string.format('%d', tonumber(ARGV[5]) + tonumber(ARGV[6])), entry)
else
  redis.call('XCLAIM', KEYS[1], group, consumer, 0, entry, 'JUSTID')
end
return 1
)lua";

// Lua prepended to the scripts that read Redis's flat field/value replies (XINFO, XRANGE):
//   fields(flat)   {k1, v1, k2, v2, ...} -> {k1 = v1, ...}
constexpr std::string_view kFieldsHelper = R"lua(
local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do
    f[flat[i]] = flat[i + 1]
  end
  return f
end
)lua";

const std::string kReclaim = std::string(kFieldsHelper) + R"lua(
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local want, scan, holder = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local out = {}
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], group)
if consumers.err then
  -- A stream that does not exist answers "no such key": to the caller, like a missing group, a
  -- reason to create the group again.
  if string.sub(consumers.err, 1, 7) == 'NOGROUP' then
    return consumers
  end
  return redis.error_reply('NOGROUP ' .. consumers.err)
end
for _, c in ipairs(consumers) do
  local info = fields(c)
  local name = info['name']
  if name ~= holder and info['pending'] > 0 then
    for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, 'IDLE', min_idle, '-', '+', scan, name)) do
      local id = p[1]
      if redis.call('ZSCORE', KEYS[2], id) ~= false then
        redis.call('XCLAIM', KEYS[1], group, holder, 0, id, 'JUSTID')
      elseif #out < want then
        local claimed = redis.call('XCLAIM', KEYS[1], group, consumer, min_idle, id)
        if claimed[1] then
          out[#out + 1] = {id, claimed[1][2], redis.call('HGET', KEYS[3], id) or '0'}
        elseif #redis.call('XPENDING', KEYS[1], group, id, id, 1) == 0 then
          -- Deleted from the stream while pending: Redis 7.0's XCLAIM drops it from the group and
          -- returns nothing. Handed back without fields, so that the dispatcher says so
          -- (crm.entry_missing): an instance that died before its delivery record was written
          -- leaves nothing else that would (the sweep looks at records).
          out[#out + 1] = {id, false, redis.call('HGET', KEYS[3], id) or '0'}
        end
      end
    end
  end
end
return out
)lua";

// Lua shared by the scripts that look at an outbox entry without a delivery record (prepended to
// each, after kFieldsHelper).
//   unread_by_group(stream, group, e) entry e lies beyond the group's last-delivered-id: no consumer
//                                     has been handed it yet (its first read is still to come)
constexpr std::string_view kOutboxEntryHelpers = R"lua(
local function unread_by_group(stream, group, entry)
  local last = '0-0'
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if not groups.err then
    for _, g in ipairs(groups) do
      local gf = fields(g)
      if gf['name'] == group then
        last = gf['last-delivered-id']
      end
    end
  end
  local em, es = string.match(entry, '^(%d+)-(%d+)$')
  local lm, ls = string.match(last, '^(%d+)-(%d+)$')
  em, es, lm, ls = tonumber(em), tonumber(es), tonumber(lm), tonumber(ls)
  return em > lm or (em == lm and es > ls)
end
)lua";

// Without a delivery record (never read, or its record expired after delivery) ARGV[5] names the
// outbox entry. An entry the group has not read yet must not go to the retry zset: the read would
// send it a second time.
const std::string kRequeue = std::string(kFieldsHelper) + std::string(kOutboxEntryHelpers) + R"lua(
local event_id, now = ARGV[1], ARGV[2]
local d = redis.call('HMGET', KEYS[8], 'state', 'entry_id', 'next_at')
local state, entry = d[1], d[2]
local recordless = false
if not state or not entry then
  if not ARGV[5] or ARGV[5] == '' then
    return {'not_found', ''}
  end
  entry, state, recordless = ARGV[5], false, true
end
if ARGV[3] ~= '' and state ~= ARGV[3] then
  return {'skipped', state or ''}
end
local e = redis.call('XRANGE', KEYS[1], entry, entry)
if #e == 0 then
  return {'gone', state or ''}
end
-- Made due now while a dispatcher holds it, any instance would send it a second time at once.
local score = redis.call('ZSCORE', KEYS[2], entry)
if score then
  if tonumber(score) > tonumber(now) and tonumber(score) ~= tonumber(d[3]) then
    return {'in_flight', state or 'retrying'}
  end
else
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[4], entry, entry, 1)
  if type(p) == 'table' and p[1] then
    return {'in_flight', state or 'pending'}
  end
end
if recordless then
  if score then
    state = 'retrying'
  else
    if unread_by_group(KEYS[1], ARGV[4], entry) then
      return {'requeued', 'pending'}
    end
    state = 'delivered'
  end
  local f = fields(e[1][2])
  redis.call('HSET', KEYS[8], 'event_id', event_id, 'entry_id', entry, 'bill_id', f['bill_id'] or '',
             'type', f['type'] or '', 'attempts', 0, 'first_seen_at', now)
end
if state == 'delivered' or state == 'dead' then
  redis.call('HDEL', KEYS[3], entry)
end
redis.call('ZADD', KEYS[2], now, entry)
redis.call('ZREM', KEYS[4], event_id)
redis.call('ZREM', KEYS[6], event_id)
redis.call('ZREM', KEYS[7], event_id)
redis.call('ZADD', KEYS[5], now, event_id)
redis.call('HSET', KEYS[8], 'state', 'pending', 'next_at', now, 'updated_at', now)
redis.call('PERSIST', KEYS[8])
redis.call('PERSIST', KEYS[9])
return {'requeued', state}
)lua";

const std::string kFindEntry = std::string(kFieldsHelper) + std::string(kOutboxEntryHelpers) + R"lua(
local count = tonumber(ARGV[4])
local rows = redis.call('XREVRANGE', KEYS[1], ARGV[3], ARGV[5] or '-', 'COUNT', count)
for _, e in ipairs(rows) do
  local f = fields(e[2])
  if f['id'] == ARGV[1] then
    local entry = e[1]
    local state = 'delivered'
    if redis.call('ZSCORE', KEYS[2], entry) then
      state = 'retrying'
    else
      local p = redis.pcall('XPENDING', KEYS[1], ARGV[2], entry, entry, 1)
      if type(p) ~= 'table' or p.err or p[1] or unread_by_group(KEYS[1], ARGV[2], entry) then
        state = 'pending'
      end
    end
    return {'found', {'state', state, 'event_id', ARGV[1], 'entry_id', entry, 'bill_id', f['bill_id'] or '',
                      'type', f['type'] or ''}}
  end
end
if #rows < count then
  return {'none', ''}
end
return {'more', '(' .. rows[#rows][1]}
)lua";

// Lost records: on Redis 7.0 an outstanding entry deleted from the stream is dropped from the PEL by
// the first XCLAIM that touches it, and kPopDue finds no fields for it, so neither reclaim nor retry
// ever settles its record. This bounded sweep, run by the dispatcher on the reclaim cadence and never
// on the delivery path, dead-letters them.
// - Only old members: score (the time the record entered its state) older than now - min_age; the
//   dispatcher passes 2 x lease. A pending record's score is the time its entry was read; the first
//   attempt normally starts within a lease of that (the lease is renewed just before the POST) and
//   lasts at most the CRM timeout, which config validation and Dispatcher::create keep below the
//   lease. So it is over before its record is old enough, and a deletion racing it is settled by
//   that attempt, not by a dead letter. Attempts in flight later than that (a popped retry, an item
//   queued behind its bill for longer than a lease) are covered by the next two points.
// - A record is lost exactly when XRANGE finds no entry for its entry_id; a record whose entry is
//   still in the stream is never touched, whatever its state or age.
// - An attempt already in flight when its entry was deleted may still end. A late success records
//   "delivered" anyway: kRecord's delivered outcome checks nothing, takes the event out of the dead
//   zset and writes the delivered state over the dead one. A late failure writes nothing: kRecord
//   only records a failure for an entry the attempt still holds (in the retry zset with its lease,
//   or in its consumer's PEL), and this script has taken it out of both.
// - Bounded: at most `limit` members per index and call, from the offsets in KEYS[8]. The offset
//   moves on by what was looked at and stayed in the index, and goes back to 0 after a call that
//   reached the end of the old part, so old records that are legitimately outstanding (retries wait
//   hours) cannot starve the lost ones behind them. Members that leave the index between calls
//   shift the others left, so a few may be skipped in one lap; they are seen in the next. The
//   offset is a rank (ZRANGE by index finds it in O(log N)): ZRANGEBYSCORE's LIMIT offset walks
//   the members before it one by one, so a lap over N retrying records cost N^2 / limit steps.
const std::string kSweepLost = R"lua(
local group, now = ARGV[1], tonumber(ARGV[2])
local now_text = string.format('%d', now)
local cutoff = now - tonumber(ARGV[3])
local limit, reason = math.max(1, tonumber(ARGV[4])), ARGV[5]
local out = {}
local function sweep(index, field)
  local offset = tonumber(redis.call('HGET', KEYS[8], field)) or 0
  local rows = redis.call('ZRANGE', index, offset, offset + limit - 1, 'WITHSCORES')
  local ids = {}
  for i = 1, #rows, 2 do
    if tonumber(rows[i + 1]) >= cutoff then
      break  -- the index is in score order: the old part ends here
    end
    ids[#ids + 1] = rows[i]
  end
  local removed = 0
  for _, event_id in ipairs(ids) do
    local record = KEYS[9] .. event_id
    local r = redis.call('HMGET', record, 'state', 'entry_id')
    local state, entry = r[1], r[2]
    if (state == 'pending' or state == 'retrying') and entry and entry ~= '' then
      -- pcall: an entry_id that is not a stream id must not stop the sweep of the others.
      local e = redis.pcall('XRANGE', KEYS[1], entry, entry)
      if type(e) == 'table' and not e.err and #e == 0 then
        -- pcall: a group lost with the stream must not stop the dead-lettering.
        redis.pcall('XACK', KEYS[1], group, entry)
        redis.call('ZREM', KEYS[2], entry)
        redis.call('HDEL', KEYS[3], entry)
        redis.call('HSET', record, 'state', 'dead', 'dead_at', now_text, 'updated_at', now_text, 'next_at', '',
                   'last_error', reason)
        redis.call('ZREM', KEYS[5], event_id)
        redis.call('ZREM', KEYS[6], event_id)
        redis.call('ZREM', KEYS[7], event_id)
        redis.call('ZADD', KEYS[4], now_text, event_id)
        redis.call('PERSIST', record)
        redis.call('PERSIST', KEYS[10] .. event_id)
        removed = removed + 1
        out[#out + 1] = {entry, event_id}
      end
    end
  end
  local next_offset = 0
  if #ids >= limit then
    next_offset = offset + #ids - removed
  end
  if next_offset ~= offset then
    redis.call('HSET', KEYS[8], field, next_offset)
  end
end
sweep(KEYS[5], 'pending')
sweep(KEYS[6], 'retrying')
return out
)lua";

const std::string kStats = std::string(kFieldsHelper) + R"lua(
local function ms_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end
local retrying = redis.call('ZCARD', KEYS[2])
local dead = redis.call('ZCARD', KEYS[3])
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if groups.err then
  return {0, 0, 0, retrying, dead}
end
local pending, lag, last, found = 0, false, '0-0', false
for _, g in ipairs(groups) do
  local info = fields(g)
  if info['name'] == ARGV[1] then
    found = true
    pending = info['pending']
    lag = info['lag']
    last = info['last-delivered-id']
  end
end
if not found then
  lag = redis.call('XLEN', KEYS[1])
end
if not lag then
  lag = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 100000)
end
local oldest = 0
if pending > 0 then
  local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
  oldest = ms_of(summary[2])
end
if lag > 0 then
  local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
  if first[1] then
    local ms = ms_of(first[1][1])
    if oldest == 0 or ms < oldest then
      oldest = ms
    end
  end
end
return {pending, lag, oldest, retrying, dead}
)lua";

// What may go: every entry older than the cutoff, the first pending entry of every group, the first
// entry after every group's last-delivered-id, every entry waiting for a retry and every entry of a
// dead letter. Entries in a group's PEL (in flight, or waiting for a retry and held by the retry
// holder) are covered by the first bound; the retry zset also holds entries outside the PEL
// (requeued by recover/redeliver after they were acknowledged), and dead letters are acknowledged:
// those two are looked at one by one, so the pass is skipped while there are more than max_scan of
// them (a backlog: nothing is trimmed until it is worked off). A dead letter whose entry is already
// gone (kSweepLost) holds nothing back. Ids are compared whole (ms, seq), so an entry is trimmed
// only when everything above is true of it.
// The trim is approximate and bounded (MINID ~ ... LIMIT 10000): an exact XTRIM deletes a whole
// backlog in one atomic call and can block Redis for seconds. Approximate trimming removes whole
// stream nodes only (stream-node-max-entries, 100 by default), each entirely below the floor, and
// stops at the first node it cannot remove whole or once LIMIT entries would be exceeded: it
// removes less than an exact trim, never an entry at or above the floor.
const std::string kTrimOutbox = std::string(kFieldsHelper) + R"lua(
local fm, fs = tonumber(ARGV[1]), 0
local function parse(id)
  local m, s = string.match(id or '', '^(%d+)-(%d+)$')
  return tonumber(m), tonumber(s)
end
local function below(m, s)
  return m < fm or (m == fm and s < fs)
end
local function keep(id, after)
  local m, s = parse(id)
  if m then
    if after then
      s = s + 1
    end
    if below(m, s) then
      fm, fs = m, s
    end
  end
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if groups.err then
  return {0, 'no_stream'}
end
if #groups == 0 then
  return {0, 'no_group'}
end
for _, g in ipairs(groups) do
  local info = fields(g)
  keep(info['last-delivered-id'], true)
  if info['pending'] > 0 then
    keep(redis.call('XPENDING', KEYS[1], info['name'])[2], false)
  end
end
local outside = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if outside > tonumber(ARGV[2]) then
  return {0, 'busy', outside}
end
for _, entry in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  keep(entry, false)
end
for _, event_id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local entry = redis.call('HGET', KEYS[4] .. event_id, 'entry_id')
  local m, s = parse(entry)
  if m and below(m, s) and #redis.call('XRANGE', KEYS[1], entry, entry) > 0 then
    fm, fs = m, s
  end
end
local floor = string.format('%d-%d', fm, fs)
return {redis.call('XTRIM', KEYS[1], 'MINID', '~', floor, 'LIMIT', 10000), 'trimmed', floor}
)lua";

const std::string kCleanupConsumers = std::string(kFieldsHelper) + R"lua(
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then
  return 0
end
local removed = 0
for _, c in ipairs(consumers) do
  local info = fields(c)
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
)lua";

}  // namespace scripts

}  // namespace paybridge::crm
