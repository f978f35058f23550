#pragma once

#include "config/config.hpp"
#include "core/delivery_admin.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
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
    boost::asio::awaitable<Result<std::string>> recover(std::int64_t since_ms) override;

private:
    std::unique_ptr<crm::DeliveryAdmin> admin_;
};

/// Runs the outbox dispatcher on a thread of its own, so CRM delivery never competes with a
/// request's event loop for latency. A reload with new CRM settings (secrets during a rotation,
/// URL, CA, schedule) stops the running dispatcher after its in-flight deliveries and starts a new
/// one: nothing is lost, because delivery state lives in Redis. Settings the dispatcher refuses
/// leave the running one in place.
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

    boost::asio::io_context ioc_{1};
    boost::asio::steady_timer pause_{ioc_};  ///< loop()'s wait between attempts; touched on ioc_ only
    std::atomic<bool> stopped_{false};
    std::thread thread_;
    std::mutex mutex_;
    config::RedisConfig redis_;
    config::CrmConfig crm_;
    bool stopping_{false};
    crm::Dispatcher* current_{nullptr};  // touched on ioc_ only
};

}  // namespace paybridge::daemon
