// RedisConnection in Sentinel mode against real redis-servers: a master, its replica and a
// sentinel (redis-server --sentinel) that can fail it over; and a scripted "sentinel" for the
// answers a real one gives only in a race or from a stale view (a replica, a node that is down).

#include "store/redis_connection.hpp"

#include "core/error.hpp"
#include "core/log.hpp"
#include "tests/integration/store/store_fixture.hpp"
#include "tests/support/log_capture.hpp"
#include "tests/support/process.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace asio = boost::asio;
using paybridge::errc;
using paybridge::Result;
using paybridge::config::Endpoint;
using paybridge::config::RedisConfig;
using paybridge::store::RedisConnection;
using paybridge::store::Reply;
using paybridge::test::RedisTestServer;
using namespace std::chrono_literals;

namespace {

const std::string kMaster = "pbmaster";

/// A connection on its own io_context, stopped (and its io_context run dry) on destruction.
struct Client {
    asio::io_context ctx;
    std::unique_ptr<RedisConnection> conn;
    std::string sha;

    explicit Client(const RedisConfig& cfg, bool with_script = true, paybridge::store::ConnectionChecks checks = {})
    {
        conn = std::make_unique<RedisConnection>(ctx.get_executor(), cfg);
        conn->set_checks(checks);
        if (with_script) {  // a sentinel has no SCRIPT LOAD
            sha = conn->add_script("return redis.call('INCR', KEYS[1])");
        }
        conn->start();
    }
    ~Client()
    {
        conn->stop();
        ctx.restart();
        ctx.run_for(2s);
    }

    bool wait_ready(std::chrono::milliseconds limit = 10s)
    {
        return paybridge::test::run_until(ctx, [this] { return conn->ready(); }, limit);
    }

    Result<Reply> exec(std::vector<std::string> argv)
    {
        return paybridge::test::run_awaitable(ctx, conn->exec(std::move(argv)));
    }

    /// The port of the node the connection is on (0 while it has none).
    int node_port()
    {
        const Result<Reply> r = exec({"CONFIG", "GET", "port"});
        return r && r->is_array() && r->elements.size() == 2 ? std::stoi(r->elements[1].str) : 0;
    }
};

RedisConfig sentinel_config(std::vector<Endpoint> nodes, std::string master = kMaster)
{
    RedisConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = 1;  // never used in Sentinel mode
    cfg.request_timeout = 2000ms;
    cfg.connect_timeout = 500ms;
    cfg.sentinel.master = std::move(master);
    cfg.sentinel.nodes = std::move(nodes);
    return cfg;
}

Endpoint at(std::uint16_t port) { return Endpoint{"127.0.0.1", port}; }

/// A plain connection to one server (a sentinel, or a data node), for setting up and looking.
Result<Reply> ask(std::uint16_t port, std::vector<std::string> argv)
{
    RedisConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = port;
    cfg.connect_timeout = 500ms;
    // A look at any node (a sentinel, a replica): neither its role nor a key layout matters.
    Client c(cfg, false, paybridge::store::ConnectionChecks{.master = false, .layout = false});
    if (!c.wait_ready(5s)) {
        return paybridge::make_error_code(errc::store_unavailable);
    }
    return c.exec(std::move(argv));
}

bool replica_in_sync(std::uint16_t master_port)
{
    const Result<Reply> info = ask(master_port, {"INFO", "replication"});
    return info && info->str.find("state=online") != std::string::npos;
}

/// A file descriptor, closed on destruction (also when a REQUIRE ends the test early).
class Fd {
public:
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&&) = delete;
    ~Fd()
    {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    int get() const noexcept { return fd_; }

private:
    int fd_;
};

/// A TCP listener on 127.0.0.1 and a free port (set in `port`).
Fd listen_on_loopback(std::uint16_t& port)
{
    Fd fd(::socket(AF_INET, SOCK_STREAM, 0));
    REQUIRE(fd.get() >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd.get(), 16) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
    return fd;
}

/// A scripted sentinel: answers every SENTINEL get-master-addr-by-name with `port` on 127.0.0.1
/// (whatever the name; port 0: nil, "no such master"; answer() changes it) and counts the
/// questions. One thread, one connection at a time.
class FakeSentinel {
public:
    explicit FakeSentinel(std::uint16_t answer_port) : answer_(answer_port), fd_(listen_on_loopback(port_))
    {
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeSentinel()
    {
        stopping_ = true;
        ::shutdown(fd_.get(), SHUT_RDWR);  // ends the accept; the descriptor is closed after the thread
        thread_.join();
    }
    std::uint16_t port() const { return port_; }
    int questions() const { return questions_.load(); }
    /// From now on, names `answer_port` (0: nil).
    void answer(std::uint16_t answer_port) { answer_ = answer_port; }

private:
    void serve()
    {
        while (!stopping_) {
            const int c = ::accept(fd_.get(), nullptr, nullptr);
            if (c < 0) {
                return;
            }
            std::string in;
            char buf[512];
            // The question is one RESP array of 3 bulk strings; the name is its last line.
            while (in.find(kMaster + "\r\n") == std::string::npos) {
                const ssize_t n = ::read(c, buf, sizeof buf);
                if (n <= 0) {
                    break;
                }
                in.append(buf, static_cast<std::size_t>(n));
            }
            if (in.find("get-master-addr-by-name") != std::string::npos) {
                ++questions_;
                const std::uint16_t named = answer_.load();
                const std::string port = std::to_string(named);
                const std::string reply =
                    named == 0 ? std::string("*-1\r\n")
                                 : "*2\r\n$9\r\n127.0.0.1\r\n$" + std::to_string(port.size()) + "\r\n" + port + "\r\n";
                (void)!::write(c, reply.data(), reply.size());
            }
            ::close(c);
        }
    }

    std::atomic<std::uint16_t> answer_;
    std::uint16_t port_{0};
    Fd fd_;
    std::atomic<bool> stopping_{false};
    std::atomic<int> questions_{0};
    std::thread thread_;
};

using Logs = paybridge::test::LogCapture;

/// Runs the client's io_context for `duration`; true if the connection was ready all along.
bool stays_ready(Client& client, std::chrono::milliseconds duration)
{
    return !paybridge::test::run_until(client.ctx, [&] { return !client.conn->ready(); }, duration);
}

}  // namespace

TEST_CASE("Sentinel: the master the sentinels name, past a dead sentinel, and after a failover the new one")
{
    RedisTestServer master;
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(master.port())});
    const auto sentinel = RedisTestServer::sentinel(master.port(), kMaster);
    const std::uint16_t dead = paybridge::test::free_port();  // nothing listens there

    Client client(sentinel_config({at(dead), at(sentinel->port())}));
    REQUIRE(client.wait_ready());
    CHECK(client.node_port() == master.port());
    const Result<Reply> first = paybridge::test::run_awaitable(client.ctx, client.conn->eval(client.sha, {"n"}, {}));
    REQUIRE(first.has_value());
    CHECK(first->integer == 1);

    // A failover needs a replica in sync (Redis 7 waits a few seconds before a diskless sync) that
    // the sentinel knows of (it reads the master's INFO every ten seconds outside a failover):
    // until then SENTINEL FAILOVER answers NOGOODSLAVE.
    REQUIRE(paybridge::test::run_until(client.ctx, [&] { return replica_in_sync(master.port()); }, 20s));
    Result<Reply> failover = paybridge::make_error_code(errc::store_unavailable);
    for (int i = 0; i < 60; ++i) {
        failover = ask(sentinel->port(), {"SENTINEL", "FAILOVER", kMaster});
        if (failover && failover->is_status("OK")) {
            break;
        }
        paybridge::test::run_for(client.ctx, 500ms);
    }
    REQUIRE(failover.has_value());
    REQUIRE(failover->is_status("OK"));

    // The old master keeps answering as a master for about ten seconds, until Sentinel makes it a
    // replica and kills its clients: the connection moves within a few seconds because it asks
    // the sentinels every second (without that it took 52 rounds here, with it 5).
    int port = 0;
    for (int i = 0; i < 25 && port != replica.port(); ++i) {
        paybridge::test::run_for(client.ctx, 200ms);
        port = client.node_port();
    }
    CHECK(port == replica.port());
    CHECK(client.conn->stats().reconnects.load() >= 1);
    // The scripts were loaded on the new master, and what the old one had was replicated.
    const Result<Reply> second = paybridge::test::run_awaitable(client.ctx, client.conn->eval(client.sha, {"n"}, {}));
    REQUIRE(second.has_value());
    CHECK(second->integer == 2);
    const Result<Reply> role = client.exec({"ROLE"});
    REQUIRE(role.has_value());
    CHECK(role->elements.at(0).str == "master");
}

TEST_CASE("Sentinel: an unknown master name, a wrong sentinel password and a stale answer never become ready")
{
    RedisTestServer master;
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(master.port())});

    SUBCASE("a name the sentinel does not monitor")
    {
        const auto sentinel = RedisTestServer::sentinel(master.port(), kMaster);
        Client client(sentinel_config({at(sentinel->port())}, "other"));
        // Two attempts over (the run loop counts each new one): the answer was asked for and
        // refused twice, and nothing came of it.
        CHECK(paybridge::test::run_until(
            client.ctx, [&] { return client.conn->stats().reconnects.load() >= 2; }, 5s));
        CHECK_FALSE(client.conn->ready());
        const Result<Reply> r = client.exec({"PING"});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error() == paybridge::make_error_code(errc::store_unavailable));
        // The same answer (nil) from a scripted sentinel: asked on every attempt, never believed.
        FakeSentinel none(0);
        Client again(sentinel_config({at(none.port())}));
        // A second question comes only after the first attempt ended.
        CHECK(paybridge::test::run_until(again.ctx, [&] { return none.questions() >= 2; }, 5s));
        CHECK_FALSE(again.conn->ready());
    }

    SUBCASE("sentinels with a password: the right one connects, a wrong one does not")
    {
        const auto sentinel = RedisTestServer::sentinel(master.port(), kMaster, {"--requirepass", "sentinel pw"});
        RedisConfig cfg = sentinel_config({at(sentinel->port())});
        cfg.sentinel.password = "sentinel pw";
        {
            Client client(cfg);
            REQUIRE(client.wait_ready());
            CHECK(client.node_port() == master.port());
        }
        cfg.sentinel.password = "wrong";
        Client refused(cfg);
        CHECK(paybridge::test::run_until(
            refused.ctx, [&] { return refused.conn->stats().reconnects.load() >= 2; }, 5s));
        CHECK_FALSE(refused.conn->ready());
    }

    SUBCASE("a sentinel that names a replica (a stale answer during a failover) is not believed")
    {
        FakeSentinel stale(replica.port());
        Client client(sentinel_config({at(stale.port())}));
        // Asked again on every attempt: a second question means the first attempt (the handshake
        // with the replica it named) is over. Had it been believed, the connection would be ready
        // and stay so.
        CHECK(paybridge::test::run_until(client.ctx, [&] { return stale.questions() >= 2; }, 5s));
        CHECK_FALSE(client.conn->ready());
    }

    SUBCASE("a write refused with READONLY sends the connection back to the sentinels")
    {
        // The scripted sentinel names the master; the master is then made a replica behind the
        // connection's back, so its next write is refused.
        FakeSentinel names(master.port());
        Client client(sentinel_config({at(names.port())}));
        REQUIRE(client.wait_ready());
        const int asked = names.questions();
        REQUIRE(ask(master.port(), {"REPLICAOF", "127.0.0.1", std::to_string(replica.port())}).has_value());
        const Result<Reply> refused = client.exec({"SET", "k", "v"});
        REQUIRE(refused.has_value());
        CHECK(refused->is_error());
        CHECK(refused->str.starts_with("READONLY"));
        // It reconnects and asks again; the sentinel still names the same node, and HELLO's role
        // keeps it off it (now a replica). Without the READONLY handling the connection would stay
        // on that node, ready, and the watch (asking every second) would see no move. Two more
        // questions: the first reconnection's handshake is over.
        CHECK(paybridge::test::run_until(client.ctx, [&] { return names.questions() >= asked + 2; }, 5s));
        CHECK_FALSE(client.conn->ready());
        CHECK(client.conn->stats().reconnects.load() >= 1);
    }
}

TEST_CASE("Sentinel: a stale sentinel asked first does not keep the connection from the master another one names")
{
    RedisTestServer master;
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(master.port())});
    FakeSentinel good(master.port());
    // What a sentinel that missed a failover, or one partitioned away, answers: a replica, or a
    // node that is gone.
    std::uint16_t stale_answer = 0;
    SUBCASE("it names a replica")
    {
        stale_answer = replica.port();
    }
    SUBCASE("it names a node that is down")
    {
        stale_answer = paybridge::test::free_port();
    }
    FakeSentinel stale(stale_answer);

    Client client(sentinel_config({at(stale.port()), at(good.port())}));
    // The stale answer is tried and the next sentinel asked in the same round: the first attempt
    // is the one that succeeds (no backoff, no second round).
    REQUIRE(client.wait_ready(5s));
    CHECK(client.conn->stats().reconnects.load() == 0);
    CHECK(stale.questions() == 1);
    CHECK(client.node_port() == master.port());
    const Result<Reply> set = client.exec({"SET", "k", "v"});
    REQUIRE(set.has_value());
    CHECK(set->is_status("OK"));

    // The sentinel whose answer held is asked first from now on: by the watch every second, and
    // after the connection is lost (killed here by the server).
    const int stale_asked = stale.questions();
    const int good_asked = good.questions();
    REQUIRE(ask(master.port(), {"CLIENT", "KILL", "TYPE", "normal"}).has_value());
    REQUIRE(paybridge::test::run_until(
        client.ctx, [&] { return client.conn->stats().reconnects.load() >= 1 && client.conn->ready(); }, 5s));
    paybridge::test::run_for(client.ctx, 1500ms);
    CHECK(client.conn->ready());
    CHECK(good.questions() > good_asked);
    CHECK(stale.questions() == stale_asked);
    CHECK(client.node_port() == master.port());
}

TEST_CASE("Sentinel: while the sentinel that named the master is unreachable a stale one does not move the connection")
{
    RedisTestServer master;
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(master.port())});
    const auto good = RedisTestServer::sentinel(master.port(), kMaster);
    FakeSentinel stale(replica.port());

    Client client(sentinel_config({at(good->port()), at(stale.port())}));
    REQUIRE(client.wait_ready());
    REQUIRE(client.node_port() == master.port());
    const std::uint64_t reconnects = client.conn->stats().reconnects.load();
    const int stale_asked = stale.questions();

    Logs logs;
    SUBCASE("it is down (connections refused)")
    {
        good->stop();
    }
    SUBCASE("it is frozen (no answer within connect_timeout)")
    {
        good->freeze();
    }
    // The watch asks every second; the good sentinel fails, the stale one names the replica,
    // which reports role replica while the current master still reports master: nothing moves.
    CHECK(stays_ready(client, 5s));
    CHECK(stale.questions() >= stale_asked + 2);  // the stale answer was heard, and more than once
    CHECK(client.conn->stats().reconnects.load() == reconnects);
    CHECK(logs.count("redis.master_moved") == 0);
    CHECK(logs.count("redis.sentinel_disagrees") == 1);  // once, not every second
    CHECK(client.node_port() == master.port());
    const Result<Reply> set = client.exec({"SET", "k", "v"});
    REQUIRE(set.has_value());
    CHECK(set->is_status("OK"));

    // Back: it names the same master, and the connection was never dropped.
    if (good->running()) {
        good->thaw();
    } else {
        good->restart();
    }
    CHECK(stays_ready(client, 2s));
    CHECK(client.conn->stats().reconnects.load() == reconnects);
}

TEST_CASE("Sentinel: the watch moves to a node named that reports master and leaves a master that was demoted")
{
    RedisTestServer master;
    RedisTestServer replica({"--replicaof", "127.0.0.1", std::to_string(master.port())});
    RedisTestServer other;  // a master of its own
    FakeSentinel sentinel(master.port());
    Client client(sentinel_config({at(sentinel.port())}));
    REQUIRE(client.wait_ready());
    REQUIRE(client.node_port() == master.port());

    // The sentinel names another master (a failover it ran): the connection follows it.
    sentinel.answer(other.port());
    CHECK(paybridge::test::run_until(client.ctx, [&] { return client.node_port() == other.port(); }, 5s));
    const std::uint64_t reconnects = client.conn->stats().reconnects.load();
    CHECK(reconnects >= 1);

    // It names a replica while the current node still says master: the connection stays.
    sentinel.answer(replica.port());
    CHECK(stays_ready(client, 2500ms));
    CHECK(client.node_port() == other.port());
    CHECK(client.conn->stats().reconnects.load() == reconnects);

    // The current node is made a replica (its clients are not killed): the watch sees that it no
    // longer is a master and leaves it; the replica named is no master either, so nothing is
    // ready until the sentinel names a master again.
    REQUIRE(ask(other.port(), {"REPLICAOF", "127.0.0.1", std::to_string(master.port())}).has_value());
    CHECK(paybridge::test::run_until(client.ctx, [&] { return !client.conn->ready(); }, 5s));
    sentinel.answer(master.port());
    REQUIRE(client.wait_ready(10s));
    CHECK(client.node_port() == master.port());
}

TEST_CASE("Sentinel: stop() ends a question to a sentinel that never answers at once, not at its deadline")
{
    // A listener that never accepts: the connection is made (the kernel's backlog), the question
    // is sent, and no answer ever comes.
    std::uint16_t port = 0;
    const Fd listener = listen_on_loopback(port);  // closed after the connection (declared first)
    RedisConfig cfg = sentinel_config({at(port)});
    cfg.connect_timeout = 10s;
    asio::io_context ctx;
    auto conn = std::make_unique<RedisConnection>(ctx.get_executor(), cfg);
    conn->start();
    paybridge::test::run_for(ctx, 300ms);
    CHECK_FALSE(conn->ready());
    conn->stop();
    const auto start = std::chrono::steady_clock::now();
    ctx.restart();
    ctx.run_for(20s);  // returns as soon as nothing is left to do
    CHECK(ctx.stopped());
    // Well under the 10 s deadline the question would otherwise be left to (the wrong behaviour:
    // stop() waiting it out). Normally it ends within milliseconds.
    CHECK(std::chrono::steady_clock::now() - start < cfg.connect_timeout / 2);
    conn.reset();
}
