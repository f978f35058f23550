// Process lifecycle end to end: --check reports every problem and exits 78; the connection cap;
// graceful shutdown lets a request in flight finish.

#include "core/time.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/wait.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <doctest/doctest.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

using namespace paybridge;
using namespace paybridge::test;
namespace asio = boost::asio;

namespace {

/// The paybridge_open_connections sample of a GET /metrics sent on `s`, an open keep-alive
/// connection (counted itself), or -1 when it cannot be read.
int open_connections_on(asio::ip::tcp::socket& s)
{
    namespace http = boost::beast::http;
    http::request<http::empty_body> req{http::verb::get, "/metrics", 11};
    req.set(http::field::host, "x");
    boost::system::error_code ec;
    http::write(s, req, ec);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    if (!ec) {
        http::read(s, buffer, res, ec);
    }
    const std::string name = "\npaybridge_open_connections ";
    const auto at = res.body().find(name);
    if (ec || res.result_int() != 200 || at == std::string::npos) {
        return -1;
    }
    return std::stoi(res.body().substr(at + name.size()));
}

/// Bytes the kernel holds for the daemon's end of the loopback connection from client_port to
/// server_port that the daemon has not read yet (the rx_queue of /proc/net/tcp); -1 if there is no
/// such connection.
long unread_by_server(std::uint16_t server_port, std::uint16_t client_port)
{
    char local[32];
    char remote[32];
    std::snprintf(local, sizeof local, "0100007F:%04X", static_cast<unsigned>(server_port));
    std::snprintf(remote, sizeof remote, "0100007F:%04X", static_cast<unsigned>(client_port));
    std::ifstream in("/proc/net/tcp");
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string slot, loc, rem, state, queues;
        if (fields >> slot >> loc >> rem >> state >> queues && loc == local && rem == remote) {
            const auto colon = queues.find(':');
            return colon == std::string::npos ? -1 : std::stol(queues.substr(colon + 1), nullptr, 16);
        }
    }
    return -1;
}

/// True when a TCP connect to 127.0.0.1:port is refused (nothing listens there any more).
bool connect_refused(std::uint16_t port)
{
    asio::io_context ioc;
    asio::ip::tcp::socket s(ioc);
    boost::system::error_code ec;
    s.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
    return ec == asio::error::connection_refused;
}

}  // namespace

TEST_CASE("--check: a valid configuration exits 0 (warning of a world-readable secret) — every problem is reported and the exit code is 78")
{
    DaemonOptions options;
    options.start = false;
    DaemonFixture fx(options);
    std::string out;
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string(), "--check"}, out) == 0);
    CHECK_MESSAGE(out.find("warning") == std::string::npos, out);
    // A secret file every user may read: still OK (exit 0), with a warning that names it.
    std::filesystem::permissions(fx.dir() / "secrets/api_token", std::filesystem::perms::others_read,
                                 std::filesystem::perm_options::add);  // 0600 -> 0604
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string(), "--check"}, out) == 0);
    CHECK_MESSAGE(out.find("warning: /api_tokens/0/token: secrets/api_token holds a secret but every user may read it "
                           "(mode 0604): chmod o-rwx it") != std::string::npos,
                  out);

    // A key file that is not a key: found by loading the keys, named precisely.
    std::ofstream(fx.dir() / "keys/alipay_public.pem") << "not a key";
    int rc = run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string(), "--check"}, out);
    CHECK(rc == 78);
    CHECK_MESSAGE(out.find("/alipay/apps/0/alipay_public_key_file: is not a PEM") != std::string::npos, out);

    // Several configuration problems at once: all of them, each with its JSON pointer.
    std::ifstream in(fx.config_path());
    std::stringstream ss;
    ss << in.rdbuf();
    std::string cfg = ss.str();
    cfg.insert(cfg.find('{') + 1, "\n  \"colour\": \"red\",\n  \"workers\": \"two\",");
    cfg.erase(cfg.find("  \"workers\": 2,"), std::string("  \"workers\": 2,").size());
    std::ofstream(fx.config_path()) << cfg;
    rc = run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string(), "--check"}, out);
    CHECK(rc == 78);
    CHECK_MESSAGE(out.find("/colour") != std::string::npos, out);
    CHECK_MESSAGE(out.find("/workers") != std::string::npos, out);
    // ...and in the same run the key problem too: no second run to find it after fixing these.
    CHECK_MESSAGE(out.find("/alipay/apps/0/alipay_public_key_file: is not a PEM") != std::string::npos, out);
    // Starting with it fails the same way, without serving.
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string()}, out) == 78);
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--config", (fx.dir() / "missing.json").string()}, out) ==
          78);
    // So is a mistake in how it is started (a restart would repeat it: systemd stops at 78).
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string(), "--chekc"}, out) ==
          78);
    CHECK_MESSAGE(out.find("unknown argument '--chekc'") != std::string::npos, out);
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--check"}, out) == 78);
    CHECK_MESSAGE(out.find("--config FILE is required") != std::string::npos, out);
}

TEST_CASE("a listen address this machine does not have is a configuration error: exit 78")
{
    // systemd restarts on 1 but not on 78: a restart would fail the same way (as would a port
    // below 1024 without CAP_NET_BIND_SERVICE, which root, running the tests, always has).
    DaemonOptions options;
    options.start = false;
    DaemonFixture fx(options);
    std::ifstream in(fx.config_path());
    std::stringstream ss;
    ss << in.rdbuf();
    std::string cfg = ss.str();
    const std::size_t at = cfg.find("\"listen\": \"127.0.0.1:");
    REQUIRE(at != std::string::npos);
    cfg.replace(at, std::string("\"listen\": \"127.0.0.1:").size(), "\"listen\": \"192.0.2.1:");  // TEST-NET-1
    std::ofstream(fx.config_path()) << cfg;
    std::string out;
    CHECK(run_command({DaemonFixture::binary("paybridged"), "--config", fx.config_path().string()}, out) == 78);
    CHECK_MESSAGE(out.find("daemon.listen_failed") != std::string::npos, out);
}

TEST_CASE("connection cap: connections beyond limits.max_connections get a 503 and are closed at once")
{
    DaemonOptions options;
    // Deadlines far longer than the test: a connection it sees closed was closed by the cap.
    options.limits_json = R"({"max_connections": 4, "read_timeout_ms": 30000, "idle_timeout_ms": 30000})";
    DaemonFixture fx(options);
    asio::io_context ioc;
    std::vector<asio::ip::tcp::socket> held;
    // The connections of the fixture's readiness checks may still hold places for a moment: wait
    // until the daemon counts only the first held connection (asked over it), so that the four held
    // below are all it has.
    held.emplace_back(ioc);
    held.back().connect({asio::ip::make_address("127.0.0.1"), fx.port()});
    REQUIRE(wait_until([&] { return open_connections_on(held.back()) == 1; }, std::chrono::seconds(5)));
    for (int i = 1; i < 4; ++i) {
        held.emplace_back(ioc);
        held.back().connect({asio::ip::make_address("127.0.0.1"), fx.port()});
        // An answered request proves the daemon accepted and counts this connection (a fixed
        // sleep was not enough on a loaded machine); keep-alive holds it open afterwards.
        asio::write(held.back(), asio::buffer(std::string("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")));
        std::string answer;
        asio::read_until(held.back(), asio::dynamic_buffer(answer), "ok\n");
        REQUIRE(answer.starts_with("HTTP/1.1 200"));
    }
    asio::ip::tcp::socket extra(ioc);
    extra.connect({asio::ip::make_address("127.0.0.1"), fx.port()});
    const std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    boost::system::error_code ec;
    asio::write(extra, asio::buffer(req), ec);
    const auto asked = std::chrono::steady_clock::now();
    std::string refused;
    asio::read(extra, asio::dynamic_buffer(refused), ec);  // to the end of the stream
    CHECK(ec == asio::error::eof);  // closed, not reset: the answer survives
    CHECK_MESSAGE(refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), refused);
    CHECK(refused.find("Retry-After: 1\r\n") != std::string::npos);
    CHECK(refused.ends_with("\r\n\r\nover limits.max_connections; retry\n"));
    CHECK(std::chrono::steady_clock::now() - asked < std::chrono::seconds(10));  // not by a 30 s deadline
    held.clear();  // free the slots
    CHECK(wait_for_http(fx.port(), "/healthz", 200, std::chrono::seconds(5)));
}

TEST_CASE("graceful shutdown: SIGTERM lets a request in flight finish, then exits 0 — signals during the drain are ignored")
{
    DaemonOptions options;
    // Deadlines far longer than the test: the request is finished by the test, not cut by the
    // daemon's read deadline or the end of its grace period, however slowly the test gets there.
    options.limits_json = R"({"read_timeout_ms": 30000, "idle_timeout_ms": 30000, "shutdown_grace_ms": 20000})";
    DaemonFixture fx(options);
    asio::io_context ioc;
    asio::ip::tcp::socket s(ioc);
    s.connect({asio::ip::make_address("127.0.0.1"), fx.port()});
    // The daemon holds this connection (it answers on it), and it is the only one open: the
    // readiness checks' connections have gone.
    REQUIRE(wait_until([&] { return open_connections_on(s) == 1; }, std::chrono::seconds(5)));
    const std::string body = R"({"id":"G1","amount_fen":100,"customer_id":"c"})";
    const std::string head = "POST /v1/bills HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                             std::string(DaemonFixture::kApiToken) +
                             "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                             "\r\n\r\n";
    asio::write(s, asio::buffer(head + body.substr(0, 10)));
    // The daemon has read what was sent of the request before the stop: it is in flight, not
    // still unread in the socket.
    const std::uint16_t client_port = s.local_endpoint().port();
    REQUIRE(wait_until([&] { return unread_by_server(fx.port(), client_port) == 0; }, std::chrono::seconds(5)));
    fx.process().signal(SIGTERM);
    // New connections are no longer accepted...
    CHECK(wait_until([&] { return connect_refused(fx.port()); }, std::chrono::seconds(5)));
    // A logrotate SIGHUP, a second SIGTERM and a Ctrl-C during the drain change nothing (once the
    // daemon stopped handling them, each would have killed it with the request unanswered). Each is
    // logged as ignored once handled: wait for all three before finishing the request.
    const auto ignored = [&fx] {
        const std::string log = fx.log();
        std::size_t n = 0;
        for (auto at = log.find("daemon.signal_ignored"); at != std::string::npos;
             at = log.find("daemon.signal_ignored", at + 1)) {
            ++n;
        }
        return n;
    };
    REQUIRE(ignored() == 0);
    for (const int sig : {SIGHUP, SIGTERM, SIGINT}) {
        fx.process().signal(sig);
    }
    CHECK_MESSAGE(wait_until([&] { return ignored() >= 3; }, std::chrono::seconds(5)), fx.log());
    // ...but the request in flight completes.
    asio::write(s, asio::buffer(body.substr(10)));
    std::string answer;
    boost::system::error_code ec;
    char buf[4096];
    for (;;) {
        const std::size_t n = s.read_some(asio::buffer(buf), ec);
        answer.append(buf, n);
        if (ec) {
            break;
        }
    }
    CHECK_MESSAGE(answer.starts_with("HTTP/1.1 201"), answer);
    CHECK(answer.find("Connection: close") != std::string::npos);
    CHECK(fx.process().wait(std::chrono::seconds(15)) == 0);
}

TEST_CASE("CRM queries over HTTP: bills list with filters, reconciliation summary, bad parameters named")
{
    DaemonFixture fx;
    const auto before = std::chrono::system_clock::now() - std::chrono::minutes(1);
    REQUIRE(fx.create_bill("Q1", 100, "alice").status == 201);
    REQUIRE(fx.create_bill("Q2", 200, "bob").status == 201);
    // Pay Q1 through the real notification path.
    auto key = *crypto::load_private_key(fx.alipay_keys.private_pem);
    gateways::alipay::NoticeSpec spec;
    spec.app_id = DaemonFixture::kAlipayAppId;
    spec.seller_id = DaemonFixture::kSellerId;
    spec.out_trade_no = "Q1";
    spec.amount_fen = 100;
    REQUIRE(fx.post_alipay(gateways::alipay::build_alipay_body(gateways::alipay::make_paid_notice(spec), key.get()))
                .body == "success");

    auto paid = fx.api("GET", "/v1/bills?status=PAID");
    REQUIRE(paid.status == 200);
    CHECK(paid.body.find("\"id\":\"Q1\"") != std::string::npos);
    CHECK(paid.body.find("\"id\":\"Q2\"") == std::string::npos);
    auto bob = fx.api("GET", "/v1/bills?customer_id=bob");
    CHECK(bob.body.find("\"id\":\"Q2\"") != std::string::npos);
    CHECK(bob.body.find("\"id\":\"Q1\"") == std::string::npos);
    auto all = fx.api("GET", "/v1/bills?limit=1");
    CHECK(all.body.find("\"next_cursor\":\"") != std::string::npos);  // one per page, more to come
    // A cursor this API never returned is the client's mistake, not a server error.
    auto bad_cursor = fx.api("GET", "/v1/bills?cursor=nonsense");
    CHECK(bad_cursor.status == 400);
    CHECK(bad_cursor.body.find("\"field\":\"cursor\"") != std::string::npos);

    const std::string from = format_rfc3339(unix_ms(before));
    const std::string to = format_rfc3339(unix_ms(std::chrono::system_clock::now() + std::chrono::minutes(1)));
    auto summary = fx.api("GET", "/v1/reconciliation/summary?from=" + from + "&to=" + to);
    REQUIRE(summary.status == 200);
    CHECK(summary.body.find("\"totals\"") != std::string::npos);
    CHECK(summary.body.find("\"provider\":\"alipay\"") != std::string::npos);
    CHECK(summary.body.find("\"status\":\"PAID\"") != std::string::npos);
    CHECK(summary.body.find("\"status\":\"PENDING\"") != std::string::npos);
    // Q2, paid by no provider, is counted under provider null, as its own "provider" reads.
    CHECK(summary.body.find("{\"provider\":null,\"status\":\"PENDING\"") != std::string::npos);
    CHECK(summary.body.find("\"none\"") == std::string::npos);

    auto bad = fx.api("GET", "/v1/bills?status=LOST");
    CHECK(bad.status == 400);
    CHECK(bad.body.find("\"field\":\"status\"") != std::string::npos);
    // A filter from an empty variable is refused, not read as no filter (which lists everything).
    for (const char* filter : {"status", "provider", "customer_id"}) {
        CAPTURE(filter);
        bad = fx.api("GET", std::string("/v1/bills?") + filter + "=");
        CHECK(bad.status == 400);
        CHECK(bad.body.find(std::string("\"field\":\"") + filter + "\"") != std::string::npos);
    }
    bad = fx.api("GET", "/v1/reconciliation/summary?from=yesterday&to=" + to);
    CHECK(bad.status == 400);
    CHECK(bad.body.find("\"field\":\"from\"") != std::string::npos);
    bad = fx.api("GET", "/v1/events?limit=0");
    CHECK(bad.status == 400);
    CHECK(bad.body.find("\"field\":\"limit\"") != std::string::npos);

    // Every other mistake is named too, none is ignored. (status, field, words of the message)
    struct Case {
        std::string method, target, field, says;
    };
    const std::vector<Case> cases{
        // A misspelt or foreign parameter: the feeds page with after, not cursor.
        {"GET", "/v1/events?cursor=abc", "cursor", "this endpoint takes after, limit"},
        {"GET", "/v1/bills?state=PAID", "state", "this endpoint takes status, provider"},
        {"GET", "/v1/reconciliation/summary?from=" + to + "&to=" + to + "&provider=alipay", "provider", "takes from, to"},
        {"GET", "/v1/bills/B-1?verbose=1", "verbose", "this endpoint takes none"},
        // Which of two values was meant?
        {"GET", "/v1/bills?status=PAID&status=CLOSED", "status", "given more than once"},
        // A name that decodes to bytes that are not UTF-8 is named percent-encoded, so that the
        // answer stays valid JSON (found by tests/fuzz/service.cpp).
        {"GET", "/v1/bills?%C3%28=1", "%C3%28", "this endpoint takes status"},
        {"GET", "/v1/events?%FF=1&%FF=2", "%FF", "given more than once"},
        // Ranges that cannot hold anything, and times that do not exist.
        {"GET", "/v1/bills?updated_from=2026-02-01T00:00:00Z&updated_to=2026-01-01T00:00:00Z", "updated_to",
         "later than updated_from"},
        {"GET", "/v1/bills?updated_to=1970-01-01T00:00:00Z", "updated_to", "after 1970-01-01T00:00:00Z"},
        {"GET", "/v1/bills?updated_from=2026-02-31T00:00:00Z", "updated_from", "RFC 3339"},
        {"GET", "/v1/reconciliation/summary?from=2026-01-01T00:00:00+08:00&to=" + to, "from", "sent as %2B"},
        // A time from an empty variable is refused like an empty filter, not read as no bound.
        {"GET", "/v1/bills?updated_from=", "updated_from", "must not be empty; leave it out for no bound"},
        {"GET", "/v1/bills?status=PAID&updated_to=", "updated_to", "must not be empty; leave it out for no bound"},
        {"GET", "/v1/reconciliation/summary?from=&to=" + to, "from", "must not be empty"},
        {"GET", "/v1/reconciliation/summary?from=" + from + "&to=", "to", "must not be empty"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.target);
        bad = fx.api(c.method, c.target);
        CHECK(bad.status == 400);
        CHECK_MESSAGE(bad.body.find("\"field\":\"" + c.field + "\"") != std::string::npos, bad.body);
        CHECK_MESSAGE(bad.body.find(c.says) != std::string::npos, bad.body);
    }
    bad = fx.api("POST", "/v1/reconciliation/summary?from=2026-01-01T00:00:00Z&to=" + to);
    CHECK(bad.status == 405);
    CHECK(bad.header("allow") == "GET, HEAD");  // RFC 9110: a 405 says what is allowed
    bad = fx.api("DELETE", "/v1/bills");
    CHECK(bad.status == 405);
    CHECK(bad.header("allow") == "GET, HEAD, POST");
    // HEAD is answered as GET would be, without the body.
    const HttpResult head = fx.api("HEAD", "/v1/bills/Q1");
    CHECK(head.status == 200);
    CHECK(head.body.empty());
    CHECK(std::stoul(head.header("content-length")) == fx.api("GET", "/v1/bills/Q1").body.size());
    // The same time with its '+' encoded is fine.
    CHECK(fx.api("GET", "/v1/reconciliation/summary?from=2026-01-01T00:00:00%2B08:00&to=" + to).status == 200);
}
