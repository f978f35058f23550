#pragma once

// Guaranteed, signed delivery of bill events to the CRM (API.md "Events pushed to the CRM").
//
// The bill script appends every event to its shard's outbox stream in the same atomic step that
// changes the bill; a provider's acknowledgement therefore never waits for the CRM. The Dispatcher
// consumes those streams through the consumer group "crm" and POSTs each event, signed with the
// Standard Webhooks scheme, with webhook-id = the event id (stable across retries and instances, so
// the CRM can deduplicate). Delivery is at least once:
//
//   read      XREADGROUP (short BLOCK, on a connection of its own) across every shard stream
//   deliver   within one instance, events of one bill go one after another, in stream (sequence)
//             order; different bills go concurrently, at most `concurrency` requests in flight.
//             Across instances (the group shares a shard's entries out) and after a reclaim, a
//             bill's events may arrive out of order: the CRM orders them by `sequence`
//   2xx       XACK + state delivered + attempt recorded (one script)
//   failure   per-shard retry zset (due time) + attempt count; the entry stays pending in the PEL
//   retry     due members are taken atomically (their due time is pushed to now + lease while in
//             flight, so two instances never take the same one) and redelivered from the stream
//   exhausted XACK + per-shard dead-letter zset; DeliveryAdmin::recover/redeliver re-queue it
//   lost      after each reclaim pass, a bounded sweep dead-letters old pending/retrying records
//             whose outbox entry was deleted from the stream (XDEL, XTRIM) before delivery
//   trim      with a retention set, every shard's stream is trimmed below the oldest entry still
//             needed (unread, pending, waiting for a retry, dead-lettered, or within the retention),
//             approximately and in bounded steps (XTRIM MINID ~ LIMIT), so Redis is never blocked
//   crash     pending entries idle longer than `lease` and not waiting for a retry are claimed
//             (XCLAIM with min-idle, so only one instance wins) and redelivered, same webhook-id
//   lease     counts from the start of each POST: just before it the lease is renewed (idle time
//             reset, or retry due time pushed to now + lease); an entry that is no longer ours is
//             not sent. Reads, retries and reclaims take at most the free slots (a read at least
//             one entry per shard), and an entry already held is not queued a second time.
//
// Everything lives in Redis (layout in crm/delivery_schema.hpp): a restart loses nothing.
// Runs on one executor (a single-threaded io_context); stats() may be read from any thread.

#include "config/config.hpp"
#include "core/result.hpp"
#include "crm/http_client.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace paybridge::crm {

struct DispatcherOptions {
    std::string key_prefix{"pb:"};
    int shards{16};
    std::string group{"crm"};
    std::string consumer;                             ///< empty: "<hostname>-<pid>-<random hex>"
    std::vector<std::string> secrets;                 ///< "whsec_..." (all sign, first is current)
    std::vector<std::chrono::milliseconds> retry_schedule{
        std::chrono::seconds{5},     std::chrono::minutes{5}, std::chrono::minutes{30}, std::chrono::hours{2},
        std::chrono::hours{5},       std::chrono::hours{10},  std::chrono::hours{10}};
    double jitter{0.2};                               ///< each retry delay scaled by [1 - j, 1 + j]
    std::chrono::milliseconds lease{60'000};          ///< in-flight entries idle longer are reclaimed
    int concurrency{32};                              ///< deliveries in flight at most
    std::chrono::milliseconds block{1'000};           ///< XREADGROUP BLOCK (bounded by redis timeout / 2)
    std::chrono::milliseconds retry_poll{250};        ///< how often due retries are looked for
    std::chrono::milliseconds reclaim_interval{0};    ///< 0: lease / 2
    std::chrono::milliseconds stats_interval{5'000};  ///< backlog / oldest-age refresh
    std::chrono::milliseconds record_ttl{std::chrono::hours{24 * 30}};  ///< delivered records kept this long
    std::size_t max_attempt_records{50};              ///< attempts kept per event (newest)
    std::chrono::milliseconds consumer_cleanup_idle{std::chrono::hours{1}};
    /// Outbox entries older than this are trimmed once nothing needs them (scripts::kTrimOutbox);
    /// 0 keeps every entry.
    std::chrono::milliseconds outbox_retention{0};
    std::chrono::milliseconds trim_interval{0};       ///< 0: retention / 10, from 1 s to 10 min
    std::size_t trim_max_scan{5'000};                 ///< retry + dead members per shard looked at
    HttpClientOptions http;                           ///< url, ca_file, timeout, concurrency, ...
    /// redis.wait_replicas: an event is POSTed only once this many replicas hold it. An event the
    /// CRM has must not be taken back by a failover: the bill's next change would be given the
    /// same id (evt_<bill>_<sequence>), and the CRM, which deduplicates on it, would drop it.
    int wait_replicas{0};
    std::chrono::milliseconds wait_timeout{1'000};    ///< each WAIT for them

    /// Everything from the daemon's config (schedule, lease, timeout, concurrency, url, CA, secrets).
    static DispatcherOptions from_config(const config::RedisConfig& redis, const config::CrmConfig& crm);
};

/// Counters and gauges for /metrics. Counters only grow; gauges are refreshed every stats_interval.
struct DispatcherStats {
    std::atomic<std::uint64_t> attempts{0};         ///< POSTs finished (any outcome)
    std::atomic<std::uint64_t> delivered{0};        ///< events acknowledged by the CRM
    std::atomic<std::uint64_t> failed_attempts{0};  ///< attempts that did not get a 2xx
    std::atomic<std::uint64_t> dead_letters{0};     ///< events that exhausted the schedule, or whose
                                                    ///< outbox entry was deleted before delivery
    std::atomic<std::uint64_t> reclaimed{0};        ///< entries taken over from a dead instance
    std::atomic<std::uint64_t> redis_errors{0};     ///< Redis commands that failed (retried later)
    std::atomic<std::uint64_t> outbox_trimmed{0};   ///< outbox entries removed by the retention
    std::atomic<std::uint64_t> in_flight{0};        ///< events read and not yet settled (gauge)
    std::atomic<std::uint64_t> backlog{0};          ///< pending in the group + not yet read (gauge)
    std::atomic<std::uint64_t> retrying{0};         ///< waiting in the retry zsets (gauge)
    std::atomic<std::uint64_t> dead{0};             ///< in the dead-letter zsets (gauge)
    std::atomic<std::int64_t> oldest_pending_age_ms{0};  ///< age of the oldest undelivered event (gauge)
    std::atomic<std::int64_t> oldest_pending_at_ms{0};   ///< Unix ms of that event (0: none), so that its
                                                         ///< age can be told while Redis does not answer
    std::atomic<std::int64_t> stats_at_ms{0};  ///< Unix ms as of which every shard's gauges above were
                                               ///< read (0: not every shard yet)
    std::atomic<std::int64_t> started_at_ms{0};  ///< Unix ms the dispatcher started
};

class Dispatcher final {
public:
    /// Builds the dispatcher and its two Redis connections (one for blocking reads, one for
    /// everything else) and HTTP client. Errors: errc::invalid_argument (bad URL, CA file, secret,
    /// non-positive concurrency or lease).
    static Result<std::unique_ptr<Dispatcher>> create(boost::asio::any_io_executor executor,
                                                      const config::RedisConfig& redis,
                                                      DispatcherOptions options);
    ~Dispatcher();
    Dispatcher(const Dispatcher&) = delete;
    Dispatcher& operator=(const Dispatcher&) = delete;

    /// Runs until stop(): creates the consumer groups (from id 0, so events written before the
    /// group existed are delivered), then reads, delivers, retries and reclaims. After stop() it
    /// lets the deliveries in flight finish (each bounded by the HTTP timeout), records them, closes
    /// its connections and returns. Redis outages are waited out, never fatal. An exception (a
    /// bug) ends it the same way (in-flight deliveries finish first, so the Dispatcher may then be
    /// destroyed) and is then rethrown.
    boost::asio::awaitable<void> run();

    /// Asks run() to finish. Idempotent; call on the dispatcher's executor.
    void stop();

    const DispatcherStats& stats() const noexcept;
    const std::string& consumer() const noexcept;

private:
    struct Impl;
    explicit Dispatcher(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace paybridge::crm
