#include "store/query_queue.hpp"

#include "core/error.hpp"
#include "core/time.hpp"
#include "store/redis_connection.hpp"

#include <algorithm>
#include <charconv>
#include <iterator>
#include <optional>

namespace paybridge::store {

namespace asio = boost::asio;

namespace {

/// Entries read per ZRANGEBYSCORE.
constexpr std::size_t kPage = 1'000;

std::optional<std::int64_t> to_i64(std::string_view text)
{
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return v;
}

/// A sorted-set score as Redis prints it ("1700000000000", or "1.7e+12" for large doubles).
std::optional<std::int64_t> score_of(const std::string& text)
{
    if (auto exact = to_i64(text)) {
        return exact;
    }
    double d = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), d);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return static_cast<std::int64_t>(d);
}

/// Bills a payment may still arrive for: unpaid, or closed by a provider (a payment through the
/// other provider, or one that crossed the close, is paid_after_close).
bool unsettled(std::string_view status) noexcept { return status == "PENDING" || status == "CLOSED"; }

}  // namespace

QueryQueue::QueryQueue(RedisConnection& redis, Keys keys, QuerySchedule schedule, std::function<std::int64_t()> now_ms)
    : redis_(redis), keys_(std::move(keys)), schedule_(schedule), now_ms_(std::move(now_ms))
{
}

std::int64_t QueryQueue::now() const
{
    if (now_ms_) {
        return now_ms_();
    }
    return unix_ms(std::chrono::system_clock::now());
}

std::int64_t QueryQueue::next_due_ms(std::int64_t created_ms, std::int64_t now_ms) const noexcept
{
    const std::int64_t last = created_ms + schedule_.until.count();
    if (now_ms >= last) {
        return 0;
    }
    // Asking again once the age has doubled spreads a day's queries over about a dozen: often
    // while a lost notification is young, rarely later.
    const std::int64_t gap = std::clamp<std::int64_t>(now_ms - created_ms, schedule_.after.count(),
                                                      std::max(schedule_.after.count(), schedule_.max_gap.count()));
    return std::min(now_ms + gap, last);
}

asio::awaitable<Result<bool>> QueryQueue::lease(int shard, std::string owner, std::chrono::milliseconds ttl)
{
    std::vector<std::string> command{"SET", keys_.query_lease(shard), std::move(owner), "NX", "PX",
                                     std::to_string(std::max<std::int64_t>(1, ttl.count()))};
    Result<Reply> r = co_await redis_.exec(std::move(command));
    // (Result<bool> cannot be made from an error_code implicitly: it converts to bool too.)
    if (!r) {
        co_return Result<bool>(boost::system::in_place_error, r.error());
    }
    if (r->is_status("OK")) {
        co_return true;
    }
    if (r->is_nil()) {
        co_return false;
    }
    co_return Result<bool>(boost::system::in_place_error, unexpected_reply("set query lease", *r));
}

asio::awaitable<Result<std::size_t>> QueryQueue::intake(int shard, std::size_t max_bills)
{
    const std::int64_t now_ms = now();
    const std::int64_t upper = now_ms - schedule_.after.count();
    std::vector<std::string> get_mark{"GET", keys_.query_intake(shard)};
    Result<Reply> got = co_await redis_.exec(std::move(get_mark));
    if (!got) {
        co_return got.error();
    }
    const std::int64_t oldest = now_ms - schedule_.until.count();
    std::int64_t mark = oldest;
    std::int64_t start = oldest;  // read from start + 1
    if (got->is_string()) {
        const std::optional<std::int64_t> stored = to_i64(got->str);
        if (!stored) {
            co_return unexpected_reply("query intake mark", *got);
        }
        mark = std::max(mark, *stored);
        // A bill registered by an instance whose clock is behind can be older than the mark.
        start = std::max(oldest, mark - kIntakeLookback.count());
    } else if (!got->is_nil()) {
        co_return unexpected_reply("get query intake mark", *got);
    }
    if (start >= upper) {
        co_return std::size_t{0};
    }

    // Page by (score, entries already read at that score): an offset from the start of the range
    // would make Redis walk every entry read before, again, on every page.
    const std::string created = keys_.created(shard);
    const std::string upper_text = std::to_string(upper);
    std::string lower = std::to_string(start + 1);
    std::size_t skip = 0;
    std::int64_t last_ms = -1;
    std::size_t fresh = 0;  // read past the mark (the look-back is not counted)
    std::size_t entered = 0;
    std::int64_t new_mark = upper;
    for (;;) {
        std::vector<std::string> range{"ZRANGEBYSCORE", created,  lower, upper_text, "WITHSCORES",
                                       "LIMIT",         std::to_string(skip), std::to_string(kPage)};
        Result<Reply> page = co_await redis_.exec(std::move(range));
        if (!page) {
            co_return page.error();
        }
        if (!page->is_array() || page->elements.size() % 2 != 0) {
            co_return unexpected_reply("zrangebyscore created", *page);
        }
        const std::size_t n = page->elements.size() / 2;
        if (n == 0) {
            break;
        }
        // Only bills a payment can still reach enter the set: most are paid before they are
        // `after` old.
        std::vector<std::vector<std::string>> statuses;
        std::vector<std::int64_t> scores;
        statuses.reserve(n);
        scores.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            const std::string& id = page->elements[2 * i].str;
            const std::optional<std::int64_t> ms = score_of(page->elements[2 * i + 1].str);
            if (!ms) {
                co_return unexpected_reply("created score", page->elements[2 * i + 1]);
            }
            scores.push_back(*ms);
            if (*ms > mark) {
                ++fresh;
            }
            if (*ms == last_ms) {
                ++skip;
            } else {
                last_ms = *ms;
                skip = 1;
            }
            statuses.push_back({"HGET", keys_.bill(id), "status"});
        }
        Result<std::vector<Reply>> st = co_await redis_.exec_many(std::move(statuses));
        if (!st) {
            co_return st.error();
        }
        std::vector<std::string> zadd{"ZADD", keys_.query_due(shard), "NX"};
        for (std::size_t i = 0; i < n; ++i) {
            const Reply& s = (*st)[i];
            if (s.is_string() && unsettled(s.str)) {
                zadd.push_back(std::to_string(scores[i] + schedule_.after.count()));
                zadd.push_back(page->elements[2 * i].str);
            } else if (!s.is_nil() && !s.is_string()) {
                co_return unexpected_reply("hget status", s);
            }
        }
        if (zadd.size() > 3) {
            Result<Reply> added = co_await redis_.exec(std::move(zadd));
            if (!added) {
                co_return added.error();
            }
            if (!added->is_integer()) {
                co_return unexpected_reply("zadd query_due", *added);
            }
            entered += static_cast<std::size_t>(std::max<std::int64_t>(0, added->integer));
        }
        if (n < kPage) {
            break;
        }
        lower = std::to_string(last_ms);
        if (fresh >= max_bills && last_ms - 1 > mark) {
            // Bills at last_ms may go on past this page: the next call reads that millisecond again
            // (ZADD NX makes the repeat harmless). A call always gets past its first millisecond.
            new_mark = last_ms - 1;
            break;
        }
    }
    if (new_mark > mark) {
        std::vector<std::string> set_mark{"SET", keys_.query_intake(shard), std::to_string(new_mark)};
        Result<Reply> set = co_await redis_.exec(std::move(set_mark));
        if (!set) {
            co_return set.error();
        }
        if (!set->is_status("OK")) {
            co_return unexpected_reply("set query intake mark", *set);
        }
    }
    co_return entered;
}

asio::awaitable<Result<DueRound>> QueryQueue::take_due(int shard, std::size_t limit, std::chrono::milliseconds claim)
{
    const std::string due_key = keys_.query_due(shard);
    const std::int64_t now_ms = now();
    // Read and claim in one step: between the two, another instance could take the same bills.
    static constexpr std::string_view kTakeAndClaim =
        "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2])) "
        "for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id) end "
        "return ids";
    std::vector<std::string> take{"EVAL", std::string(kTakeAndClaim), "1", due_key, std::to_string(now_ms),
                                  std::to_string(limit), std::to_string(now_ms + std::max<std::int64_t>(1, claim.count()))};
    Result<Reply> due = co_await redis_.exec(std::move(take));
    if (!due) {
        co_return due.error();
    }
    if (!due->is_array()) {
        co_return unexpected_reply("take due bills", *due);
    }
    DueRound round;
    if (due->elements.empty()) {
        co_return round;
    }
    std::vector<std::vector<std::string>> reads;
    reads.reserve(due->elements.size() * 2);
    for (const Reply& id : due->elements) {
        reads.push_back({"HGET", keys_.bill(id.str), "status"});
        reads.push_back({"ZSCORE", keys_.created(shard), id.str});
    }
    Result<std::vector<Reply>> got = co_await redis_.exec_many(std::move(reads));
    if (!got) {
        co_return got.error();
    }
    std::vector<std::string> zrem{"ZREM", due_key};
    for (std::size_t i = 0; i < due->elements.size(); ++i) {
        const std::string& id = due->elements[i].str;
        const Reply& status = (*got)[2 * i];
        const Reply& created = (*got)[2 * i + 1];
        if ((!status.is_nil() && !status.is_string()) || (!created.is_nil() && !created.is_string())) {
            co_return unexpected_reply("due bill", status.is_string() || status.is_nil() ? created : status);
        }
        if (status.is_nil() || !unsettled(status.str)) {
            zrem.push_back(id);
            ++round.settled;
            continue;
        }
        DueBill bill;
        bill.id = id;
        bill.shard = shard;
        bill.status = status.str;
        // A bill missing from the created index (only by hand) is asked about once more, then
        // dropped: its age is unknown.
        bill.created_ms = created.is_nil() ? 0 : score_of(created.str).value_or(0);
        if (bill.created_ms > 0 && !may_retry(bill, now_ms)) {
            zrem.push_back(id);
            round.expired.push_back(id);
            continue;
        }
        round.bills.push_back(std::move(bill));
    }
    if (zrem.size() > 2) {
        Result<Reply> removed = co_await redis_.exec(std::move(zrem));
        if (!removed) {
            co_return removed.error();
        }
        if (!removed->is_integer()) {
            co_return unexpected_reply("zrem query_due", *removed);
        }
    }
    co_return round;
}

asio::awaitable<Result<void>> QueryQueue::reschedule(const DueBill& bill)
{
    const std::int64_t next = next_due_ms(bill.created_ms, now());
    if (next == 0) {
        Result<void> removed = co_await remove(bill);
        co_return removed;
    }
    Result<void> moved = co_await retry(bill, next);
    co_return moved;
}

asio::awaitable<Result<void>> QueryQueue::due_at(const std::vector<DueBill>& bills, std::int64_t at_ms)
{
    std::vector<std::vector<std::string>> commands;
    const std::string at = std::to_string(at_ms);
    for (const DueBill& bill : bills) {
        auto it = std::find_if(commands.begin(), commands.end(),
                               [&](const std::vector<std::string>& c) { return c[1] == keys_.query_due(bill.shard); });
        if (it == commands.end()) {
            commands.push_back({"ZADD", keys_.query_due(bill.shard), "XX"});
            it = std::prev(commands.end());
        }
        it->push_back(at);
        it->push_back(bill.id);
    }
    if (commands.empty()) {
        co_return Result<void>{};
    }
    Result<std::vector<Reply>> done = co_await redis_.exec_many(std::move(commands));
    if (!done) {
        co_return done.error();
    }
    for (const Reply& r : *done) {
        if (!r.is_integer()) {
            co_return unexpected_reply("zadd query_due", r);
        }
    }
    co_return Result<void>{};
}

asio::awaitable<Result<std::string>> QueryQueue::due_now(std::string bill_id)
{
    DueBill bill;
    bill.id = std::move(bill_id);
    bill.shard = keys_.shard_of(bill.id);
    std::vector<std::vector<std::string>> reads{{"HGET", keys_.bill(bill.id), "status"},
                                                {"ZSCORE", keys_.created(bill.shard), bill.id}};
    Result<std::vector<Reply>> got = co_await redis_.exec_many(std::move(reads));
    if (!got) {
        co_return got.error();
    }
    const Reply& status = (*got)[0];
    const Reply& created = (*got)[1];
    if (status.is_nil()) {
        co_return make_error_code(errc::not_found);
    }
    if (!status.is_string() || (!created.is_nil() && !created.is_string())) {
        co_return unexpected_reply("bill to query", status.is_string() ? created : status);
    }
    bill.status = status.str;
    bill.created_ms = created.is_nil() ? 0 : score_of(created.str).value_or(0);
    const std::int64_t now_ms = now();
    if (!unsettled(bill.status) || (bill.created_ms > 0 && !may_retry(bill, now_ms))) {
        co_return make_error_code(errc::conflict);
    }
    std::vector<std::string> command{"ZADD", keys_.query_due(bill.shard), std::to_string(now_ms), bill.id};
    Result<void> added = co_await write(std::move(command));
    if (!added) {
        co_return added.error();
    }
    co_return bill.status;
}

bool QueryQueue::may_retry(const DueBill& bill, std::int64_t now_ms) const noexcept
{
    return now_ms <= bill.created_ms + schedule_.until.count() + schedule_.max_gap.count();
}

asio::awaitable<Result<void>> QueryQueue::retry(const DueBill& bill, std::int64_t at_ms)
{
    // XX: a bill another instance removed meanwhile (settled) stays removed.
    std::vector<std::string> command{"ZADD", keys_.query_due(bill.shard), "XX", std::to_string(at_ms), bill.id};
    Result<void> done = co_await write(std::move(command));
    co_return done;
}

asio::awaitable<Result<void>> QueryQueue::remove(const DueBill& bill)
{
    std::vector<std::string> command{"ZREM", keys_.query_due(bill.shard), bill.id};
    Result<void> done = co_await write(std::move(command));
    co_return done;
}

asio::awaitable<Result<void>> QueryQueue::write(std::vector<std::string> command)
{
    const std::string what = command[0] + " query_due";
    Result<Reply> r = co_await redis_.exec(std::move(command));
    if (!r) {
        co_return r.error();
    }
    if (!r->is_integer()) {
        co_return unexpected_reply(what, *r);
    }
    co_return Result<void>{};
}

asio::awaitable<Result<std::int64_t>> QueryQueue::waiting()
{
    std::vector<std::vector<std::string>> cards;
    for (int s = 0; s < keys_.shards(); ++s) {
        cards.push_back({"ZCARD", keys_.query_due(s)});
    }
    Result<std::vector<Reply>> got = co_await redis_.exec_many(std::move(cards));
    if (!got) {
        co_return got.error();
    }
    std::int64_t total = 0;
    for (const Reply& r : *got) {
        if (!r.is_integer()) {
            co_return unexpected_reply("zcard query_due", r);
        }
        total += r.integer;
    }
    co_return total;
}

}  // namespace paybridge::store
