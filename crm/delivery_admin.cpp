#include "crm/delivery_admin.hpp"

#include "core/error.hpp"
#include "core/time.hpp"
#include "crm/delivery_schema.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <map>
#include <optional>
#include <tuple>

namespace paybridge::crm {
namespace {

namespace asio = boost::asio;
using store::Reply;
using Writer = rapidjson::Writer<rapidjson::StringBuffer>;
using FieldMap = std::map<std::string, std::string, std::less<>>;

constexpr std::size_t kDefaultLimit = 50;
constexpr std::size_t kFindChunk = 1000;  ///< outbox entries one kFindEntry call looks at
/// How far from the event's created_at its outbox entry is looked for first: the entry's id is
/// Redis' clock at the XADD, created_at the writing instance's clock in the same script.
constexpr std::int64_t kFindWindowMs = 10 * 60 * 1000;

std::int64_t now_ms()
{
    return unix_ms(std::chrono::system_clock::now());
}

void put(Writer& w, std::string_view s)
{
    w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

void key(Writer& w, std::string_view k)
{
    w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
}

std::optional<std::int64_t> to_int64(std::string_view s)
{
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) {
        return std::nullopt;
    }
    return v;
}

FieldMap to_map(const std::vector<Reply>& pairs)
{
    FieldMap m;
    for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
        m[pairs[i].str] = pairs[i + 1].str;
    }
    return m;
}

std::string_view get(const FieldMap& m, std::string_view k)
{
    const auto it = m.find(k);
    return it == m.end() ? std::string_view{} : std::string_view(it->second);
}

/// A stored Unix-ms field as RFC 3339, or null.
void put_time(Writer& w, std::string_view ms_text)
{
    const std::optional<std::int64_t> ms = to_int64(ms_text);
    if (!ms || *ms <= 0) {
        w.Null();
        return;
    }
    put(w, format_rfc3339(*ms));
}

void put_int_or_null(Writer& w, std::string_view text)
{
    const std::optional<std::int64_t> v = to_int64(text);
    if (v) {
        w.Int64(*v);
    } else {
        w.Null();
    }
}

/// Embeds stored JSON text; text that does not parse is embedded as a string.
void put_json(Writer& w, std::string_view text)
{
    rapidjson::Document doc;
    doc.Parse(text.data(), text.size());
    if (doc.HasParseError()) {
        put(w, text);
        return;
    }
    doc.Accept(w);
}

void put_delivery(Writer& w, std::string_view event_id, const FieldMap& f, bool full)
{
    w.StartObject();
    key(w, "event_id");
    put(w, event_id);
    key(w, "state");
    put(w, get(f, "state"));
    key(w, "bill_id");
    put(w, get(f, "bill_id"));
    key(w, "type");
    put(w, get(f, "type"));
    key(w, "attempts");
    put_int_or_null(w, get(f, "attempts"));
    key(w, "last_status");
    put_int_or_null(w, get(f, "last_status"));
    key(w, "last_error");
    put(w, get(f, "last_error"));
    key(w, "next_at");
    put_time(w, get(f, "next_at"));
    key(w, "updated_at");
    put_time(w, get(f, "updated_at"));
    if (full) {
        key(w, "entry_id");
        put(w, get(f, "entry_id"));
        key(w, "first_seen_at");
        put_time(w, get(f, "first_seen_at"));
        key(w, "last_attempt_at");
        put_time(w, get(f, "last_attempt_at"));
        key(w, "delivered_at");
        put_time(w, get(f, "delivered_at"));
        key(w, "dead_at");
        put_time(w, get(f, "dead_at"));
    }
    w.EndObject();
}

std::string text_of(const rapidjson::StringBuffer& buf)
{
    return std::string(buf.GetString(), buf.GetSize());
}

std::vector<std::string> requeue_keys(const ShardKeys& k, std::string_view event_id)
{
    return {k.stream, k.retry, k.tries, k.dead, k.idx_pending, k.idx_retrying, k.idx_delivered,
            k.delivery(event_id), k.attempts(event_id)};
}

struct Candidate {
    std::int64_t score{0};
    std::string event_id;
    int shard{0};
};

}  // namespace

DeliveryAdmin::DeliveryAdmin(store::RedisConnection& redis, std::string key_prefix, int shards, std::string group)
    : redis_(redis), prefix_(std::move(key_prefix)), shards_(shards < 1 ? 1 : shards), group_(std::move(group))
{
    requeue_sha_ = redis_.add_script(std::string(scripts::kRequeue));
    find_sha_ = redis_.add_script(std::string(scripts::kFindEntry));
}

asio::awaitable<Result<DeliveryAdmin::Located>> DeliveryAdmin::locate(std::string event_id)
{
    // The delivery hash carries its shard's tag; an event id alone does not say which shard, so ask
    // every shard in one pipelined batch.
    const DeliveryKeys keys(prefix_, shards_);
    std::vector<std::vector<std::string>> cmds;
    for (const ShardKeys& k : keys.all()) {
        std::vector<std::string> cmd{"HGETALL", k.delivery(event_id)};
        cmds.push_back(std::move(cmd));
    }
    Result<std::vector<Reply>> replies = co_await redis_.exec_many(std::move(cmds));
    if (!replies) {
        co_return replies.error();
    }
    for (std::size_t s = 0; s < replies->size(); ++s) {
        Reply& r = (*replies)[s];
        if (r.is_error()) {
            co_return make_error_code(errc::store_unavailable);
        }
        if (r.is_array() && !r.elements.empty()) {
            Located found;
            found.shard = static_cast<int>(s);
            found.fields = std::move(r.elements);
            co_return found;
        }
    }
    Result<Located> entry = co_await find_entry(std::move(event_id));
    co_return entry;
}

asio::awaitable<Result<DeliveryAdmin::Located>> DeliveryAdmin::find_entry(std::string event_id)
{
    // "evt_" bill "_" sequence, or "_u" n for an unknown bill (store/bill.lua); a bill id may
    // itself contain '_'.
    const std::size_t sep = event_id.rfind('_');
    if (!event_id.starts_with("evt_") || sep == std::string::npos || sep <= 4 || sep + 1 >= event_id.size()) {
        co_return make_error_code(errc::not_found);
    }
    std::string_view seq = std::string_view(event_id).substr(sep + 1);
    if (seq.front() == 'u') {
        seq.remove_prefix(1);
    }
    if (seq.empty() || !std::all_of(seq.begin(), seq.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        co_return make_error_code(errc::not_found);
    }
    const store::Keys store_keys(prefix_, shards_);
    const std::string_view bill_id = std::string_view(event_id).substr(4, sep - 4);
    const int shard = store_keys.shard_of(bill_id);
    const DeliveryKeys keys(prefix_, shards_);
    const ShardKeys& k = keys.shard(shard);

    // Every event is also in its bill's history, at position sequence - 1 (unknown_bill events
    // first, u1..un, then the bill's own from n + 1): an id that names no event is answered
    // there, without reading the outbox, and a real one gives the time to look around.
    std::uint64_t sequence = 0;
    std::from_chars(seq.data(), seq.data() + seq.size(), sequence);
    if (sequence == 0 || sequence > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        co_return make_error_code(errc::not_found);
    }
    std::vector<std::string> lindex{"LINDEX", store_keys.hist(bill_id), std::to_string(sequence - 1)};
    Result<Reply> stored = co_await redis_.exec(std::move(lindex));
    if (!stored) {
        co_return stored.error();
    }
    if (stored->is_error()) {
        co_return make_error_code(errc::store_unavailable);
    }
    std::optional<std::int64_t> created_ms;
    {
        rapidjson::Document event;
        event.Parse(stored->str.data(), stored->str.size());
        if (stored->is_nil() || event.HasParseError() || !event.IsObject() || !event.HasMember("id") ||
            !event["id"].IsString() || std::string_view(event["id"].GetString()) != event_id) {
            co_return make_error_code(errc::not_found);
        }
        if (event.HasMember("created_at") && event["created_at"].IsString()) {
            created_ms = parse_rfc3339(event["created_at"].GetString());
        }
    }

    // Around created_at first; the whole stream only if it is not there (clocks far apart).
    std::string start = "+";
    std::string low = "-";
    if (created_ms) {
        start = std::to_string(*created_ms + kFindWindowMs);
        low = std::to_string(std::max<std::int64_t>(0, *created_ms - kFindWindowMs));
    }
    for (;;) {
        std::vector<std::string> script_keys{k.stream, k.retry};
        std::vector<std::string> args{event_id, group_, start, std::to_string(kFindChunk), low};
        Result<Reply> reply = co_await redis_.eval(find_sha_, std::move(script_keys), std::move(args));
        if (!reply) {
            co_return reply.error();
        }
        if (reply->is_error() || !reply->is_array() || reply->elements.size() < 2) {
            co_return make_error_code(errc::store_unavailable);
        }
        const std::string& result = reply->elements[0].str;
        if (result == "found") {
            Located found;
            found.shard = shard;
            found.fields = std::move(reply->elements[1].elements);
            found.recorded = false;
            co_return found;
        }
        if (result != "more") {
            if (low == "-") {
                co_return make_error_code(errc::not_found);
            }
            start = "+";
            low = "-";
            continue;
        }
        start = std::move(reply->elements[1].str);
    }
}

asio::awaitable<Result<std::string>> DeliveryAdmin::get_event_deliveries(std::string event_id)
{
    Result<Located> found = co_await locate(event_id);
    if (!found) {
        co_return found.error();
    }
    const DeliveryKeys keys(prefix_, shards_);
    const ShardKeys& k = keys.shard(found->shard);
    const FieldMap fields = to_map(found->fields);
    const std::string entry_id(get(fields, "entry_id"));

    std::vector<std::vector<std::string>> cmds;
    std::vector<std::string> attempts_cmd{"LRANGE", k.attempts(event_id), "0", "-1"};
    std::vector<std::string> entry_cmd{"XRANGE", k.stream, entry_id.empty() ? "+" : entry_id,
                                       entry_id.empty() ? "-" : entry_id};
    cmds.push_back(std::move(attempts_cmd));
    cmds.push_back(std::move(entry_cmd));
    Result<std::vector<Reply>> replies = co_await redis_.exec_many(std::move(cmds));
    if (!replies) {
        co_return replies.error();
    }
    const Reply& attempts = (*replies)[0];
    const Reply& entries = (*replies)[1];

    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    key(w, "event");
    std::string event_body;
    if (entries.is_array() && !entries.elements.empty() && entries.elements[0].elements.size() > 1) {
        const FieldMap entry = to_map(entries.elements[0].elements[1].elements);
        event_body = std::string(get(entry, "event"));
    }
    if (event_body.empty()) {
        w.Null();
    } else {
        put_json(w, event_body);
    }
    key(w, "delivery");
    put_delivery(w, event_id, fields, true);
    key(w, "attempts");
    w.StartArray();
    for (const Reply& a : attempts.elements) {
        put_json(w, a.str);
    }
    w.EndArray();
    w.EndObject();
    co_return text_of(buf);
}

asio::awaitable<Result<std::string>> DeliveryAdmin::list_deliveries(std::string state, std::size_t limit,
                                                                    std::string cursor)
{
    std::vector<std::string_view> states;
    if (state.empty()) {
        states = {kStatePending, kStateRetrying, kStateDelivered, kStateDead};
    } else if (state == kStatePending || state == kStateRetrying || state == kStateDelivered || state == kStateDead) {
        states.emplace_back(state);
    } else {
        co_return make_error_code(errc::invalid_argument);
    }
    if (limit == 0) {
        limit = kDefaultLimit;
    }
    if (limit > kMaxLimit) {
        co_return make_error_code(errc::invalid_argument);
    }
    std::optional<std::int64_t> cursor_score;
    std::string cursor_id;
    if (!cursor.empty()) {
        const std::size_t colon = cursor.find(':');
        if (colon != std::string::npos) {
            cursor_score = to_int64(std::string_view(cursor).substr(0, colon));
            cursor_id = cursor.substr(colon + 1);
        }
        if (!cursor_score || cursor_id.empty()) {
            co_return make_error_code(errc::invalid_argument);
        }
    }

    const DeliveryKeys keys(prefix_, shards_);
    struct Index {
        std::string key;
        int shard;
    };
    std::vector<Index> indexes;
    for (const ShardKeys& k : keys.all()) {
        for (std::string_view s : states) {
            indexes.push_back(Index{k.index(s), k.shard});
        }
    }

    // Items sharing the cursor's score may precede or follow it, so each index is read past them.
    std::vector<std::int64_t> ties(indexes.size(), 0);
    const std::string max = cursor_score ? std::to_string(*cursor_score) : "+inf";
    if (cursor_score) {
        std::vector<std::vector<std::string>> counts;
        for (const Index& ix : indexes) {
            std::vector<std::string> cmd{"ZCOUNT", ix.key, max, max};
            counts.push_back(std::move(cmd));
        }
        Result<std::vector<Reply>> replies = co_await redis_.exec_many(std::move(counts));
        if (!replies) {
            co_return replies.error();
        }
        for (std::size_t i = 0; i < replies->size(); ++i) {
            ties[i] = (*replies)[i].integer;
        }
    }
    std::vector<std::vector<std::string>> ranges;
    for (std::size_t i = 0; i < indexes.size(); ++i) {
        std::vector<std::string> cmd{"ZREVRANGEBYSCORE", indexes[i].key, max, "-inf", "WITHSCORES", "LIMIT", "0",
                                     std::to_string(static_cast<std::int64_t>(limit) + ties[i])};
        ranges.push_back(std::move(cmd));
    }
    Result<std::vector<Reply>> replies = co_await redis_.exec_many(std::move(ranges));
    if (!replies) {
        co_return replies.error();
    }

    std::vector<Candidate> candidates;
    for (std::size_t i = 0; i < replies->size(); ++i) {
        const Reply& r = (*replies)[i];
        if (r.is_error()) {
            co_return make_error_code(errc::store_unavailable);
        }
        for (std::size_t j = 0; j + 1 < r.elements.size(); j += 2) {
            Candidate c;
            c.event_id = r.elements[j].str;
            c.score = to_int64(r.elements[j + 1].str).value_or(0);
            c.shard = indexes[i].shard;
            if (cursor_score && c.score == *cursor_score && c.event_id >= cursor_id) {
                continue;
            }
            candidates.push_back(std::move(c));
        }
    }
    // Newest first; ties by event id descending, the order ZREVRANGEBYSCORE uses.
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
        return std::tie(a.score, a.event_id) > std::tie(b.score, b.event_id);
    });
    if (candidates.size() > limit) {
        candidates.resize(limit);
    }

    std::vector<std::vector<std::string>> details;
    for (const Candidate& c : candidates) {
        std::vector<std::string> cmd{"HGETALL", keys.shard(c.shard).delivery(c.event_id)};
        details.push_back(std::move(cmd));
    }
    std::vector<Reply> hashes;
    if (!details.empty()) {
        Result<std::vector<Reply>> got = co_await redis_.exec_many(std::move(details));
        if (!got) {
            co_return got.error();
        }
        hashes = std::move(*got);
    }

    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    key(w, "items");
    w.StartArray();
    for (std::size_t i = 0; i < candidates.size(); ++i) {
        FieldMap f = to_map(hashes[i].elements);
        if (f.empty()) {
            // The record expired after its index entry was read.
            f["updated_at"] = std::to_string(candidates[i].score);
        }
        put_delivery(w, candidates[i].event_id, f, false);
    }
    w.EndArray();
    key(w, "next_cursor");
    if (candidates.size() == limit && !candidates.empty()) {
        put(w, std::to_string(candidates.back().score) + ":" + candidates.back().event_id);
    } else {
        w.Null();
    }
    w.EndObject();
    co_return text_of(buf);
}

asio::awaitable<Result<Reply>> DeliveryAdmin::requeue(int shard, std::string event_id, std::string required_state,
                                                      std::string entry_id)
{
    const DeliveryKeys keys(prefix_, shards_);
    std::vector<std::string> script_keys = requeue_keys(keys.shard(shard), event_id);
    std::vector<std::string> args{event_id, std::to_string(now_ms()), std::move(required_state), group_,
                                  std::move(entry_id)};
    Result<Reply> reply = co_await redis_.eval(requeue_sha_, std::move(script_keys), std::move(args));
    if (!reply) {
        co_return reply.error();
    }
    if (reply->is_error() || !reply->is_array() || reply->elements.size() < 2) {
        co_return make_error_code(errc::store_unavailable);
    }
    co_return std::move(*reply);
}

asio::awaitable<Result<std::string>> DeliveryAdmin::redeliver(std::string event_id)
{
    Result<Located> found = co_await locate(event_id);
    if (!found) {
        co_return found.error();
    }
    std::string entry_id;
    if (!found->recorded) {
        entry_id = std::string(get(to_map(found->fields), "entry_id"));
    }
    Result<Reply> outcome = co_await requeue(found->shard, event_id, std::string(), std::move(entry_id));
    if (!outcome) {
        co_return outcome.error();
    }
    if (outcome->elements[0].str == "in_flight") {
        co_return make_error_code(errc::conflict);
    }
    if (outcome->elements[0].str != "requeued") {
        // not_found (raced with expiry) or gone (the stream entry was deleted): nothing to send.
        co_return make_error_code(errc::not_found);
    }
    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    key(w, "event_id");
    put(w, event_id);
    key(w, "previous_state");
    put(w, outcome->elements[1].str);
    key(w, "state");
    put(w, kStatePending);
    w.EndObject();
    co_return text_of(buf);
}

asio::awaitable<Result<std::string>> DeliveryAdmin::recover(std::int64_t since_ms, std::string state)
{
    if (state != kStateDead && state != kStateRetrying) {
        co_return make_error_code(errc::invalid_argument);
    }
    const DeliveryKeys keys(prefix_, shards_);
    std::vector<std::string> requeued;
    // A page at a time (after a long CRM outage there can be a million dead letters, more than one
    // reply may carry), each shard's index read in (score, member) order from where the last page
    // ended. Not by offset: a requeued event leaves the index, and so may one that stayed (an
    // entry deleted from the stream, a record gone, an attempt in flight) before the next page,
    // which an offset counting it would then skip an unread entry for. So each read starts at the
    // last score and reads again the entries at that score that may still be there (those up to
    // the last member that stayed), passing over them by member. One that a concurrent recover or
    // redeliver took is passed over too, and left to the next call.
    // One call does at most kMaxRecover (a million round trips and a 30 MB reply would hold one
    // request for minutes): "more" tells the caller to call again.
    constexpr std::size_t kPage = 1000;
    bool more = false;
    for (std::size_t s = 0; s < keys.all().size() && !more; ++s) {
        std::string min = std::to_string(since_ms);
        std::optional<std::pair<std::string, std::string>> last;  // (score, member) of the last entry read
        std::size_t again = 0;  // entries at the last score up to the last member still in the index, at most
        while (!more) {
            const std::size_t count = again + kPage;
            std::vector<std::string> cmd{"ZRANGEBYSCORE", keys.all()[s].index(state), min, "+inf", "WITHSCORES",
                                         "LIMIT", "0", std::to_string(count)};
            Result<Reply> page = co_await redis_.exec(std::move(cmd));
            if (!page) {
                co_return page.error();
            }
            if (!page->is_array() || page->elements.size() % 2 != 0) {
                co_return store::unexpected_reply("zrangebyscore", *page);
            }
            const std::vector<Reply>& entries = page->elements;
            std::size_t next_again = 0;
            for (std::size_t i = 0; i + 1 < entries.size() && !more; i += 2) {
                const std::string& id = entries[i].str;
                const std::string& score = entries[i + 1].str;
                // Scores are integral milliseconds, so one text per score: equal texts, equal scores.
                const bool same_score = last && score == last->first;
                if (same_score && id <= last->second) {
                    ++next_again;  // read before (it stayed, or came in at this score since)
                    continue;
                }
                if (requeued.size() == kMaxRecover) {
                    more = true;
                    break;
                }
                // Only events still in the state: a concurrent recover or redeliver (or, for a
                // retry, the dispatcher) already took the others.
                Result<Reply> outcome = co_await requeue(static_cast<int>(s), id, state, std::string());
                if (!outcome) {
                    co_return outcome.error();
                }
                if (!same_score) {
                    next_again = 0;
                }
                if (outcome->elements[0].str == "requeued") {
                    requeued.push_back(id);
                } else {
                    ++next_again;
                }
                last.emplace(score, id);
            }
            if (entries.size() / 2 < count || more) {
                break;
            }
            again = next_again;
            min = last->first;
        }
    }
    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    key(w, "requeued");
    w.Uint64(requeued.size());
    key(w, "event_ids");
    w.StartArray();
    for (const std::string& id : requeued) {
        put(w, id);
    }
    w.EndArray();
    key(w, "more");
    w.Bool(more);
    w.EndObject();
    co_return text_of(buf);
}

}  // namespace paybridge::crm
