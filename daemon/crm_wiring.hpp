#pragma once

#include "config/config.hpp"
#include "core/delivery_admin.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace paybridge::store {
class RedisConnection;
}
namespace paybridge::crm {
class DeliveryAdmin;
class Dispatcher;
}  // namespace paybridge::crm

namespace paybridge::daemon {

/// The CRM-facing API's delivery records (core interface) over crm::DeliveryAdmin, on one
/// worker's Redis connection.
class CrmDeliveryAdmin final : public DeliveryAdmin {
public:
    CrmDeliveryAdmin(store::RedisConnection& redis, const config::RedisConfig& cfg);
    ~CrmDeliveryAdmin() override;
    boost::asio::awaitable<Result<std::optional<std::string>>> event(std::string event_id) override;
    boost::asio::awaitable<Result<std::string>> deliveries(std::string state, std::size_t limit,
                                                           std::string cursor) override;
    boost::asio::awaitable<Result<std::string>> redeliver(std::string event_id) override;
    boost::asio::awaitable<Result<std::string>> recover(std::int64_t since_ms, std::string state) override;

private:
    std::unique_ptr<crm::DeliveryAdmin> admin_;
};

/// The pause before a run that follows a failed one: `first`, doubling with each failure in a row,
/// at most `max`. A run that lasted `max` or longer before it failed starts the count over.
struct RestartBackoff {
    std::chrono::milliseconds first{1'000};
    std::chrono::milliseconds max{30'000};
};

/// CrmRunner's restart policy, on its own so that it can be tested: runs `body` again and again
/// until `stopping()` holds (checked before each run and after each failure). A run that returns
/// starts the next one at once (a dispatcher stopped for a reload); an exception escaping a run (a
/// bug) is logged as "crm.dispatcher_failed" (error level, with its what()) and the next run starts
/// after the RestartBackoff pause, waited on `pause`: cancelling `pause` ends the wait early (as
/// CrmRunner::request_stop() does). Without it, one exception would end CRM delivery, silently,
/// for the life of the process.
boost::asio::awaitable<void> supervise(std::function<boost::asio::awaitable<void>()> body,
                                       std::function<bool()> stopping, boost::asio::steady_timer& pause,
                                       RestartBackoff backoff);

/// Runs the outbox dispatcher on a thread of its own, so CRM delivery never competes with a
/// request's event loop for latency. A reload with new CRM settings (secrets during a rotation,
/// URL, CA, schedule) stops the running dispatcher after its in-flight deliveries and starts a new
/// one: nothing is lost, because delivery state lives in Redis. Settings the dispatcher refuses
/// leave the running one in place. A dispatcher that fails (throws) is logged and started again
/// (supervise()).
class CrmRunner {
public:
    explicit CrmRunner(const config::Config& cfg);
    ~CrmRunner();

    void start();
    /// Applies new CRM settings (from a reload). Thread-safe.
    void update(const config::Config& cfg);
    /// Asks the dispatcher to stop after its in-flight deliveries; returns at once.
    void request_stop();
    /// The thread has ended (after request_stop(), or abort()).
    bool stopped() const noexcept { return stopped_.load(); }
    /// Ends the thread's loop now: deliveries still in flight are cut off unrecorded (their lease
    /// runs out and they are sent again). Follow with stop() to join.
    void abort();
    /// request_stop(), then joins the thread.
    void stop();

private:
    boost::asio::awaitable<void> loop();
    /// One dispatcher, from creation to the end of its run() (or one wait while delivery is off or
    /// the settings are refused).
    boost::asio::awaitable<void> run_generation();

    boost::asio::io_context ioc_{1};
    boost::asio::steady_timer pause_{ioc_};  ///< the waits between generations; touched on ioc_ only
    std::atomic<bool> stopped_{false};
    std::thread thread_;
    std::mutex mutex_;
    config::RedisConfig redis_;
    config::CrmConfig crm_;
    bool stopping_{false};
    crm::Dispatcher* current_{nullptr};  // touched on ioc_ only
};

}  // namespace paybridge::daemon
