#pragma once

// The bills to ask the providers about (provider_query), kept in Redis so that any number of
// instances share the work and none of it lives in one process.
//
// Per shard (store/keys.hpp): `query_due`, a sorted set of bill id -> when to ask next (Unix ms);
// `query_intake`, the created-index score up to which new bills were taken in; `query_lease`, the
// instance sweeping the shard now. Bills enter from the shard's `created` index once they are
// `after` old (so nothing on a notification's or a registration's path changes), are asked about
// each time their age has doubled (at most `max_gap` apart, never before `after` apart), and
// leave when they are no longer PENDING or CLOSED, or after one last query at `until`.
//
// Several instances: a shard is swept by the instance that holds its lease (SET NX PX, as long as
// one round may take). A lease that runs out mid-round lets a second instance ask about the same
// bills: harmless, since the answers are applied as notifications are, exactly once.

#include "core/result.hpp"
#include "store/keys.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace paybridge::store {

class RedisConnection;

struct QuerySchedule {
    std::chrono::milliseconds after{300'000};
    std::chrono::milliseconds until{93'600'000};
    std::chrono::milliseconds max_gap{21'600'000};
};

/// A bill to ask about now.
struct DueBill {
    std::string id;
    int shard{0};
    std::int64_t created_ms{0};
    std::string status;  ///< PENDING or CLOSED
};

/// One look at a shard's due bills.
struct DueRound {
    std::vector<DueBill> bills;  ///< still unsettled: ask the providers
    std::size_t settled{0};      ///< left the set: paid, refunded or gone since they entered
};

class QueryQueue {
public:
    /// now_ms: the clock (Unix ms); the system clock when empty.
    QueryQueue(RedisConnection& redis, Keys keys, QuerySchedule schedule,
               std::function<std::int64_t()> now_ms = {});

    const Keys& keys() const noexcept { return keys_; }
    const QuerySchedule& schedule() const noexcept { return schedule_; }

    /// Takes the shard's sweep lease for `ttl` unless another owner holds it.
    boost::asio::awaitable<Result<bool>> lease(int shard, std::string owner, std::chrono::milliseconds ttl);

    /// Takes the bills created in (the intake mark, now - after] into the shard's due set, due at
    /// once, and moves the mark; on the first call the mark starts at now - until (older bills are
    /// past querying). At most `max_bills` per call: the mark stops where they end, and the next
    /// call goes on from there. Returns how many bills were read.
    boost::asio::awaitable<Result<std::size_t>> intake(int shard, std::size_t max_bills = 10'000);

    /// Up to `limit` bills of the shard due now that are still PENDING or CLOSED. Due bills that are
    /// settled or gone are removed from the set (counted in `settled`).
    boost::asio::awaitable<Result<DueRound>> take_due(int shard, std::size_t limit);

    /// After a query round: due again when its age will have doubled (clamped to [after, max_gap]),
    /// at most at created + until; removed when that moment has passed.
    boost::asio::awaitable<Result<void>> reschedule(const DueBill& bill);
    /// Removes a bill from the due set (the providers' answer settled it).
    boost::asio::awaitable<Result<void>> remove(const DueBill& bill);

    /// When a bill asked about now is due next; 0 when it is not asked about again.
    std::int64_t next_due_ms(std::int64_t created_ms, std::int64_t now_ms) const noexcept;

    /// Bills waiting in every shard's due set (for /metrics).
    boost::asio::awaitable<Result<std::int64_t>> waiting();

private:
    std::int64_t now() const;

    RedisConnection& redis_;
    Keys keys_;
    QuerySchedule schedule_;
    std::function<std::int64_t()> now_ms_;
};

}  // namespace paybridge::store
