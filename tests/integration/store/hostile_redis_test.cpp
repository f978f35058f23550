// RedisConnection against servers that misbehave on the wire: a reply nothing asked for, a reply
// that never ends, a reply that trickles in, a cluster map naming too many masters. A scripted TCP
// server on loopback plays Redis; the connection must drop it (and reconnect) instead of buffering
// without limit or waiting for ever.

#include "config/config.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "store/cluster_slot.hpp"
#include "store/redis_connection.hpp"
#include "tests/integration/store/store_fixture.hpp"
#include "tests/support/log_capture.hpp"

#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using paybridge::Result;
using paybridge::store::RedisConnection;
using paybridge::store::Reply;
using namespace std::chrono_literals;

namespace {

/// A loopback listener whose `script` runs once per accepted connection on the server's own
/// thread, with a deadline to respect; `written` counts the bytes it managed to send.
class ScriptedServer {
public:
    using Script = std::function<void(int fd, ScriptedServer& self)>;

    explicit ScriptedServer(Script script) : script_(std::move(script))
    {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(listener_ >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listener_, 16) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~ScriptedServer()
    {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }
    ScriptedServer(const ScriptedServer&) = delete;
    ScriptedServer& operator=(const ScriptedServer&) = delete;

    std::uint16_t port() const { return port_; }
    bool stopping() const { return stop_; }

    std::atomic<std::size_t> written{0};   ///< bytes sent on every connection together
    std::atomic<int> accepted{0};
    std::atomic<int> closed_by_client{0};  ///< connections the client closed while the script ran

    /// Sends all of `data` unless the client closes the connection or the server stops; false then.
    bool send_all(int fd, std::string_view data)
    {
        while (!data.empty()) {
            if (stop_) {
                return false;
            }
            pollfd p{.fd = fd, .events = POLLOUT, .revents = 0};
            if (::poll(&p, 1, 50) <= 0) {
                continue;
            }
            const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    continue;
                }
                ++closed_by_client;
                return false;
            }
            written += static_cast<std::size_t>(n);
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    /// Reads what the client sent until `text` is in it; false if it closed or the server stops.
    bool read_until(int fd, std::string_view text, std::string& got)
    {
        char buf[4096];
        while (got.find(text) == std::string::npos) {
            if (stop_) {
                return false;
            }
            pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
            if (::poll(&p, 1, 50) <= 0) {
                continue;
            }
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) {
                ++closed_by_client;
                return false;
            }
            got.append(buf, static_cast<std::size_t>(n));
        }
        return true;
    }

private:
    void serve()
    {
        while (!stop_) {
            pollfd p{.fd = listener_, .events = POLLIN, .revents = 0};
            if (::poll(&p, 1, 50) <= 0) {
                continue;
            }
            const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                continue;
            }
            ++accepted;
            script_(fd, *this);
            ::close(fd);
        }
    }

    Script script_;
    int listener_{-1};
    std::uint16_t port_{0};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

paybridge::config::RedisConfig config_for(const ScriptedServer& server)
{
    paybridge::config::RedisConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = server.port();
    cfg.request_timeout = 30s;  // longer than any test: only the limits under test end a reply
    cfg.connect_timeout = 2s;
    return cfg;
}

/// Sends a bulk string header announcing 1 GiB, then its bytes, 64 KiB at a time, until the client
/// closes the connection (or 256 MiB went out: the test has failed by then).
void endless_bulk(int fd, ScriptedServer& self)
{
    if (!self.send_all(fd, "$1073741824\r\n")) {
        return;
    }
    const std::string chunk(64 * 1024, 'x');
    while (self.written < (256u << 20) && self.send_all(fd, chunk)) {
    }
}

using Logs = paybridge::test::LogCapture;

/// The next whole command the client sent (a RESP array of bulk strings), read into `buf` as
/// needed; empty when the client closed or the server stops.
std::vector<std::string> next_command(int fd, ScriptedServer& self, std::string& buf)
{
    for (;;) {
        std::vector<std::string> argv;
        std::size_t pos = 0;
        const auto line = [&]() -> std::optional<std::string> {
            const std::size_t end = buf.find("\r\n", pos);
            if (end == std::string::npos) {
                return std::nullopt;
            }
            std::string l = buf.substr(pos, end - pos);
            pos = end + 2;
            return l;
        };
        if (std::optional<std::string> head = line(); head && (*head)[0] == '*') {
            const int n = std::stoi(head->substr(1));
            bool whole = true;
            for (int i = 0; i < n && whole; ++i) {
                std::optional<std::string> len = line();
                if (!len) {
                    whole = false;
                    break;
                }
                const std::size_t l = std::stoul(len->substr(1));
                if (buf.size() < pos + l + 2) {
                    whole = false;
                    break;
                }
                argv.push_back(buf.substr(pos, l));
                pos += l + 2;
            }
            if (whole) {
                buf.erase(0, pos);
                return argv;
            }
        }
        std::string more;
        if (!self.read_until(fd, "\n", more)) {
            return {};
        }
        buf += more;
    }
}

std::string bulk(std::string_view s) { return "$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n"; }

/// A CLUSTER SLOTS reply: slot i belongs to owner(i); consecutive slots of one owner are one range.
std::string slots_reply(const std::function<paybridge::config::Endpoint(int)>& owner)
{
    std::string ranges;
    int count = 0;
    int start = 0;
    for (int slot = 1; slot <= 16384; ++slot) {
        if (slot < 16384 && owner(slot) == owner(start)) {
            continue;
        }
        const paybridge::config::Endpoint at = owner(start);
        ranges += "*3\r\n:" + std::to_string(start) + "\r\n:" + std::to_string(slot - 1) + "\r\n*2\r\n" + bulk(at.host) +
                  ":" + std::to_string(at.port) + "\r\n";
        ++count;
        start = slot;
    }
    return "*" + std::to_string(count) + "\r\n" + ranges;
}

/// `n` distinct endpoints on which nothing answers (127.1.x.y, port 1: connections are refused).
paybridge::config::Endpoint nowhere(int i)
{
    return {"127.1." + std::to_string(i / 256) + "." + std::to_string(i % 256), 1};
}

paybridge::config::RedisConfig cluster_config_for(const ScriptedServer& server)
{
    paybridge::config::RedisConfig cfg = config_for(server);
    cfg.host = "192.0.2.1";  // not used with Cluster
    cfg.cluster.nodes.push_back(paybridge::config::Endpoint{"127.0.0.1", server.port()});
    return cfg;
}

/// A scripted server plays only the commands each test is about: no role or key-layout check.
constexpr paybridge::store::ConnectionChecks kScripted{.master = false, .layout = false};

/// The one request these tests send.
std::vector<std::string> get_k() { return {"GET", "k"}; }

}  // namespace

TEST_SUITE("store/hostile_redis")
{
    TEST_CASE("bytes nobody asked for: the connection is dropped at once, not read into memory")
    {
        // With no handshake to do (no password, no db, no script, no checks), the connection is ready as soon
        // as it is connected; the server then streams a reply no request is waiting for.
        ScriptedServer server(endless_bulk);
        Logs logs;
        asio::io_context ctx;
        RedisConnection conn(ctx.get_executor(), config_for(server));
        conn.set_checks(kScripted);
        conn.start();
        REQUIRE(paybridge::test::run_until(ctx, [&] { return server.closed_by_client > 0; }, 10s));
        // What the kernel's socket buffers took before the close, not the 256 MiB on offer.
        CHECK(server.written < (32u << 20));
        CHECK(logs.has("redis.unexpected_reply"));
        // And it connects again.
        CHECK(paybridge::test::run_until(ctx, [&] { return server.accepted >= 2; }, 10s));
        conn.stop();
        ctx.restart();
        ctx.run_for(2s);
    }

    TEST_CASE("a reply that never ends is cut off at 32 MiB: the request fails, the connection is made again")
    {
        ScriptedServer server([](int fd, ScriptedServer& self) {
            std::string got;
            if (self.read_until(fd, "GET", got)) {
                endless_bulk(fd, self);
            }
        });
        Logs logs;
        asio::io_context ctx;
        RedisConnection conn(ctx.get_executor(), config_for(server));
        conn.set_checks(kScripted);
        conn.start();
        REQUIRE(paybridge::test::run_until(ctx, [&] { return conn.ready(); }, 10s));
        const Result<Reply> reply = paybridge::test::run_awaitable(ctx, conn.exec(get_k()), 20s);
        CHECK_FALSE(reply.has_value());
        // The server's thread notices the close on its next send.
        REQUIRE(paybridge::test::run_until(ctx, [&] { return server.closed_by_client > 0; }, 10s));
        CHECK(server.written >= (32u << 20));
        CHECK(server.written < (64u << 20));
        CHECK(logs.has("redis.reply_too_large"));
        CHECK(paybridge::test::run_until(ctx, [&] { return server.accepted >= 2; }, 10s));
        conn.stop();
        ctx.restart();
        ctx.run_for(2s);
    }

    TEST_CASE("a reply of more than a million objects is refused before it is built")
    {
        // Under the 32 MiB limit on the wire, but millions of objects in memory: an array of four
        // million integers (16 MiB), then an array that declares 500 million elements in 14 bytes.
        // The connection made after each answers properly.
        ScriptedServer server([](int fd, ScriptedServer& self) {
            const int n = self.accepted;
            std::string got;
            if (!self.read_until(fd, "GET", got)) {
                return;
            }
            if (n == 1) {
                std::string reply = "*4000000\r\n";
                for (int i = 0; i < 4'000'000; ++i) {
                    reply += ":1\r\n";
                }
                self.send_all(fd, reply);
            } else if (n == 2) {
                self.send_all(fd, "*500000000\r\n:1\r\n");
            } else {
                self.send_all(fd, "*2\r\n$2\r\nok\r\n*1000\r\n" + [] {
                    std::string elements;
                    for (int i = 0; i < 1000; ++i) {
                        elements += ":7\r\n";
                    }
                    return elements;
                }());
            }
            while (!self.stopping() && self.read_until(fd, "never sent", got)) {
            }
        });
        Logs logs;
        asio::io_context ctx;
        RedisConnection conn(ctx.get_executor(), config_for(server));
        conn.set_checks(kScripted);
        conn.start();
        rusage before{};
        ::getrusage(RUSAGE_SELF, &before);
        for (int attempt = 1; attempt <= 2; ++attempt) {
            CAPTURE(attempt);
            REQUIRE(paybridge::test::run_until(ctx, [&] { return conn.ready() && server.accepted == attempt; }, 10s));
            const auto start = std::chrono::steady_clock::now();
            const Result<Reply> reply = paybridge::test::run_awaitable(ctx, conn.exec(get_k()), 20s);
            CHECK_FALSE(reply.has_value());
            // Failed when the reader saw too many, not at the request's deadline.
            CHECK(std::chrono::steady_clock::now() - start < 5s);
            CHECK(logs.has("a reply of more than 1048576 objects"));
        }
        rusage after{};
        ::getrusage(RUSAGE_SELF, &after);
        // Peak RSS (KiB): what a reply of millions of objects would have cost is hundreds of MB.
        CHECK(after.ru_maxrss - before.ru_maxrss < 100 * 1024);
        REQUIRE(paybridge::test::run_until(ctx, [&] { return conn.ready() && server.accepted == 3; }, 10s));
        const Result<Reply> ok = paybridge::test::run_awaitable(ctx, conn.exec(get_k()), 10s);
        REQUIRE(ok.has_value());
        REQUIRE(ok->is_array());
        REQUIRE(ok->elements.size() == 2);
        CHECK(ok->elements[0].str == "ok");
        REQUIRE(ok->elements[1].elements.size() == 1000);
        CHECK(ok->elements[1].elements[999].integer == 7);
        conn.stop();
        ctx.restart();
        ctx.run_for(2s);
    }

    TEST_CASE("cluster: a reply that trickles in does not keep a stuck node's connection alive")
    {
        // The node owns every slot; it answers GET one byte every 50 ms (a 100-byte bulk string:
        // 5 s). Cluster requests carry their own deadline, so a request that times out leaves the
        // connection up unless no reply came for request_timeout: bytes of a reply that does not
        // end are not a reply. (The map refresh that a failed request asks for, with no deadline
        // of its own, would also time out and drop the connection.)
        ScriptedServer server([](int fd, ScriptedServer& self) {
            std::string buf;
            for (;;) {
                const std::vector<std::string> argv = next_command(fd, self, buf);
                if (argv.empty()) {
                    return;
                }
                if (argv.size() >= 2 && argv[0] == "CLUSTER" && argv[1] == "SLOTS") {
                    const auto self_owner = [&self](int) { return paybridge::config::Endpoint{"127.0.0.1", self.port()}; };
                    if (!self.send_all(fd, slots_reply(self_owner))) {
                        return;
                    }
                } else if (argv[0] == "GET") {
                    if (!self.send_all(fd, "$100\r\n")) {
                        return;
                    }
                    for (int i = 0; i < 100; ++i) {
                        if (!self.send_all(fd, "x")) {
                            return;
                        }
                        std::this_thread::sleep_for(50ms);
                    }
                    if (!self.send_all(fd, "\r\n")) {
                        return;
                    }
                } else if (!self.send_all(fd, "-ERR unknown command\r\n")) {
                    return;
                }
            }
        });
        auto cfg = cluster_config_for(server);
        cfg.request_timeout = 400ms;
        Logs logs;
        asio::io_context ctx;
        RedisConnection conn(ctx.get_executor(), cfg);
        conn.set_checks(kScripted);
        conn.start();
        REQUIRE(paybridge::test::run_until(ctx, [&] { return conn.ready(); }, 10s));
        for (int i = 0; i < 2; ++i) {
            const Result<Reply> reply = paybridge::test::run_awaitable(ctx, conn.exec(get_k()), 10s);
            CHECK_FALSE(reply.has_value());
        }
        // The second request found the connection without a reply for longer than request_timeout:
        // dropped (well before the trickle's 5 s were over).
        CHECK(paybridge::test::run_until(ctx, [&] { return server.closed_by_client > 0; }, 3s));
        CHECK(logs.has("redis.timeout"));
        conn.stop();
        ctx.restart();
        ctx.run_for(2s);
    }

    TEST_CASE("cluster: a slot map naming more than 1000 masters is refused, a redirection past 1000 nodes not followed")
    {
        const int key_slot = paybridge::store::key_slot("k");
        // masters: how many other masters the map names besides this node (which owns "k").
        std::atomic<int> masters{1001};
        std::atomic<int> maps{0};
        ScriptedServer server([&](int fd, ScriptedServer& self) {
            std::string buf;
            for (;;) {
                const std::vector<std::string> argv = next_command(fd, self, buf);
                if (argv.empty()) {
                    return;
                }
                if (argv.size() >= 2 && argv[0] == "CLUSTER" && argv[1] == "SLOTS") {
                    const int n = masters;
                    const auto owner = [&](int slot) {
                        return slot == key_slot ? paybridge::config::Endpoint{"127.0.0.1", self.port()}
                                                : nowhere(static_cast<int>(static_cast<long>(slot) * n / 16384));
                    };
                    if (!self.send_all(fd, slots_reply(owner))) {
                        return;
                    }
                    ++maps;
                } else if (argv[0] == "GET") {
                    if (!self.send_all(fd, "-MOVED " + std::to_string(key_slot) + " 127.2.0.1:1\r\n")) {
                        return;
                    }
                } else if (!self.send_all(fd, "-ERR unknown command\r\n")) {
                    return;
                }
            }
        });
        Logs logs;
        asio::io_context ctx;
        RedisConnection conn(ctx.get_executor(), cluster_config_for(server));
        conn.set_checks(kScripted);
        conn.start();
        // 1001 other masters and this node: refused, and asked again.
        REQUIRE(paybridge::test::run_until(ctx, [&] { return maps >= 2; }, 10s));
        CHECK(logs.has("redis.cluster_map_refused"));
        CHECK_FALSE(logs.has("redis.cluster_map\""));

        // 999 others and this node: 1000 masters, taken. A redirection to a 1001st is not followed.
        masters = 999;
        REQUIRE(paybridge::test::run_until(ctx, [&] { return logs.has("redis.cluster_map\""); }, 10s));
        const Result<Reply> reply = paybridge::test::run_awaitable(ctx, conn.exec(get_k()), 10s);
        REQUIRE(reply.has_value());
        CHECK(reply->is_error());
        CHECK(reply->str.rfind("MOVED", 0) == 0);
        CHECK(logs.has("redis.cluster_redirect_refused"));
        conn.stop();
        ctx.restart();
        ctx.run_for(5s);
    }
}
