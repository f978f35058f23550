#include "daemon/provider_query.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "crm/http_client.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query_accounts.hpp"
#include "store/query_queue.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/post.hpp>

#include <unistd.h>

#include <chrono>
#include <optional>

namespace paybridge::daemon {

namespace asio = boost::asio;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

/// A provider's answer is a few KB; anything past this is no answer of theirs.
constexpr std::size_t kMaxAnswerBytes = 256 * 1024;

std::int64_t unix_ms_now()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

struct QueryMetrics {
    metrics::Family<metrics::Counter>& queries = metrics::registry().counter(
        "paybridge_provider_queries_total",
        "Active queries of a provider about a bill, by provider and result (paid, unpaid, closed, not_found, "
        "or the error).");
    metrics::Family<metrics::Counter>& payments = metrics::registry().counter(
        "paybridge_provider_query_payments_total",
        "Payments a provider confirmed in answer to a query, by provider and what applying them did "
        "(applied: the notification had not come; duplicate: it had).");
    metrics::Family<metrics::Counter>& redis_errors = metrics::registry().counter(
        "paybridge_provider_query_redis_errors_total", "Redis commands of the provider-query sweeps that failed.");
    metrics::Family<metrics::Gauge>& due = metrics::registry().gauge(
        "paybridge_provider_query_waiting", "Bills waiting for their next provider query (all instances), as of the last sweep.");
};

QueryMetrics& query_metrics()
{
    static QueryMetrics m;
    return m;
}

/// Names the instance in the shards' leases, for people looking at Redis.
std::string instance_name()
{
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) {
        host[0] = '\0';
    }
    return std::string(host) + ":" + std::to_string(::getpid()) + ":" +
           crypto::hex_lower(crypto::random_bytes(4));
}

}  // namespace

struct QueryRunner::Impl {
    Impl(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> first)
        : redis_cfg(cfg.redis), next_query(cfg.provider_query), next_accounts(std::move(first))
    {
        (void)query_metrics();
    }

    asio::io_context ioc{1};
    asio::steady_timer pause{ioc};
    const config::RedisConfig redis_cfg;
    const std::string owner = instance_name();

    // Handed over by update(), under the mutex; taken by the loop at the start of a sweep.
    std::mutex mutex;
    config::ProviderQueryConfig next_query;
    std::shared_ptr<const gateways::QueryAccounts> next_accounts;
    bool changed{true};
    bool stopping{false};

    // The loop's own (ioc only).
    config::ProviderQueryConfig query;
    std::shared_ptr<const gateways::QueryAccounts> accounts;
    std::vector<std::unique_ptr<crm::HttpClient>> clients;  ///< one per account, same index
    std::unique_ptr<store::RedisConnection> redis;
    std::unique_ptr<store::RedisBillStore> store;
    std::unique_ptr<store::QueryQueue> queue;
    bool active{false};  ///< the settings taken work: sweeps run

    bool is_stopping()
    {
        std::lock_guard lock(mutex);
        return stopping;
    }

    /// Takes new settings when there are: false while querying is off (or refused).
    bool take_settings()
    {
        {
            std::lock_guard lock(mutex);
            if (!changed) {
                return active;
            }
            changed = false;
            query = next_query;
            accounts = next_accounts;
        }
        active = false;
        clients.clear();
        queue.reset();
        if (!query.enabled || !accounts || accounts->accounts.empty()) {
            return false;
        }
        for (const auto& account : accounts->accounts) {
            crm::HttpClientOptions options;
            options.url = account->url();
            options.ca_file = query.ca_file;
            options.timeout = query.timeout;
            options.concurrency = query.concurrency;
            options.keep_body = kMaxAnswerBytes;
            options.max_body = kMaxAnswerBytes;
            options.keep_headers = true;
            options.user_agent = "paybridge";
            Result<std::unique_ptr<crm::HttpClient>> client = crm::HttpClient::create(ioc.get_executor(), options);
            if (!client) {
                // load_query_accounts parsed the URL and the loader read the CA file: a file
                // changed since. Nothing is asked until a reload brings settings that work.
                log::error("query.refused", {{"provider", account->provider()},
                                             {"account", account->account()},
                                             {"error", error_name(client.error())}});
                clients.clear();
                return false;
            }
            clients.push_back(std::move(*client));
        }
        if (!redis) {
            redis = std::make_unique<store::RedisConnection>(ioc.get_executor(), redis_cfg);
            store = std::make_unique<store::RedisBillStore>(*redis, redis_cfg);
            redis->start();
        }
        store::QuerySchedule schedule;
        schedule.after = query.after;
        schedule.until = query.until;
        schedule.max_gap = query.max_gap;
        queue = std::make_unique<store::QueryQueue>(*redis, store::Keys(redis_cfg.key_prefix, redis_cfg.shards), schedule);
        log::info("query.started", {{"accounts", accounts->accounts.size()},
                                    {"interval_s", static_cast<std::int64_t>(query.interval.count())},
                                    {"after_s", static_cast<std::int64_t>(query.after.count())},
                                    {"until_s", static_cast<std::int64_t>(query.until.count())}});
        active = true;
        return true;
    }

    awaitable<void> sleep(std::chrono::milliseconds d)
    {
        pause.expires_after(d);
        co_await pause.async_wait(kUseTuple);
    }

    awaitable<void> loop()
    {
        while (!is_stopping()) {
            if (!take_settings()) {
                co_await sleep(1s);  // off: an update() cancels the wait
                continue;
            }
            if (!redis->ready()) {
                co_await sleep(1s);
                continue;
            }
            co_await sweep();
            if (is_stopping()) {
                break;
            }
            co_await sleep(std::chrono::duration_cast<std::chrono::milliseconds>(query.interval));
        }
        clients.clear();
        if (redis) {
            redis->stop();
        }
    }

    void redis_failed(std::string_view step, const boost::system::error_code& ec)
    {
        query_metrics().redis_errors.with({}).inc();
        log::warning("query.redis_error", {{"step", step}, {"error", error_name(ec)}});
    }

    awaitable<void> sweep()
    {
        const auto lease_ttl = std::chrono::duration_cast<std::chrono::milliseconds>(query.interval);
        for (int shard = 0; shard < queue->keys().shards() && !is_stopping(); ++shard) {
            Result<bool> leased = co_await queue->lease(shard, owner, lease_ttl);
            if (!leased) {
                redis_failed("lease", leased.error());
                co_return;
            }
            if (!*leased) {
                continue;  // another instance sweeps this shard now
            }
            Result<std::size_t> taken = co_await queue->intake(shard);
            if (!taken) {
                redis_failed("intake", taken.error());
                co_return;
            }
            Result<store::DueRound> round = co_await queue->take_due(shard, query.batch);
            if (!round) {
                redis_failed("take_due", round.error());
                co_return;
            }
            if (!round->bills.empty()) {
                co_await ask_all(round->bills);
            }
        }
        Result<std::int64_t> waiting = co_await queue->waiting();
        if (waiting) {
            query_metrics().due.with({}).set(*waiting);
        } else {
            redis_failed("waiting", waiting.error());
        }
    }

    /// Asks about every bill, `concurrency` bills at a time (each one's accounts in turn).
    awaitable<void> ask_all(std::vector<store::DueBill>& bills)
    {
        const std::size_t workers = std::min<std::size_t>(bills.size(), static_cast<std::size_t>(query.concurrency));
        asio::experimental::channel<void(boost::system::error_code)> done(ioc, workers);
        std::size_t next = 0;
        for (std::size_t i = 0; i < workers; ++i) {
            asio::co_spawn(ioc, ask_from(bills, next), [&done](std::exception_ptr e) {
                if (e) {
                    try {
                        std::rethrow_exception(e);
                    } catch (const std::exception& ex) {
                        log::error("query.failed_unexpectedly", {{"what", ex.what()}});
                    } catch (...) {
                        log::error("query.failed_unexpectedly", {{"what", "unknown exception"}});
                    }
                }
                done.try_send(boost::system::error_code{});
            });
        }
        for (std::size_t i = 0; i < workers; ++i) {
            co_await done.async_receive(kUseTuple);
        }
    }

    awaitable<void> ask_from(std::vector<store::DueBill>& bills, std::size_t& next)
    {
        while (next < bills.size() && !is_stopping()) {
            store::DueBill& bill = bills[next++];
            co_await ask(bill);
        }
    }

    awaitable<void> ask(const store::DueBill& bill)
    {
        // Keep the accounts alive through the awaits, whatever a reload does meanwhile.
        const std::shared_ptr<const gateways::QueryAccounts> held = accounts;
        bool retry_soon = false;
        for (std::size_t i = 0; i < held->accounts.size() && i < clients.size(); ++i) {
            const gateways::QueryAccount& account = *held->accounts[i];
            crm::HttpClient& client = *clients[i];
            const std::optional<bool> asked = co_await ask_one(bill, account, client);
            if (!asked) {
                retry_soon = true;
            }
        }
        if (retry_soon) {
            co_return;  // the due time stays: the next sweep asks again
        }
        Result<void> moved = co_await queue->reschedule(bill);
        if (!moved) {
            redis_failed("reschedule", moved.error());
        }
    }

    void count(const gateways::QueryAccount& account, std::string_view result)
    {
        query_metrics().queries.with({{"provider", std::string(account.provider())}, {"result", std::string(result)}}).inc();
    }

    /// One query. nullopt: the provider confirmed a payment that could not be applied (Redis):
    /// ask again soon. Otherwise true (whatever the answer or failure: asked for this turn).
    awaitable<std::optional<bool>> ask_one(const store::DueBill& bill, const gateways::QueryAccount& account,
                                           crm::HttpClient& client)
    {
        const std::int64_t now_unix = unix_ms_now() / 1000;
        Result<gateways::QueryRequest> request = account.request(bill.id, now_unix);
        if (!request) {
            count(account, error_name(request.error()));
            log::error("query.failed", {{"bill_id", bill.id}, {"provider", account.provider()},
                                        {"account", account.account()}, {"error", error_name(request.error())},
                                        {"detail", "the request could not be built"}});
            co_return true;
        }
        crm::Headers headers = std::move(request->headers);
        crm::PostResult sent = co_await client.send(std::move(request->method), std::move(request->target),
                                                    std::move(headers), std::move(request->body));
        if (!sent.response) {
            const std::string_view error =
                sent.response.error() == errc::timeout ? std::string_view("timeout") : std::string_view("provider_unavailable");
            count(account, error);
            log::warning("query.failed", {{"bill_id", bill.id}, {"provider", account.provider()},
                                          {"account", account.account()}, {"error", error},
                                          {"detail", sent.error_detail}});
            co_return true;
        }
        gateways::QueryResponse response;
        response.status = sent.response->status;
        response.headers = std::move(sent.response->headers);
        response.body = std::move(sent.response->body_head);
        std::string detail;
        Result<gateways::QueryAnswer> answer = account.read(bill.id, response, unix_ms_now() / 1000, detail);
        if (!answer) {
            count(account, error_name(answer.error()));
            // A forged or damaged answer, or our request refused: people must look.
            const bool alarming = answer.error() != errc::provider_unavailable;
            const std::initializer_list<log::Field> fields{
                {"bill_id", bill.id}, {"provider", account.provider()}, {"account", account.account()},
                {"error", error_name(answer.error())}, {"status", static_cast<std::int64_t>(response.status)},
                {"detail", detail}};
            if (alarming) {
                log::error("query.failed", fields);
            } else {
                log::warning("query.failed", fields);
            }
            co_return true;
        }
        count(account, gateways::to_string(answer->state));
        if (answer->state != gateways::QueryState::paid) {
            log::debug("query.answered", {{"bill_id", bill.id}, {"provider", account.provider()},
                                          {"account", account.account()}, {"state", gateways::to_string(answer->state)},
                                          {"provider_status", answer->provider_status}});
            co_return true;
        }
        const std::string txn = answer->payment.provider_txn_id;
        Result<ApplyResult> applied = co_await store->apply(std::move(answer->payment));
        if (!applied) {
            log::error("query.apply_failed", {{"bill_id", bill.id}, {"provider", account.provider()},
                                              {"account", account.account()}, {"provider_txn_id", txn},
                                              {"error", error_name(applied.error())}});
            co_return std::nullopt;
        }
        query_metrics()
            .payments.with({{"provider", std::string(account.provider())}, {"outcome", std::string(to_string(applied->outcome))}})
            .inc();
        const std::initializer_list<log::Field> fields{
            {"bill_id", bill.id},         {"provider", account.provider()},
            {"account", account.account()}, {"provider_txn_id", txn},
            {"outcome", to_string(applied->outcome)}, {"anomaly", applied->anomaly},
            {"status", applied->status}};
        if (applied->outcome == ApplyOutcome::applied || applied->outcome == ApplyOutcome::anomaly) {
            // The notification never came: worth a line at info, whatever the bill made of it.
            log::info("query.payment_found", fields);
        } else {
            log::debug("query.payment_known", fields);
        }
        co_return true;
    }
};

QueryRunner::QueryRunner(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts)
    : impl_(std::make_unique<Impl>(cfg, std::move(accounts)))
{
}

QueryRunner::~QueryRunner() { stop(); }

void QueryRunner::start()
{
    asio::co_spawn(impl_->ioc, impl_->loop(), LogFailure("query.runner_failed"));
    thread_ = std::thread([this] {
        try {
            impl_->ioc.run();
        } catch (const std::exception& e) {
            log::error("query.runner_failed", {{"what", e.what()}});
        }
        stopped_.store(true);
    });
}

void QueryRunner::update(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts)
{
    {
        std::lock_guard lock(impl_->mutex);
        impl_->next_query = cfg.provider_query;
        impl_->next_accounts = std::move(accounts);
        impl_->changed = true;
    }
    Impl* impl = impl_.get();
    asio::post(impl->ioc, [impl] { impl->pause.cancel(); });
}

void QueryRunner::request_stop()
{
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->stopping) {
            return;
        }
        impl_->stopping = true;
    }
    Impl* impl = impl_.get();
    asio::post(impl->ioc, [impl] { impl->pause.cancel(); });
}

void QueryRunner::abort() { impl_->ioc.stop(); }

void QueryRunner::stop()
{
    request_stop();
    if (thread_.joinable()) {
        thread_.join();
    }
}

}  // namespace paybridge::daemon
