// CRM delivery benchmark (issue 4). One run measures, side by side on the same machine:
//
//  1. Dispatcher throughput: N bill.paid events written by the real bill script (store::RedisBillStore:
//     register + apply, as a notification would) into a fresh redis-server; then a crm::Dispatcher on a
//     thread of its own (as paybridged runs it) delivers them, each signed (Standard Webhooks) and
//     recorded (attempt record + delivery state, one script per event), to a fast local Beast receiver
//     that checks every signature and answers 204. Timed from run() to the N-th delivery.
//  2. The notification rate of the real paybridged with and without CRM deliveries running: M distinct
//     pre-signed Alipay notifications per round over C keep-alive connections, once with no "crm"
//     configured and once with deliveries to the same kind of receiver, alternating for R rounds.
//
// Numbers are printed as a Markdown table; they are measurements, never assertions.
//   paybridge_crm_bench [--events N] [--concurrency K] [--notifications M] [--connections C]
//                       [--workers W] [--rounds R] [--daemon PATH] [--no-daemon]

#include "config/config.hpp"
#include "core/async.hpp"
#include "core/bill_store.hpp"
#include "core/log.hpp"
#include "core/payment_event.hpp"
#include "crm/delivery_schema.hpp"
#include "crm/dispatcher.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "store/redis_bill_store.hpp"
#include "store/redis_connection.hpp"
#include "tools/keygen/keygen.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

extern char** environ;

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using namespace paybridge;

constexpr const char* kAppId = "2021000000000001";
constexpr const char* kSellerId = "2088000000000001";

double seconds_since(Clock::time_point start)
{
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// CPU seconds a thread has used (pthread_getcpuclockid), or a process (/proc/PID/stat utime + stime).
double thread_cpu_seconds(std::thread& t)
{
    clockid_t id;
    timespec ts{};
    if (pthread_getcpuclockid(t.native_handle(), &id) != 0 || clock_gettime(id, &ts) != 0) {
        return 0;
    }
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double process_cpu_seconds(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')');
    if (close == std::string::npos) {
        return 0;
    }
    std::istringstream fields(stat.substr(close + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; fields >> field && i <= 15; ++i) {
        if (i == 14 || i == 15) {  // utime, stime
            ticks += std::stod(field);
        }
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::uint16_t free_port()
{
    asio::io_context ctx;
    tcp::acceptor probe(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return probe.local_endpoint().port();
}

// A child process (redis-server, paybridged) with its output in a log file and none of our
// descriptors (listening sockets must not outlive us in a child).
class Child {
public:
    Child(const std::vector<std::string>& argv, const fs::path& log)
    {
        std::vector<char*> args;
        for (const std::string& a : argv) {
            args.push_back(const_cast<char*>(a.c_str()));
        }
        args.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        posix_spawn_file_actions_adddup2(&actions, 1, 2);
        posix_spawn_file_actions_addclosefrom_np(&actions, 3);
        const int rc = posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        if (rc != 0) {
            throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
        }
    }
    ~Child() { stop(SIGKILL); }
    pid_t pid() const noexcept { return pid_; }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    /// Sends `sig` and waits up to 30 s (then SIGKILL); returns the exit status as waitpid gives it.
    int stop(int sig)
    {
        if (pid_ <= 0) {
            return status_;
        }
        ::kill(pid_, sig);
        const auto deadline = Clock::now() + 30s;
        while (::waitpid(pid_, &status_, WNOHANG) == 0) {
            if (Clock::now() > deadline) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &status_, 0);
                break;
            }
            std::this_thread::sleep_for(10ms);
        }
        pid_ = -1;
        return status_;
    }

private:
    pid_t pid_{-1};
    int status_{0};
};

// One blocking GET on a fresh connection; 0 when nothing answered.
unsigned http_get_status(std::uint16_t port, const std::string& target, std::string* body = nullptr)
{
    try {
        asio::io_context ctx;
        beast::tcp_stream stream(ctx);
        stream.expires_after(5s);
        stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
        http::request<http::empty_body> req(http::verb::get, target, 11);
        req.set(http::field::host, "127.0.0.1");
        http::write(stream, req);
        beast::flat_buffer buffer;
        http::response<http::string_body> res;
        http::read(stream, buffer, res);
        if (body != nullptr) {
            *body = res.body();
        }
        return res.result_int();
    } catch (const std::exception&) {
        return 0;
    }
}

// ---------------------------------------------------------------------------------------------
// The fast receiver: a Beast HTTP/1.1 server on its own thread that checks every Standard
// Webhooks signature (its own implementation of the check) and answers 204.

class FastReceiver {
public:
    explicit FastReceiver(const std::string& secret)
        : key_(*crypto::base64_decode(std::string_view(secret).substr(6))),
          acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0))
    {
        asio::co_spawn(ioc_, accept_loop(), asio::detached);
        thread_ = std::thread([this] { ioc_.run(); });
    }
    ~FastReceiver()
    {
        ioc_.stop();
        thread_.join();
    }
    FastReceiver(const FastReceiver&) = delete;
    FastReceiver& operator=(const FastReceiver&) = delete;

    std::string url() const
    {
        return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()) + "/events";
    }
    std::uint64_t requests() const { return requests_.load(); }
    double cpu_seconds() { return thread_cpu_seconds(thread_); }
    std::uint64_t bad_signatures() const { return bad_.load(); }
    std::size_t distinct_ids() const
    {
        std::lock_guard lock(mutex_);
        return ids_.size();
    }

private:
    asio::awaitable<void> accept_loop()
    {
        for (;;) {
            auto [ec, socket] = co_await acceptor_.async_accept(kUseTuple);
            if (ec) {
                co_return;
            }
            asio::co_spawn(ioc_, session(std::move(socket)), asio::detached);
        }
    }

    asio::awaitable<void> session(tcp::socket socket)
    {
        beast::tcp_stream stream(std::move(socket));
        beast::flat_buffer buffer;
        for (;;) {
            http::request<http::string_body> req;
            auto [ec, n] = co_await http::async_read(stream, buffer, req, kUseTuple);
            if (ec) {
                co_return;
            }
            check(req);
            http::response<http::empty_body> res(http::status::no_content, req.version());
            res.keep_alive(req.keep_alive());
            auto [wec, written] = co_await http::async_write(stream, res, kUseTuple);
            if (wec || !req.keep_alive()) {
                co_return;
            }
        }
    }

    void check(const http::request<http::string_body>& req)
    {
        const std::string id(req["webhook-id"]);
        const std::string ts(req["webhook-timestamp"]);
        const std::string expected =
            "v1," + crypto::base64_encode(crypto::hmac_sha256(key_, id + "." + ts + "." + req.body()));
        bool ok = false;
        std::string_view header = req["webhook-signature"];
        while (!header.empty() && !ok) {
            const auto space = header.find(' ');
            ok = crypto::constant_time_equal(header.substr(0, space), expected);
            header = space == std::string_view::npos ? std::string_view() : header.substr(space + 1);
        }
        ++requests_;
        if (!ok) {
            ++bad_;
        }
        std::lock_guard lock(mutex_);
        ids_.insert(id);
    }

    std::string key_;
    asio::io_context ioc_{1};
    tcp::acceptor acceptor_;
    std::thread thread_;
    std::atomic<std::uint64_t> requests_{0};
    std::atomic<std::uint64_t> bad_{0};
    mutable std::mutex mutex_;
    std::unordered_set<std::string> ids_;
};

// ---------------------------------------------------------------------------------------------
// Redis: a fresh redis-server, and a connection on the caller's io_context.

struct RedisServer {
    std::uint16_t port{free_port()};
    Child child;
    explicit RedisServer(const fs::path& dir)
        : child({"redis-server", "--bind", "127.0.0.1", "--port", std::to_string(port), "--save", "",
                 "--appendonly", "no", "--dir", dir.string()},
                dir / "redis.log")
    {
    }
};

config::RedisConfig redis_config(std::uint16_t port)
{
    config::RedisConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = port;
    cfg.request_timeout = 10s;
    return cfg;
}

void run_until(asio::io_context& ctx, const std::function<bool()>& done, std::chrono::seconds limit)
{
    const auto deadline = Clock::now() + limit;
    while (!done()) {
        if (Clock::now() > deadline) {
            throw std::runtime_error("timed out");
        }
        ctx.restart();
        ctx.run_for(5ms);
    }
}

asio::awaitable<void> exec_into(store::RedisConnection* conn, std::vector<std::string> argv,
                                std::optional<Result<store::Reply>>* out)
{
    Result<store::Reply> reply = co_await conn->exec(std::move(argv));
    out->emplace(std::move(reply));
}

// One command, run to completion on ctx.
store::Reply exec_once(asio::io_context& ctx, store::RedisConnection& conn, std::vector<std::string> argv)
{
    std::optional<Result<store::Reply>> reply;
    asio::co_spawn(ctx, exec_into(&conn, std::move(argv), &reply), asio::detached);
    run_until(ctx, [&] { return reply.has_value(); }, 60s);
    if (!*reply) {
        throw std::runtime_error("redis: " + reply->error().message());
    }
    return std::move(**reply);
}

struct FillState {
    store::RedisBillStore* bills{nullptr};
    int total{0};
    int next{0};
    int workers_left{0};
    int failures{0};
};

// Registers bills and applies their payment through the bill script, as paybridged does.
asio::awaitable<void> fill_worker(FillState* s)
{
    while (s->next < s->total) {
        const int i = s->next++;
        const std::string id = "CB" + std::to_string(1'000'000 + i);
        NewBill bill;
        bill.id = id;
        bill.amount_fen = 100 + i % 100'000;
        bill.customer_id = "c" + std::to_string(i % 1000);
        bill.description = "crm bench";
        Result<RegisterResult> reg = co_await s->bills->register_bill(std::move(bill));
        PaymentEvent pay;
        pay.provider = "alipay";
        pay.channel = "alipay";
        pay.kind = EventKind::payment;
        pay.notification_id = "bench-" + id;
        pay.account = kAppId;
        pay.bill_id = id;
        pay.provider_txn_id = "2026112722001400000" + std::to_string(100'000'000 + i);
        pay.total_fen = 100 + i % 100'000;
        pay.provider_status = "TRADE_SUCCESS";
        Result<ApplyResult> applied = co_await s->bills->apply(std::move(pay));
        if (!reg || !applied || applied->outcome != ApplyOutcome::applied) {
            ++s->failures;
        }
    }
    --s->workers_left;
}

struct DispatchResult {
    int events{0};
    double fill_seconds{0};
    double seconds{0};
    std::uint64_t attempts{0};
    std::uint64_t failed_attempts{0};
    std::uint64_t received{0};
    std::size_t distinct{0};
    std::uint64_t bad_signatures{0};
    long long delivered_records{0};
    double dispatcher_cpu{0};  ///< CPU seconds of the dispatcher's thread while delivering
    double receiver_cpu{0};
    double redis_cpu{0};
};

DispatchResult bench_dispatcher(std::uint16_t redis_port, pid_t redis_pid, int events, int concurrency)
{
    DispatchResult out;
    out.events = events;
    const config::RedisConfig cfg = redis_config(redis_port);
    asio::io_context ioc{1};
    store::RedisConnection conn(ioc.get_executor(), cfg);
    store::RedisBillStore bills(conn, cfg);
    conn.start();
    run_until(ioc, [&] { return conn.ready(); }, 20s);

    std::fprintf(stderr, "writing %d events through the bill script...\n", events);
    FillState fill{.bills = &bills, .total = events, .workers_left = 64};
    const auto fill_start = Clock::now();
    for (int w = 0; w < fill.workers_left; ++w) {
        asio::co_spawn(ioc, fill_worker(&fill), asio::detached);
    }
    run_until(ioc, [&] { return fill.workers_left == 0; }, 600s);
    out.fill_seconds = seconds_since(fill_start);
    if (fill.failures != 0) {
        throw std::runtime_error(std::to_string(fill.failures) + " bills could not be written");
    }

    const std::string secret = "whsec_" + crypto::base64_encode(crypto::random_bytes(32));
    FastReceiver receiver(secret);
    crm::DispatcherOptions options;
    options.key_prefix = cfg.key_prefix;
    options.shards = cfg.shards;
    options.secrets = {secret};
    options.concurrency = concurrency;
    options.http.url = receiver.url();
    options.block = 500ms;

    // The dispatcher on a thread of its own, as daemon/crm_wiring runs it.
    asio::io_context dctx{1};
    Result<std::unique_ptr<crm::Dispatcher>> created = crm::Dispatcher::create(dctx.get_executor(), cfg, options);
    if (!created) {
        throw std::runtime_error("dispatcher refused its options: " + created.error().message());
    }
    std::unique_ptr<crm::Dispatcher> dispatcher = std::move(*created);
    std::fprintf(stderr, "delivering...\n");
    const double receiver_cpu_before = receiver.cpu_seconds();
    const double redis_cpu_before = process_cpu_seconds(redis_pid);
    const auto start = Clock::now();
    asio::co_spawn(dctx, dispatcher->run(), asio::detached);
    std::thread thread([&dctx] { dctx.run(); });
    const auto deadline = start + 600s;
    while (dispatcher->stats().delivered.load() < static_cast<std::uint64_t>(events) && Clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
    }
    out.seconds = seconds_since(start);
    out.dispatcher_cpu = thread_cpu_seconds(thread);
    out.receiver_cpu = receiver.cpu_seconds() - receiver_cpu_before;
    out.redis_cpu = process_cpu_seconds(redis_pid) - redis_cpu_before;
    asio::post(dctx, [d = dispatcher.get()] { d->stop(); });
    thread.join();
    out.attempts = dispatcher->stats().attempts.load();
    out.failed_attempts = dispatcher->stats().failed_attempts.load();
    out.received = receiver.requests();
    out.distinct = receiver.distinct_ids();
    out.bad_signatures = receiver.bad_signatures();

    // Every event has its delivery record (the per-state index counts each once).
    const crm::DeliveryKeys keys(cfg.key_prefix, cfg.shards);
    for (const crm::ShardKeys& k : keys.all()) {
        const store::Reply reply = exec_once(ioc, conn, {"ZCARD", k.idx_delivered});
        out.delivered_records += reply.is_integer() ? reply.integer : 0;
    }
    exec_once(ioc, conn, {"FLUSHALL"});  // the daemon rounds start from an empty Redis
    conn.stop();
    ioc.restart();
    ioc.run_for(50ms);
    return out;
}

// ---------------------------------------------------------------------------------------------
// A closed-loop HTTP load generator: C keep-alive connections, each sending the next request of
// the list as soon as its previous one is answered.

struct Request {
    std::string target;
    std::string content_type;
    std::string authorization;
    std::string body;
    unsigned expect_status{200};
    std::string expect_body;  ///< checked when not empty
};

struct LoadState {
    tcp::endpoint endpoint;
    const std::vector<Request>* requests{nullptr};
    std::size_t next{0};
    std::size_t ok{0};
    std::size_t failed{0};
    int connections_left{0};
    std::vector<double> latencies_ms;
};

asio::awaitable<void> load_worker(LoadState* s)
{
    beast::tcp_stream stream(co_await asio::this_coro::executor);
    auto [cec] = co_await stream.async_connect(s->endpoint, kUseTuple);
    beast::flat_buffer buffer;
    while (!cec && s->next < s->requests->size()) {
        const Request& r = (*s->requests)[s->next++];
        http::request<http::string_body> req(http::verb::post, r.target, 11);
        req.set(http::field::host, "127.0.0.1");
        req.set(http::field::content_type, r.content_type);
        if (!r.authorization.empty()) {
            req.set(http::field::authorization, r.authorization);
        }
        req.body() = r.body;
        req.keep_alive(true);
        req.prepare_payload();
        const auto started = Clock::now();
        stream.expires_after(30s);
        auto [wec, written] = co_await http::async_write(stream, req, kUseTuple);
        http::response<http::string_body> res;
        if (!wec) {
            auto [rec, read] = co_await http::async_read(stream, buffer, res, kUseTuple);
            wec = rec;
        }
        if (wec) {
            ++s->failed;
            break;
        }
        s->latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - started).count());
        const bool good =
            res.result_int() == r.expect_status && (r.expect_body.empty() || res.body() == r.expect_body);
        ++(good ? s->ok : s->failed);
    }
    if (cec) {
        ++s->failed;
    }
    --s->connections_left;
}

struct LoadResult {
    std::size_t ok{0};
    std::size_t failed{0};
    double seconds{0};
    double p50_ms{0};
    double p99_ms{0};
    double rate() const { return seconds > 0 ? static_cast<double>(ok + failed) / seconds : 0; }
};

LoadResult post_all(std::uint16_t port, const std::vector<Request>& requests, int connections)
{
    asio::io_context ctx{1};
    LoadState state{.endpoint = tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
                    .requests = &requests,
                    .connections_left = connections};
    state.latencies_ms.reserve(requests.size());
    const auto start = Clock::now();
    for (int c = 0; c < connections; ++c) {
        asio::co_spawn(ctx, load_worker(&state), asio::detached);
    }
    ctx.run();
    LoadResult out;
    out.seconds = seconds_since(start);
    out.ok = state.ok;
    out.failed = state.failed;
    std::sort(state.latencies_ms.begin(), state.latencies_ms.end());
    if (!state.latencies_ms.empty()) {
        out.p50_ms = state.latencies_ms[state.latencies_ms.size() / 2];
        out.p99_ms = state.latencies_ms[state.latencies_ms.size() * 99 / 100];
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// The daemon rounds.

struct DaemonSetup {
    fs::path dir;
    std::string daemon;
    std::uint16_t redis_port{0};
    int workers{2};
    std::string token;
    crypto::SharedKey alipay_key;
};

struct RoundResult {
    bool crm{false};
    LoadResult notify;
    std::uint64_t delivered_during{0};  ///< events the receiver had when the last notification was answered
    double drain_seconds{0};            ///< from then until every event of the round was delivered
    std::size_t delivered{0};
    std::uint64_t bad_signatures{0};
};

void write_config(const DaemonSetup& s, std::uint16_t port, const std::string& crm_url)
{
    std::string cfg = "{\n  \"listen\": \"127.0.0.1:" + std::to_string(port) + "\",\n  \"workers\": " +
                      std::to_string(s.workers) + ",\n  \"redis\": {\"url\": \"redis://127.0.0.1:" +
                      std::to_string(s.redis_port) +
                      "/0\"},\n  \"api_tokens\": [{\"name\": \"bench\", \"token\": \"file:secrets/token\"}],\n"
                      "  \"alipay\": {\"apps\": [{\"app_id\": \"" + std::string(kAppId) + "\", \"seller_id\": \"" +
                      kSellerId + "\", \"alipay_public_key_file\": \"keys/alipay_public.pem\"}]},\n";
    if (!crm_url.empty()) {
        cfg += "  \"crm\": {\"url\": \"" + crm_url + "\", \"secret\": \"file:secrets/crm\"},\n";
    }
    cfg += "  \"log\": {\"level\": \"warning\"}\n}\n";
    std::ofstream(s.dir / "paybridge.json") << cfg;
}

// M bills and their distinct signed payment notifications (signing spread over every core).
void make_round_requests(const DaemonSetup& s, int round, int count, std::vector<Request>& bills,
                         std::vector<Request>& notifications)
{
    bills.assign(static_cast<std::size_t>(count), Request{});
    notifications.assign(static_cast<std::size_t>(count), Request{});
    const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (int i = static_cast<int>(t); i < count; i += static_cast<int>(threads)) {
                const std::string id = "R" + std::to_string(round) + "B" + std::to_string(1'000'000 + i);
                const std::int64_t fen = 100 + i % 100'000;
                Request& b = bills[static_cast<std::size_t>(i)];
                b.target = "/v1/bills";
                b.content_type = "application/json";
                b.authorization = "Bearer " + s.token;
                b.body = "{\"id\":\"" + id + "\",\"amount_fen\":" + std::to_string(fen) +
                         ",\"currency\":\"CNY\",\"customer_id\":\"c" + std::to_string(i % 1000) +
                         "\",\"description\":\"crm bench\"}";
                b.expect_status = 201;
                gateways::alipay::NoticeSpec spec;
                spec.app_id = kAppId;
                spec.seller_id = kSellerId;
                spec.out_trade_no = id;
                spec.amount_fen = fen;
                Request& n = notifications[static_cast<std::size_t>(i)];
                n.target = "/notify/alipay";
                n.content_type = "application/x-www-form-urlencoded; charset=utf-8";
                n.body = gateways::alipay::build_alipay_body(gateways::alipay::make_paid_notice(spec),
                                                              s.alipay_key.get());
                n.expect_status = 200;
                n.expect_body = "success";
            }
        });
    }
    for (std::thread& t : pool) {
        t.join();
    }
}

RoundResult daemon_round(const DaemonSetup& s, int round, bool with_crm, int count, int connections)
{
    RoundResult out;
    out.crm = with_crm;
    std::vector<Request> bills;
    std::vector<Request> notifications;
    std::fprintf(stderr, "round %d (%s CRM deliveries): signing %d notifications...\n", round,
                 with_crm ? "with" : "without", count);
    make_round_requests(s, round, count, bills, notifications);

    const std::string secret = "whsec_" + crypto::base64_encode(crypto::random_bytes(32));
    std::ofstream(s.dir / "secrets/crm") << secret;
    std::optional<FastReceiver> receiver;
    if (with_crm) {
        receiver.emplace(secret);
    }
    const std::uint16_t port = free_port();
    write_config(s, port, with_crm ? receiver->url() : std::string());
    Child daemon({s.daemon, "--config", (s.dir / "paybridge.json").string()},
                 s.dir / ("daemon-" + std::to_string(round) + ".log"));
    const auto ready_deadline = Clock::now() + 30s;
    while (http_get_status(port, "/readyz") != 200) {
        if (Clock::now() > ready_deadline) {
            throw std::runtime_error("paybridged did not become ready (see its log in " + s.dir.string() + ")");
        }
        std::this_thread::sleep_for(50ms);
    }
    const LoadResult registered = post_all(port, bills, connections);
    if (registered.failed != 0) {
        throw std::runtime_error(std::to_string(registered.failed) + " bills were not registered");
    }

    out.notify = post_all(port, notifications, connections);
    if (receiver) {
        out.delivered_during = receiver->distinct_ids();
        const auto drain_start = Clock::now();
        const auto deadline = drain_start + 300s;
        while (receiver->distinct_ids() < static_cast<std::size_t>(count) && Clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        out.drain_seconds = seconds_since(drain_start);
        out.delivered = receiver->distinct_ids();
        out.bad_signatures = receiver->bad_signatures();
    }
    const int status = daemon.stop(SIGTERM);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "paybridged did not exit cleanly (status %d)\n", status);
    }
    return out;
}

struct Options {
    int events{50'000};
    int concurrency{64};
    int notifications{8'000};
    int connections{32};
    int workers{2};
    int rounds{1};
    bool daemon_rounds{true};
    std::string daemon_path;
};

Options parse_options(int argc, char** argv)
{
    Options o;
#ifdef PAYBRIDGE_DAEMON_PATH
    o.daemon_path = PAYBRIDGE_DAEMON_PATH;
#endif
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                throw std::runtime_error(arg + " needs a value");
            }
            return argv[++i];
        };
        if (arg == "--events") {
            o.events = std::stoi(value());
        } else if (arg == "--concurrency") {
            o.concurrency = std::stoi(value());
        } else if (arg == "--notifications") {
            o.notifications = std::stoi(value());
        } else if (arg == "--connections") {
            o.connections = std::stoi(value());
        } else if (arg == "--workers") {
            o.workers = std::stoi(value());
        } else if (arg == "--rounds") {
            o.rounds = std::stoi(value());
        } else if (arg == "--daemon") {
            o.daemon_path = value();
        } else if (arg == "--no-daemon") {
            o.daemon_rounds = false;
        } else {
            throw std::runtime_error("unknown argument " + arg);
        }
    }
    if (o.events < 1 || o.concurrency < 1 || o.notifications < 1 || o.connections < 1 || o.rounds < 1) {
        throw std::runtime_error("counts must be positive");
    }
    if (o.daemon_rounds && o.daemon_path.empty()) {
        throw std::runtime_error("where is paybridged? give --daemon PATH (or --no-daemon)");
    }
    return o;
}

std::string fmt(const char* format, double v)
{
    char buf[64];
    std::snprintf(buf, sizeof buf, format, v);
    return buf;
}

int run(const Options& o)
{
    log::set_level(log::Level::warning);  // the dispatcher's start/stop lines would interleave with the table
    const unsigned cores = std::thread::hardware_concurrency();
    double load_at_start = 0;
    ::getloadavg(&load_at_start, 1);
    char dir_template[] = "/tmp/paybridge-crm-bench.XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) {
        throw std::runtime_error("mkdtemp failed");
    }
    const fs::path dir = dir_template;
    struct Cleanup {
        fs::path dir;
        ~Cleanup()
        {
            std::error_code ec;
            fs::remove_all(dir, ec);
        }
    } cleanup{dir};

    RedisServer redis(dir);
    const DispatchResult d = bench_dispatcher(redis.port, redis.child.pid(), o.events, o.concurrency);

    std::vector<RoundResult> rounds;
    if (o.daemon_rounds) {
        DaemonSetup s;
        s.dir = dir;
        s.daemon = o.daemon_path;
        s.redis_port = redis.port;
        s.workers = o.workers;
        s.token = keygen::random_token(40);
        const keygen::KeyPair keys = keygen::generate_rsa();
        s.alipay_key = *crypto::load_private_key(keys.private_pem);
        fs::create_directories(dir / "keys");
        fs::create_directories(dir / "secrets");
        std::ofstream(dir / "keys/alipay_public.pem") << keys.public_pem;
        std::ofstream(dir / "secrets/token") << s.token;
        int round = 0;
        for (int r = 0; r < o.rounds; ++r) {
            rounds.push_back(daemon_round(s, ++round, false, o.notifications, o.connections));
            rounds.push_back(daemon_round(s, ++round, true, o.notifications, o.connections));
        }
    }

    std::printf("\n### CRM delivery\n\n");
    std::printf("Machine: %u cores, load average %.2f when the run started; redis-server on loopback, no "
                "persistence; receiver, dispatcher and load generator on the same machine.\n\n",
                cores, load_at_start);
    std::printf("| measurement | value |\n|---|---:|\n");
    std::printf("| events written by the bill script (register + apply), pre-fill | %d in %.2f s |\n", d.events,
                d.fill_seconds);
    std::printf("| **events delivered/s** (crm::Dispatcher, concurrency %d, signed, attempt recorded, "
                "204 receiver) | **%s** |\n",
                o.concurrency, fmt("%.0f", d.events / d.seconds).c_str());
    std::printf("| time to deliver all %d | %.2f s |\n", d.events, d.seconds);
    std::printf("| attempts / failed attempts | %llu / %llu |\n", static_cast<unsigned long long>(d.attempts),
                static_cast<unsigned long long>(d.failed_attempts));
    std::printf("| receiver: requests / distinct webhook-ids / bad signatures | %llu / %zu / %llu |\n",
                static_cast<unsigned long long>(d.received), d.distinct,
                static_cast<unsigned long long>(d.bad_signatures));
    std::printf("| delivery records in Redis (state delivered) | %lld |\n", d.delivered_records);
    const double per_event_us = 1e6 / d.events;
    std::printf("| CPU per event: dispatcher thread / redis-server / receiver | %.0f / %.0f / %.0f us |\n",
                d.dispatcher_cpu * per_event_us, d.redis_cpu * per_event_us, d.receiver_cpu * per_event_us);
    // What the CPU time allows on this machine's cores were nothing else running: no thread faster than
    // its own CPU cost, and all of them together no faster than the cores can serve.
    const double busiest = std::max({d.dispatcher_cpu, d.redis_cpu, d.receiver_cpu, 1e-9});
    const double total = std::max(d.dispatcher_cpu + d.redis_cpu + d.receiver_cpu, 1e-9);
    const double ceiling = std::min(d.events / busiest, std::max(1u, cores) * d.events / total);
    std::printf("| ceiling from that CPU time on %u idle cores | %s events/s |\n", cores,
                fmt("%.0f", ceiling).c_str());
    if (!rounds.empty()) {
        std::printf("\npaybridged workers=%d, %d keep-alive connections, %d distinct Alipay notifications per "
                    "round (RSA2 verify + Lua apply):\n\n",
                    o.workers, o.connections, o.notifications);
        std::printf("| round | notifications/s | p50 ms | p99 ms | non-success | delivered during / after "
                    "(drain s) |\n|---|---:|---:|---:|---:|---|\n");
        double off = 0;
        double on = 0;
        for (std::size_t i = 0; i < rounds.size(); ++i) {
            const RoundResult& r = rounds[i];
            (r.crm ? on : off) += r.notify.rate();
            std::printf("| %zu: %s | %.0f | %.2f | %.2f | %zu | %s |\n", i + 1,
                        r.crm ? "CRM deliveries running" : "no CRM configured", r.notify.rate(), r.notify.p50_ms,
                        r.notify.p99_ms, r.notify.failed,
                        r.crm ? (std::to_string(r.delivered_during) + " / " + std::to_string(r.delivered) + " (" +
                                 fmt("%.2f", r.drain_seconds) + " s), bad signatures " +
                                 std::to_string(r.bad_signatures))
                                    .c_str()
                              : "-");
        }
        // Rounds alternate (without, with): each pair's ratio compares two loads seconds apart, and the
        // median of the pairs is what drift on a shared machine disturbs least.
        std::vector<double> pairs;
        for (std::size_t i = 0; i + 1 < rounds.size(); i += 2) {
            if (!rounds[i].crm && rounds[i + 1].crm && rounds[i].notify.rate() > 0) {
                pairs.push_back(100.0 * rounds[i + 1].notify.rate() / rounds[i].notify.rate());
            }
        }
        std::sort(pairs.begin(), pairs.end());
        const double median = pairs.empty() ? 0
                              : pairs.size() % 2 == 1 ? pairs[pairs.size() / 2]
                                                      : (pairs[pairs.size() / 2 - 1] + pairs[pairs.size() / 2]) / 2;
        std::printf("\nNotification rate with deliveries running: %s %% of the rate without (median of %zu "
                    "alternating pairs; all rounds together: %s %%).\n",
                    fmt("%.0f", median).c_str(), pairs.size(), fmt("%.0f", off > 0 ? 100.0 * on / off : 0).c_str());
    }
    const bool complete = d.distinct == static_cast<std::size_t>(d.events) && d.bad_signatures == 0 &&
                          d.delivered_records == d.events;
    if (!complete) {
        std::fprintf(stderr, "INCOMPLETE: not every event was delivered exactly as expected\n");
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv)
{
    try {
        return run(parse_options(argc, argv));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "paybridge_crm_bench: %s\n", e.what());
        return 2;
    }
}
