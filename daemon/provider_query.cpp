#include "daemon/provider_query.hpp"

#include "daemon/provider_call.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/time.hpp"
#include "crm/http_client.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query_accounts.hpp"
#include "store/query_queue.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/post.hpp>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <unistd.h>

#include <chrono>
#include <iterator>
#include <optional>

namespace paybridge::daemon {

namespace asio = boost::asio;
using asio::awaitable;
using namespace std::chrono_literals;

namespace {

/// A provider's answer is a few KB; anything past this is no answer of theirs.
constexpr std::size_t kMaxAnswerBytes = 256 * 1024;

std::int64_t unix_ms_now() { return unix_ms(std::chrono::system_clock::now()); }

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
    metrics::Family<metrics::Counter>& gave_up = metrics::registry().counter(
        "paybridge_provider_query_gave_up_total",
        "Bills given up: a provider could not be asked at their last turn (down, or Redis or every instance "
        "down) until max_gap after it, or a payment it confirmed could not be applied by then.");
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
    std::unique_ptr<store::RedisConnection> replicas;  ///< with wait_replicas only
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
            options.keep_body = kMaxAnswerBytes + 1;
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
            // With wait_replicas, confirmations (WAIT) on a connection of their own, as the workers do.
            if (redis_cfg.wait_replicas > 0) {
                replicas = std::make_unique<store::RedisConnection>(ioc.get_executor(), redis_cfg);
                replicas->start();
            }
            store = std::make_unique<store::RedisBillStore>(*redis, redis_cfg, std::function<std::int64_t()>{},
                                                            replicas.get());
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
            // A defect must not end the sweeps for the life of the process (nor leave the Redis
            // connection keeping this thread alive through a shutdown).
            std::string failure;
            try {
                co_await sweep();
            } catch (const std::exception& e) {
                failure = e.what();
            }
            if (!failure.empty()) {
                log::error("query.sweep_failed", {{"what", failure}});
            }
            if (is_stopping()) {
                break;
            }
            co_await sleep(std::chrono::duration_cast<std::chrono::milliseconds>(query.interval));
        }
        clients.clear();
        if (redis) {
            redis->stop();
        }
        if (replicas) {
            replicas->stop();
        }
    }

    /// Called on ioc when the process stops: queries in flight end now (they only read, and their
    /// bills stay claimed, so they are asked again later), and so does the wait between sweeps.
    void stop_now()
    {
        pause.cancel();
        for (auto& client : clients) {
            client->abort_in_flight();
        }
    }

    void redis_failed(std::string_view step, const boost::system::error_code& ec)
    {
        query_metrics().redis_errors.with({}).inc();
        log::warning("query.redis_error", {{"step", step}, {"error", error_name(ec)}});
    }

    /// How long a shard's bills are claimed: what asking about `batch` bills takes at worst
    /// (`concurrency` at a time, each query within `timeout`), and an interval. A sweep of several
    /// shards with providers that answer slowly, but not so badly that the breaker skips them, can
    /// outlast it: another instance may then ask about some bills too, which is harmless.
    std::chrono::milliseconds claim_time() const
    {
        const auto per_account = static_cast<std::int64_t>((query.batch + static_cast<std::size_t>(query.concurrency) - 1) /
                                                           static_cast<std::size_t>(query.concurrency));
        return std::chrono::milliseconds(per_account * query.timeout.count() +
                                         std::chrono::duration_cast<std::chrono::milliseconds>(query.interval).count());
    }

    /// One sweep: the due bills of every shard this instance leases, then one round of queries
    /// over all of them (so each account's workers go from shard to shard without waiting for
    /// another account's slow answers).
    awaitable<void> sweep()
    {
        const auto lease_ttl = std::chrono::duration_cast<std::chrono::milliseconds>(query.interval);
        std::vector<store::DueBill> due;
        for (int shard = 0; shard < queue->keys().shards() && !is_stopping(); ++shard) {
            Result<bool> leased = co_await queue->lease(shard, owner, lease_ttl);
            if (!leased) {
                redis_failed("lease", leased.error());
                break;  // ask about what earlier shards gave (claimed) all the same
            }
            if (!*leased) {
                continue;  // another instance sweeps this shard now
            }
            Result<std::size_t> taken = co_await queue->intake(shard);
            if (!taken) {
                redis_failed("intake", taken.error());
                break;
            }
            Result<store::DueRound> round = co_await queue->take_due(shard, query.batch, claim_time());
            if (!round) {
                redis_failed("take_due", round.error());
                break;  // ask about what was taken (claimed) so far
            }
            for (const std::string& id : round->expired) {
                gave_up(id, "its last turn passed while no instance could ask");
            }
            std::move(round->bills.begin(), round->bills.end(), std::back_inserter(due));
        }
        if (!due.empty()) {
            if (is_stopping()) {
                // Taken but not to be asked about: due again at once, for another instance.
                Result<void> back = co_await queue->due_at(due, unix_ms_now());
                if (!back) {
                    redis_failed("give_back", back.error());
                }
                co_return;
            }
            // The claims made shard by shard cover one shard's batch: extend them to what asking
            // about all of them may take (each account's workers go through the whole list).
            const std::int64_t rounds = static_cast<std::int64_t>(
                (due.size() + static_cast<std::size_t>(query.concurrency) - 1) / static_cast<std::size_t>(query.concurrency));
            const std::int64_t claim_ms = rounds * query.timeout.count() +
                                          std::chrono::duration_cast<std::chrono::milliseconds>(query.interval).count();
            if (claim_ms > claim_time().count()) {
                Result<void> claimed = co_await queue->due_at(due, unix_ms_now() + claim_ms);
                if (!claimed) {
                    redis_failed("claim", claimed.error());
                }
            }
            co_await ask_all(due);
        }
        Result<std::int64_t> waiting = co_await queue->waiting();
        if (waiting) {
            query_metrics().due.with({}).set(*waiting);
        } else {
            redis_failed("waiting", waiting.error());
        }
    }

    void gave_up(std::string_view bill_id, std::string_view why)
    {
        query_metrics().gave_up.with({}).inc();
        log::warning("query.gave_up", {{"bill_id", bill_id}, {"reason", why}});
    }

    /// What asking one account about one bill came to.
    enum class Asked {
        answered,   ///< an answer (whatever it said) or a refusal to wait for the next turn for
        transient,  ///< the provider could not answer now (down, slow, cut short): ask again soon
        unapplied,  ///< a payment it confirmed could not be applied (Redis): ask again soon
        settled,    ///< a payment it confirmed settled the bill: no need to ask the others
        aborted,    ///< the process is stopping
    };

    struct BillRound {
        const store::DueBill* bill{nullptr};
        std::size_t pending{0};   ///< accounts still to ask
        std::size_t answered{0};  ///< accounts that answered (whatever they said) or refused
        bool transient{false};    ///< an account could not answer now (down, slow, skipped)
        bool unapplied{false};    ///< a payment an account confirmed could not be applied
        bool settled{false};
    };

    /// A provider account that failed this many queries in a row is not asked again this round.
    static constexpr int kBreakerFailures = 3;

    struct AccountRound {
        std::size_t next{0};
        int failures_in_row{0};
        bool skipped{false};
    };

    /// Asks every account about every bill: each account has `concurrency` workers of its own, so
    /// a provider that hangs holds up neither the other's queries nor its payments.
    awaitable<void> ask_all(std::vector<store::DueBill>& bills)
    {
        const std::shared_ptr<const gateways::QueryAccounts> held = accounts;  // through a reload
        std::vector<BillRound> states(bills.size());
        for (std::size_t i = 0; i < bills.size(); ++i) {
            states[i].bill = &bills[i];
            states[i].pending = held->accounts.size();
        }
        std::vector<AccountRound> rounds(held->accounts.size());
        const std::size_t per_account = std::min<std::size_t>(bills.size(), static_cast<std::size_t>(query.concurrency));
        const std::size_t workers = per_account * held->accounts.size();
        asio::experimental::channel<void(boost::system::error_code)> done(ioc, workers);
        for (std::size_t a = 0; a < held->accounts.size(); ++a) {
            for (std::size_t k = 0; k < per_account; ++k) {
                asio::co_spawn(ioc, account_worker(*held->accounts[a], *clients[a], rounds[a], states),
                               [&done](std::exception_ptr e) {
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
        }
        for (std::size_t i = 0; i < workers; ++i) {
            co_await done.async_receive(kUseTuple);
        }
        for (const BillRound& st : states) {
            co_await finish(st);
        }
    }

    awaitable<void> account_worker(const gateways::QueryAccount& account, crm::HttpClient& client, AccountRound& round,
                                   std::vector<BillRound>& states)
    {
        while (round.next < states.size() && !is_stopping()) {
            BillRound& st = states[round.next++];
            if (st.settled || round.skipped) {
                st.transient = st.transient || (round.skipped && !st.settled);
                --st.pending;
                continue;
            }
            Asked asked = Asked::answered;
            std::string failure;
            try {
                asked = co_await ask_one(*st.bill, account, client);
            } catch (const std::exception& e) {
                failure = e.what();  // a defect: logged, and the bill goes on to its next turn
            }
            if (!failure.empty()) {
                log::error("query.failed_unexpectedly",
                           {{"bill_id", st.bill->id}, {"provider", account.provider()}, {"what", failure}});
            }
            if (asked == Asked::aborted) {
                continue;  // pending stays: the bill is given back (due now) by finish()
            }
            --st.pending;
            if (asked == Asked::transient) {
                st.transient = true;
                if (++round.failures_in_row >= kBreakerFailures && !round.skipped) {
                    round.skipped = true;
                    log::warning("query.account_skipped",
                                 {{"provider", account.provider()}, {"account", account.account()},
                                  {"failures_in_row", round.failures_in_row},
                                  {"until", "the next sweep"}});
                }
                continue;
            }
            round.failures_in_row = 0;
            ++st.answered;
            if (asked == Asked::unapplied) {
                st.unapplied = true;
            } else if (asked == Asked::settled) {
                st.settled = true;
            }
        }
    }

    /// After the round, for one bill: done with it (settled), given back (not asked everywhere:
    /// the process is stopping), asked again at the next sweep (a confirmed payment Redis did not
    /// take; no account could answer; an account could not answer at the bill's last turn), or at
    /// its next turn. Past max_gap after its last turn, a bill that could not be asked is given up.
    awaitable<void> finish(const BillRound& st)
    {
        const store::DueBill& bill = *st.bill;
        const std::int64_t now = unix_ms_now();
        const std::int64_t next_sweep =
            now + std::chrono::duration_cast<std::chrono::milliseconds>(query.interval).count();
        const bool last_turn = queue->next_due_ms(bill.created_ms, now) == 0;
        Result<void> done = Result<void>{};
        if (st.settled) {
            done = co_await queue->remove(bill);
        } else if (st.pending > 0) {
            done = co_await queue->retry(bill, now);
        } else if (st.unapplied || (st.transient && (st.answered == 0 || last_turn))) {
            if (queue->may_retry(bill, now)) {
                done = co_await queue->retry(bill, next_sweep);
            } else {
                gave_up(bill.id, st.unapplied ? "a payment a provider confirmed could not be applied"
                                              : "a provider could not be asked at its last turn");
                done = co_await queue->remove(bill);
            }
        } else {
            done = co_await queue->reschedule(bill);
        }
        if (!done) {
            redis_failed("reschedule", done.error());
        }
    }

    void count(const gateways::QueryAccount& account, std::string_view result)
    {
        query_metrics().queries.with({{"provider", std::string(account.provider())}, {"result", std::string(result)}}).inc();
    }

    awaitable<Asked> ask_one(const store::DueBill& bill, const gateways::QueryAccount& account, crm::HttpClient& client)
    {
        const std::int64_t now_unix = unix_ms_now() / 1000;
        Result<gateways::QueryRequest> request = account.request(bill.id, now_unix);
        if (!request) {
            count(account, error_name(request.error()));
            log::error("query.failed", {{"bill_id", bill.id}, {"provider", account.provider()},
                                        {"account", account.account()}, {"error", error_name(request.error())},
                                        {"detail", "the request could not be built"}});
            co_return Asked::answered;
        }
        // A body longer than kMaxAnswerBytes is no answer of theirs either (keep_body is one more).
        ProviderCall call = co_await call_provider(client, std::move(*request), kMaxAnswerBytes);
        if (is_stopping() && !call.response) {
            co_return Asked::aborted;
        }
        if (!call.response) {
            const std::initializer_list<log::Field> fields{{"bill_id", bill.id}, {"provider", account.provider()},
                                                           {"account", account.account()}, {"error", call.error},
                                                           {"detail", call.detail}};
            count(account, call.error);
            if (call.ours) {
                log::error("query.failed", fields);  // a defect of ours: not asked again
                co_return Asked::answered;
            }
            log::warning("query.failed", fields);
            co_return Asked::transient;
        }
        gateways::QueryResponse& response = *call.response;
        std::string detail;
        Result<gateways::QueryAnswer> answer = account.read(bill.id, response, unix_ms_now() / 1000, detail);
        if (!answer) {
            count(account, error_name(answer.error()));
            const bool transient = answer.error() == errc::provider_unavailable;
            const std::initializer_list<log::Field> fields{
                {"bill_id", bill.id}, {"provider", account.provider()}, {"account", account.account()},
                {"error", error_name(answer.error())}, {"status", static_cast<std::int64_t>(response.status)},
                {"detail", detail}};
            if (transient) {
                log::warning("query.failed", fields);
                co_return Asked::transient;
            }
            // A forged or damaged answer, or our request refused: people must look.
            log::error("query.failed", fields);
            co_return Asked::answered;
        }
        count(account, gateways::to_string(answer->state));
        if (answer->state != gateways::QueryState::paid) {
            if (answer->provider_status == "REFUND") {
                // Paid, then refunded, and neither notification came: the amounts are not in the
                // answer, so nothing is applied; someone has to look.
                log::warning("query.refunded_unseen", {{"bill_id", bill.id}, {"provider", account.provider()},
                                                       {"account", account.account()}, {"status", bill.status}});
            } else {
                log::debug("query.answered",
                           {{"bill_id", bill.id}, {"provider", account.provider()}, {"account", account.account()},
                            {"state", gateways::to_string(answer->state)}, {"provider_status", answer->provider_status}});
            }
            co_return Asked::answered;
        }
        const std::string txn = answer->payment.provider_txn_id;
        Result<ApplyResult> applied = co_await store->apply(std::move(answer->payment));
        if (!applied) {
            log::error("query.apply_failed", {{"bill_id", bill.id}, {"provider", account.provider()},
                                              {"account", account.account()}, {"provider_txn_id", txn},
                                              {"error", error_name(applied.error())}});
            co_return Asked::unapplied;
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
        const bool open = applied->status == "PENDING" || applied->status == "CLOSED";
        co_return open ? Asked::answered : Asked::settled;
    }
};

namespace {

class RedisQueryAdmin final : public QueryAdmin {
public:
    RedisQueryAdmin(store::RedisConnection& redis, const config::RedisConfig& cfg,
                    std::function<webhooks::RuntimePtr()> runtime)
        : redis_(redis), keys_(cfg.key_prefix, cfg.shards), runtime_(std::move(runtime))
    {
    }

    awaitable<Result<std::string>> query_now(std::string bill_id) override
    {
        const webhooks::RuntimePtr rt = runtime_();
        const config::ProviderQueryConfig& q = rt->config->provider_query;
        store::QuerySchedule schedule;
        schedule.after = q.after;
        schedule.until = q.until;
        schedule.max_gap = q.max_gap;
        store::QueryQueue queue(redis_, keys_, schedule);
        Result<std::string> status = co_await queue.due_now(bill_id);
        if (!status) {
            co_return status.error();
        }
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        w.StartObject();
        w.Key("bill_id");
        w.String(bill_id.data(), static_cast<rapidjson::SizeType>(bill_id.size()));
        w.Key("status");
        w.String(status->data(), static_cast<rapidjson::SizeType>(status->size()));
        w.Key("query");
        w.String("due");
        // Each instance looks for due bills this often: the providers are asked within it.
        w.Key("interval_s");
        w.Int64(static_cast<std::int64_t>(q.interval.count()));
        w.EndObject();
        co_return std::string(buf.GetString(), buf.GetSize());
    }

private:
    store::RedisConnection& redis_;
    store::Keys keys_;
    std::function<webhooks::RuntimePtr()> runtime_;
};

}  // namespace

std::unique_ptr<QueryAdmin> make_query_admin(store::RedisConnection& redis, const config::RedisConfig& cfg,
                                             std::function<webhooks::RuntimePtr()> runtime)
{
    return std::make_unique<RedisQueryAdmin>(redis, cfg, std::move(runtime));
}

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
    asio::post(impl->ioc, [impl] { impl->stop_now(); });
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
