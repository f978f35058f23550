#include "store/redis_bill_store.hpp"

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/time.hpp"
#include "store/bill_script.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace paybridge::store {

namespace asio = boost::asio;

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr std::size_t kMaxPageLimit = 1000;
constexpr std::size_t kSummaryBatch = 1000;
// A merged page first reads limit / shards + this from each shard.
constexpr std::size_t kMergeMargin = 8;
// Index entries one filtered GET /v1/bills may examine, over all shards.
constexpr std::size_t kBillScanBudget = 4096;

void put_string(JsonWriter& w, std::string_view s)
{
    w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

void put_key(JsonWriter& w, std::string_view k)
{
    w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
}

void put_string_or_null(JsonWriter& w, std::string_view s)
{
    if (s.empty()) {
        w.Null();
    } else {
        put_string(w, s);
    }
}

std::string to_text(const rapidjson::StringBuffer& buf)
{
    return std::string(buf.GetString(), buf.GetSize());
}

// Sums of fen: one bill is at most 10^12 fen, so only stored values no bill can have overflow
// (wrapping would be undefined behaviour, and a wrong total).
bool add_fen(std::int64_t& total, std::int64_t v) noexcept { return !__builtin_add_overflow(total, v, &total); }

boost::system::error_code summary_overflow()
{
    log::error("store.summary_overflow", {{"why", "a sum of fen exceeds 2^63 - 1: bill hashes hold impossible amounts"}});
    return make_error_code(errc::internal);
}

std::int64_t parse_i64(std::string_view s, std::int64_t fallback = 0)
{
    std::int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || ptr != s.data() + s.size()) {
        return fallback;
    }
    return v;
}

bool parse_u64(std::string_view s, std::uint64_t& out)
{
    if (s.empty()) {
        return false;
    }
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && ptr == s.data() + s.size();
}

// ZSET scores come back as Redis's %.17g text; ours are always integral milliseconds.
std::int64_t parse_score(const std::string& s)
{
    const std::int64_t v = parse_i64(s, -1);
    if (v >= 0) {
        return v;
    }
    return static_cast<std::int64_t>(std::strtod(s.c_str(), nullptr));
}

using Hash = std::unordered_map<std::string, std::string>;

const std::string& field(const Hash& h, const std::string& name)
{
    static const std::string kEmpty;
    const auto it = h.find(name);
    return it == h.end() ? kEmpty : it->second;
}

// The bill fields that never change after registration, amount_fen .. metadata. `metadata` is
// stored canonical by register_bill, so it is valid compact JSON.
void write_fixed_fields(JsonWriter& w, std::int64_t amount_fen, std::string_view currency,
                        std::string_view customer_id, std::string_view description, std::string_view expires_at,
                        std::string_view metadata)
{
    put_key(w, "amount_fen");
    w.Int64(amount_fen);
    put_key(w, "currency");
    put_string(w, currency);
    put_key(w, "customer_id");
    put_string(w, customer_id);
    put_key(w, "description");
    put_string(w, description);
    put_key(w, "expires_at");
    put_string_or_null(w, expires_at);
    if (!metadata.empty()) {
        put_key(w, "metadata");
        w.RawValue(metadata.data(), metadata.size(), rapidjson::kObjectType);
    }
}

// The fields bill_json() reads ("id" first: nil when the bill does not exist).
constexpr std::array<const char*, 16> kBillFields{
    "id",       "status",       "amount_fen", "currency",        "customer_id", "description", "expires_at", "metadata",
    "paid_fen", "refunded_fen", "provider",   "provider_txn_id", "created_at",  "updated_at",  "paid_at",    "version"};

// The bill object of API.md, in the same key order as bill_json() in store/bill.lua.
std::string bill_json(const Hash& h)
{
    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    w.StartObject();
    put_key(w, "id");
    put_string(w, field(h, "id"));
    put_key(w, "status");
    put_string(w, field(h, "status"));
    write_fixed_fields(w, parse_i64(field(h, "amount_fen")), field(h, "currency"), field(h, "customer_id"),
                       field(h, "description"), field(h, "expires_at"), field(h, "metadata"));
    put_key(w, "paid_fen");
    w.Int64(parse_i64(field(h, "paid_fen")));
    put_key(w, "refunded_fen");
    w.Int64(parse_i64(field(h, "refunded_fen")));
    put_key(w, "provider");
    put_string_or_null(w, field(h, "provider"));
    put_key(w, "provider_txn_id");
    put_string_or_null(w, field(h, "provider_txn_id"));
    put_key(w, "created_at");
    put_string(w, field(h, "created_at"));
    put_key(w, "updated_at");
    put_string(w, field(h, "updated_at"));
    put_key(w, "paid_at");
    put_string_or_null(w, field(h, "paid_at"));
    put_key(w, "version");
    w.Int64(parse_i64(field(h, "version")));
    w.EndObject();
    return to_text(buf);
}

// True when `s` can sit between JSON quotes as it is.
bool json_safe(std::string_view s) noexcept
{
    return std::all_of(s.begin(), s.end(), [](char c) {
        return static_cast<unsigned char>(c) >= 0x20 && c != '"' && c != '\\';
    });
}

// PaymentEvent as the script's "apply" arguments, one field each, in the order of EVENT_FIELDS in
// store/bill.lua (no JSON: the script would only have to decode it again), then "1" when no
// string needs a JSON escape, so the script can skip that check, then paid_at.
std::vector<std::string> event_args(PaymentEvent&& ev)
{
    const bool safe = json_safe(ev.provider) && json_safe(ev.channel) && json_safe(ev.notification_id) &&
                      json_safe(ev.bill_id) && json_safe(ev.provider_txn_id) && json_safe(ev.provider_status) &&
                      json_safe(ev.occurred_at) && json_safe(ev.paid_at);
    std::vector<std::string> a;
    a.reserve(16);
    a.push_back(std::move(ev.provider));
    a.push_back(std::move(ev.channel));
    a.emplace_back(to_string(ev.kind));
    a.push_back(std::move(ev.notification_id));
    a.push_back(std::move(ev.account));
    a.push_back(std::move(ev.bill_id));
    a.push_back(std::move(ev.provider_txn_id));
    a.push_back(std::move(ev.currency));
    a.push_back(std::to_string(ev.total_fen));
    a.push_back(std::move(ev.refund_id));
    a.push_back(std::to_string(ev.refund_fen));
    a.emplace_back(ev.refund_cumulative ? "1" : "0");
    a.push_back(std::move(ev.provider_status));
    a.push_back(std::move(ev.occurred_at));
    a.emplace_back(safe ? "1" : "0");
    a.push_back(std::move(ev.paid_at));
    if (ev.kind == EventKind::unusable) {
        a.push_back(std::move(ev.problem));  // only then: every argument costs Redis time
    }
    return a;
}

void write_sorted(const rapidjson::Value& v, JsonWriter& w)
{
    if (v.IsObject()) {
        std::vector<const rapidjson::Value::Member*> members;
        members.reserve(v.MemberCount());
        for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
            members.push_back(&*it);
        }
        std::stable_sort(members.begin(), members.end(), [](const auto* a, const auto* b) {
            return std::string_view(a->name.GetString(), a->name.GetStringLength()) <
                   std::string_view(b->name.GetString(), b->name.GetStringLength());
        });
        w.StartObject();
        for (const auto* m : members) {
            w.Key(m->name.GetString(), m->name.GetStringLength());
            write_sorted(m->value, w);
        }
        w.EndObject();
    } else if (v.IsArray()) {
        w.StartArray();
        for (const auto& e : v.GetArray()) {
            write_sorted(e, w);
        }
        w.EndArray();
    } else {
        v.Accept(w);
    }
}

// Compact, keys sorted recursively: two spellings of one object compare equal as text.
Result<std::string> canonical_metadata(const std::string& text)
{
    if (text.empty()) {
        return std::string();
    }
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseFullPrecisionFlag>(text.data(), text.size());
    if (doc.HasParseError() || !doc.IsObject()) {
        return make_error_code(errc::invalid_argument);
    }
    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    write_sorted(doc, w);
    return to_text(buf);
}

std::string new_bill_json(const NewBill& bill, const std::string& metadata)
{
    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    w.StartObject();
    put_key(w, "id");
    put_string(w, bill.id);
    put_key(w, "amount_fen");
    w.Int64(bill.amount_fen);
    put_key(w, "currency");
    put_string(w, bill.currency);
    put_key(w, "customer_id");
    put_string(w, bill.customer_id);
    put_key(w, "description");
    put_string(w, bill.description);
    put_key(w, "expires_at");
    put_string(w, bill.expires_at);
    put_key(w, "metadata_json");
    put_string(w, metadata);
    // What bill.lua stores to render the bill without escaping these fields on every event.
    rapidjson::StringBuffer id_buf;
    JsonWriter id_writer(id_buf);
    put_string(id_writer, bill.id);
    put_key(w, "j_id");
    put_string(w, std::string_view(id_buf.GetString(), id_buf.GetSize()));
    rapidjson::StringBuffer fixed_buf;
    JsonWriter fixed_writer(fixed_buf);
    fixed_writer.StartObject();
    write_fixed_fields(fixed_writer, bill.amount_fen, bill.currency, bill.customer_id, bill.description,
                       bill.expires_at, metadata);
    fixed_writer.EndObject();
    // The members without the braces: bill.lua puts them between "status" and "paid_fen".
    const std::string_view fixed(fixed_buf.GetString(), fixed_buf.GetSize());
    put_key(w, "j_fixed");
    put_string(w, fixed.substr(1, fixed.size() - 2));
    w.EndObject();
    return to_text(buf);
}

std::optional<ApplyOutcome> parse_outcome(std::string_view s)
{
    for (ApplyOutcome o : {ApplyOutcome::applied, ApplyOutcome::duplicate, ApplyOutcome::anomaly,
                           ApplyOutcome::orphaned, ApplyOutcome::ignored}) {
        if (to_string(o) == s) {
            return o;
        }
    }
    return std::nullopt;
}

// The position of a field in kBillFields (and in the reply of hmget_bill()).
constexpr std::size_t bill_field(std::string_view name)
{
    for (std::size_t i = 0; i < kBillFields.size(); ++i) {
        if (name == kBillFields[i]) {
            return i;
        }
    }
    throw std::logic_error("not a field of kBillFields");  // in a constant expression: a compile error
}

// Whether the bill in an hmget_bill() reply (of a bill that exists) matches the filter as it is in
// that reply. The cursor is not checked: a bill that changed after its index entry was read is
// newer than the cursor now, and is still the bill it was.
bool bill_matches(const Reply& r, const BillFilter& filter)
{
    constexpr std::size_t kStatus = bill_field("status");
    constexpr std::size_t kProvider = bill_field("provider");
    constexpr std::size_t kCustomer = bill_field("customer_id");
    constexpr std::size_t kUpdated = bill_field("updated_at");
    const std::vector<Reply>& f = r.elements;
    if ((!filter.status.empty() && f[kStatus].str != filter.status) ||
        (!filter.provider.empty() && f[kProvider].str != filter.provider) ||
        (!filter.customer_id.empty() && f[kCustomer].str != filter.customer_id)) {
        return false;
    }
    if (filter.updated_from_ms > 0 || filter.updated_to_ms > 0) {
        const std::optional<std::int64_t> updated = parse_rfc3339(f[kUpdated].str);
        if (!updated || *updated < filter.updated_from_ms ||
            (filter.updated_to_ms > 0 && *updated >= filter.updated_to_ms)) {
            return false;
        }
    }
    return true;
}

// HMGET of the fields bill_json() reads: the bill without the notification markers its hash holds.
std::vector<std::string> hmget_bill(std::string key)
{
    std::vector<std::string> argv{"HMGET", std::move(key)};
    argv.insert(argv.end(), kBillFields.begin(), kBillFields.end());
    return argv;
}

// The bill object from hmget_bill()'s reply; nullopt when there is no such bill.
// The bill's fields (ARGV), the first kHistoryPage events of its history and the history's length
// in one script, so all are of the same moment: two pipelined reads could straddle another
// instance's change (an event in the history that the bill does not show yet). The rest of a long
// history is read in pages up to that length (events are only ever appended), so no reply grows
// with the history. KEYS: bill, hist (one hash tag).
constexpr std::size_t kHistoryPage = 1000;
constexpr std::string_view kReadBill = R"lua(
return {redis.call('HMGET', KEYS[1], unpack(ARGV)), redis.call('LRANGE', KEYS[2], 0, 999), redis.call('LLEN', KEYS[2])}
)lua";

Result<std::optional<std::string>> bill_json_of(const Reply& r)
{
    if (!r.is_array() || r.elements.size() != kBillFields.size()) {
        return unexpected_reply("hmget", r);
    }
    if (r.elements[0].is_nil()) {
        return std::optional<std::string>{};
    }
    Hash h;
    for (std::size_t i = 0; i < kBillFields.size(); ++i) {
        if (!r.elements[i].is_nil()) {
            h.emplace(kBillFields[i], r.elements[i].str);
        }
    }
    return std::optional<std::string>(bill_json(h));
}

// Stream position of an entry plus its shard: the order of the entries of a merged feed page.
struct StreamPos {
    std::uint64_t ms{0};
    std::uint64_t seq{0};
    int shard{0};

    friend bool operator<(const StreamPos& a, const StreamPos& b)
    {
        return std::tie(a.ms, a.seq, a.shard) < std::tie(b.ms, b.seq, b.shard);
    }
    std::string id() const { return std::to_string(ms) + "-" + std::to_string(seq); }
};

bool parse_stream_id(std::string_view id, std::uint64_t& ms, std::uint64_t& seq)
{
    const auto dash = id.find('-');
    if (dash == std::string_view::npos) {
        return false;
    }
    return parse_u64(id.substr(0, dash), ms) && parse_u64(id.substr(dash + 1), seq);
}

// ---- feed cursors ------------------------------------------------------------------------------

// A feed cursor: per shard, the id of the last entry read (nullopt: none yet). Each shard goes on
// after its own id, so no order between the clocks of different shards is assumed: a shard's
// stream ids only grow, whatever its clock does, and shards may live on different servers.
struct StreamId {
    std::uint64_t ms{0};
    std::uint64_t seq{0};
};
using FeedCursor = std::vector<std::optional<StreamId>>;

// A cursor holds the position reached in every shard, so it grows with `redis.shards`. The form
// written is "c" + base64url (no padding) of:
//
//   varint newest          the largest ms of any position (0 when there is none)
//   then one token per shard, in shard order, each a varint t:
//     t = 0                nothing read from this shard yet
//     t = 1, varint k      the previous shard's token again, k more times (k >= 1)
//     t >= 2               v = t - 2: the position is (newest - (v >> 1), seq), where seq follows
//                          as a varint (>= 1) when v & 1, and is 0 otherwise
//
// Positions are deltas from the newest one, so a busy system, whose shards were all read up to the
// last seconds, costs 2 or 3 bytes a shard, and runs of shards with nothing read cost 2 bytes in
// all; the old text form cost 8 to 10 characters a shard. A shard read up to a year ago costs 6
// bytes. Every shard's own position stays exact (see FeedCursor), so the size cannot be bounded
// independently of `redis.shards`: config/load.cpp warns when the header limit cannot carry it.
//
// The earlier forms, "<base>_<e0>.<e1>..." and "<ms>-<seq>.<shard>", start with a digit and are
// still read.

void put_varint(std::string& out, std::uint64_t v)
{
    while (v >= 0x80) {
        out += static_cast<char>((v & 0x7F) | 0x80);
        v >>= 7;
    }
    out += static_cast<char>(v);
}

bool get_varint(std::string_view& in, std::uint64_t& v)
{
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (in.empty()) {
            return false;
        }
        const auto byte = static_cast<std::uint8_t>(in.front());
        in.remove_prefix(1);
        if (shift == 63 && byte > 1) {
            return false;  // beyond 64 bits
        }
        v |= static_cast<std::uint64_t>(byte & 0x7F) << shift;
        if ((byte & 0x80) == 0) {
            return byte != 0 || shift == 0;  // no redundant trailing zero byte: one spelling per value
        }
    }
    return false;
}

constexpr std::string_view kBase64Url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url(std::string_view bytes)
{
    std::string out;
    out.reserve((bytes.size() * 4 + 2) / 3);
    std::uint32_t acc = 0;
    int bits = 0;
    for (const char c : bytes) {
        acc = (acc << 8) | static_cast<std::uint8_t>(c);
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out += kBase64Url[(acc >> bits) & 0x3F];
        }
    }
    if (bits > 0) {
        out += kBase64Url[(acc << (6 - bits)) & 0x3F];
    }
    return out;
}

std::optional<std::string> from_base64url(std::string_view text)
{
    std::string out;
    out.reserve(text.size() * 3 / 4);
    std::uint32_t acc = 0;
    int bits = 0;
    for (const char c : text) {
        const auto at = kBase64Url.find(c);
        if (at == std::string_view::npos) {
            return std::nullopt;
        }
        acc = (acc << 6) | static_cast<std::uint32_t>(at);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xFF);
        }
    }
    // What is left must be fewer than 8 bits, all zero: one spelling per cursor.
    if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) {
        return std::nullopt;
    }
    return out;
}

// The text form (read by decode_feed_cursor below): written only for positions the compact form
// cannot hold, ms more than 2^62 apart (stream ids no clock makes).
std::string encode_text_cursor(const FeedCursor& cursor)
{
    std::uint64_t base = std::numeric_limits<std::uint64_t>::max();
    for (const std::optional<StreamId>& id : cursor) {
        if (id) {
            base = std::min(base, id->ms);
        }
    }
    if (base == std::numeric_limits<std::uint64_t>::max()) {
        base = 0;
    }
    std::string out = std::to_string(base) + "_";
    for (std::size_t s = 0; s < cursor.size(); ++s) {
        if (s > 0) {
            out += '.';
        }
        if (cursor[s]) {
            out += std::to_string(cursor[s]->ms - base);
            if (cursor[s]->seq != 0) {
                out += '-';
                out += std::to_string(cursor[s]->seq);
            }
        }
    }
    return out;
}

std::string encode_feed_cursor(const FeedCursor& cursor)
{
    constexpr std::uint64_t kMaxDelta = std::uint64_t{1} << 62;  // 2 + 2 * delta + 1 fits 64 bits
    std::uint64_t newest = 0;
    std::uint64_t oldest = std::numeric_limits<std::uint64_t>::max();
    for (const std::optional<StreamId>& id : cursor) {
        if (id) {
            newest = std::max(newest, id->ms);
            oldest = std::min(oldest, id->ms);
        }
    }
    if (newest > oldest && newest - oldest >= kMaxDelta) {
        return encode_text_cursor(cursor);
    }
    std::string bytes;
    put_varint(bytes, newest);
    std::string previous;  // the last token written
    std::uint64_t repeats = 0;
    const auto flush = [&bytes, &repeats] {
        if (repeats > 0) {
            put_varint(bytes, 1);
            put_varint(bytes, repeats);
            repeats = 0;
        }
    };
    for (std::size_t s = 0; s < cursor.size(); ++s) {
        std::string token;
        if (!cursor[s]) {
            put_varint(token, 0);
        } else {
            const std::uint64_t delta = newest - cursor[s]->ms;
            put_varint(token, 2 + (delta << 1) + (cursor[s]->seq != 0 ? 1 : 0));
            if (cursor[s]->seq != 0) {
                put_varint(token, cursor[s]->seq);
            }
        }
        if (s > 0 && token == previous) {
            ++repeats;
            continue;
        }
        flush();
        bytes += token;
        previous = std::move(token);
    }
    flush();
    return "c" + base64url(bytes);
}

std::optional<FeedCursor> decode_compact_cursor(std::string_view text, std::size_t shard_count)
{
    const std::optional<std::string> decoded = from_base64url(text);
    if (!decoded) {
        return std::nullopt;
    }
    std::string_view in = *decoded;
    std::uint64_t newest = 0;
    if (!get_varint(in, newest)) {
        return std::nullopt;
    }
    FeedCursor cursor;
    cursor.reserve(shard_count);
    bool any = false;
    while (!in.empty()) {
        std::uint64_t t = 0;
        if (!get_varint(in, t)) {
            return std::nullopt;
        }
        if (t == 1) {
            std::uint64_t k = 0;
            if (cursor.empty() || !get_varint(in, k) || k == 0 || k > shard_count - cursor.size()) {
                return std::nullopt;
            }
            const std::optional<StreamId> again = cursor.back();
            cursor.insert(cursor.end(), static_cast<std::size_t>(k), again);
            continue;
        }
        if (cursor.size() == shard_count) {
            return std::nullopt;
        }
        if (t == 0) {
            cursor.emplace_back();
            continue;
        }
        const std::uint64_t v = t - 2;
        const std::uint64_t delta = v >> 1;
        StreamId id;
        if (delta > newest) {
            return std::nullopt;
        }
        id.ms = newest - delta;
        if ((v & 1) != 0 && (!get_varint(in, id.seq) || id.seq == 0)) {
            return std::nullopt;
        }
        any = any || delta == 0;
        cursor.emplace_back(id);
    }
    // Exactly one entry per shard, and `newest` is one of them (0 when there is none).
    if (cursor.size() != shard_count || (!any && newest != 0)) {
        return std::nullopt;
    }
    return cursor;
}

// Any form a cursor was ever written in: the compact one; "<base>_<e0>.<e1>...", one entry per
// shard, empty (none yet), "<ms - base>" or "<ms - base>-<seq>" when seq is not 0, base the
// smallest ms (encode_text_cursor); and "<ms>-<seq>.<shard>", the last entry returned.
std::optional<FeedCursor> decode_feed_cursor(std::string_view text, int shards)
{
    const auto shard_count = static_cast<std::size_t>(shards);
    if (text.starts_with('c')) {
        return decode_compact_cursor(text.substr(1), shard_count);
    }
    const auto underscore = text.find('_');
    if (underscore == std::string_view::npos) {
        // The earlier format "<ms>-<seq>.<shard>", the last entry returned: shards up to <shard>
        // go on after that id, the later ones from it.
        const auto dot = text.rfind('.');
        StreamId id;
        std::uint64_t shard = 0;
        if (dot == std::string_view::npos || !parse_stream_id(text.substr(0, dot), id.ms, id.seq) ||
            !parse_u64(text.substr(dot + 1), shard) || shard >= shard_count) {
            return std::nullopt;
        }
        std::optional<StreamId> before;  // the id just before `id`, if there is one
        if (id.seq > 0) {
            before = StreamId{.ms = id.ms, .seq = id.seq - 1};
        } else if (id.ms > 0) {
            before = StreamId{.ms = id.ms - 1, .seq = std::numeric_limits<std::uint64_t>::max()};
        }
        FeedCursor cursor(shard_count, before);
        for (std::size_t s = 0; s <= shard; ++s) {
            cursor[s] = id;
        }
        return cursor;
    }
    std::uint64_t base = 0;
    if (!parse_u64(text.substr(0, underscore), base)) {
        return std::nullopt;
    }
    FeedCursor cursor;
    std::string_view rest = text.substr(underscore + 1);
    for (;;) {
        const auto dot = rest.find('.');
        const std::string_view entry = rest.substr(0, dot);
        if (entry.empty()) {
            cursor.emplace_back();
        } else {
            const auto dash = entry.find('-');
            std::uint64_t delta = 0;
            StreamId id;
            if (!parse_u64(entry.substr(0, dash), delta) || delta > std::numeric_limits<std::uint64_t>::max() - base ||
                (dash != std::string_view::npos && !parse_u64(entry.substr(dash + 1), id.seq))) {
                return std::nullopt;
            }
            id.ms = base + delta;
            cursor.emplace_back(id);
        }
        if (cursor.size() > shard_count) {
            return std::nullopt;
        }
        if (dot == std::string_view::npos) {
            break;
        }
        rest.remove_prefix(dot + 1);
    }
    if (cursor.size() != shard_count) {
        return std::nullopt;
    }
    return cursor;
}

}  // namespace

RedisBillStore::RedisBillStore(RedisConnection& redis,
                               const config::RedisConfig& cfg,
                               std::function<std::int64_t()> now_ms,
                               RedisConnection* replicas)
    : redis_(redis),
      confirm_conn_(replicas ? *replicas : redis),
      cfg_(cfg),
      keys_(cfg.key_prefix, cfg.shards),
      sha_(redis.add_script(std::string(bill_script()))),
      read_sha_(redis.add_script(std::string(kReadBill))),
      now_ms_(std::move(now_ms)),
      router_(ClusterRouter::of(redis)),
      confirm_router_(ClusterRouter::of(confirm_conn_))
{
    if (cfg.wait_replicas > 0) {
        // One Redis node holds every shard: one confirmer. In a cluster each master has replicas
        // of its own: one confirmer per master (made when a write on it first needs one), whose
        // SET + WAIT run on that master; one WAIT at a time on its connection, as on a single
        // node.
        if (router_ == nullptr) {
            confirmers_.push_back(std::make_unique<ReplicaConfirmer>(confirm_conn_, keys_.replicated(0),
                                                                     cfg.wait_replicas, cfg.wait_timeout));
        }
    }
}

RedisBillStore::~RedisBillStore() = default;

std::int64_t RedisBillStore::now_ms() const
{
    if (now_ms_) {
        return now_ms_();
    }
    return unix_ms(std::chrono::system_clock::now());
}

asio::awaitable<Result<Reply>> RedisBillStore::run_script(std::string op, std::string bill_id,
                                                          std::vector<std::string> payload, NodeSession& ran)
{
    const std::int64_t now = now_ms();
    std::vector<std::string> keys = keys_.for_bill(bill_id).script_keys();
    std::vector<std::string> args;
    args.reserve(3 + payload.size());
    args.push_back(std::move(op));
    args.push_back(std::to_string(now));
    args.push_back(format_rfc3339(now));
    for (std::string& a : payload) {
        args.push_back(std::move(a));
    }
    if (router_ != nullptr) {
        Result<Reply> routed = co_await router_->eval(sha_, std::move(keys), std::move(args), ran);
        co_return routed;
    }
    Result<Reply> reply = co_await redis_.eval(sha_, std::move(keys), std::move(args));
    co_return reply;
}

ReplicaConfirmer* RedisBillStore::confirmer_on(const config::Endpoint& node)
{
    if (confirm_router_ == nullptr) {
        return nullptr;  // a confirming connection without Cluster: not made so by the daemon
    }
    const std::string name = node.host + ":" + std::to_string(node.port);
    const auto it = confirmer_of_node_.find(name);
    if (it != confirmer_of_node_.end()) {
        return it->second;
    }
    confirmers_.push_back(
        std::make_unique<ReplicaConfirmer>(*confirm_router_, node, cfg_.wait_replicas, cfg_.wait_timeout));
    confirmer_of_node_[name] = confirmers_.back().get();
    return confirmers_.back().get();
}

asio::awaitable<Result<void>> RedisBillStore::confirm_replicated(std::string_view bill_id, std::uint64_t session,
                                                                 const NodeSession& ran)
{
    if (cfg_.wait_replicas <= 0) {
        co_return Result<void>{};
    }
    if (router_ != nullptr) {
        // Cluster: the confirmation runs on the master that ran the script, and only there. Sent
        // by the confirming connection's slot map instead, it could reach another master (a
        // failover promoted a replica that lacks the write, a resharding moved the slot, and
        // that map learnt it between the script and the round) and count that one's replicas:
        // "success" for a write they never received. Sending WAIT behind the script on the same
        // node connection would tie the two as well, but a WAIT holds every later reply on its
        // connection (up to wait_timeout while a replica is down): every notification to that
        // master would queue behind every other's WAIT (ReplicaConfirmer says why WAIT has a
        // connection of its own). So the router says which node, connection and session ran the
        // script; the confirmer for that node SETs the bill's shard key and WAITs there (a slot
        // that has left the node answers MOVED or ASK: not confirmed); and the write's
        // connection must still be in the session that took the write, before and after (a
        // node reconnected to may have restarted, or failed over and back, without it). Failing
        // is safe: the provider retries, the retry changes nothing and is confirmed again.
        if (ran.connection == 0 || !router_->still(ran)) {
            co_return make_error_code(errc::store_unavailable);
        }
        ReplicaConfirmer* confirmer = confirmer_on(ran.at);
        if (confirmer == nullptr) {
            co_return make_error_code(errc::store_unavailable);
        }
        std::string key = keys_.replicated(keys_.shard_of(bill_id));
        Result<void> confirmed = co_await confirmer->confirm_on_node(std::move(key));
        if (confirmed && !router_->still(ran)) {
            co_return make_error_code(errc::store_unavailable);
        }
        co_return confirmed;
    }
    ReplicaConfirmer* confirmer = confirmers_.front().get();
    // The write's connection reconnected since (to the same primary or, after a failover, to
    // another): which one took the change is not known. Failing is safe: the provider retries.
    if (redis_.session() != session) {
        co_return make_error_code(errc::store_unavailable);
    }
    const config::Endpoint written_at = redis_.endpoint();
    Result<void> confirmed = co_await confirmer->confirm(&written_at);
    co_return confirmed;
}

asio::awaitable<Result<ApplyResult>> RedisBillStore::apply(PaymentEvent event)
{
    if (event.bill_id.empty()) {
        // A verified notification that asks for nothing (a provider event we do not act on, a
        // failed payment) may name no bill: acknowledged as such, or the provider would retry it
        // for a day. Every event that would change a bill names one (the gateways check).
        if (event.kind == EventKind::none) {
            ApplyResult ignored{.outcome = ApplyOutcome::ignored};
            co_return ignored;
        }
        co_return make_error_code(errc::invalid_argument);
    }
    const std::string bill_id = event.bill_id;
    std::vector<std::string> payload = event_args(std::move(event));
    std::string op = "apply";
    const std::uint64_t session = redis_.session();
    NodeSession ran;
    Result<Reply> reply = co_await run_script(std::move(op), bill_id, std::move(payload), ran);
    if (!reply) {
        co_return reply.error();
    }
    const Reply& r = *reply;
    if (!r.is_array() || r.elements.size() != 3 || !r.elements[0].is_string()) {
        co_return unexpected_reply("apply", r);
    }
    const std::optional<ApplyOutcome> outcome = parse_outcome(r.elements[0].str);
    if (!outcome) {
        co_return unexpected_reply("apply", r);
    }
    ApplyResult result{.outcome = *outcome, .anomaly = r.elements[1].str, .status = r.elements[2].str};
    // The provider hears "success" only once the change, this call's or the earlier one a repeat
    // repeats (whose confirmation may have failed), is on the replicas.
    Result<void> waited = co_await confirm_replicated(bill_id, session, ran);
    if (!waited) {
        co_return waited.error();
    }
    co_return result;
}

asio::awaitable<Result<RegisterResult>> RedisBillStore::register_bill(NewBill bill)
{
    if (bill.id.empty()) {
        co_return make_error_code(errc::invalid_argument);
    }
    Result<std::string> metadata = canonical_metadata(bill.metadata_json);
    if (!metadata) {
        co_return metadata.error();
    }
    std::vector<std::string> payload{new_bill_json(bill, *metadata)};
    std::string op = "register";
    const std::uint64_t session = redis_.session();
    NodeSession ran;
    Result<Reply> reply = co_await run_script(std::move(op), bill.id, std::move(payload), ran);
    if (!reply) {
        co_return reply.error();
    }
    const Reply& r = *reply;
    if (!r.is_array() || r.elements.size() != 4 || !r.elements[0].is_string() || !r.elements[1].is_string() ||
        !r.elements[2].is_integer() || !r.elements[3].is_array()) {
        co_return unexpected_reply("register", r);
    }
    RegisterResult result;
    const std::string& outcome = r.elements[0].str;
    if (outcome == "created") {
        result.outcome = RegisterOutcome::created;
    } else if (outcome == "identical") {
        result.outcome = RegisterOutcome::identical;
    } else if (outcome == "conflict") {
        result.outcome = RegisterOutcome::conflict;
    } else {
        co_return unexpected_reply("register", r);
    }
    result.bill_json = r.elements[1].str;
    result.orphans_applied = static_cast<int>(r.elements[2].integer);
    for (const Reply& kind : r.elements[3].elements) {
        if (!kind.is_string()) {
            co_return unexpected_reply("register", r);
        }
        result.anomalies.push_back(kind.str);
    }
    if (result.outcome != RegisterOutcome::conflict) {
        // "identical" confirms a bill that an earlier call may have written without its WAIT.
        Result<void> waited = co_await confirm_replicated(bill.id, session, ran);
        if (!waited) {
            co_return waited.error();
        }
    }
    co_return result;
}

asio::awaitable<Result<std::optional<BillView>>> RedisBillStore::get_bill(std::string id)
{
    std::vector<std::string> script_keys{keys_.bill(id), keys_.hist(id)};
    std::vector<std::string> fields(kBillFields.begin(), kBillFields.end());
    Result<Reply> reply = co_await redis_.eval(read_sha_, std::move(script_keys), std::move(fields));
    if (!reply) {
        co_return reply.error();
    }
    if (!reply->is_array() || reply->elements.size() != 3) {
        co_return unexpected_reply("get_bill", *reply);
    }
    const Reply& hist = reply->elements[1];
    Result<std::optional<std::string>> bill = bill_json_of(reply->elements[0]);
    if (!bill) {
        co_return bill.error();
    }
    if (!hist.is_array() || !reply->elements[2].is_integer() || reply->elements[2].integer < 0) {
        co_return unexpected_reply("get_bill", hist);
    }
    if (!*bill) {
        co_return std::optional<BillView>{};
    }
    const auto length = static_cast<std::size_t>(reply->elements[2].integer);
    BillView view;
    view.bill_json = std::move(**bill);
    view.events_json.reserve(length);
    for (const Reply& e : hist.elements) {
        view.events_json.push_back(e.str);
    }
    while (view.events_json.size() < length) {
        const std::size_t from = view.events_json.size();
        const std::size_t to = std::min(from + kHistoryPage, length) - 1;
        std::vector<std::string> page{"LRANGE", keys_.hist(id), std::to_string(from), std::to_string(to)};
        Result<Reply> more = co_await redis_.exec(std::move(page));
        if (!more) {
            co_return more.error();
        }
        if (!more->is_array() || more->elements.empty()) {
            co_return unexpected_reply("lrange", *more);  // the history shrank: nothing removes events
        }
        for (const Reply& e : more->elements) {
            view.events_json.push_back(e.str);
        }
    }
    co_return std::optional<BillView>(std::move(view));
}

asio::awaitable<Result<Page>> RedisBillStore::list_events(std::string after, std::size_t limit)
{
    Result<Page> page = co_await list_stream(false, std::move(after), limit);
    co_return page;
}

asio::awaitable<Result<Page>> RedisBillStore::list_anomalies(std::string after, std::size_t limit)
{
    Result<Page> page = co_await list_stream(true, std::move(after), limit);
    co_return page;
}

asio::awaitable<Result<Page>> RedisBillStore::list_stream(bool anomalies, std::string after, std::size_t limit)
{
    const auto shards = static_cast<std::size_t>(keys_.shards());
    FeedCursor cursor(shards);
    if (!after.empty()) {
        std::optional<FeedCursor> decoded = decode_feed_cursor(after, keys_.shards());
        if (!decoded) {
            co_return make_error_code(errc::invalid_argument);
        }
        cursor = std::move(*decoded);
    }
    limit = std::min(limit, kMaxPageLimit);
    if (limit == 0) {
        Page empty;
        empty.next_cursor = std::move(after);
        co_return empty;
    }

    // Every shard goes on after its own last id: an entry written later can only get a larger id
    // in its own stream, so none is skipped, whatever the clocks of the shards do. A page lists
    // the entries after the cursor merged in (ms, seq, shard) order.
    //
    // A page is the first `limit` entries of the shards merged, and a shard contributes at most
    // its first `limit` entries. Reading that many from every shard costs shards x limit, so read
    // a share of the page plus a margin first, then more only from shards whose last entry read
    // still sorts before the limit-th entry so far (the others can add nothing).
    struct ShardRead {
        std::string start;
        std::size_t batch{0};
        std::size_t read{0};
        bool done{false};
        StreamPos last;
    };
    std::vector<ShardRead> reads(shards);
    for (std::size_t s = 0; s < shards; ++s) {
        ShardRead& r = reads[s];
        r.start = "-";
        if (cursor[s]) {
            r.start = "(" + std::to_string(cursor[s]->ms) + "-" + std::to_string(cursor[s]->seq);
        }
        r.batch = std::min(limit, limit / shards + kMergeMargin);
    }
    const auto by_pos = [](const auto& a, const auto& b) { return a.first < b.first; };
    const std::string_view json_field = anomalies ? "anomaly" : "event";
    std::vector<std::vector<Reply>> rounds;  // what `items` points into
    std::vector<std::pair<StreamPos, const std::string*>> items;
    for (;;) {
        std::optional<StreamPos> kth;
        if (items.size() >= limit) {
            std::nth_element(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(limit - 1), items.end(),
                             by_pos);
            kth = items[limit - 1].first;
        }
        std::vector<std::size_t> active;
        std::vector<std::vector<std::string>> batch;
        for (std::size_t s = 0; s < shards; ++s) {
            const ShardRead& r = reads[s];
            if (r.done || (kth && !(r.last < *kth))) {
                continue;
            }
            active.push_back(s);
            std::string key = anomalies ? keys_.anomalies(static_cast<int>(s)) : keys_.outbox(static_cast<int>(s));
            batch.push_back({"XRANGE", std::move(key), r.start, "+", "COUNT", std::to_string(r.batch)});
        }
        if (active.empty()) {
            break;
        }
        Result<std::vector<Reply>> replies = co_await redis_.exec_many(std::move(batch));
        if (!replies) {
            co_return replies.error();
        }
        for (std::size_t i = 0; i < active.size(); ++i) {
            ShardRead& r = reads[active[i]];
            const Reply& entries = (*replies)[i];
            if (!entries.is_array()) {
                co_return unexpected_reply("xrange", entries);
            }
            r.read += entries.elements.size();
            r.done = entries.elements.size() < r.batch || r.read >= limit;
            for (const Reply& entry : entries.elements) {
                if (!entry.is_array() || entry.elements.size() != 2 || !entry.elements[1].is_array()) {
                    co_return unexpected_reply("xrange", entry);
                }
                StreamPos pos;
                pos.shard = static_cast<int>(active[i]);
                if (!parse_stream_id(entry.elements[0].str, pos.ms, pos.seq)) {
                    co_return unexpected_reply("xrange", entry);
                }
                r.last = pos;
                const std::vector<Reply>& fields = entry.elements[1].elements;
                for (std::size_t f = 0; f + 1 < fields.size(); f += 2) {
                    if (fields[f].str == json_field) {
                        items.emplace_back(pos, &fields[f + 1].str);
                        break;
                    }
                }
            }
            if (!entries.elements.empty()) {
                r.start = "(" + r.last.id();  // the next read goes on after the last entry read
            }
            r.batch = std::min(limit - std::min(limit, r.read), r.batch * 2);
        }
        rounds.push_back(std::move(*replies));  // moves the buffer: `items` stays valid
    }
    std::sort(items.begin(), items.end(), by_pos);
    if (items.size() > limit) {
        items.resize(limit);
    }
    Page page;
    page.items_json.reserve(items.size());
    for (const auto& [pos, json] : items) {
        page.items_json.push_back(*json);
        cursor[static_cast<std::size_t>(pos.shard)] = StreamId{.ms = pos.ms, .seq = pos.seq};
    }
    // At the tail the page is empty and the consumer polls again from where it was: with null it
    // would store nothing, or send after= and replay the whole feed.
    page.next_cursor = items.empty() ? std::move(after) : encode_feed_cursor(cursor);
    co_return page;
}

asio::awaitable<Result<Page>> RedisBillStore::list_bills(BillFilter filter)
{
    const std::size_t limit = std::min(filter.limit, kMaxPageLimit);
    if (limit == 0) {
        Page empty;
        co_return empty;
    }
    // Cursor "<updated_ms>:<bill_id>" (ids may contain ':', the number never does).
    bool has_cursor = false;
    std::int64_t cursor_ms = 0;
    std::string cursor_id;
    if (!filter.cursor.empty()) {
        const auto colon = filter.cursor.find(':');
        std::uint64_t ms = 0;
        if (colon == std::string::npos || !parse_u64(std::string_view(filter.cursor).substr(0, colon), ms)) {
            co_return make_error_code(errc::invalid_argument);
        }
        has_cursor = true;
        cursor_ms = static_cast<std::int64_t>(ms);
        cursor_id = filter.cursor.substr(colon + 1);
    }
    std::string max = "+inf";
    if (filter.updated_to_ms > 0) {
        max = "(" + std::to_string(filter.updated_to_ms);
    }
    if (has_cursor && (filter.updated_to_ms <= 0 || cursor_ms < filter.updated_to_ms)) {
        max = std::to_string(cursor_ms);
    }
    const std::string min = filter.updated_from_ms > 0 ? std::to_string(filter.updated_from_ms) : "-inf";
    const bool filtered = !filter.status.empty() || !filter.provider.empty() || !filter.customer_id.empty();
    // One more than the page tells whether another page exists.
    const std::size_t want = limit + 1;

    // Listing order: newest change first, then id descending (each shard's index read in reverse).
    struct Key {
        std::int64_t ms;
        std::string id;
    };
    const auto before = [](const Key& a, const Key& b) { return a.ms != b.ms ? a.ms > b.ms : a.id > b.id; };
    struct ShardScan {
        // The next read: ZREVRANGEBYSCORE max min LIMIT 0 skip+n, where skip counts the entries at
        // score max already read: they are read again and passed over by id. (An offset of
        // skip would jump over an unread entry whenever one already read left that score between
        // rounds, its bill changed.) Only one score's entries are ever read twice.
        std::string max;
        std::size_t skip{0};
        bool done{false};
        std::size_t batch{0};
        std::optional<Key> frontier;  // the last index entry read
        std::vector<Key> matches;
    };
    const auto shards = static_cast<std::size_t>(keys_.shards());
    std::vector<ShardScan> scans(shards);
    for (ShardScan& scan : scans) {
        scan.max = max;
        // A share of the page plus a margin (filters match some bills only: four times that).
        scan.batch = (want / shards + kMergeMargin) * (filtered ? 4 : 1);
    }

    // Each shard's first `want` matches are all it can contribute to the page. A shard stays in
    // the running until it has them or runs out, or its frontier sorts after the want-th match so
    // far (nothing it has left can make the page). All within a budget of index entries: a rare
    // filter value must not read every bill. When the budget runs out, the page ends at the scan
    // frontier (see below).
    std::size_t budget = filtered ? kBillScanBudget : std::numeric_limits<std::size_t>::max();
    const auto running = [&scans, want, &before](const std::optional<Key>& kth, std::size_t s) {
        const ShardScan& scan = scans[s];
        return !scan.done && scan.matches.size() < want && (!kth || before(*scan.frontier, *kth));
    };
    const auto want_th = [&scans, want, &before]() {
        std::vector<const Key*> keys;
        for (const ShardScan& scan : scans) {
            for (const Key& key : scan.matches) {
                keys.push_back(&key);
            }
        }
        std::optional<Key> kth;
        if (keys.size() >= want) {
            std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(want - 1), keys.end(),
                             [&before](const Key* a, const Key* b) { return before(*a, *b); });
            kth = *keys[want - 1];
        }
        return kth;
    };
    for (;;) {
        const std::optional<Key> kth = want_th();
        std::vector<int> active;
        for (std::size_t s = 0; s < shards; ++s) {
            if (running(kth, s)) {
                active.push_back(static_cast<int>(s));
            }
        }
        if (active.empty() || budget == 0) {
            break;
        }
        std::vector<std::vector<std::string>> ranges;
        std::vector<std::size_t> batches;
        for (const int s : active) {
            const ShardScan& scan = scans[static_cast<std::size_t>(s)];
            // The first round reads at least one entry of every shard: a page always makes progress.
            std::size_t n = std::min(scan.batch, budget / active.size());
            if (!filtered) {
                n = std::min(n, want - scan.matches.size());  // every bill matches
            }
            batches.push_back(scan.skip + std::max<std::size_t>(1, n));
            ranges.push_back({"ZREVRANGEBYSCORE", keys_.updated(s), scan.max, min, "WITHSCORES", "LIMIT", "0",
                              std::to_string(batches.back())});
        }
        Result<std::vector<Reply>> ranged = co_await redis_.exec_many(std::move(ranges));
        if (!ranged) {
            co_return ranged.error();
        }
        struct Candidate {
            int shard;
            Key key;
        };
        std::vector<Candidate> candidates;
        for (std::size_t i = 0; i < active.size(); ++i) {
            const Reply& r = (*ranged)[i];
            if (!r.is_array()) {
                co_return unexpected_reply("zrevrangebyscore", r);
            }
            ShardScan& scan = scans[static_cast<std::size_t>(active[i])];
            const std::size_t returned = r.elements.size() / 2;
            scan.done = returned < batches[i];
            scan.batch *= 2;
            std::size_t at_last_score = 0;
            for (std::size_t j = 0; j + 1 < r.elements.size(); j += 2) {
                Key key{.ms = parse_score(r.elements[j + 1].str), .id = r.elements[j].str};
                at_last_score = j > 0 && parse_score(r.elements[j - 1].str) == key.ms ? at_last_score + 1 : 1;
                if (scan.frontier && scan.frontier->ms == key.ms && key.id >= scan.frontier->id) {
                    continue;  // read in an earlier round (or updated at this score since): passed
                }
                scan.frontier = key;
                if (has_cursor && key.ms == cursor_ms && key.id >= cursor_id) {
                    continue;  // on or before the cursor: listed by an earlier page
                }
                // Only entries past the cursor, read for the first time, count against the budget:
                // re-read ones (of the last score, of the cursor's) must not use it up before the
                // scan gets past them, or a page could end where it began.
                budget -= std::min<std::size_t>(budget, 1);
                candidates.push_back(Candidate{.shard = active[i], .key = std::move(key)});
            }
            if (returned > 0) {
                const std::int64_t last = parse_score(r.elements.back().str);
                scan.skip = at_last_score;  // this read started at the top of score max
                scan.max = std::to_string(last);
            }
        }
        if (candidates.empty()) {
            continue;
        }
        // Only the fields the filter needs (status also tells that the bill exists); the page's
        // bills are read whole once it is known.
        std::vector<std::vector<std::string>> gets;
        gets.reserve(candidates.size());
        for (const Candidate& c : candidates) {
            gets.push_back({"HMGET", keys_.bill(c.key.id), "status", "provider", "customer_id"});
        }
        Result<std::vector<Reply>> fields = co_await redis_.exec_many(std::move(gets));
        if (!fields) {
            co_return fields.error();
        }
        for (std::size_t i = 0; i < candidates.size(); ++i) {
            const Reply& f = (*fields)[i];
            if (!f.is_array() || f.elements.size() != 3) {
                co_return unexpected_reply("hmget", f);
            }
            if (f.elements[0].is_nil()) {
                continue;
            }
            if ((!filter.status.empty() && f.elements[0].str != filter.status) ||
                (!filter.provider.empty() && f.elements[1].str != filter.provider) ||
                (!filter.customer_id.empty() && f.elements[2].str != filter.customer_id)) {
                continue;
            }
            ShardScan& scan = scans[static_cast<std::size_t>(candidates[i].shard)];
            if (scan.matches.size() < want) {
                scan.matches.push_back(std::move(candidates[i].key));
            }
        }
    }

    // A shard still in the running when the budget ran out has only been read down to its
    // frontier; the earliest such frontier in listing order is where this page's knowledge ends.
    std::optional<Key> cut;
    const std::optional<Key> kth = want_th();
    for (std::size_t s = 0; s < shards; ++s) {
        if (running(kth, s) && (!cut || before(*scans[s].frontier, *cut))) {
            cut = scans[s].frontier;
        }
    }
    std::vector<Key> all;
    for (ShardScan& scan : scans) {
        for (Key& key : scan.matches) {
            if (!cut || !before(*cut, key)) {
                all.push_back(std::move(key));
            }
        }
    }
    std::sort(all.begin(), all.end(), before);
    Page page;
    if (all.size() > limit) {
        all.resize(limit);
        page.next_cursor = std::to_string(all.back().ms) + ":" + all.back().id;
    } else if (cut) {
        // Possibly short, even empty: the rest lies beyond the frontier, and the next page goes on
        // from there.
        page.next_cursor = std::to_string(cut->ms) + ":" + cut->id;
    }
    if (all.empty()) {
        co_return page;
    }
    std::vector<std::vector<std::string>> gets;
    gets.reserve(all.size());
    for (const Key& key : all) {
        gets.push_back(hmget_bill(keys_.bill(key.id)));
    }
    Result<std::vector<Reply>> bills = co_await redis_.exec_many(std::move(gets));
    if (!bills) {
        co_return bills.error();
    }
    page.items_json.reserve(all.size());
    for (const Reply& r : *bills) {
        Result<std::optional<std::string>> bill = bill_json_of(r);
        if (!bill) {
            co_return bill.error();
        }
        // The filter was checked on an earlier read: a bill paid since (or refunded, or changed
        // after updated_to) would be listed as it is now under a filter it no longer matches. It
        // is checked again on the bill as returned; one that fails is left out, and the page is
        // shorter. (It changed, so it now sorts before the cursor: it belongs to no later page.)
        if (*bill && bill_matches(r, filter)) {  // else deleted since, or no longer a match
            page.items_json.push_back(std::move(**bill));
        }
    }
    co_return page;
}

asio::awaitable<Result<void>> RedisBillStore::ping()
{
    if (!redis_.ready()) {
        co_return make_error_code(errc::store_unavailable);
    }
    std::vector<std::string> argv{"PING"};
    Result<Reply> reply = co_await redis_.exec(std::move(argv));
    if (!reply) {
        co_return reply.error();
    }
    if (!reply->is_status("PONG")) {
        co_return unexpected_reply("ping", *reply);
    }
    co_return Result<void>{};
}

namespace {

/// Adds a bill's ledger (bill.lua: {"<provider>\n<txn>": {"provider", "paid" (-1: unknown),
/// "refunded", ...}}) to the per-provider sums of other payments. False when it is not one.
bool add_other_payments(std::map<std::string, SummaryGroup>& others, const Reply& ledger)
{
    rapidjson::Document d;
    d.Parse(ledger.str.data(), ledger.str.size());
    if (d.HasParseError() || !d.IsObject()) {
        return false;
    }
    for (const auto& m : d.GetObject()) {
        const rapidjson::Value& e = m.value;
        if (!e.IsObject() || !e.HasMember("provider") || !e["provider"].IsString() || !e.HasMember("paid") ||
            !e["paid"].IsNumber() || !e.HasMember("refunded") || !e["refunded"].IsNumber()) {
            return false;
        }
        // cjson writes integers below 10^14 as integers; anything else is not fen.
        const auto fen = [](const rapidjson::Value& v) -> std::optional<std::int64_t> {
            if (v.IsInt64()) {
                return v.GetInt64();
            }
            return std::nullopt;
        };
        const std::optional<std::int64_t> paid = fen(e["paid"]);
        const std::optional<std::int64_t> refunded = fen(e["refunded"]);
        if (!paid || !refunded || *refunded < 0) {
            return false;
        }
        SummaryGroup& g = others[e["provider"].GetString()];
        g.provider = e["provider"].GetString();
        g.status = "other";
        if (*paid >= 0) {
            g.count += 1;
            if (!add_fen(g.paid_fen, *paid)) {
                return false;
            }
        }
        if (!add_fen(g.refunded_fen, *refunded)) {
            return false;
        }
    }
    return true;
}

}  // namespace

asio::awaitable<Result<std::string>> RedisBillStore::summary(std::int64_t from_ms, std::int64_t to_ms)
{
    Result<ReconciliationSummary> sum = co_await reconciliation(from_ms, to_ms);
    if (!sum) {
        co_return sum.error();
    }
    co_return std::move(sum->json);
}

asio::awaitable<Result<ReconciliationSummary>> RedisBillStore::reconciliation(std::int64_t from_ms, std::int64_t to_ms)
{
    ReconciliationSummary sum;
    sum.from_ms = from_ms;
    sum.to_ms = to_ms;
    std::map<std::pair<std::string, std::string>, SummaryGroup> groups;
    std::map<std::string, SummaryGroup> others;  // by provider

    if (to_ms > from_ms) {
        // Bills: the created index, a page per shard per round, then the summed fields in one
        // batch. Each shard goes on from its last (score, member): the LIMIT offset covers only the
        // entries already read at that score (Redis walks an offset entry by entry), and members
        // added there since sort anywhere, so those up to the last one read are skipped by name.
        struct ShardScan {
            std::string min;
            std::int64_t last_ms{-1};
            std::string last_id;
            std::size_t skip{0};
            bool done{false};
        };
        std::vector<ShardScan> scans(static_cast<std::size_t>(keys_.shards()));
        for (ShardScan& scan : scans) {
            scan.min = std::to_string(from_ms);
        }
        for (;;) {
            std::vector<int> active;
            std::vector<std::vector<std::string>> ranges;
            for (int s = 0; s < keys_.shards(); ++s) {
                const ShardScan& scan = scans[static_cast<std::size_t>(s)];
                if (scan.done) {
                    continue;
                }
                active.push_back(s);
                ranges.push_back({"ZRANGEBYSCORE", keys_.created(s), scan.min, "(" + std::to_string(to_ms),
                                  "WITHSCORES", "LIMIT", std::to_string(scan.skip), std::to_string(kSummaryBatch)});
            }
            if (active.empty()) {
                break;
            }
            Result<std::vector<Reply>> ranged = co_await redis_.exec_many(std::move(ranges));
            if (!ranged) {
                co_return ranged.error();
            }
            std::vector<std::vector<std::string>> gets;
            for (std::size_t i = 0; i < active.size(); ++i) {
                const Reply& r = (*ranged)[i];
                if (!r.is_array()) {
                    co_return unexpected_reply("zrangebyscore", r);
                }
                ShardScan& scan = scans[static_cast<std::size_t>(active[i])];
                scan.done = r.elements.size() / 2 < kSummaryBatch;
                for (std::size_t j = 0; j + 1 < r.elements.size(); j += 2) {
                    const std::string& id = r.elements[j].str;
                    const std::int64_t ms = parse_score(r.elements[j + 1].str);
                    if (ms == scan.last_ms) {
                        ++scan.skip;
                        if (id <= scan.last_id) {
                            continue;  // added at this score since the last round: already counted
                        }
                    } else {
                        scan.skip = 1;
                        scan.last_ms = ms;
                        scan.min = std::to_string(ms);
                    }
                    scan.last_id = id;
                    gets.push_back({"HMGET", keys_.bill(id), "provider", "status", "amount_fen", "paid_fen",
                                    "refunded_fen"});
                    // The bill's other transactions (bill.lua's ledger; absent on almost every bill).
                    gets.push_back({"HGET", keys_.seen(id), "ledger"});
                }
            }
            Result<std::vector<Reply>> hashes = co_await redis_.exec_many(std::move(gets));
            if (!hashes) {
                co_return hashes.error();
            }
            for (std::size_t h = 0; h + 1 < hashes->size(); h += 2) {
                const Reply& r = (*hashes)[h];
                if (!r.is_array() || r.elements.size() != 5) {
                    co_return unexpected_reply("hmget", r);
                }
                const std::vector<Reply>& f = r.elements;
                if (f[1].is_nil()) {
                    continue;  // no such bill
                }
                if (const Reply& ledger = (*hashes)[h + 1]; !ledger.is_nil()) {
                    if (!add_other_payments(others, ledger)) {
                        co_return unexpected_reply("ledger", ledger);
                    }
                }
                std::string provider = f[0].str;
                if (provider.empty()) {
                    provider = "none";
                }
                SummaryGroup& g = groups[{provider, f[1].str}];
                g.provider = provider;
                g.status = f[1].str;
                g.count += 1;
                if (!add_fen(g.amount_fen, parse_i64(f[2].str)) || !add_fen(g.paid_fen, parse_i64(f[3].str)) ||
                    !add_fen(g.refunded_fen, parse_i64(f[4].str))) {
                    co_return summary_overflow();
                }
            }
        }

        // Anomalies: stream ids carry their time; page through [from, to) of every shard.
        std::vector<std::string> starts(static_cast<std::size_t>(keys_.shards()), std::to_string(from_ms));
        std::vector<bool> adone(starts.size(), false);
        const std::string end = std::to_string(to_ms - 1);  // an incomplete end id means "<ms>-<max seq>"
        for (;;) {
            std::vector<int> active;
            std::vector<std::vector<std::string>> ranges;
            for (int s = 0; s < keys_.shards(); ++s) {
                if (adone[static_cast<std::size_t>(s)]) {
                    continue;
                }
                active.push_back(s);
                ranges.push_back({"XRANGE", keys_.anomalies(s), starts[static_cast<std::size_t>(s)], end, "COUNT",
                                  std::to_string(kSummaryBatch)});
            }
            if (active.empty()) {
                break;
            }
            Result<std::vector<Reply>> ranged = co_await redis_.exec_many(std::move(ranges));
            if (!ranged) {
                co_return ranged.error();
            }
            for (std::size_t i = 0; i < active.size(); ++i) {
                const Reply& r = (*ranged)[i];
                if (!r.is_array()) {
                    co_return unexpected_reply("xrange", r);
                }
                const auto s = static_cast<std::size_t>(active[i]);
                adone[s] = r.elements.size() < kSummaryBatch;
                for (const Reply& entry : r.elements) {
                    if (!entry.is_array() || entry.elements.size() != 2) {
                        co_return unexpected_reply("xrange", entry);
                    }
                    starts[s] = "(" + entry.elements[0].str;
                    const std::vector<Reply>& fields = entry.elements[1].elements;
                    for (std::size_t f = 0; f + 1 < fields.size(); f += 2) {
                        if (fields[f].str == "kind") {
                            sum.anomalies[fields[f + 1].str] += 1;
                            break;
                        }
                    }
                }
            }
        }
    }

    SummaryGroup totals;
    for (auto& [key, g] : groups) {
        totals.count += g.count;
        if (!add_fen(totals.amount_fen, g.amount_fen) || !add_fen(totals.paid_fen, g.paid_fen) ||
            !add_fen(totals.refunded_fen, g.refunded_fen)) {
            co_return summary_overflow();
        }
        sum.groups.push_back(std::move(g));
    }
    for (auto& [provider, g] : others) {
        sum.other_payments.push_back(std::move(g));
    }

    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    // Other payments have no amount asked of them: no amount_fen.
    const auto put_sums = [&w](const SummaryGroup& g, bool asked = true) {
        put_key(w, "count");
        w.Int64(g.count);
        if (asked) {
            put_key(w, "amount_fen");
            w.Int64(g.amount_fen);
        }
        put_key(w, "paid_fen");
        w.Int64(g.paid_fen);
        put_key(w, "refunded_fen");
        w.Int64(g.refunded_fen);
    };
    w.StartObject();
    put_key(w, "from");
    put_string(w, format_rfc3339(from_ms));
    put_key(w, "to");
    put_string(w, format_rfc3339(to_ms));
    put_key(w, "from_ms");
    w.Int64(from_ms);
    put_key(w, "to_ms");
    w.Int64(to_ms);
    put_key(w, "bills");
    w.StartArray();
    for (const SummaryGroup& g : sum.groups) {
        w.StartObject();
        put_key(w, "provider");
        if (g.provider == "none") {
            w.Null();  // a bill paid by no provider: null, as in the bill itself
        } else {
            put_string(w, g.provider);
        }
        put_key(w, "status");
        put_string(w, g.status);
        put_sums(g);
        w.EndObject();
    }
    w.EndArray();
    put_key(w, "totals");
    w.StartObject();
    put_sums(totals);
    w.EndObject();
    put_key(w, "other_payments");
    w.StartArray();
    for (const SummaryGroup& g : sum.other_payments) {
        w.StartObject();
        put_key(w, "provider");
        put_string(w, g.provider);
        put_sums(g, false);
        w.EndObject();
    }
    w.EndArray();
    put_key(w, "anomalies");
    w.StartObject();
    for (const auto& [kind, n] : sum.anomalies) {
        put_key(w, kind);
        w.Int64(n);
    }
    w.EndObject();
    w.EndObject();
    sum.json = to_text(buf);
    co_return sum;
}

}  // namespace paybridge::store
