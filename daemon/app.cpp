#include "daemon/app.hpp"

#include "core/async.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "daemon/certificate_refresh.hpp"
#include "daemon/crm_wiring.hpp"
#include "daemon/http_server.hpp"
#include "daemon/provider_query.hpp"
#include "daemon/reload.hpp"
#include "daemon/systemd.hpp"
#include "daemon/tls.hpp"
#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/certificate_book.hpp"
#include "gateways/query_accounts.hpp"
#include "gateways/wechatpay/wechatpay_gateway.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"
#include "webhooks/service.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <chrono>
#include <thread>

namespace paybridge::daemon {

namespace asio = boost::asio;
using asio::awaitable;
using namespace std::chrono_literals;

webhooks::RuntimePtr build_runtime(std::shared_ptr<const config::Config> cfg, std::vector<std::string>& problems,
                                   gateways::ProviderBooks* books)
{
    auto rt = std::make_shared<webhooks::Runtime>();
    rt->config = cfg;
    const std::size_t before = problems.size();
    if (!cfg->alipay_apps.empty()) {
        auto gw = gateways::alipay::make_alipay_gateway(cfg->alipay_apps, problems, books ? &books->alipay : nullptr);
        if (gw) {
            rt->alipay = std::move(*gw);
        }
    }
    if (!cfg->wechat_merchants.empty()) {
        auto v3 = gateways::wechatpay::make_wechat_v3_gateway(cfg->wechat_merchants, problems,
                                                                books ? &books->wechatpay : nullptr);
        if (v3) {
            rt->wechat_v3 = std::move(*v3);
        }
        auto v2 = gateways::wechatpay::make_wechat_v2_gateway(cfg->wechat_merchants, problems);
        if (v2) {
            rt->wechat_v2 = std::move(*v2);
        }
    }
    if (auto accounts = gateways::load_query_accounts(*cfg, problems, books ? &books->wechatpay : nullptr,
                                                    books ? &books->alipay : nullptr)) {
        rt->query_accounts = std::move(*accounts);
    }
    if (cfg->tls) {
        std::string problem;
        rt->tls = make_server_tls_context(*cfg->tls, problem);
        if (!rt->tls) {
            problems.push_back("/tls: " + problem);
        }
    }
    if (problems.size() != before) {
        return nullptr;
    }
    return rt;
}

namespace {

/// workers: 0 means one per core, at most this many.
constexpr unsigned kMaxAutoWorkers = 64;

asio::ip::tcp::endpoint endpoint_of(const config::Endpoint& e)
{
    return {asio::ip::make_address(e.host), e.port};
}

/// One event-loop thread and everything it owns. Nothing here is shared with other workers
/// except the immutable Runtime and the connection gate.
struct Worker {
    asio::io_context ioc{1};
    store::RedisConnection redis;
    /// With redis.wait_replicas: the connection replica confirmations (SET + WAIT) run on, so a
    /// WAIT never holds up the pipelined one.
    std::unique_ptr<store::RedisConnection> replicas;
    store::RedisBillStore store;
    CrmDeliveryAdmin deliveries;
    webhooks::RuntimePtr runtime;  // touched only on this worker's thread
    std::unique_ptr<QueryAdmin> queries;
    webhooks::Service service;
    HttpServer server;
    std::atomic<std::int64_t> last_beat_ms{0};
    std::atomic<bool> done{false};
    std::thread thread;

    Worker(const config::Config& cfg, webhooks::RuntimePtr rt, ConnectionGate& gate, std::function<bool()> all_ready)
        : redis(ioc.get_executor(), cfg.redis),
          replicas(cfg.redis.wait_replicas > 0 ? std::make_unique<store::RedisConnection>(ioc.get_executor(), cfg.redis)
                                               : nullptr),
          store(redis, cfg.redis, {}, replicas.get()),
          deliveries(redis, cfg.redis),
          runtime(std::move(rt)),
          queries(make_query_admin(redis, cfg.redis, [this] { return runtime; })),
          service(webhooks::Service::Deps{
              .store = store,
              .deliveries = &deliveries,
              .queries = queries.get(),
              .runtime = [this] { return runtime; },
              // Ready only when every worker's Redis connection is: a provider must not get a
              // 503 from one loop while /readyz said yes from another.
              .ready = std::move(all_ready),
          }),
          server(ioc, cfg.limits, service, gate)
    {
    }

    /// Calls f on each of this worker's Redis connections.
    template <class F>
    void each_redis(F&& f)
    {
        f(redis);
        if (replicas) {
            f(*replicas);
        }
    }
    /// Every connection is ready: each checks that its node is a master and that the key layout
    /// matches (store::ConnectionChecks), so a node demoted to a replica, or a Redis whose data
    /// another shard count wrote, is not ready. Any thread.
    bool redis_ready()
    {
        bool ready = true;
        each_redis([&](const store::RedisConnection& c) { ready = ready && c.ready(); });
        return ready;
    }
    /// A connection found a key layout other than the configuration's. Any thread.
    bool layout_refused()
    {
        bool refused = false;
        each_redis([&](const store::RedisConnection& c) { refused = refused || c.layout_refused(); });
        return refused;
    }
};

std::int64_t steady_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

class App::Impl {
public:
    Impl(std::shared_ptr<const config::Config> cfg, webhooks::RuntimePtr runtime,
         std::shared_ptr<gateways::ProviderBooks> books)
        : cfg_(std::move(cfg)), runtime_(std::move(runtime)), books_(std::move(books))
    {
    }

    int run();

private:
    bool all_ready() const
    {
        for (const auto& w : workers_) {
            if (!w->redis_ready()) {
                return false;
            }
        }
        return !workers_.empty();
    }
    awaitable<void> control();
    awaitable<void> wait_ready();
    awaitable<void> heartbeat();
    awaitable<void> finish_stop();
    void reload();
    void begin_stop();

    std::shared_ptr<const config::Config> cfg_;
    webhooks::RuntimePtr runtime_;
    /// Downloaded platform certificates, by merchant: the same across reloads.
    std::shared_ptr<gateways::ProviderBooks> books_;
    asio::io_context control_{1};
    /// Installed from construction, before any worker accepts, and kept until the process ends:
    /// a signal that arrives before control() waits is queued in the set, not given its default
    /// action (a SIGTERM during a slow start must drain too, not kill).
    asio::signal_set signals_{control_, SIGTERM, SIGINT, SIGHUP};
    ConnectionGate gate_;
    std::vector<std::unique_ptr<Worker>> workers_;
    std::unique_ptr<CrmRunner> crm_;
    std::unique_ptr<QueryRunner> query_;
    std::unique_ptr<CertificateRefresher> certificates_;  ///< runs on a thread of its own
    bool stopping_{false};
    int exit_code_{0};             ///< of a stop that was no failure: 78 for a key layout refused at start
    bool forced_{false};           ///< the workers' loops were stopped with work left (finish_stop)
    std::atomic<bool> failed_{false};  ///< a worker's loop died of an exception: exit 1
    bool announced_ready_{false};  ///< READY=1 sent (by wait_ready): reloads may say RELOADING=1
    const std::int64_t started_ms_ = steady_ms();
};

App::App(std::shared_ptr<const config::Config> cfg, webhooks::RuntimePtr runtime,
         std::shared_ptr<gateways::ProviderBooks> books)
    : impl_(std::make_unique<Impl>(std::move(cfg), std::move(runtime), std::move(books)))
{
}

App::~App() = default;

int App::run() { return impl_->run(); }

int App::Impl::run()
{
    const config::Config& cfg = *cfg_;
    log::set_level(cfg.log_level);
    gate_.limit = cfg.limits.max_connections;
    // One worker per core, up to kMaxAutoWorkers: past that the one Redis (each worker keeps a
    // connection) and the unit's TasksMax (about two threads per worker) are the limits, not CPUs.
    const int n = cfg.workers > 0
                      ? cfg.workers
                      : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, kMaxAutoWorkers));

    // build_runtime made it, or refused the configuration (main exits 78 before an App exists).
    const std::shared_ptr<asio::ssl::context> tls = runtime_->tls;
    try {
        for (int i = 0; i < n; ++i) {
            auto w = std::make_unique<Worker>(cfg, runtime_, gate_, [this] { return all_ready(); });
            w->server.listen(endpoint_of(cfg.listen), false);
            if (cfg.tls) {
                w->server.listen(endpoint_of(cfg.tls->listen), true, cfg.tls->routes);
                w->server.set_tls_context(tls);
            }
            workers_.push_back(std::move(w));
        }
    } catch (const boost::system::system_error& e) {
        // Not allowed to bind (a port below 1024 without CAP_NET_BIND_SERVICE, an address of
        // another machine) will not change by restarting: a configuration error (78, which
        // systemd does not restart). In use or anything else may pass: 1.
        const bool config_error = e.code() == boost::asio::error::access_denied ||
                                  (e.code().category() == boost::system::system_category() &&
                                   e.code().value() == EADDRNOTAVAIL);
        log::error("daemon.listen_failed", {{"error", e.what()}, {"listen", cfg.listen.host}});
        return config_error ? 78 : 1;
    }

    auto& reg = metrics::registry();
    reg.callback_gauge("paybridge_uptime_seconds", "Seconds since the process started.",
                       [this] { return static_cast<double>(steady_ms() - started_ms_) / 1000.0; });
    reg.gauge("paybridge_build_info", "Build information.").with({{"version", PAYBRIDGE_VERSION}}).set(1);
    // One counter of every worker's Redis connections (the replica-confirming one too), summed.
    const auto redis_total = [this](std::atomic<std::uint64_t> store::RedisStats::*counter) {
        return [this, counter] {
            double s = 0;
            for (auto& w : workers_) {
                w->each_redis([&](const store::RedisConnection& c) { s += static_cast<double>((c.stats().*counter).load()); });
            }
            return s;
        };
    };
    reg.callback_counter("paybridge_redis_commands_total", "Redis commands sent (all workers).",
                         redis_total(&store::RedisStats::commands));
    reg.callback_counter("paybridge_redis_writes_total",
                         "Socket writes to Redis (all workers); commands / writes is the pipelining depth.",
                         redis_total(&store::RedisStats::writes));
    reg.callback_counter("paybridge_redis_errors_total", "Redis command failures (all workers).",
                         redis_total(&store::RedisStats::errors));
    reg.callback_counter("paybridge_redis_redirects_total",
                         "Redis Cluster MOVED and ASK replies followed (all workers); rises during a resharding.",
                         redis_total(&store::RedisStats::redirects));
    reg.callback_counter("paybridge_redis_reconnects_total", "Redis reconnections (all workers).",
                         redis_total(&store::RedisStats::reconnects));

    for (auto& w : workers_) {
        Worker* wp = w.get();
        wp->each_redis([](store::RedisConnection& c) { c.start(); });
        wp->server.start();
        wp->thread = std::thread([this, wp] {
            try {
                wp->ioc.run();
            } catch (const std::exception& e) {
                // Its listener stays bound but nobody accepts there any more: the kernel would
                // keep handing it a share of the connections. Stop the process (exit 1) so the
                // supervisor starts a whole one.
                log::error("daemon.worker_failed", {{"what", e.what()}});
                failed_ = true;
                // This loop no longer runs, so what is posted to it never would: close its
                // listeners (and cancel its sessions) from here, the thread that owned them.
                wp->server.stop();
                asio::post(control_, [this] { begin_stop(); });
            }
            wp->done.store(true);
        });
    }
    crm_ = std::make_unique<CrmRunner>(cfg);
    crm_->start();
    query_ = std::make_unique<QueryRunner>(cfg, runtime_->query_accounts);
    query_->start();
    certificates_ = std::make_unique<CertificateRefresher>(cfg.redis, books_);
    certificates_->update(cfg, runtime_->query_accounts);
    certificates_->start();
    log::info("daemon.started", {{"listen", cfg.listen.host + ":" + std::to_string(cfg.listen.port)},
                                 {"workers", n}, {"version", PAYBRIDGE_VERSION}});

    asio::co_spawn(control_, control(), asio::detached);
    control_.run();

    for (auto& w : workers_) {
        if (w->thread.joinable()) {
            w->thread.join();
        }
    }
    if (forced_ || failed_) {
        // Coroutine frames cut off by a forced stop, or left in a loop that died, are still
        // queued in the workers' io_contexts and refer to the servers and connections:
        // destroying those would touch freed memory. Leave without destructors; everything that
        // matters is in Redis already.
        log::error("daemon.stopped", {{"forced", forced_}, {"worker_failed", failed_.load()}});
        std::fflush(nullptr);
        std::_Exit(failed_ ? 1 : exit_code_);
    }
    log::info("daemon.stopped", {{"exit_code", exit_code_}});
    return exit_code_;
}

awaitable<void> App::Impl::control()
{
    asio::co_spawn(control_, wait_ready(), asio::detached);
    asio::co_spawn(control_, heartbeat(), asio::detached);

    // signals_ stays installed until the process ends (control_ is stopped with this coroutine
    // still waiting): once it is gone, a signal takes its default action, and a second SIGTERM or a
    // logrotate SIGHUP during the drain would kill the process mid-request.
    for (;;) {
        auto [ec, sig] = co_await signals_.async_wait(kUseTuple);
        if (ec) {
            break;
        }
        if (stopping_) {
            log::info("daemon.signal_ignored", {{"signal", sig}, {"reason", "stopping"}});
            continue;
        }
        if (sig == SIGHUP) {
            // Whatever a reload throws (it loads files, keys, a TLS context) must not end this
            // loop: the signals would go unanswered, and the next one would find no handler.
            try {
                reload();
            } catch (const std::exception& e) {
                // It may have thrown half-way: say so rather than claim the old configuration holds.
                log::error("daemon.reload_failed",
                           {{"what", e.what()}, {"state", "possibly partly applied; fix the cause and reload again"}});
                if (announced_ready_) {
                    systemd::notify_ready();
                }
            }
            continue;
        }
        log::info("daemon.stopping", {{"signal", sig}});
        begin_stop();
    }
}

// Readiness: READY=1 only once every worker's Redis connection is up with its scripts loaded.
// A key layout refused before that is a configuration error (exit 78): this instance's
// redis.shards contradicts what the deployment's data was written with. Restarting cannot mend
// it, and 78 keeps systemd from trying (RestartPreventExitStatus); an instance left running but
// unready would be easy to miss behind a load balancer. Once ready, a refusal (the marker changed
// under a running instance) only makes it unready: the connections refuse every command until
// the marker matches again.
awaitable<void> App::Impl::wait_ready()
{
    asio::steady_timer t(control_);
    while (!stopping_) {
        bool all = true;
        bool refused = false;
        for (auto& w : workers_) {
            all = all && w->redis_ready();
            refused = refused || w->layout_refused();
        }
        if (refused) {
            // redis.layout_mismatch (logged by the connection) names both layouts.
            log::error("daemon.layout_refused",
                       {{"exit_code", 78}, {"why", "redis.shards does not match the key layout recorded in Redis"}});
            exit_code_ = 78;
            begin_stop();
            co_return;
        }
        if (all) {
            systemd::notify_ready();
            announced_ready_ = true;
            log::info("daemon.ready", {});
            co_return;
        }
        t.expires_after(50ms);
        co_await t.async_wait(kUseTuple);
    }
}

// Watchdog: each worker stamps a heartbeat from its own loop; WATCHDOG=1 only while all of them
// do, so a stuck event loop stops the pings and systemd restarts the service.
awaitable<void> App::Impl::heartbeat()
{
    const auto watchdog = systemd::watchdog_interval();
    const auto period = watchdog.count() > 0 ? watchdog / 2 : std::chrono::milliseconds(1000);
    asio::steady_timer t(control_);
    while (!stopping_) {
        const std::int64_t now = steady_ms();
        bool alive = true;
        for (auto& w : workers_) {
            const auto last = w->last_beat_ms.load();
            alive = alive && (last == 0 || now - last < std::max<std::int64_t>(period.count() * 2, 2000));
            Worker* wp = w.get();
            asio::post(wp->ioc, [wp] { wp->last_beat_ms.store(steady_ms()); });
        }
        if (watchdog.count() > 0 && alive) {
            systemd::notify_watchdog();
        }
        t.expires_after(period);
        co_await t.async_wait(kUseTuple);
    }
}

void App::Impl::reload()
{
    // Before READY=1 (Redis not up yet) a reload is applied quietly: READY=1 here would tell
    // systemd the service is ready while it is not; wait_ready() still sends it when it is.
    const bool announce = announced_ready_;
    if (announce) {
        systemd::notify_reloading();
    }
    ReloadResult r = reload_runtime(*cfg_, books_.get());
    if (!r.runtime) {
        for (const auto& p : r.problems) {
            log::error("daemon.reload_refused", {{"problem", p}});
        }
        log::error("daemon.reload_failed", {{"problems", r.problems.size()}, {"kept", "previous configuration"}});
        if (announce) {
            systemd::notify_ready();
        }
        return;
    }
    for (const auto& note : r.notes) {
        log::warning("daemon.reload_note", {{"note", note}});
    }
    for (const auto& warning : r.warnings) {
        log::warning("config.warning", {{"warning", warning}});
    }
    runtime_ = r.runtime;
    cfg_ = r.runtime->config;
    crm_->update(*cfg_);
    query_->update(*cfg_, runtime_->query_accounts);
    certificates_->update(*cfg_, runtime_->query_accounts);
    log::set_level(cfg_->log_level);
    // The context build_runtime checked, not the files read a second time: a certificate and key
    // replaced one after the other in between would not pair, and the old ones would stay unsaid.
    std::shared_ptr<asio::ssl::context> tls = runtime_->tls;
    for (auto& w : workers_) {
        Worker* wp = w.get();
        webhooks::RuntimePtr rt = runtime_;
        asio::post(wp->ioc, [wp, rt, tls] {
            wp->runtime = rt;
            if (tls) {
                wp->server.set_tls_context(tls);
            }
        });
    }
    log::info("daemon.reloaded", {{"config", cfg_->path}});
    if (announce) {
        systemd::notify_ready();
    }
}

void App::Impl::begin_stop()
{
    if (stopping_) {
        return;
    }
    stopping_ = true;
    systemd::notify_stopping();
    for (auto& w : workers_) {
        Worker* wp = w.get();
        asio::post(wp->ioc, [wp] { wp->server.stop(); });
    }
    // Deliveries in flight finish (or fail and are kept for a retry) during the same grace period.
    crm_->request_stop();
    query_->request_stop();  // queries in flight are cut off; their bills are given back, due at once
    certificates_->request_stop();
    asio::co_spawn(control_, finish_stop(), asio::detached);
}

// Lets in-flight requests finish, bounded by the grace period, then stops the loops.
awaitable<void> App::Impl::finish_stop()
{
    asio::steady_timer t(control_);
    const auto deadline = std::chrono::steady_clock::now() + cfg_->limits.shutdown_grace;
    while (std::chrono::steady_clock::now() < deadline && gate_.open.load() != 0) {
        t.expires_after(20ms);
        co_await t.async_wait(kUseTuple);
    }
    // Whatever is still running after the grace period is cut off; then every loop runs out of
    // work by itself (Redis stopped, sessions closed), so all coroutine frames unwind normally.
    // The CRM thread gets the same last 5 s: a delivery still waiting on the CRM then is cut off
    // unrecorded, and sent again (same webhook-id) once its lease runs out: so the whole stop stays
    // within grace + 5 s, whatever crm.timeout is (systemd's TimeoutStopSec must not be reached).
    for (auto& w : workers_) {
        Worker* wp = w.get();
        asio::post(wp->ioc, [wp] {
            wp->server.abort();
            wp->each_redis([](store::RedisConnection& c) { c.stop(); });
        });
    }
    const auto hard_deadline = std::chrono::steady_clock::now() + 5s;
    for (;;) {
        bool all_done = crm_->stopped() && query_->stopped() && certificates_->stopped();
        for (auto& w : workers_) {
            all_done = all_done && w->done.load();
        }
        if (all_done) {
            break;
        }
        if (std::chrono::steady_clock::now() > hard_deadline) {
            log::error("daemon.forced_stop", {{"crm_stopped", crm_->stopped()},
                                              {"query_stopped", query_->stopped()},
                                              {"certificates_stopped", certificates_->stopped()}});
            forced_ = true;
            for (auto& w : workers_) {
                w->ioc.stop();
            }
            crm_->abort();
            query_->abort();
            certificates_->abort();
            break;
        }
        t.expires_after(20ms);
        co_await t.async_wait(kUseTuple);
    }
    control_.stop();
}

}  // namespace paybridge::daemon
