#pragma once

// Active queries (provider_query): on a thread of its own, asks the providers about bills whose
// payment notification has not come (store/query_queue.hpp says which and when), and applies a
// payment a provider confirms exactly as its notification would have been applied (the same bill
// script; a notification that comes later is a repeat of the same transaction).
//
// Each sweep, every `interval`: for each shard whose lease this instance takes, the new bills are
// taken in and up to `batch` due ones taken (claimed); then every query account is asked about all
// of them (`concurrency` queries in flight per account, so one provider's slowness does not hold up
// the other's), and each bill is rescheduled. An answer that settles nothing: the bill's next turn.
// A provider that could not answer (down, slow, cut short), or a payment Redis could not take: the
// next sweep, until max_gap past the bill's last turn. An account failing three queries in a row is
// skipped until the next sweep. Stopping cuts queries in flight off.

#include "config/config.hpp"
#include "core/query_admin.hpp"
#include "webhooks/runtime.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace paybridge::gateways {
struct QueryAccounts;
}

namespace paybridge::store {
class RedisConnection;
}

namespace paybridge::daemon {

/// POST /v1/bills/{id}/query on a worker's Redis connection: the bill is made due at once, with the
/// schedule of the current configuration (`runtime`).
std::unique_ptr<QueryAdmin> make_query_admin(store::RedisConnection& redis, const config::RedisConfig& cfg,
                                             std::function<webhooks::RuntimePtr()> runtime);

class QueryRunner {
public:
    QueryRunner(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts);
    ~QueryRunner();
    QueryRunner(const QueryRunner&) = delete;
    QueryRunner& operator=(const QueryRunner&) = delete;

    void start();
    /// New settings and accounts (a reload): used from the next sweep on. Thread-safe.
    void update(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts);
    /// Cuts the queries in flight off (their bills are given back, due at once) and ends the
    /// sweeps; returns at once.
    void request_stop();
    /// Ends the thread's loop now (queries in flight are cut off; their bills stay due).
    void abort();
    /// request_stop(), then joins the thread.
    void stop();
    bool stopped() const noexcept { return stopped_.load(); }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::atomic<bool> stopped_{false};
    std::thread thread_;
};

}  // namespace paybridge::daemon
