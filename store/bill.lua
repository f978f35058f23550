-- paybridge bill state machine: ONE script, so every state change is atomic in Redis
-- (dedupe + transition + history + outbox entry + anomaly record, or nothing).
--
-- KEYS (all carry the same hash tag, see store/keys.hpp):
--   1 bill (hash)       2 hist (list)        3 seen (hash)        4 refunds (hash)
--   5 orphans (list)    6 outbox (stream)    7 anomalies (stream) 8 updated (zset)
--   9 created (zset)
-- ARGV: 1 "apply" | "register", 2 now (Unix ms), 3 now (RFC 3339), then
--   apply    4..17 the PaymentEvent, one field per argument in the order of EVENT_FIELDS below
--            (no JSON to decode on the hot path); 18 "1" when none of its strings needs a JSON
--            escape (checked by the caller, so this script skips the check); 19 its paid_at;
--            20 its problem (kind "unusable" only)
--            -> {outcome, anomaly kind or "", bill status or ""}
--   register 4 NewBill JSON, with j_id / j_fixed: the bill's id and its fields that never change
--            (amount_fen .. metadata) as JSON text, escaped by the caller and stored in the bill
--            -> {"created" | "identical" | "conflict", bill JSON, orphans applied,
--                {anomaly kind recorded by each orphan's replay, in order}}
-- Orphans are kept as PaymentEvent JSON (the same field names) and replayed at registration.
--
-- Amounts are integer fen < 10^12: exact in Lua doubles, printed with %d.
-- Markers (all kept for the life of the bill). In the bill hash itself, so that ONE HMGET answers
-- both "seen before?" and "what is the bill's state?", and the HSET of a change also sets it:
--   n:<channel>:<notification id>        notification processed (exact repeats are duplicates)
-- In "seen" (rare; orphan markers exist before their bill does):
--   orphan:<fingerprint>                 orphan stored + unknown_bill anomaly recorded
--   unknown_count                        counter for unknown_bill event/anomaly ids
--   mismatch:<txn>:<currency>:<amount>   amount_mismatch recorded
--   dup_payment:<provider>:<txn>         duplicate_payment recorded
--   refund_other_txn:<refund id>         refund for another transaction recorded
--   refund_unapplied:<refund id>         refund of a payment the bill could not take recorded
--   refund_amount:<refund id>:<amount>   refund_amount_mismatch recorded
--   refund_exceeds:<refund id>           refund_exceeds_paid recorded
--   close_after_paid                     close_after_paid recorded
--   refund_update:<kind>:<refund id>     refund_closed / refund_abnormal recorded
--   unusable:<channel>:<notification id> unusable_notification recorded (no n: marker: the
--                                        provider retries, and a paybridge that reads it applies it)

local K_BILL, K_HIST, K_SEEN, K_REFUNDS, K_ORPHANS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_OUTBOX, K_ANOMALIES, K_UPDATED, K_CREATED = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local OP, NOW_MS, NOW = ARGV[1], ARGV[2], ARGV[3]

-- The hot path, answered before the rest of this script (its functions and tables) is even set
-- up, since every closure, table and string made here costs Redis time on every call:
-- 1. Providers repeat themselves until acknowledged, so exact repeats are common: one HMGET of
--    two fields answers them. (Reading the bill's state in the same HMGET would make repeats cost
--    what payments do.)
-- 2. The common change, the first payment of a PENDING bill for the amount and in the currency it
--    asks, with strings that need no JSON escape (the caller checked) and every field present:
--    one HMGET of what the change needs, one HSET, one ZADD, and the event (the bill inline) as
--    ONE concatenation. It writes byte for byte what pay() below writes for the same payment
--    (tests/integration/store/bill_script_test.cpp compares the two).
-- Anything else goes on to apply(), past the definitions below.
local MARKER = nil
if OP == 'apply' and ARGV[7] ~= '' then
    local a = ARGV
    local channel, nid = a[5], a[7]
    MARKER = 'n:' .. channel .. ':' .. nid  -- as marker_of() below makes it
    local r = redis.call('HMGET', K_BILL, MARKER, 'status')
    if r[1] then
        return {'duplicate', '', r[2] or ''}
    end
    local provider, txn, total, pstatus, occurred = a[4], a[10], a[12], a[16], a[17]
    -- A PENDING bill has paid nothing, refunded nothing and names no provider or transaction.
    if r[2] == 'PENDING' and a[6] == 'payment' and a[18] == '1' and provider ~= '' and channel ~= ''
        and txn ~= '' and pstatus ~= '' and occurred ~= '' then
        r = redis.call('HMGET', K_BILL, 'amount_fen', 'currency', 'version', 'seq', 'created_at', 'j_id',
            'j_fixed')
        local j_id, j_fixed = r[6], r[7]
        -- Amounts are compared as the canonical integers both sides write (%d, std::to_string).
        if total == r[1] and a[11] == r[2] and j_id and j_id ~= '' and j_fixed and j_fixed ~= '' then
            local paid_at = a[19] or ''
            if paid_at == '' then
                paid_at = occurred
            end
            local version = string.format('%d', tonumber(r[3]) + 1)
            local seq = string.format('%d', tonumber(r[4]) + 1)
            local bill_id = a[9]
            redis.call('HSET', K_BILL, MARKER, NOW_MS, 'version', version, 'updated_at', NOW, 'seq', seq,
                'status', 'PAID', 'paid_fen', total, 'provider', provider, 'provider_txn_id', txn,
                'paid_at', paid_at)
            redis.call('ZADD', K_UPDATED, NOW_MS, bill_id)
            local id = 'evt_' .. bill_id .. '_' .. seq
            local event = '{"id":"' .. id .. '","type":"bill.paid","created_at":"' .. NOW .. '","bill_id":"'
                .. bill_id .. '","sequence":' .. seq .. ',"bill":{"id":' .. j_id .. ',"status":"PAID",' .. j_fixed
                .. ',"paid_fen":' .. total .. ',"refunded_fen":0,"provider":"' .. provider
                .. '","provider_txn_id":"' .. txn .. '","created_at":"' .. r[5] .. '","updated_at":"' .. NOW
                .. '","paid_at":"' .. paid_at .. '","version":' .. version .. '},"data":{"provider":"'
                .. provider .. '","channel":"' .. channel .. '","kind":"payment","notification_id":"' .. nid
                .. '","provider_txn_id":"' .. txn .. '","amount_fen":' .. total .. ',"provider_status":"'
                .. pstatus .. '","occurred_at":"' .. occurred .. '"}}'
            redis.call('RPUSH', K_HIST, event)
            redis.call('XADD', K_OUTBOX, '*', 'id', id, 'bill_id', bill_id, 'type', 'bill.paid', 'event', event)
            return {'applied', '', 'PAID'}
        end
    end
end

-- A notification's marker in the bill hash; nil without a notification id.
local function marker_of(channel, notification_id)
    if notification_id == '' then
        return nil
    end
    return 'n:' .. channel .. ':' .. notification_id
end

---------------------------------------------------------------------------------------------------
-- JSON text. Objects are assembled by hand so keys keep a fixed order and embedded JSON (the bill
-- inside an event, the CRM's metadata) is copied verbatim. The hot objects (bill, event) are ONE
-- concatenation expression each: Lua builds the result in one buffer, with no intermediate
-- strings or tables, which is most of this script's cost otherwise.

-- The content of a JSON string (without the quotes).
local function esc(s)
    -- Fast path (ids, amounts, times, statuses): nothing to escape, so no encoder call. Raw UTF-8
    -- is valid JSON text; only '"', '\' and control characters need escapes.
    if not string.find(s, '[%c"\\]') then
        return s
    end
    local text = cjson.encode(s)
    -- cjson writes "/" as "\/": valid but noisy. Every "/" it emits is escaped that way, so each
    -- "\/" pair in its output is exactly one such escape and can be undone safely.
    if string.find(text, '/', 1, true) then
        text = string.gsub(text, '\\/', '/')
    end
    return string.sub(text, 2, -2)
end

-- A JSON string, or null for nil or '', in two pieces to go into a larger concatenation without
-- a string of its own: '"' .. text .. '"' is written as q .. text .. q. safe: s is known to need
-- no escape.
local function jpart(s, safe)
    if not s or s == '' then
        return 'null', ''
    end
    if safe then
        return s, '"'
    end
    return esc(s), '"'
end

local function jstr_or_null(s)
    local text, q = jpart(s, false)
    return q .. text .. q
end

local function jint(n)
    return string.format('%d', n)
end

-- fields: list of {key, json text}; a field whose text is nil is left out. Keys are plain
-- identifiers written in this file, so they need no escaping. Rendered as ',"k":v' pieces, so a
-- list can follow the fixed part of an object.
local function jfields(fields)
    local out = {}
    for i, f in ipairs(fields) do
        if f[2] ~= nil then
            out[i] = ',"' .. f[1] .. '":' .. f[2]
        else
            out[i] = ''
        end
    end
    return table.concat(out)
end

---------------------------------------------------------------------------------------------------
-- The bill hash.

-- The bill's state, what every transition reads (one HMGET into one table constructor); nil
-- when there is no such bill. marker: the notification's marker, known not to be set yet: the
-- first HSET of the bill sets it too (save_bill, emit), or apply() at its end.
local function load_bill(marker)
    local r = redis.call('HMGET', K_BILL, 'id', 'status', 'amount_fen', 'currency', 'paid_fen',
        'refunded_fen', 'provider', 'provider_txn_id', 'created_at', 'updated_at', 'paid_at', 'version',
        'seq', 'j_id', 'j_fixed')
    if not r[1] then
        return nil
    end
    -- HMGET answers false for a missing field; only j_id / j_fixed may be missing or empty (bills
    -- registered before they existed, or by a caller that did not send them): bill_json then
    -- renders those parts itself.
    -- Numbers are kept twice, as numbers to compute with and as the text to write (*_text, set
    -- with every change): turning a number into text is the dearest thing a short Lua script does.
    return {id = r[1], status = r[2], amount_fen = tonumber(r[3]), currency = r[4], paid_fen = tonumber(r[5]),
        refunded_fen = tonumber(r[6]), provider = r[7], provider_txn_id = r[8], created_at = r[9],
        updated_at = r[10], paid_at = r[11], version = tonumber(r[12]), seq = tonumber(r[13]),
        j_id = r[14], j_fixed = r[15], marker = marker,
        paid_text = r[5], refunded_text = r[6], version_text = r[12], seq_text = r[13]}
end

-- The descriptive fields, read only where needed: registration compares them, and bills without
-- j_fixed render them.
local function load_details(b)
    if b.customer_id == nil then
        local r = redis.call('HMGET', K_BILL, 'customer_id', 'description', 'expires_at', 'metadata')
        b.customer_id, b.description, b.expires_at, b.metadata = r[1] or '', r[2] or '', r[3] or '', r[4] or ''
    end
    return b
end

-- The JSON of the bill fields that never change after registration, amount_fen .. metadata
-- (what the caller stores as j_fixed). Only for bills stored without j_fixed.
local function fixed_json(b)
    load_details(b)
    local metadata = ''
    if b.metadata ~= '' then
        metadata = ',"metadata":' .. b.metadata
    end
    return '"amount_fen":' .. jint(b.amount_fen) .. ',"currency":"' .. esc(b.currency)
        .. '","customer_id":"' .. esc(b.customer_id) .. '","description":"' .. esc(b.description)
        .. '","expires_at":' .. jstr_or_null(b.expires_at) .. metadata
end

-- API.md "Bills". Kept in step with bill_json() in store/redis_bill_store.cpp. status, created_at
-- and updated_at are written only by this script (constants and NOW), so they need no escaping.
-- b.paid_safe: provider, provider_txn_id and paid_at were just set from an event whose strings
-- need no escape (pay()).
local function bill_json(b)
    local id, fixed = b.j_id, b.j_fixed
    if not id or id == '' or not fixed or fixed == '' then
        id, fixed = '"' .. esc(b.id) .. '"', fixed_json(b)
    end
    local safe = b.paid_safe
    local provider, q1 = jpart(b.provider, safe)
    local txn, q2 = jpart(b.provider_txn_id, safe)
    local paid_at, q3 = jpart(b.paid_at, safe)
    return '{"id":' .. id .. ',"status":"' .. b.status .. '",' .. fixed
        .. ',"paid_fen":' .. b.paid_text .. ',"refunded_fen":' .. b.refunded_text
        .. ',"provider":' .. q1 .. provider .. q1 .. ',"provider_txn_id":' .. q2 .. txn .. q2
        .. ',"created_at":"' .. b.created_at .. '","updated_at":"' .. b.updated_at
        .. '","paid_at":' .. q3 .. paid_at .. q3 .. ',"version":' .. b.version_text .. '}'
end

-- HSET of the bill's fields and values (...), with the notification's marker while it is still
-- to set (load_bill()).
local function hset_bill(b, ...)
    local marker = b.marker
    if marker then
        b.marker = nil
        return redis.call('HSET', K_BILL, marker, NOW_MS, ...)
    end
    return redis.call('HSET', K_BILL, ...)
end

-- Persists a real change of the bill: the listed fields, version + 1, updated_at, and the bill's
-- position in the "updated" index. Every change is followed by its event, so the event's sequence
-- number is taken here too, in the same HSET (emit() then uses it), and so is the notification's
-- marker.
-- ...: the changed fields and their values, as HSET takes them.
local function save_bill(b, ...)
    b.version = b.version + 1
    b.version_text = jint(b.version)
    b.updated_at = NOW
    b.seq = b.seq + 1
    b.seq_text = jint(b.seq)
    b.seq_taken = true
    hset_bill(b, 'version', b.version_text, 'updated_at', NOW, 'seq', b.seq_text, ...)
    redis.call('ZADD', K_UPDATED, NOW_MS, b.id)
end

---------------------------------------------------------------------------------------------------
-- Events and anomalies.

-- Appends ONE event about ev.bill_id to the bill's history and to the outbox. Its "data": what
-- the notification said, plus the fields of this change (extra: ',"k":v' pieces, jfields()).
-- b == nil: no such bill yet (unknown bill anomaly): "bill": null, sequence and id from unknown_n
-- (1, 2, ...; registration then starts the bill's own sequence after them). ev.safe: the caller checked that none of the event's strings needs an
-- escape. Returns the event id and its sequence number as text.
local function emit(ev, b, etype, extra, unknown_n)
    local bill_id = ev.bill_id
    local id, seq_text, bill = nil, '0', 'null'
    if b ~= nil then
        if b.seq_taken then
            b.seq_taken = nil
        else
            b.seq = b.seq + 1
            b.seq_text = jint(b.seq)
            hset_bill(b, 'seq', b.seq_text)
        end
        seq_text = b.seq_text
        id = 'evt_' .. bill_id .. '_' .. seq_text
        bill = bill_json(b)
    else
        seq_text = jint(unknown_n)
        id = 'evt_' .. bill_id .. '_u' .. seq_text
    end
    local safe = ev.safe
    local id_text, bill_id_text = id, bill_id
    if not safe then
        id_text, bill_id_text = esc(id), esc(bill_id)
    end
    local provider, q1 = jpart(ev.provider, safe)
    local channel, q2 = jpart(ev.channel, safe)
    local kind, q3 = jpart(ev.kind, safe)
    local nid, q4 = jpart(ev.notification_id, safe)
    local txn, q5 = jpart(ev.provider_txn_id, safe)
    local pstatus, q6 = jpart(ev.provider_status, safe)
    local occurred, q7 = jpart(ev.occurred_at, safe)
    -- One concatenation: one string, however many pieces.
    local event = '{"id":"' .. id_text .. '","type":"' .. etype .. '","created_at":"' .. NOW
        .. '","bill_id":"' .. bill_id_text .. '","sequence":' .. seq_text .. ',"bill":' .. bill
        .. ',"data":{"provider":' .. q1 .. provider .. q1 .. ',"channel":' .. q2 .. channel .. q2
        .. ',"kind":' .. q3 .. kind .. q3 .. ',"notification_id":' .. q4 .. nid .. q4
        .. ',"provider_txn_id":' .. q5 .. txn .. q5 .. extra
        .. ',"provider_status":' .. q6 .. pstatus .. q6 .. ',"occurred_at":' .. q7 .. occurred .. q7 .. '}}'
    -- Into the bill's history even before the bill exists: once registered, its history starts
    -- with the unknown_bill events (sequence 1..n) and then goes on with its own.
    redis.call('RPUSH', K_HIST, event)
    redis.call('XADD', K_OUTBOX, '*', 'id', id, 'bill_id', bill_id, 'type', etype, 'event', event)
    return id, seq_text
end

-- When the money was paid: the time the notification gives for the payment (an Alipay refund
-- applied before its payment carries gmt_payment), else the event's own time (a payment's, or a
-- WeChat refund's, which does not say when the payment was: the closest bound known), else now.
local function paid_time(ev)
    if ev.paid_at ~= '' then
        return ev.paid_at
    elseif ev.occurred_at ~= '' then
        return ev.occurred_at
    end
    return NOW
end

-- PENDING or CLOSED -> PAID, for the amount and in the currency the bill asks (the caller
-- checked). Returns the bill.paid event's id and sequence number (text).
local function pay(b, ev, total, txn)
    local after_close = b.status == 'CLOSED'
    b.status, b.paid_fen, b.paid_text, b.provider, b.provider_txn_id = 'PAID', total, jint(total), ev.provider, txn
    b.paid_safe = ev.safe
    b.paid_at = paid_time(ev)
    save_bill(b, 'status', 'PAID', 'paid_fen', b.paid_text, 'provider', b.provider, 'provider_txn_id', txn,
        'paid_at', b.paid_at)
    local extra = ',"amount_fen":' .. b.paid_text
    if after_close then
        -- Money received wins over our close: the bill is paid, and someone must look at it.
        extra = extra .. ',"anomaly":"paid_after_close"'
    end
    return emit(ev, b, 'bill.paid', extra)
end

-- The event as apply() takes it: one table constructor (ARGV entries are always strings).
local function event_from_argv()
    local a = ARGV
    return {provider = a[4], channel = a[5], kind = a[6], notification_id = a[7], account = a[8],
        bill_id = a[9], provider_txn_id = a[10], currency = a[11], total_fen = tonumber(a[12]) or -1,
        refund_id = a[13], refund_fen = tonumber(a[14]) or 0, refund_cumulative = a[15] == '1',
        provider_status = a[16], occurred_at = a[17], safe = a[18] == '1', paid_at = a[19] or '',
        problem = a[20] or ''}
end

---------------------------------------------------------------------------------------------------
-- Everything else: JSON helpers, anomalies, the other transitions, orphans, registration.

local function jstr(s)
    return '"' .. esc(tostring(s)) .. '"'
end

local function jobj(fields)
    local text = jfields(fields)
    if text == '' then
        return '{}'
    end
    return '{' .. string.sub(text, 2) .. '}'
end

local function append(list, more)
    for _, v in ipairs(more) do
        list[#list + 1] = v
    end
    return list
end

local function record_anomaly(ev, kind, anomaly_id, detail, event_id)
    local record = jobj({
        {'id', jstr(anomaly_id)},
        {'kind', jstr(kind)},
        {'bill_id', jstr(ev.bill_id)},
        {'provider', jstr(ev.provider)},
        {'channel', jstr(ev.channel)},
        {'notification_id', jstr_or_null(ev.notification_id)},
        {'provider_txn_id', jstr_or_null(ev.provider_txn_id)},
        {'detail', detail},
        {'created_at', jstr(NOW)},
        {'event_id', jstr_or_null(event_id)},
    })
    redis.call('XADD', K_ANOMALIES, '*', 'id', anomaly_id, 'kind', kind, 'bill_id', ev.bill_id, 'anomaly', record)
end

-- An anomaly on an existing bill: the bill is unchanged (only seq moves), one bill.anomaly event.
local function bill_anomaly(b, ev, kind, details)
    local extra = append({{'anomaly', jstr(kind)}}, details)
    local event_id, seq = emit(ev, b, 'bill.anomaly', jfields(extra))
    record_anomaly(ev, kind, 'anm_' .. ev.bill_id .. '_' .. seq, jobj(details), event_id)
    return 'anomaly', kind, b.status
end

-- Sets a "once" marker; true when it was not set before.
local function first_time(marker)
    return redis.call('HSETNX', K_SEEN, marker, NOW_MS) == 1
end

local function amount_or_null(n)
    if n == nil or n < 0 then
        return 'null'
    end
    return jint(n)
end

---------------------------------------------------------------------------------------------------
-- Transitions. Each returns outcome, anomaly kind or '', status after.

-- The other transactions of a bill: payments besides the one the bill holds (duplicate_payment),
-- refunds of them (refund_other_txn), and a payment the bill held until it was refunded in full.
-- With them, when the bill's payment is refunded in full while another payment of the bill's
-- amount still stands, that one becomes the bill's payment (paid_after_refund), whether it was
-- seen before the refund or after: a bill paid twice ends the same in every order when one of
-- the payments is refunded in full (README: what still depends on the order).
-- One field of the markers hash, JSON: {"<provider>\n<txn>": entry}. Read only on these rare paths.
local function load_ledger()
    local raw = redis.call('HGET', K_SEEN, 'ledger')
    if raw then
        return cjson.decode(raw)
    end
    return {}
end

local function save_ledger(ledger)
    redis.call('HSET', K_SEEN, 'ledger', cjson.encode(ledger))
end

-- The payment `ev` shows (a payment notification, or a refund, which proves its payment) as the
-- ledger keeps it, when the entry does not know it yet. True when it did not.
local function ledger_payment(entry, ev, total)
    if entry.paid < 0 and total >= 0 then
        entry.paid, entry.paid_at, entry.currency = total, paid_time(ev), ev.currency
        entry.channel, entry.status, entry.notification_id, entry.occurred_at, entry.kind =
            ev.channel, ev.provider_status, ev.notification_id, ev.occurred_at, ev.kind
        return true
    end
    return false
end

-- The ledger's entry of one transaction, made if missing. paid: -1 while its payment is unknown;
-- refunded: its refunded total (cumulative refunds: the highest total; others: the sum);
-- refunds: refund id -> amount, stored as K_REFUNDS stores them.
local function ledger_entry(ledger, provider, txn)
    local key = provider .. '\n' .. txn
    local entry = ledger[key]
    if entry == nil then
        entry = {provider = provider, txn = txn, paid = -1, paid_at = '', currency = '', channel = '', status = '',
            notification_id = '', occurred_at = '', kind = 'payment', refunded = 0, refunds = {}}
        ledger[key] = entry
    end
    return entry
end

-- The transaction that takes over a bill whose payment was refunded in full: a payment of the
-- bill's amount and currency not refunded in full. Of several, the first by key, so the choice
-- does not depend on arrival order either.
local function successor(b, ledger)
    local keys = {}
    for key, entry in pairs(ledger) do
        if entry.paid == b.amount_fen and entry.currency == b.currency and entry.refunded < entry.paid then
            keys[#keys + 1] = key
        end
    end
    if #keys == 0 then
        return nil
    end
    table.sort(keys)
    return ledger[keys[1]]
end

-- REFUNDED -> PAID (or PARTIALLY_REFUNDED) by `entry`: money received wins, as after a close. The
-- refunded payment steps aside into the ledger with its refunds, and the successor's refunds
-- become the bill's. One bill.paid event for the change (its data: the successor's payment, the
-- payment it replaces, anomaly paid_after_refund) and the anomaly record.
local function take_over(b, ev, ledger, entry)
    -- The replaced payment's own notifications (TRADE_FINISHED after TRADE_SUCCESS) are known now.
    first_time('dup_payment:' .. b.provider .. ':' .. b.provider_txn_id)
    local old = ledger_entry(ledger, b.provider, b.provider_txn_id)
    old.paid, old.paid_at, old.currency, old.refunded = b.paid_fen, b.paid_at, b.currency, b.refunded_fen
    local held = redis.call('HGETALL', K_REFUNDS)
    for i = 1, #held, 2 do
        old.refunds[held[i]] = tonumber(held[i + 1])
    end
    redis.call('DEL', K_REFUNDS)
    local moved = {}
    for id, amount in pairs(entry.refunds) do
        moved[#moved + 1] = id
        moved[#moved + 1] = jint(amount)
    end
    if #moved > 0 then
        redis.call('HSET', K_REFUNDS, unpack(moved))
    end
    ledger[entry.provider .. '\n' .. entry.txn] = nil
    save_ledger(ledger)

    local replaced_provider, replaced_txn = b.provider, b.provider_txn_id
    b.provider, b.provider_txn_id, b.paid_at, b.paid_safe = entry.provider, entry.txn, entry.paid_at, false
    b.paid_fen, b.paid_text = entry.paid, jint(entry.paid)
    b.refunded_fen, b.refunded_text = entry.refunded, jint(entry.refunded)
    if entry.refunded == 0 then
        b.status = 'PAID'
    else
        b.status = 'PARTIALLY_REFUNDED'
    end
    save_bill(b, 'status', b.status, 'paid_fen', b.paid_text, 'refunded_fen', b.refunded_text,
        'provider', b.provider, 'provider_txn_id', b.provider_txn_id, 'paid_at', b.paid_at)
    -- The event's data is the successor's payment as it was notified (its notification, the
    -- first one that showed it); the change itself came with `ev`.
    local payment = {provider = entry.provider, channel = entry.channel, kind = entry.kind or 'payment',
        notification_id = entry.notification_id, bill_id = ev.bill_id, provider_txn_id = entry.txn,
        provider_status = entry.status, occurred_at = entry.occurred_at, safe = false}
    local details = {
        {'amount_fen', b.paid_text},
        {'refunded_fen', b.refunded_text},
        {'replaced_provider', jstr(replaced_provider)},
        {'replaced_provider_txn_id', jstr(replaced_txn)},
    }
    local event_id, seq = emit(payment, b, 'bill.paid', jfields(append({{'anomaly', jstr('paid_after_refund')}}, details)))
    record_anomaly(payment, 'paid_after_refund', 'anm_' .. ev.bill_id .. '_' .. seq, jobj(details), event_id)
    return 'applied', 'paid_after_refund', b.status
end

-- A bill refunded in full, after a change to it or to its ledger (nil: not read yet): taken over by
-- a payment still held, if there is one (take_over's results), else nil.
local function take_over_if_refunded(b, ev, ledger)
    if b.status ~= 'REFUNDED' then
        return nil
    end
    ledger = ledger or load_ledger()
    local next_payment = successor(b, ledger)
    if next_payment then
        return take_over(b, ev, ledger, next_payment)
    end
    return nil
end

-- Whether `ev` (a refund or a close) is about another transaction than the one the bill holds. One
-- from another provider is, even when it names no transaction.
local function other_transaction(b, ev)
    return ev.provider ~= b.provider or (ev.provider_txn_id ~= '' and ev.provider_txn_id ~= b.provider_txn_id)
end

-- Whether a payment of `total` in the event's currency is the one the bill asks for.
local function bill_amount(b, ev, total)
    return ev.currency == b.currency and total == b.amount_fen
end

local function apply_payment(b, ev, total, txn)
    local paid = b.status ~= 'PENDING' and b.status ~= 'CLOSED'
    -- Already paid (or refunded). The same transaction again (e.g. Alipay TRADE_FINISHED after
    -- TRADE_SUCCESS, with a new notify_id) is a duplicate, or a mismatch below if its amount
    -- differs; another transaction, whatever its amount, is a second payment: money received twice.
    if paid and not (b.provider == ev.provider and b.provider_txn_id == txn) then
        if not first_time('dup_payment:' .. ev.provider .. ':' .. txn) then
            return 'duplicate', '', b.status
        end
        local ledger = load_ledger()
        local entry = ledger_entry(ledger, ev.provider, txn)
        ledger_payment(entry, ev, total)
        local outcome, anomaly, status = take_over_if_refunded(b, ev, ledger)
        if outcome then
            return outcome, anomaly, status
        end
        save_ledger(ledger)
        return bill_anomaly(b, ev, 'duplicate_payment', {
            {'expected', jint(b.paid_fen)},
            {'received', amount_or_null(total)},
            {'paid_provider', jstr_or_null(b.provider)},
            {'paid_provider_txn_id', jstr_or_null(b.provider_txn_id)},
        })
    end

    if not bill_amount(b, ev, total) then
        if not first_time('mismatch:' .. txn .. ':' .. ev.currency .. ':' .. jint(total)) then
            return 'duplicate', '', b.status
        end
        return bill_anomaly(b, ev, 'amount_mismatch', {
            {'expected', jint(b.amount_fen)},
            {'received', amount_or_null(total)},
            {'expected_currency', jstr(b.currency)},
            {'received_currency', jstr(ev.currency)},
        })
    end

    if paid then
        return 'duplicate', '', b.status  -- the same transaction, the same amount
    end
    local after_close = b.status == 'CLOSED'
    local event_id, seq = pay(b, ev, total, txn)
    if after_close then
        record_anomaly(ev, 'paid_after_close', 'anm_' .. ev.bill_id .. '_' .. seq,
            jobj({{'amount_fen', jint(total)}}), event_id)
        return 'applied', 'paid_after_close', b.status
    end
    return 'applied', '', b.status
end

-- The refund id gateways/alipay/alipay_gateway.cpp makes up, from the cumulative total, for a
-- refund notification without out_biz_no.
local SYNTHETIC_ALIPAY_REFUND = 'alipay-refund-'

local function apply_refund(b, ev)
    local refund_id = ev.refund_id
    if refund_id == '' then
        -- Alipay may omit out_biz_no; its refund_fee is cumulative, so the total identifies it.
        if ev.refund_cumulative then
            refund_id = 'total:' .. jint(ev.refund_fen)
        else
            refund_id = 'notification:' .. ev.notification_id
        end
    end

    local paid_now, pre_anomaly = false, ''
    if b.status == 'PENDING' or b.status == 'CLOSED' then
        -- A refund proves the payment, which we never heard of: apply it first, with every check.
        -- A payment the bill cannot take (no transaction named, another amount or currency) takes
        -- the refund with it: recorded as a refund of its own, so the money that went back is seen.
        local reason = nil
        if ev.provider_txn_id == '' then
            reason = 'no_provider_txn_id'
        elseif not bill_amount(b, ev, ev.total_fen) then
            reason = 'amount_mismatch'
        end
        if reason then
            if not first_time('refund_unapplied:' .. refund_id) then
                return 'duplicate', '', b.status
            end
            return bill_anomaly(b, ev, 'refund_unapplied', {
                {'reason', jstr(reason)},
                {'refund_id', jstr(refund_id)},
                {'refund_fen', jint(ev.refund_fen)},
                {'expected', jint(b.amount_fen)},
                {'received', amount_or_null(ev.total_fen)},
                {'expected_currency', jstr(b.currency)},
                {'received_currency', jstr(ev.currency)},
            })
        end
        local outcome, anomaly = apply_payment(b, ev, ev.total_fen, ev.provider_txn_id)
        if outcome ~= 'applied' then
            return outcome, anomaly, b.status
        end
        paid_now, pre_anomaly = true, anomaly
    end
    local unchanged = 'duplicate'
    if paid_now then
        unchanged = 'applied'
    end

    -- A refund of another transaction (typically the refund of a duplicate payment) does not
    -- return money of this bill's payment; it goes into the ledger.
    if other_transaction(b, ev) then
        local ledger = load_ledger()
        local entry = ledger_entry(ledger, ev.provider, ev.provider_txn_id)
        -- Known (applied while that transaction was the bill's, or seen before; refund ids are
        -- that transaction's): the same amount is a repeat, another one is recorded once.
        local known = entry.refunds[refund_id]
        if known ~= nil then
            local received = jint(ev.refund_fen)
            if jint(known) == received
                or not first_time('refund_amount:' .. ev.provider .. ':' .. ev.provider_txn_id .. ':' .. refund_id
                    .. ':' .. received) then
                return unchanged, pre_anomaly, b.status
            end
            return bill_anomaly(b, ev, 'refund_amount_mismatch', {
                {'refund_id', jstr(refund_id)},
                {'expected', jint(known)},
                {'received', received},
            })
        end
        -- Recorded by a version before the ledger (a marker per refund id, no entry): known too.
        if redis.call('HEXISTS', K_SEEN, 'refund_other_txn:' .. ev.refund_id) == 1 then
            return unchanged, pre_anomaly, b.status
        end
        -- A refund proves its payment, here as on a PENDING bill. When that payment takes over a
        -- bill refunded in full, this refund is one of the bill's own from then on: applied as
        -- such, with its bill.refunded event, as after a payment applied first on a PENDING bill.
        local payment_shown = ledger_payment(entry, ev, ev.total_fen)
        if b.status == 'REFUNDED' and successor(b, ledger) == entry then
            take_over(b, ev, ledger, entry)
            local outcome, anomaly, status = apply_refund(b, ev)
            if anomaly == '' then
                anomaly = 'paid_after_refund'
            end
            return outcome, anomaly, status
        end
        local refunded = entry.refunded + ev.refund_fen
        if ev.refund_cumulative then
            refunded = math.max(entry.refunded, ev.refund_fen)
        end
        -- As on the bill: a refund above what that payment still holds is recorded, not counted
        -- (the payment is known here: the refund itself proves it).
        if entry.paid >= 0 and refunded > entry.paid then
            if payment_shown then
                save_ledger(ledger)
            end
            if not first_time('refund_exceeds:' .. ev.provider .. ':' .. ev.provider_txn_id .. ':' .. refund_id) then
                return unchanged, pre_anomaly, b.status
            end
            return bill_anomaly(b, ev, 'refund_exceeds_paid', {
                {'refund_id', jstr(refund_id)},
                {'expected', jint(entry.paid - entry.refunded)},
                {'received', jint(refunded - entry.refunded)},
            })
        end
        entry.refunds[refund_id] = ev.refund_fen
        entry.refunded = refunded
        local outcome, anomaly, status = take_over_if_refunded(b, ev, ledger)
        if outcome then
            return outcome, anomaly, status
        end
        save_ledger(ledger)
        return bill_anomaly(b, ev, 'refund_other_txn', {
            {'refund_id', jstr_or_null(ev.refund_id)},
            {'received', jint(ev.refund_fen)},
            {'paid_provider', jstr_or_null(b.provider)},
            {'paid_provider_txn_id', jstr_or_null(b.provider_txn_id)},
        })
    end

    -- A refund seen before: the same amount is a repeat; another amount for the same refund id
    -- (stored: the cumulative total for Alipay, the refund's own amount otherwise) is recorded,
    -- once per amount, and changes nothing.
    local known = redis.call('HGET', K_REFUNDS, refund_id)
    if known then
        local received = jint(ev.refund_fen)
        if known == received or not first_time('refund_amount:' .. refund_id .. ':' .. received) then
            return unchanged, pre_anomaly, b.status
        end
        return bill_anomaly(b, ev, 'refund_amount_mismatch', {
            {'refund_id', jstr(refund_id)},
            {'expected', jint(tonumber(known) or 0)},
            {'received', received},
        })
    end

    local increment
    if ev.refund_cumulative then
        if ev.refund_fen <= b.refunded_fen then
            redis.call('HSET', K_REFUNDS, refund_id, jint(ev.refund_fen))
            -- Read as Alipay documents refund_fee (the cumulative total), an older state that a
            -- later notification superseded. One source reads it as this refund's own amount
            -- (PROTOCOLS.md §1.4, a disagreement): then a refund went uncounted. For a refund
            -- that names itself (out_biz_no, not the id the gateway makes up from the total) the
            -- two cannot be told apart here, so someone must look: an anomaly, once per refund.
            if ev.refund_id ~= ''
                and string.sub(ev.refund_id, 1, #SYNTHETIC_ALIPAY_REFUND) ~= SYNTHETIC_ALIPAY_REFUND then
                return bill_anomaly(b, ev, 'refund_total_not_increased', {
                    {'refund_id', jstr(refund_id)},
                    {'refund_fee', jint(ev.refund_fen)},
                    {'refunded_fen', jint(b.refunded_fen)},
                })
            end
            return unchanged, pre_anomaly, b.status
        end
        increment = ev.refund_fen - b.refunded_fen
    else
        increment = ev.refund_fen
    end
    if increment <= 0 then
        if paid_now then
            return 'applied', pre_anomaly, b.status
        end
        return 'ignored', '', b.status
    end

    if b.refunded_fen + increment > b.paid_fen then
        if not first_time('refund_exceeds:' .. refund_id) then
            return unchanged, pre_anomaly, b.status
        end
        return bill_anomaly(b, ev, 'refund_exceeds_paid', {
            {'refund_id', jstr(refund_id)},
            {'expected', jint(b.paid_fen - b.refunded_fen)},
            {'received', jint(increment)},
        })
    end

    b.refunded_fen = b.refunded_fen + increment
    b.refunded_text = jint(b.refunded_fen)
    if b.refunded_fen == b.paid_fen then
        b.status = 'REFUNDED'
    else
        b.status = 'PARTIALLY_REFUNDED'
    end
    save_bill(b, 'refunded_fen', b.refunded_text, 'status', b.status)
    local recorded = increment
    if ev.refund_cumulative then
        recorded = ev.refund_fen
    end
    redis.call('HSET', K_REFUNDS, refund_id, jint(recorded))
    emit(ev, b, 'bill.refunded', jfields({
        {'refund_id', jstr(refund_id)},
        {'refund_fen', jint(increment)},
        {'refunded_fen', jint(b.refunded_fen)},
    }))
    local outcome, anomaly, status = take_over_if_refunded(b, ev, nil)
    if outcome then
        return outcome, anomaly, status
    end
    return 'applied', pre_anomaly, b.status
end

local function apply_close(b, ev)
    if b.status == 'PENDING' then
        b.status = 'CLOSED'
        save_bill(b, 'status', b.status)
        emit(ev, b, 'bill.closed', '')
        return 'applied', '', b.status
    end
    -- Alipay closes a trade it refunded in full: nothing new.
    if b.status == 'CLOSED' or b.status == 'REFUNDED' then
        return 'duplicate', '', b.status
    end
    -- The close of another trade (one the customer left unpaid and paid another way, or one the
    -- ledger holds) says nothing about the bill's payment.
    if other_transaction(b, ev) then
        return 'ignored', '', b.status
    end
    if not first_time('close_after_paid') then
        return 'duplicate', '', b.status
    end
    return bill_anomaly(b, ev, 'close_after_paid', {{'paid_fen', jint(b.paid_fen)}})
end

-- refund_closed / refund_abnormal: no money moves. An abnormal refund may still succeed later;
-- that notification then goes through apply_refund.
local function apply_refund_update(b, ev)
    if not first_time('refund_update:' .. ev.kind .. ':' .. ev.refund_id) then
        return 'duplicate', '', b.status
    end
    -- API.md's event types are bill.paid / refunded / closed / anomaly. A refund that closed or
    -- went abnormal moves no money and needs someone to act (WeChat Pay: an abnormal refund is
    -- handled by the merchant by hand), so it is an anomaly of its own kind: in the history, the
    -- feed and /v1/anomalies.
    return bill_anomaly(b, ev, ev.kind, {
        {'refund_id', jstr_or_null(ev.refund_id)},
        {'refund_fen', jint(ev.refund_fen)},
    })
end

-- PaymentEvent fields (core/payment_event.hpp) in ARGV order (4..17, then 19: paid_at came later);
-- total_fen, refund_fen and refund_cumulative are numbers / a boolean once read, the others strings.
local EVENT_FIELDS = {'provider', 'channel', 'kind', 'notification_id', 'account', 'bill_id',
    'provider_txn_id', 'currency', 'total_fen', 'refund_id', 'refund_fen', 'refund_cumulative',
    'provider_status', 'occurred_at', 'paid_at'}

-- Missing or mistyped fields get neutral values: '' for strings, total -1 (unknown), refund 0.
local function normalise_event(ev)
    for _, k in ipairs(EVENT_FIELDS) do
        if type(ev[k]) ~= 'string' then
            ev[k] = ''
        end
    end
    ev.total_fen = tonumber(ev.total_fen) or -1
    ev.refund_fen = tonumber(ev.refund_fen) or 0
    ev.refund_cumulative = ev.refund_cumulative == '1'
    return ev
end

-- An orphan, kept until its bill is registered.
local function encode_event(ev)
    local copy = {}
    for _, k in ipairs(EVENT_FIELDS) do
        copy[k] = ev[k]
    end
    copy.total_fen, copy.refund_fen = jint(ev.total_fen), jint(ev.refund_fen)
    copy.refund_cumulative = (ev.refund_cumulative and '1') or '0'
    return cjson.encode(copy)
end

local function decode_event(raw)
    local ev = cjson.decode(raw)
    -- Orphans stored by earlier versions carry JSON numbers and booleans.
    if type(ev.total_fen) == 'number' then
        ev.total_fen = jint(ev.total_fen)
    end
    if type(ev.refund_fen) == 'number' then
        ev.refund_fen = jint(ev.refund_fen)
    end
    if ev.refund_cumulative == true then
        ev.refund_cumulative = '1'
    end
    return normalise_event(ev)
end

-- No bill yet: keep the notification (once per fingerprint) to apply at registration.
local function orphan(ev)
    -- What happened, not how it was worded: the same refund notified through API v3
    -- (REFUND.SUCCESS) and v2 (SUCCESS) is one orphan.
    local fingerprint = table.concat({ev.kind, ev.provider_txn_id, ev.refund_id, jint(ev.total_fen),
        jint(ev.refund_fen)}, '|')
    if not first_time('orphan:' .. fingerprint) then
        return 'orphaned', '', ''
    end
    redis.call('RPUSH', K_ORPHANS, encode_event(ev))
    local n = redis.call('HINCRBY', K_SEEN, 'unknown_count', 1)
    local details = {{'amount_fen', amount_or_null(ev.total_fen)}}
    if ev.kind ~= 'payment' then
        append(details, {{'refund_id', jstr_or_null(ev.refund_id)}, {'refund_fen', jint(ev.refund_fen)}})
    end
    local event_id = emit(ev, nil, 'bill.anomaly',
        jfields(append({{'anomaly', jstr('unknown_bill')}}, details)), n)
    record_anomaly(ev, 'unknown_bill', 'anm_' .. ev.bill_id .. '_u' .. jint(n), jobj(details), event_id)
    return 'orphaned', 'unknown_bill', ''
end

-- An authentic notification with a field paybridge cannot read (core/payment_event.hpp): nothing
-- is applied and the notification's marker is NOT set, since the provider is told to retry and a
-- paybridge that reads it must then apply it. Recorded once per notification, on the bill, or in
-- the history of a bill not registered yet (numbered like unknown_bill events). Outcome
-- "anomaly" each time, the kind only the first time; "duplicate" stays what it means everywhere
-- (the notification was handled: the fast path above answers it when its marker is set).
local function unusable(ev, b)
    if b ~= nil then
        b.marker = nil
    end
    if not first_time('unusable:' .. ev.channel .. ':' .. ev.notification_id) then
        return 'anomaly', '', (b and b.status) or ''
    end
    local details = {{'problem', jstr(ev.problem)}, {'amount_fen', amount_or_null(ev.total_fen)}}
    if b ~= nil then
        return bill_anomaly(b, ev, 'unusable_notification', details)
    end
    local n = redis.call('HINCRBY', K_SEEN, 'unknown_count', 1)
    local event_id = emit(ev, nil, 'bill.anomaly',
        jfields(append({{'anomaly', jstr('unusable_notification')}}, details)), n)
    record_anomaly(ev, 'unusable_notification', 'anm_' .. ev.bill_id .. '_u' .. jint(n), jobj(details), event_id)
    return 'anomaly', 'unusable_notification', ''
end

-- b: the bill, as load_bill() returns it (nil: no such bill), with the notification's marker
-- (checked: not set) still to set.
local function apply(ev, b)
    local outcome, anomaly, status
    if ev.kind == 'unusable' then
        return unusable(ev, b)
    elseif ev.kind == 'none' then
        -- Checked before the bill lookup: "nothing happened" is not worth an orphan or an anomaly.
        outcome, anomaly, status = 'ignored', '', (b and b.status) or ''
    elseif b == nil then
        -- No marker: the orphan is replayed with its notification id when the bill is registered.
        return orphan(ev)
    elseif ev.kind == 'payment' then
        outcome, anomaly, status = apply_payment(b, ev, ev.total_fen, ev.provider_txn_id)
    elseif ev.kind == 'refund' then
        outcome, anomaly, status = apply_refund(b, ev)
    elseif ev.kind == 'close' then
        outcome, anomaly, status = apply_close(b, ev)
    elseif ev.kind == 'refund_closed' or ev.kind == 'refund_abnormal' then
        outcome, anomaly, status = apply_refund_update(b, ev)
    else
        outcome, anomaly, status = 'ignored', '', b.status
    end
    if b and b.marker then
        hset_bill(b)
    end
    return outcome, anomaly, status
end

---------------------------------------------------------------------------------------------------
-- Registration.

local BILL_STRINGS = {'id', 'currency', 'customer_id', 'description', 'expires_at', 'metadata_json',
    'j_id', 'j_fixed'}

local function register(raw)
    local nb = cjson.decode(raw)
    for _, k in ipairs(BILL_STRINGS) do
        if type(nb[k]) ~= 'string' then
            nb[k] = ''
        end
    end

    local b = load_bill(nil)
    if b ~= nil then
        load_details(b)
        local same = b.amount_fen == nb.amount_fen and b.currency == nb.currency
            and b.customer_id == nb.customer_id and b.description == nb.description
            and b.expires_at == nb.expires_at and b.metadata == nb.metadata_json
        if same then
            return {'identical', bill_json(b), 0, {}}
        end
        return {'conflict', bill_json(b), 0, {}}
    end

    -- Notifications that arrived before the bill: each orphan and each unusable notification
    -- made an event numbered 1..n in the feed, so the bill's own events continue from n (the CRM
    -- orders a bill's events by sequence, and these came first).
    local orphans = redis.call('LRANGE', K_ORPHANS, 0, -1)
    local seq = redis.call('HGET', K_SEEN, 'unknown_count') or '0'
    redis.call('HSET', K_BILL,
        'id', nb.id, 'status', 'PENDING', 'amount_fen', jint(nb.amount_fen), 'currency', nb.currency,
        'customer_id', nb.customer_id, 'description', nb.description, 'expires_at', nb.expires_at,
        'metadata', nb.metadata_json, 'paid_fen', '0', 'refunded_fen', '0', 'provider', '',
        'provider_txn_id', '', 'created_at', NOW, 'updated_at', NOW, 'paid_at', '', 'version', '1', 'seq', seq,
        'j_id', nb.j_id, 'j_fixed', nb.j_fixed)
    redis.call('ZADD', K_CREATED, NOW_MS, nb.id)
    redis.call('ZADD', K_UPDATED, NOW_MS, nb.id)

    -- Now apply them, in arrival order, with every check; the anomalies they record are counted
    -- by the caller like those of notifications applied as they arrive.
    local anomalies = {}
    for _, o in ipairs(orphans) do
        local ev = decode_event(o)
        local marker = marker_of(ev.channel, ev.notification_id)
        if not marker or redis.call('HEXISTS', K_BILL, marker) == 0 then
            local _, anomaly = apply(ev, load_bill(marker))
            if anomaly and anomaly ~= '' then
                anomalies[#anomalies + 1] = anomaly
            end
        end
    end
    redis.call('DEL', K_ORPHANS)
    return {'created', bill_json(load_bill(nil)), #orphans, anomalies}
end

---------------------------------------------------------------------------------------------------

if OP == 'apply' then
    local outcome, anomaly, status = apply(event_from_argv(), load_bill(MARKER))
    return {outcome, anomaly, status}
elseif OP == 'register' then
    return register(ARGV[4])
end
return redis.error_reply('ERR paybridge bill script: unknown operation')
