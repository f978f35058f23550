#pragma once

// Read and repair CRM deliveries: the functions behind the delivery API routes (wired by the daemon).
// Works on any RedisConnection (typically the daemon's shared one) and needs no running Dispatcher:
// a re-queued event is picked up by whichever dispatcher instance looks next.
//
// An event is found by its delivery record or, when it has none (not read by a dispatcher yet, or
// delivered longer ago than the record is kept), by its outbox entry: the event id names the bill,
// hence the shard, and that shard's stream is searched.
//
// Every result is a JSON document (UTF-8 text). Errors: errc::not_found (neither a delivery record
// nor an outbox entry for the event), errc::invalid_argument (bad state, limit or cursor), errc::conflict (redeliver of an event
// being attempted), errc::store_unavailable / timeout (Redis).

#include "core/delivery_admin.hpp"
#include "core/result.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <string>

namespace paybridge::crm {

class DeliveryAdmin final {
public:
    static constexpr std::size_t kMaxLimit = paybridge::DeliveryAdmin::kMaxLimit;

    /// Registers its scripts on `redis` (loaded on every reconnect; EVAL fallback before that).
    /// `redis` must outlive this object. key_prefix / shards as in config::RedisConfig.
    DeliveryAdmin(store::RedisConnection& redis, std::string key_prefix, int shards, std::string group = "crm");

    /// {"event": <the event JSON or null>, "delivery": {"event_id","state","attempts","next_at",
    ///  "last_status","last_error","bill_id","type","entry_id","first_seen_at","updated_at",
    ///  "delivered_at","dead_at"}, "attempts": [<attempt records, oldest first>]}
    /// Times are RFC 3339 (null when unset).
    boost::asio::awaitable<Result<std::string>> get_event_deliveries(std::string event_id);

    /// {"items": [{"event_id","state","bill_id","type","attempts","last_status","last_error","next_at",
    ///  "updated_at"}...], "next_cursor": "<opaque>" | null}, most recently changed first.
    /// state: pending | retrying | delivered | dead, or "" for all. limit 1..kMaxLimit. cursor: "" or the
    /// previous page's next_cursor.
    boost::asio::awaitable<Result<std::string>> list_deliveries(std::string state, std::size_t limit,
                                                                std::string cursor);

    /// Makes the event due now, whatever its state (a delivered or dead event gets a fresh retry
    /// schedule). {"event_id","previous_state","state":"pending"}. errc::conflict while a dispatcher
    /// holds the event (an attempt in flight or about to start): it would be sent twice at once.
    boost::asio::awaitable<Result<std::string>> redeliver(std::string event_id);

    /// Makes due now the events in `state` (kStateDead or kStateRetrying) that entered it at or after
    /// since_ms (Unix ms): dead letters with a fresh schedule; events waiting for a retry (after a CRM
    /// outage, say) keep their place in the schedule, so a failure goes on to the next step. Events a
    /// dispatcher holds right now are passed over. At most kMaxRecover per call (a requeued event
    /// leaves the state, so the same call again goes on).
    /// {"requeued": n, "event_ids": [...], "more": true while such events may remain}.
    boost::asio::awaitable<Result<std::string>> recover(std::int64_t since_ms, std::string state);
    static constexpr std::size_t kMaxRecover = 10'000;

private:
    struct Located {
        int shard{-1};
        std::vector<store::Reply> fields;  ///< HGETALL of the delivery hash, or as kFindEntry made it
        bool recorded{true};               ///< false: found by its outbox entry, no delivery hash
    };
    boost::asio::awaitable<Result<Located>> locate(std::string event_id);
    boost::asio::awaitable<Result<Located>> find_entry(std::string event_id);
    /// Runs the requeue script; the reply is [result, previous_state]. entry_id: for an event
    /// without a delivery record.
    boost::asio::awaitable<Result<store::Reply>> requeue(int shard, std::string event_id, std::string required_state,
                                                         std::string entry_id);

    store::RedisConnection& redis_;
    std::string prefix_;
    int shards_;
    std::string group_;
    std::string requeue_sha_;
    std::string find_sha_;
};

}  // namespace paybridge::crm
