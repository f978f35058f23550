#include "daemon/crm_wiring.hpp"

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/time.hpp"
#include "crm/delivery_admin.hpp"
#include "crm/dispatcher.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>

#include "core/async.hpp"

namespace paybridge::daemon {

namespace asio = boost::asio;
using asio::awaitable;

CrmDeliveryAdmin::CrmDeliveryAdmin(store::RedisConnection& redis, const config::RedisConfig& cfg)
    : admin_(std::make_unique<crm::DeliveryAdmin>(redis, cfg.key_prefix, cfg.shards))
{
}

CrmDeliveryAdmin::~CrmDeliveryAdmin() = default;

awaitable<Result<std::optional<std::string>>> CrmDeliveryAdmin::event(std::string event_id)
{
    Result<std::string> doc = co_await admin_->get_event_deliveries(std::move(event_id));
    if (!doc) {
        if (doc.error() == errc::not_found) {
            co_return std::optional<std::string>{};
        }
        co_return doc.error();
    }
    co_return std::optional<std::string>(std::move(*doc));
}

awaitable<Result<std::string>> CrmDeliveryAdmin::deliveries(std::string state, std::size_t limit, std::string cursor)
{
    Result<std::string> r = co_await admin_->list_deliveries(std::move(state), limit, std::move(cursor));
    co_return r;
}

awaitable<Result<std::string>> CrmDeliveryAdmin::redeliver(std::string event_id)
{
    Result<std::string> r = co_await admin_->redeliver(std::move(event_id));
    co_return r;
}

awaitable<Result<std::string>> CrmDeliveryAdmin::recover(std::int64_t since_ms, std::string state)
{
    Result<std::string> r = co_await admin_->recover(since_ms, std::move(state));
    co_return r;
}

namespace {

// Stats of the dispatcher generations, summed across restarts (reloads) for /metrics.
struct Totals {
    std::atomic<std::uint64_t> delivered{0}, failed{0}, dead_letters{0}, reclaimed{0}, trimmed{0}, redis_errors{0};
    std::atomic<std::uint64_t> backlog{0}, retrying{0}, dead{0};
    std::atomic<std::int64_t> oldest_ms{0};
    const crm::DispatcherStats* live{nullptr};
    std::mutex mutex;
};

Totals& totals()
{
    static Totals t;
    return t;
}

void register_metrics()
{
    auto& reg = metrics::registry();
    auto read = [](std::atomic<std::uint64_t> Totals::*base, std::atomic<std::uint64_t> crm::DispatcherStats::*live) {
        return [base, live] {
            Totals& t = totals();
            std::lock_guard lock(t.mutex);
            return static_cast<double>((t.*base).load() + (t.live ? (t.live->*live).load() : 0));
        };
    };
    auto gauge = [](std::atomic<std::uint64_t> crm::DispatcherStats::*live) {
        return [live] {
            Totals& t = totals();
            std::lock_guard lock(t.mutex);
            return t.live ? static_cast<double>((t.live->*live).load()) : 0.0;
        };
    };
    reg.callback_counter("paybridge_crm_deliveries_total", "Events acknowledged (2xx) by the CRM.",
                         read(&Totals::delivered, &crm::DispatcherStats::delivered));
    reg.callback_counter("paybridge_crm_failed_attempts_total", "CRM delivery attempts without a 2xx answer.",
                         read(&Totals::failed, &crm::DispatcherStats::failed_attempts));
    reg.callback_counter("paybridge_crm_dead_letters_total",
                         "Events dead-lettered (retry schedule exhausted, or outbox entry deleted before delivery).",
                         read(&Totals::dead_letters, &crm::DispatcherStats::dead_letters));
    reg.callback_counter("paybridge_crm_reclaimed_total", "Pending events taken over from a dead instance.",
                         read(&Totals::reclaimed, &crm::DispatcherStats::reclaimed));
    reg.callback_counter("paybridge_outbox_trimmed_total",
                         "Outbox entries removed by crm.outbox_retention_s (delivered and older than it).",
                         read(&Totals::trimmed, &crm::DispatcherStats::outbox_trimmed));
    reg.callback_gauge("paybridge_outbox_backlog", "Events not yet delivered to the CRM (all instances).",
                       gauge(&crm::DispatcherStats::backlog));
    reg.callback_gauge("paybridge_outbox_retrying", "Events waiting for a delivery retry.",
                       gauge(&crm::DispatcherStats::retrying));
    reg.callback_gauge("paybridge_outbox_dead", "Events in the dead-letter sets.", gauge(&crm::DispatcherStats::dead));
    reg.callback_counter("paybridge_crm_redis_errors_total",
                         "Redis commands of the CRM dispatcher that failed (each is retried later).",
                         read(&Totals::redis_errors, &crm::DispatcherStats::redis_errors));
    reg.callback_gauge("paybridge_crm_in_flight", "Events this instance has read and not yet settled.",
                       gauge(&crm::DispatcherStats::in_flight));
    // Ages are told at the scrape, from the times last read: they keep growing while Redis does
    // not answer, which is when an alert on them matters.
    const auto age_of = [](std::int64_t at_ms) {
        const std::int64_t now = unix_ms(std::chrono::system_clock::now());
        return at_ms <= 0 ? 0.0 : static_cast<double>(std::max<std::int64_t>(0, now - at_ms)) / 1000.0;
    };
    reg.callback_gauge("paybridge_outbox_oldest_pending_age_seconds", "Age of the oldest undelivered event.",
                       [age_of] {
                           Totals& t = totals();
                           std::lock_guard lock(t.mutex);
                           return t.live ? age_of(t.live->oldest_pending_at_ms.load()) : 0.0;
                       });
    reg.callback_gauge("paybridge_outbox_stats_age_seconds",
                       "Seconds since every shard's outbox gauges were last read from Redis (since the "
                       "dispatcher started, while some shard has not answered yet).",
                       [age_of] {
                           Totals& t = totals();
                           std::lock_guard lock(t.mutex);
                           if (!t.live) {
                               return 0.0;
                           }
                           const std::int64_t at = t.live->stats_at_ms.load();
                           return age_of(at > 0 ? at : t.live->started_at_ms.load());
                       });
}

}  // namespace

CrmRunner::CrmRunner(const config::Config& cfg) : redis_(cfg.redis), crm_(cfg.crm) { register_metrics(); }

CrmRunner::~CrmRunner() { stop(); }

awaitable<void> supervise(std::function<awaitable<void>()> body, std::function<bool()> stopping,
                          asio::steady_timer& pause, RestartBackoff backoff)
{
    using Clock = std::chrono::steady_clock;
    std::chrono::milliseconds delay = backoff.first;
    while (!stopping()) {
        const Clock::time_point started = Clock::now();
        std::string failure;
        try {
            awaitable<void> run = body();
            co_await std::move(run);
            delay = backoff.first;
            continue;
        } catch (const std::exception& e) {
            failure = e.what();
        } catch (...) {
            failure = "an exception that is not a std::exception";
        }
        if (Clock::now() - started >= backoff.max) {
            delay = backoff.first;  // it ran a good while: not a failure in a row
        }
        const bool restarting = !stopping();
        const std::int64_t restart_in_ms = restarting ? static_cast<std::int64_t>(delay.count()) : 0;
        log::error("crm.dispatcher_failed",
                   {{"what", failure}, {"restarting", restarting}, {"restart_in_ms", restart_in_ms}});
        if (!restarting) {
            break;
        }
        pause.expires_after(delay);
        co_await pause.async_wait(kUseTuple);
        delay = std::min(delay * 2, backoff.max);
    }
}

void CrmRunner::start()
{
    // supervise() catches what the dispatcher throws; anything else is logged, not lost.
    asio::co_spawn(ioc_, loop(), LogFailure("crm.runner_failed"));
    thread_ = std::thread([this] {
        try {
            ioc_.run();
        } catch (const std::exception& e) {
            log::error("crm.runner_failed", {{"what", e.what()}});
        }
        stopped_.store(true);
    });
}

void CrmRunner::update(const config::Config& cfg)
{
    asio::post(ioc_, [this, next = cfg.crm] {
        {
            // A reload for something else (TLS, tokens, keys) leaves delivery running: a restart
            // would wait for in-flight POSTs and leave entries read by the old consumer to be
            // reclaimed. A CA file is re-read, though: its content may have changed under its name.
            std::lock_guard lock(mutex_);
            if (next == crm_ && next.ca_file.empty()) {
                return;
            }
        }
        // Settings the dispatcher refuses would leave no delivery at all: the running dispatcher
        // stays. (The loader checks what it can, so this is the last word, not the usual one.)
        if (!next.url.empty()) {
            auto trial = crm::Dispatcher::create(ioc_.get_executor(), redis_,
                                                 crm::DispatcherOptions::from_config(redis_, next));
            if (!trial) {
                log::error("crm.reload_refused",
                           {{"error", error_name(trial.error())}, {"kept", "the running delivery settings"}});
                return;
            }
        }
        {
            std::lock_guard lock(mutex_);
            crm_ = next;
        }
        if (current_ != nullptr) {
            current_->stop();  // loop() starts the next dispatcher with the new settings
        } else {
            pause_.cancel();  // a wait (delivery off, settings refused, back-off) ends: new settings
        }
    });
}

void CrmRunner::request_stop()
{
    {
        std::lock_guard lock(mutex_);
        if (stopping_) {
            return;
        }
        stopping_ = true;
    }
    asio::post(ioc_, [this] {
        if (current_ != nullptr) {
            current_->stop();
        }
        pause_.cancel();
    });
}

void CrmRunner::abort() { ioc_.stop(); }

void CrmRunner::stop()
{
    request_stop();
    if (thread_.joinable()) {
        thread_.join();
    }
}

awaitable<void> CrmRunner::loop()
{
    std::function<awaitable<void>()> body = [this] { return run_generation(); };
    std::function<bool()> stopping = [this] {
        std::lock_guard lock(mutex_);
        return stopping_;
    };
    const RestartBackoff backoff;
    awaitable<void> supervised = supervise(std::move(body), std::move(stopping), pause_, backoff);
    co_await std::move(supervised);
}

awaitable<void> CrmRunner::run_generation()
{
    asio::steady_timer& pause = pause_;
    config::CrmConfig crm;
    {
        std::lock_guard lock(mutex_);
        crm = crm_;
    }
    if (crm.url.empty()) {
        pause.expires_after(std::chrono::seconds(1));  // delivery off until a reload sets crm.url
        co_await pause.async_wait(kUseTuple);
        co_return;
    }
    crm::DispatcherOptions options = crm::DispatcherOptions::from_config(redis_, crm);
    auto created = crm::Dispatcher::create(ioc_.get_executor(), redis_, std::move(options));
    if (!created) {
        log::error("crm.dispatcher_refused", {{"error", error_name(created.error())}});
        pause.expires_after(std::chrono::seconds(5));
        co_await pause.async_wait(kUseTuple);
        co_return;
    }
    std::unique_ptr<crm::Dispatcher> dispatcher = std::move(*created);
    // The metrics read the live dispatcher's counters until it ends, however it ends (abort()
    // destroys this frame while run() is still suspended; run() may throw): then its counts join
    // the totals.
    struct Live {
        CrmRunner& runner;
        crm::Dispatcher& dispatcher;
        Live(CrmRunner& r, crm::Dispatcher& d) : runner(r), dispatcher(d)
        {
            runner.current_ = &dispatcher;
            std::lock_guard lock(totals().mutex);
            totals().live = &dispatcher.stats();
        }
        Live(const Live&) = delete;
        Live& operator=(const Live&) = delete;
        ~Live()
        {
            runner.current_ = nullptr;
            Totals& t = totals();
            std::lock_guard lock(t.mutex);
            const auto& s = dispatcher.stats();
            t.delivered += s.delivered.load();
            t.failed += s.failed_attempts.load();
            t.dead_letters += s.dead_letters.load();
            t.reclaimed += s.reclaimed.load();
            t.trimmed += s.outbox_trimmed.load();
            t.redis_errors += s.redis_errors.load();
            t.live = nullptr;
        }
    };
    {
        const Live live(*this, *dispatcher);
        log::info("crm.dispatcher_started", {{"consumer", dispatcher->consumer()}});
        co_await dispatcher->run();  // which logs crm.dispatcher_stopped
    }
}

}  // namespace paybridge::daemon
