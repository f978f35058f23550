// Operations end to end (issue 5): /metrics through a real Prometheus parser, sd_notify on a
// test NOTIFY_SOCKET (READY, WATCHDOG, STOPPING), SIGHUP key rotation under load, a refused
// reload, the TLS listener with a test CA, and systemd-analyze verify of the unit.

#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/wait.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <doctest/doctest.h>
#include <openssl/bn.h>
#include <openssl/x509.h>
#include <signal.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <thread>
#include <vector>

using namespace paybridge;
using namespace paybridge::test;
namespace alipay = paybridge::gateways::alipay;

namespace {

/// Starts `fx` (constructed with options.start = false) with an HTTPS listener on a free port, its
/// certificate (localhost, 127.0.0.1) issued by `ca`; returns the HTTPS port.
std::uint16_t start_with_tls(DaemonFixture& fx, DaemonOptions options, const keygen::Certificate& ca,
                             const std::string& routes = {})
{
    const auto server = keygen::issue(ca, {.common_name = "localhost", .dns_names = {"localhost"},
                                           .ip_addresses = {"127.0.0.1"}});
    const auto tls_port = free_port();
    std::ofstream(fx.dir() / "tls.crt") << server.cert_pem;
    std::ofstream(fx.dir() / "tls.key") << server.key.private_pem;
    options.tls_json = "{\"listen\": \"127.0.0.1:" + std::to_string(tls_port) +
                       "\", \"cert_file\": \"tls.crt\", \"key_file\": \"tls.key\"" +
                       (routes.empty() ? std::string() : ", \"routes\": " + routes) + "}";
    fx.write_config(options);
    fx.start();
    return tls_port;
}

boost::asio::ssl::context client_context(const keygen::Certificate& ca)
{
    boost::asio::ssl::context ctx(boost::asio::ssl::context::tls_client);
    ctx.add_certificate_authority(boost::asio::buffer(ca.cert_pem));
    ctx.set_verify_mode(boost::asio::ssl::verify_peer);
    return ctx;
}

/// One HTTPS connection to the daemon's TLS listener on `port`, trusting only `ca`, checking the
/// certificate's name (127.0.0.1); every request carries the API token.
struct HttpsClient {
    boost::asio::io_context ioc;
    boost::asio::ssl::context ctx;
    boost::beast::ssl_stream<boost::asio::ip::tcp::socket> stream{ioc, ctx};
    boost::beast::flat_buffer buf;

    HttpsClient(const keygen::Certificate& ca, std::uint16_t port) : ctx(client_context(ca))
    {
        stream.set_verify_callback(boost::asio::ssl::host_name_verification("127.0.0.1"));
        stream.next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port});
        stream.handshake(boost::asio::ssl::stream_base::client);
    }

    unsigned status_of(boost::beast::http::verb verb, const std::string& target)
    {
        namespace http = boost::beast::http;
        http::request<http::string_body> req{verb, target, 11};
        req.set(http::field::host, "127.0.0.1");
        req.set(http::field::authorization, std::string("Bearer ") + DaemonFixture::kApiToken);
        req.prepare_payload();
        http::write(stream, req);
        http::response<http::string_body> res;
        http::read(stream, buf, res);
        return res.result_int();
    }
};

std::string alipay_paid(DaemonFixture& fx, const std::string& private_pem, const std::string& bill, std::int64_t fen)
{
    auto key = *crypto::load_private_key(private_pem);
    alipay::NoticeSpec s;
    s.app_id = DaemonFixture::kAlipayAppId;
    s.seller_id = DaemonFixture::kSellerId;
    s.out_trade_no = bill;
    s.amount_fen = fen;
    s.trade_no = "2026112722001400000000" + bill;  // one trade per bill: a resend is a duplicate
    (void)fx;
    return alipay::build_alipay_body(alipay::make_paid_notice(s), key.get());
}

bool wait_for_log(DaemonFixture& fx, const std::string& needle, std::chrono::milliseconds limit)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (fx.log().find(needle) != std::string::npos) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

/// A file descriptor, closed on destruction (also when a REQUIRE ends the test early).
struct Fd {
    int fd;
    explicit Fd(int f) noexcept : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd()
    {
        if (fd >= 0) {
            ::close(fd);
        }
    }
};

/// Stops and joins the load threads on the way out, also when a REQUIRE ends the test early (a
/// joinable std::thread destroyed would terminate the test binary).
struct LoadThreads {
    std::atomic<bool>& stop;
    std::vector<std::thread> threads;
    explicit LoadThreads(std::atomic<bool>& s) : stop(s) {}
    LoadThreads(const LoadThreads&) = delete;
    LoadThreads& operator=(const LoadThreads&) = delete;
    void join()
    {
        stop = true;
        for (auto& t : threads) {
            if (t.joinable()) {
                t.join();
            }
        }
    }
    ~LoadThreads() { join(); }
};

}  // namespace

TEST_CASE("metrics: Prometheus text format, counters after traffic")
{
    DaemonFixture fx;
    {
        // Before any traffic, every series an alert watches is there at 0: increase() does not
        // count a series' first sample, so one born at 1 would hide the first anomaly of its kind.
        const std::string before = http_request(fx.port(), "GET", "/metrics").body;
        CHECK(before.find("paybridge_anomalies_total{kind=\"amount_mismatch\"} 0\n") != std::string::npos);
        CHECK(before.find("paybridge_anomalies_total{kind=\"unusable_notification\"} 0\n") != std::string::npos);
        CHECK(before.find("paybridge_notifications_total{channel=\"wechatpay_v3\",outcome=\"unusable\"} 0\n") !=
              std::string::npos);
        CHECK(before.find("paybridge_connections_rejected_total 0\n") != std::string::npos);
    }
    REQUIRE(fx.create_bill("M1", 100).status == 201);
    CHECK(fx.post_alipay(alipay_paid(fx, fx.alipay_keys.private_pem, "M1", 100)).body == "success");
    CHECK(fx.post_alipay(alipay_paid(fx, fx.alipay_keys.private_pem, "M1", 100)).body == "success");
    CHECK(fx.post_alipay("sign=x").status == 400);
    auto m = http_request(fx.port(), "GET", "/metrics");
    REQUIRE(m.status == 200);
    CHECK(m.header("content-type").starts_with("text/plain"));
    const auto& t = m.body;
    CHECK(t.find("paybridge_notifications_total{channel=\"alipay\",outcome=\"applied\"} 1") != std::string::npos);
    CHECK(t.find("paybridge_notifications_total{channel=\"alipay\",outcome=\"duplicate\"} 1") != std::string::npos);
    CHECK(t.find("paybridge_notifications_total{channel=\"alipay\",outcome=\"malformed\"} 1") != std::string::npos);
    CHECK(t.find("paybridge_http_requests_total{route=\"/notify/alipay\",code=\"200\"} 2") != std::string::npos);
    CHECK(t.find("paybridge_http_request_duration_seconds_bucket{route=\"/notify/alipay\",le=\"+Inf\"} 3") !=
          std::string::npos);
    // Bucket bounds as written, so that a selector on le="0.0005" matches.
    CHECK(t.find("paybridge_http_request_duration_seconds_bucket{route=\"/notify/alipay\",le=\"0.0005\"}") !=
          std::string::npos);
    CHECK(t.find("0000000001\"") == std::string::npos);
    CHECK(t.find("paybridge_open_connections") != std::string::npos);
    CHECK(t.find("paybridge_uptime_seconds") != std::string::npos);
    CHECK(t.find("paybridge_build_info{version=") != std::string::npos);
    CHECK(t.find("paybridge_redis_commands_total") != std::string::npos);
    // Pipelining depth: commands per socket write (every command went out in some write).
    auto sample = [&t](const std::string& name) {
        const auto at = t.find("\n" + name + " ");
        REQUIRE(at != std::string::npos);
        return std::stod(t.substr(at + name.size() + 2));
    };
    const double writes = sample("paybridge_redis_writes_total");
    CHECK(writes >= 1);
    CHECK(sample("paybridge_redis_commands_total") >= writes);

    // Structured logs: one JSON object per line with the request id, outcome and latency.
    const std::string log = fx.log();
    const auto accepted = log.find("\"event\":\"notify.accepted\"");
    REQUIRE(accepted != std::string::npos);
    const std::string line = log.substr(log.rfind('\n', accepted) + 1, log.find('\n', accepted) - log.rfind('\n', accepted));
    CHECK(line.find("\"request_id\":\"") != std::string::npos);
    CHECK(line.find("\"provider\":\"alipay\"") != std::string::npos);
    CHECK(line.find("\"bill_id\":\"M1\"") != std::string::npos);
    CHECK(line.find("\"outcome\":\"applied\"") != std::string::npos);
    CHECK(line.find("\"latency_ms\":") != std::string::npos);
    CHECK(log.find("sign=") == std::string::npos);  // no bodies or signatures in logs

    // The exposition format, checked by Prometheus's own tool. It is a test dependency
    // (scripts/deps.sh test installs the prometheus package for it): missing, the test fails
    // rather than passing on the assertions above alone.
    std::string promtool;
    REQUIRE_MESSAGE(run_command({"/bin/sh", "-c", "command -v promtool"}, promtool) == 0,
                    "promtool not found: install it with scripts/deps.sh test (Debian package prometheus)");
    std::ofstream(fx.dir() / "metrics.txt") << t;
    std::string out;
    const int rc = run_command({"/bin/sh", "-c", "promtool check metrics < " + (fx.dir() / "metrics.txt").string()}, out);
    CHECK_MESSAGE(rc == 0, out);
}

TEST_CASE("systemd: READY=1 after Redis (a reload before it says nothing), WATCHDOG=1 from the loops, STOPPING=1 on SIGTERM")
{
    TempDir sock_dir;
    const std::string path = (sock_dir / "notify.sock").string();
    DaemonOptions options;
    options.env = {{"NOTIFY_SOCKET", path}, {"WATCHDOG_USEC", "400000"}};
    options.start = false;
    DaemonFixture fx(options);
    // After the fixture: closed before the daemon is stopped, so that a notification it sends on
    // the way out (after a failed REQUIRE) cannot wait on a socket nobody reads.
    const Fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(sock.fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    REQUIRE(::bind(sock.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    timeval tv{0, 20000};  // short: receive_until looks at its condition between datagrams
    ::setsockopt(sock.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    // Started while Redis is down: alive (the watchdog is fed), not ready.
    fx.redis().stop();
    fx.start(false);
    std::vector<std::string> messages;
    // Receives notifications until `done()` holds (true) or `limit` passes (false), reading the
    // socket all along: the kernel queues only a few datagrams (net.unix.max_dgram_qlen, 10 by
    // default) and the daemon's notifications must not be held up or lost on a full queue.
    auto receive_until = [&](const std::function<bool()>& done, std::chrono::milliseconds limit) {
        const auto until = std::chrono::steady_clock::now() + limit;
        char buf[512];
        for (;;) {
            const ssize_t n = ::recv(sock.fd, buf, sizeof buf, 0);
            if (n > 0) {
                messages.emplace_back(buf, static_cast<std::size_t>(n));
                continue;  // the queue first, then the condition
            }
            if (done()) {
                return true;
            }
            if (std::chrono::steady_clock::now() >= until) {
                return false;
            }
        }
    };
    auto count = [&](const char* what) {
        return std::count_if(messages.begin(), messages.end(),
                             [&](const std::string& m) { return m.find(what) != std::string::npos; });
    };
    // Every 200 ms, from the event loops. Two pings: the control loop, which would send READY=1,
    // has been running for a while.
    REQUIRE(receive_until([&] { return count("WATCHDOG=1") >= 2; }, std::chrono::seconds(10)));
    CHECK(count("READY=1") == 0);

    // A reload before READY=1 is applied quietly: no RELOADING=1, and above all no READY=1.
    fx.process().signal(SIGHUP);
    // First, proof that the reload ran: its log line. reload() runs on the thread that sends the
    // pings, so of two pings received after the line was seen, the second was sent after reload()
    // returned: whatever the reload said has arrived by then.
    REQUIRE(receive_until([&] { return fx.log().find("\"event\":\"daemon.reloaded\"") != std::string::npos; },
                          std::chrono::seconds(10)));
    const auto pings_at_reload = count("WATCHDOG=1");
    REQUIRE(receive_until([&] { return count("WATCHDOG=1") >= pings_at_reload + 2; }, std::chrono::seconds(10)));
    CHECK(count("READY=1") == 0);
    CHECK(count("RELOADING=1") == 0);

    fx.redis().restart();
    REQUIRE(receive_until([&] { return count("READY=1") >= 1; }, std::chrono::seconds(15)));
    CHECK(wait_for_http(fx.port(), "/readyz", 200, std::chrono::seconds(5)));
    // The pings go on once ready.
    const auto pings_at_ready = count("WATCHDOG=1");
    CHECK(receive_until([&] { return count("WATCHDOG=1") >= pings_at_ready + 2; }, std::chrono::seconds(10)));

    fx.process().signal(SIGTERM);
    // The whole stop first (its grace period and the CRM thread may take seconds on a loaded
    // machine), reading all along; then every notification it sent has arrived.
    REQUIRE(receive_until([&] { return !fx.process().running(); }, std::chrono::seconds(30)));
    receive_until([] { return true; }, std::chrono::seconds(0));  // what is still queued
    CHECK(count("STOPPING=1") == 1);
    // Over the whole run: one READY=1 (the reload before it sent none) and no RELOADING=1.
    CHECK(count("READY=1") == 1);
    CHECK(count("RELOADING=1") == 0);
    CHECK(fx.process().wait(std::chrono::seconds(10)) == 0);
}

TEST_CASE("reload: SIGHUP with a rotated Alipay key under load — an invalid reload keeps the old config")
{
    DaemonFixture fx;
    const std::string old_key = fx.alipay_keys.private_pem;
    const int kBills = 400;
    for (int i = 0; i < kBills; ++i) {
        REQUIRE(fx.create_bill("R" + std::to_string(i), 100).status == 201);
    }
    std::vector<std::string> old_bodies;
    for (int i = 0; i < kBills; ++i) {
        old_bodies.push_back(alipay_paid(fx, old_key, "R" + std::to_string(i), 100));
    }
    // Load: two keep-alive clients sending old-key notifications (the first time each applies, then
    // repeats) until after the key is rotated: accepted before the reload, refused after it.
    std::atomic<int> next{0};
    std::atomic<int> accepted_before{0};
    std::atomic<int> refused_after{0};
    std::atomic<int> transport_errors{0};
    std::atomic<int> other_status{0};
    std::atomic<bool> stop{false};
    LoadThreads load(stop);
    for (int c = 0; c < 2; ++c) {
        load.threads.emplace_back([&] {
            HttpClient client(fx.port());
            while (!stop) {
                const int i = next++ % kBills;
                auto r = client.post("/notify/alipay", old_bodies[static_cast<std::size_t>(i)],
                                     {{"Content-Type", "application/x-www-form-urlencoded"}});
                if (r.status == 0) {
                    ++transport_errors;
                } else if (r.status == 200) {
                    ++accepted_before;
                } else if (r.status == 400) {
                    ++refused_after;
                } else {
                    ++other_status;
                }
            }
        });
    }
    const auto new_keys = keygen::generate_rsa();
    // The load ran across the reload, on the same connections: old-key notifications accepted
    // before it (waited for here rather than slept on)...
    REQUIRE(wait_until([&] { return accepted_before > 0; }, std::chrono::seconds(10)));
    fx.write_config(DaemonOptions{});
    std::ofstream(fx.dir() / "keys/alipay_public.pem") << new_keys.public_pem;
    fx.process().signal(SIGHUP);
    REQUIRE(wait_for_log(fx, "daemon.reloaded", std::chrono::seconds(10)));
    // ...and refused after it, by the same clients.
    REQUIRE(wait_until([&] { return refused_after > 0; }, std::chrono::seconds(10)));
    load.join();
    CHECK(transport_errors == 0);
    CHECK(other_status == 0);

    REQUIRE(fx.create_bill("RNEW", 100).status == 201);
    auto refused = fx.post_alipay(alipay_paid(fx, old_key, "RNEW", 100));
    CHECK(refused.status == 400);
    auto accepted = fx.post_alipay(alipay_paid(fx, new_keys.private_pem, "RNEW", 100));
    CHECK(accepted.body == "success");

    // An invalid configuration is refused; the running one (new key) stays.
    std::ofstream(fx.config_path()) << "{ \"listen\": \"127.0.0.1:1\", \"bogus\": true }";
    fx.process().signal(SIGHUP);
    REQUIRE(wait_for_log(fx, "daemon.reload_refused", std::chrono::seconds(10)));
    REQUIRE(fx.create_bill("RNEW2", 100).status == 201);
    CHECK(fx.post_alipay(alipay_paid(fx, new_keys.private_pem, "RNEW2", 100)).body == "success");
    CHECK(fx.process().running());
}

TEST_CASE("reload: settings the workers read once at start are named in a note")
{
    DaemonFixture fx;
    DaemonOptions changed;
    changed.limits_json = R"({"read_timeout_ms": 3000, "idle_timeout_ms": 5000, "shutdown_grace_ms": 5000})";
    changed.redis_extra = ", \"wait_timeout_ms\": 400";
    fx.write_config(changed);
    fx.process().signal(SIGHUP);
    REQUIRE(wait_for_log(fx, "daemon.reloaded", std::chrono::seconds(10)));
    const std::string log = fx.log();
    CHECK(log.find("limits changed: takes effect after a restart") != std::string::npos);
    CHECK(log.find("redis changed: takes effect after a restart") != std::string::npos);
    CHECK(fx.process().running());
}

TEST_CASE("tls: the HTTPS listener serves with a test CA — plain HTTP stays available")
{
    const auto ca = keygen::make_ca({.common_name = "paybridge test CA"});
    DaemonOptions options;
    options.start = false;
    DaemonFixture fx(options);
    const std::uint16_t tls_port = start_with_tls(fx, options, ca);

    namespace asio = boost::asio;
    namespace beast = boost::beast;
    namespace http = beast::http;
    HttpsClient client(ca, tls_port);
    CHECK(client.status_of(http::verb::get, "/healthz") == 200);
    CHECK(SSL_version(client.stream.native_handle()) >= TLS1_2_VERSION);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
    // By default the TLS listener (public: WeChat Pay calls HTTPS only) does not serve /metrics,
    // which tells anyone the business's volume; the plain listener does.
    CHECK(client.status_of(http::verb::get, "/metrics") == 404);
    CHECK(http_request(fx.port(), "GET", "/metrics").status == 200);

    // A client that does not trust the test CA is refused by its own verification.
    asio::io_context ioc;
    asio::ssl::context strict(asio::ssl::context::tls_client);
    strict.set_verify_mode(asio::ssl::verify_peer);
    beast::ssl_stream<asio::ip::tcp::socket> s2(ioc, strict);
    s2.next_layer().connect({asio::ip::make_address("127.0.0.1"), tls_port});
    boost::system::error_code ec;
    s2.handshake(asio::ssl::stream_base::client, ec);
    CHECK(ec);
}

TEST_CASE("tls: routes names what the HTTPS listener serves")
{
    const auto ca = keygen::make_ca({.common_name = "paybridge test CA"});
    DaemonOptions options;
    options.start = false;
    DaemonFixture fx(options);
    const std::uint16_t tls_port = start_with_tls(fx, options, ca, R"(["notify", "metrics"])");

    namespace http = boost::beast::http;
    HttpsClient client(ca, tls_port);
    CHECK(client.status_of(http::verb::get, "/metrics") == 200);
    CHECK(client.status_of(http::verb::post, "/notify/alipay") == 400);  // served: an empty notification is refused
    CHECK(client.status_of(http::verb::get, "/v1/bills") == 404);
    CHECK(client.status_of(http::verb::get, "/healthz") == 404);
    // The plain listener serves everything.
    CHECK(fx.api("GET", "/v1/bills").status == 200);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 200);
}

TEST_CASE("tls: SIGHUP serves a renewed certificate, and keeps the old one when the new pair does not match")
{
    const auto ca = keygen::make_ca({.common_name = "paybridge test CA"});
    DaemonOptions options;
    options.start = false;
    DaemonFixture fx(options);
    const std::uint16_t tls_port = start_with_tls(fx, options, ca);
    REQUIRE(wait_for_http(fx.port(), "/readyz", 200, std::chrono::seconds(15)));

    namespace asio = boost::asio;
    asio::io_context ioc;
    asio::ssl::context ctx(asio::ssl::context::tls_client);
    ctx.add_certificate_authority(asio::buffer(ca.cert_pem));
    ctx.set_verify_mode(asio::ssl::verify_peer);
    // The serial number of the certificate the HTTPS listener presents now.
    const auto served_serial = [&] {
        boost::beast::ssl_stream<asio::ip::tcp::socket> stream(ioc, ctx);
        stream.next_layer().connect({asio::ip::make_address("127.0.0.1"), tls_port});
        stream.handshake(asio::ssl::stream_base::client);
        X509* peer = SSL_get1_peer_certificate(stream.native_handle());
        REQUIRE(peer != nullptr);
        BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(peer), nullptr);
        char* hex = BN_bn2hex(bn);
        std::string serial(hex);
        OPENSSL_free(hex);
        BN_free(bn);
        X509_free(peer);
        return serial;
    };
    const auto reloads = [&fx](const char* what) {
        const std::string log = fx.log();
        std::size_t n = 0;
        for (auto at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) {
            ++n;
        }
        return n;
    };
    const std::string first = served_serial();

    const auto renewed = keygen::issue(ca, {.common_name = "localhost", .serial_hex = "0A0B0C0D",
                                            .dns_names = {"localhost"}, .ip_addresses = {"127.0.0.1"}});
    std::ofstream(fx.dir() / "tls.crt") << renewed.cert_pem;
    std::ofstream(fx.dir() / "tls.key") << renewed.key.private_pem;
    fx.process().signal(SIGHUP);
    REQUIRE(wait_until([&] { return reloads("daemon.reloaded") == 1; }, std::chrono::seconds(10)));
    CHECK(served_serial() == "0A0B0C0D");
    CHECK(served_serial() != first);

    // A certificate whose key is not the one beside it (a renewal caught half written): refused
    // with a reason, and the renewed pair is still served.
    const auto other = keygen::issue(ca, {.common_name = "localhost", .serial_hex = "0E0F",
                                          .dns_names = {"localhost"}, .ip_addresses = {"127.0.0.1"}});
    std::ofstream(fx.dir() / "tls.crt") << other.cert_pem;
    fx.process().signal(SIGHUP);
    REQUIRE(wait_until([&] { return reloads("daemon.reload_failed") == 1; }, std::chrono::seconds(10)));
    CHECK(reloads("daemon.reload_refused") == 1);
    CHECK(fx.log().find("/tls:") != std::string::npos);
    CHECK(served_serial() == "0A0B0C0D");
    CHECK(reloads("daemon.reloaded") == 1);
}

TEST_CASE("tls: connections still in their TLS handshake count toward limits.max_connections")
{
    const auto ca = keygen::make_ca({.common_name = "paybridge test CA"});
    DaemonOptions options;
    options.start = false;
    // Deadlines far longer than the test: only the cap can close a connection here.
    options.limits_json = R"({"max_connections": 2, "read_timeout_ms": 30000, "idle_timeout_ms": 30000})";
    DaemonFixture fx(options);
    const std::uint16_t tls_port = start_with_tls(fx, options, ca);

    namespace asio = boost::asio;
    asio::io_context ioc;
    // Two clients that open the HTTPS port and never send a ClientHello. The daemon sends them
    // nothing while it waits for one; a client it turned away (the connections of the readiness
    // checks may still hold places for a moment) sees its socket closed, and is replaced.
    auto connect_silent = [&] {
        asio::ip::tcp::socket s(ioc);
        s.connect({asio::ip::make_address("127.0.0.1"), tls_port});
        return s;
    };
    auto closed = [](asio::ip::tcp::socket& s) {
        pollfd p{s.native_handle(), POLLIN | POLLRDHUP, 0};
        return ::poll(&p, 1, 0) > 0;
    };
    std::vector<asio::ip::tcp::socket> silent;
    silent.push_back(connect_silent());
    silent.push_back(connect_silent());
    // Once the daemon holds both, a plain HTTP client is turned away (a 503, then closed).
    auto answered = [&] {
        asio::ip::tcp::socket s(ioc);
        s.connect({asio::ip::make_address("127.0.0.1"), fx.port()});
        boost::system::error_code ec;
        asio::write(s, asio::buffer(std::string("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")), ec);
        char buf[64];
        const std::size_t n = s.read_some(asio::buffer(buf), ec);
        return std::string_view(buf, n).starts_with("HTTP/1.1 200");
    };
    bool turned_away = false;
    for (int i = 0; i < 100 && !turned_away; ++i) {
        for (auto& s : silent) {
            if (closed(s)) {
                s = connect_silent();
            }
        }
        turned_away = !answered();
        if (!turned_away) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
    CHECK_MESSAGE(turned_away, http_request(fx.port(), "GET", "/metrics").body);
    // The silent clients leave: their places are free again.
    silent.clear();
    CHECK(wait_for_http(fx.port(), "/healthz", 200, std::chrono::seconds(5)));
}

TEST_CASE("tls: SIGTERM closes a client still in its handshake at once — the daemon exits 0 without waiting out the grace period")
{
    const auto ca = keygen::make_ca({.common_name = "paybridge test CA"});
    DaemonOptions options;
    options.start = false;
    // Deadlines and grace far longer than the test allows for the stop.
    options.limits_json = R"({"read_timeout_ms": 30000, "idle_timeout_ms": 30000, "shutdown_grace_ms": 20000})";
    DaemonFixture fx(options);
    const std::uint16_t tls_port = start_with_tls(fx, options, ca);

    namespace asio = boost::asio;
    asio::io_context ioc;
    asio::ip::tcp::socket silent(ioc);
    silent.connect({asio::ip::make_address("127.0.0.1"), tls_port});
    // The daemon holds it: the connection is listed (and counted) before its handshake.
    bool listed = false;
    for (int i = 0; i < 100 && !listed; ++i) {
        listed = http_request(fx.port(), "GET", "/metrics").body.find("paybridge_open_connections 2") != std::string::npos;
        if (!listed) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
    REQUIRE(listed);  // the silent client and the /metrics request itself
    // Not listed, it could not be cut by the stop: the stop would wait out the 20 s grace, then
    // force the loops to stop with the handshake's frame still queued.
    const auto start = std::chrono::steady_clock::now();
    CHECK(fx.stop() == 0);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
    pollfd p{silent.native_handle(), POLLIN | POLLRDHUP, 0};
    CHECK(::poll(&p, 1, 0) > 0);  // closed by the daemon
}

TEST_CASE("systemd-analyze verify accepts the unit")
{
    std::string which;
    // scripts/deps.sh test installs it (package systemd): a missing tool is a failure, not a skip.
    REQUIRE_MESSAGE(run_command({"/bin/sh", "-c", "command -v systemd-analyze"}, which) == 0,
                    "systemd-analyze is not installed");
    const std::string unit_in = std::string(PAYBRIDGE_BINARY_DIR) + "/systemd/paybridged.service";
    std::ifstream in(unit_in);
    REQUIRE(in.good());
    std::stringstream ss;
    ss << in.rdbuf();
    std::string unit = ss.str();
    // Point the unit at the built binary so verify can check that the commands exist (quoted: a
    // clone's path may have spaces, which systemd would split the command at).
    const std::string installed = "/usr/local/sbin/paybridged";
    for (auto pos = unit.find(installed); pos != std::string::npos; pos = unit.find(installed)) {
        unit.replace(pos, installed.size(), "\"" + DaemonFixture::binary("paybridged") + "\"");
    }
    TempDir dir;
    dir.write("paybridged.service", unit);
    std::string out;
    const int rc = run_command({"/bin/sh", "-c", "systemd-analyze verify " + (dir / "paybridged.service").string()}, out);
    CHECK_MESSAGE(rc == 0, out);
}
