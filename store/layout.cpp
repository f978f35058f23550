#include "store/layout.hpp"

#include "core/error.hpp"
#include "store/cluster_slot.hpp"
#include "store/keys.hpp"

#include <algorithm>
#include <iterator>

namespace paybridge::store {

namespace asio = boost::asio;

namespace {

// Commands per batch (at most 16384 shards; the look at the data sends two commands per shard).
constexpr std::size_t kBatch = 1024;

/// Sends `commands` in batches of kBatch; one result per command.
asio::awaitable<std::vector<Result<Reply>>> in_batches(const LayoutExec& exec, std::vector<std::vector<std::string>> commands)
{
    std::vector<Result<Reply>> results;
    results.reserve(commands.size());
    for (std::size_t first = 0; first < commands.size(); first += kBatch) {
        const std::size_t last = std::min(commands.size(), first + kBatch);
        std::vector<std::vector<std::string>> batch(std::make_move_iterator(commands.begin() + static_cast<std::ptrdiff_t>(first)),
                                                    std::make_move_iterator(commands.begin() + static_cast<std::ptrdiff_t>(last)));
        std::vector<Result<Reply>> replies = co_await exec(std::move(batch));
        for (Result<Reply>& r : replies) {
            results.push_back(std::move(r));
        }
    }
    co_return results;
}

/// What in the data contradicts `keys` (empty: nothing), from the replies to look_commands();
/// commands that failed (a master down) say nothing. Sets `had_data` when a shard holds keys.
Result<std::string> judge(const Keys& keys, const std::vector<int>& shard_of_command,
                          const std::vector<Result<Reply>>& replies, bool& had_data)
{
    for (std::size_t i = 0; i < replies.size() && i < shard_of_command.size(); ++i) {
        if (!replies[i]) {
            continue;
        }
        const Reply& r = *replies[i];
        const int shard = shard_of_command[i];
        if (r.is_error()) {
            return unexpected_reply("layout check", r);
        }
        if (shard >= keys.shards()) {
            if (r.is_integer() && r.integer > 0) {
                had_data = true;
                return "shard " + std::to_string(shard) + " holds keys (" + keys.prefix() + Keys::tag(shard) +
                       ":*), beyond the " + std::to_string(keys.shards()) + " configured";
            }
            continue;
        }
        for (const Reply& member : r.elements) {
            had_data = true;
            const int belongs = keys.shard_of(member.str);
            if (belongs != shard) {
                return "bill " + member.str + " is indexed in shard " + std::to_string(shard) + ", but with " +
                       std::to_string(keys.shards()) + " shards it belongs in shard " + std::to_string(belongs);
            }
        }
    }
    return std::string();
}

}  // namespace

std::string layout_key(std::string_view key_prefix, int shard)
{
    return Keys(std::string(key_prefix), kClusterSlots).layout(shard);
}

std::string layout_value(int shards)
{
    return "paybridge-keys/" + std::to_string(kKeyLayoutVersion) + " shards=" + std::to_string(shards);
}

asio::awaitable<Result<LayoutVerdict>> check_layout(const LayoutExec& exec, std::string key_prefix, int shards)
{
    const Keys keys(key_prefix, shards);
    LayoutVerdict verdict;
    verdict.key = keys.layout(0);
    verdict.expected = layout_value(keys.shards());

    // 1. Every shard's marker; those of a master that is down do not answer.
    std::vector<std::vector<std::string>> gets;
    for (int shard = 0; shard < keys.shards(); ++shard) {
        gets.push_back({"GET", keys.layout(shard)});
    }
    const std::vector<Result<Reply>> markers = co_await in_batches(exec, std::move(gets));
    std::vector<int> missing;
    bool answered = false;
    bool confirmed = false;  // a marker that answered holds this layout
    boost::system::error_code failure = make_error_code(errc::store_unavailable);
    for (int shard = 0; shard < keys.shards(); ++shard) {
        const Result<Reply>& marker = markers[static_cast<std::size_t>(shard)];
        if (!marker) {
            failure = marker.error();
            continue;
        }
        answered = true;
        if (marker->is_nil()) {
            missing.push_back(shard);
        } else if (!marker->is_string()) {
            co_return unexpected_reply("layout marker", *marker);
        } else if (marker->str != verdict.expected) {
            verdict.kind = LayoutVerdict::Kind::mismatch;
            verdict.key = keys.layout(shard);
            verdict.found = marker->str;
            co_return verdict;
        } else {
            confirmed = true;
        }
    }
    if (!answered) {
        co_return failure;
    }
    if (missing.empty()) {
        co_return verdict;
    }
    // 2. No marker among those that answered: a new deployment, or one that predates the marker.
    // Each shard's bill indexes must name bills of that shard, and no shard past the configured
    // count may hold keys.
    if (!confirmed) {
        std::vector<std::vector<std::string>> look;
        std::vector<int> shard_of_command;  // the shard each command looks at
        for (int shard = 0; shard < kClusterSlots; ++shard) {
            if (shard < keys.shards()) {
                look.push_back({"ZRANGE", keys.created(shard), "0", "3"});
                look.push_back({"ZRANGE", keys.updated(shard), "0", "3"});
                shard_of_command.insert(shard_of_command.end(), 2, shard);
            } else {
                look.push_back({"EXISTS", keys.created(shard), keys.updated(shard), keys.outbox(shard),
                                keys.anomalies(shard)});
                shard_of_command.push_back(shard);
            }
        }
        const std::vector<Result<Reply>> replies = co_await in_batches(exec, std::move(look));
        Result<std::string> conflict = judge(keys, shard_of_command, replies, verdict.had_data);
        if (!conflict) {
            co_return conflict.error();
        }
        if (!conflict->empty()) {
            verdict.kind = LayoutVerdict::Kind::mismatch;
            verdict.found = "no marker";
            verdict.why = "the data was written with another shard count: " + *conflict;
            co_return verdict;
        }
        verdict.why = verdict.had_data ? "no marker yet: keys of an earlier version agree with it" : "no data yet";
    } else {
        verdict.why = "written to " + std::to_string(missing.size()) + " shard(s) without one (" +
                      keys.layout(missing.front()) + (missing.size() > 1 ? ", ..." : "") + ")";
    }

    // 3. Write the missing ones, and read them back: of two instances starting together, the
    // second compares with what the first wrote.
    std::vector<std::vector<std::string>> sets;
    std::vector<std::vector<std::string>> again;
    for (const int shard : missing) {
        sets.push_back({"SET", keys.layout(shard), verdict.expected, "NX"});
        again.push_back({"GET", keys.layout(shard)});
    }
    const std::vector<Result<Reply>> stored = co_await in_batches(exec, std::move(sets));
    for (const Result<Reply>& r : stored) {
        if (r && !r->is_status("OK") && !r->is_nil()) {
            co_return unexpected_reply("layout marker", *r);
        }
    }
    const std::vector<Result<Reply>> written = co_await in_batches(exec, std::move(again));
    for (std::size_t i = 0; i < written.size(); ++i) {
        const Result<Reply>& r = written[i];
        if (r && r->is_string() && r->str != verdict.expected) {
            verdict.kind = LayoutVerdict::Kind::mismatch;
            verdict.key = keys.layout(missing[i]);
            verdict.found = r->str;
            verdict.why = "another instance recorded it at the same time";
            co_return verdict;
        }
    }
    verdict.kind = LayoutVerdict::Kind::recorded;
    co_return verdict;
}

}  // namespace paybridge::store
