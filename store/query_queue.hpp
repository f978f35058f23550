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
// Several instances: a shard is swept by the instance that holds its lease (SET NX PX for one
// interval), and the bills a sweep takes are claimed (their due time moved past the round's end in
// the same script that reads them; the sweep extends the claim to what asking about all it took
// may take, due_at()), so another instance does not ask about them meanwhile, even when a slow
// provider makes a round outlast the lease. Were a bill asked about twice all the same, it would be
// harmless: the answers are applied as notifications are, exactly once.
//
// Clocks: bills enter by the created-index score (the registering instance's clock) compared
// with the sweeping instance's clock; each intake reads the last kIntakeLookback before its mark
// again, so registering clocks up to `after` + that much behind lose nothing.

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
    std::vector<DueBill> bills;  ///< still unsettled: ask the providers (claimed until the round's end)
    std::size_t settled{0};      ///< left the set: paid, refunded or gone since they entered
    std::vector<std::string> expired;  ///< left the set unasked: past their last turn (until) by more than max_gap
};

/// How far before its mark each intake reads the created index again (clock skew between instances).
inline constexpr std::chrono::milliseconds kIntakeLookback{60'000};

class QueryQueue {
public:
    /// now_ms: the clock (Unix ms); the system clock when empty.
    QueryQueue(RedisConnection& redis, Keys keys, QuerySchedule schedule,
               std::function<std::int64_t()> now_ms = {});

    const Keys& keys() const noexcept { return keys_; }
    const QuerySchedule& schedule() const noexcept { return schedule_; }

    /// Takes the shard's sweep lease for `ttl` unless another owner holds it.
    boost::asio::awaitable<Result<bool>> lease(int shard, std::string owner, std::chrono::milliseconds ttl);

    /// Takes the bills created in (the intake mark - kIntakeLookback, now - after] that are still
    /// unsettled into the shard's due set, due at once, and moves the mark; on the first call the
    /// mark starts at now - until (older bills are past querying). Bills already in the set keep
    /// their due time. At most about `max_bills` bills past the mark are read per call (the
    /// look-back does not count): the mark stops where they end, and the next call goes on from
    /// there. Returns how many bills entered the set.
    boost::asio::awaitable<Result<std::size_t>> intake(int shard, std::size_t max_bills = 10'000);

    /// Up to `limit` bills of the shard due now, claimed until now + `claim` (another sweep does not
    /// take them before), of which those still PENDING or CLOSED are returned. Due bills that are
    /// settled or gone are removed from the set (`settled`), and so are those past created + until +
    /// max_gap (`expired`: their last turn was missed, by an outage of Redis or of every instance).
    boost::asio::awaitable<Result<DueRound>> take_due(int shard, std::size_t limit, std::chrono::milliseconds claim);

    /// After a query round: due again when its age will have doubled (clamped to [after, max_gap]),
    /// at most at created + until; removed when that moment has passed.
    boost::asio::awaitable<Result<void>> reschedule(const DueBill& bill);
    /// Due again at `at_ms` (a query failed for a reason that may pass: ask again soon).
    boost::asio::awaitable<Result<void>> retry(const DueBill& bill, std::int64_t at_ms);
    /// Due at `at_ms`, each of `bills` still in the set (one command per shard): a sweep's claim,
    /// extended to what asking about all of them may take, or given back (due now) when they will
    /// not be asked after all.
    boost::asio::awaitable<Result<void>> due_at(const std::vector<DueBill>& bills, std::int64_t at_ms);
    /// Removes a bill from the due set (the providers' answer settled it).
    boost::asio::awaitable<Result<void>> remove(const DueBill& bill);
    /// True when a bill whose query failed now may still be asked again: its last turn (created +
    /// until) is not more than max_gap ago.
    bool may_retry(const DueBill& bill, std::int64_t now_ms) const noexcept;

    /// Makes a bill due now (a CRM asked, POST /v1/bills/{id}/query), whatever its schedule or
    /// claim, and returns its status. Errors: not_found (no such bill), conflict (settled, or
    /// created more than until + max_gap ago: past querying), store_unavailable, timeout.
    boost::asio::awaitable<Result<std::string>> due_now(std::string bill_id);

    /// When a bill asked about now is due next; 0 when it is not asked about again.
    std::int64_t next_due_ms(std::int64_t created_ms, std::int64_t now_ms) const noexcept;

    /// Bills waiting in every shard's due set (for /metrics).
    boost::asio::awaitable<Result<std::int64_t>> waiting();

private:
    std::int64_t now() const;
    /// One ZADD or ZREM of the due set, whose integer reply is all there is to check.
    boost::asio::awaitable<Result<void>> write(std::vector<std::string> command);

    RedisConnection& redis_;
    Keys keys_;
    QuerySchedule schedule_;
    std::function<std::int64_t()> now_ms_;
};

}  // namespace paybridge::store
