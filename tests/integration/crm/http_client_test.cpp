// crm::HttpClient against real loopback servers: keep-alive pooling, deadlines, concurrency, body
// capping, TLS verification (trusted CA, untrusted CA, wrong host name), and responses HttpReceiver
// cannot give (interim 1xx, 101, endless chunk framing) from a scripted raw TCP server.

#include "crm/http_client.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "tests/integration/crm/crm_fixture.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <doctest/doctest.h>

#include <deque>
#include <set>

namespace asio = boost::asio;
using namespace paybridge;
using namespace paybridge::test;
using crm::HttpClient;
using crm::HttpClientOptions;
using crm::PostResult;

namespace {

std::unique_ptr<HttpClient> make_client(asio::io_context& ioc, HttpClientOptions options)
{
    Result<std::unique_ptr<HttpClient>> client = HttpClient::create(ioc.get_executor(), std::move(options));
    REQUIRE(client.has_value());
    return std::move(*client);
}

PostResult post(asio::io_context& ioc, HttpClient& client, std::string body = "{}")
{
    crm::Headers headers;
    headers.emplace_back("Content-Type", "application/json");
    headers.emplace_back("webhook-id", "evt_1");
    return run_awaitable(ioc, client.post(std::move(headers), std::move(body)), std::chrono::seconds{20});
}

struct Pki {
    keygen::Certificate ca;
    keygen::Certificate other_ca;
    std::string ca_file;
    std::string other_ca_file;

    Pki()
    {
        keygen::CertSpec spec;
        spec.common_name = "crm test CA";
        spec.is_ca = true;
        ca = keygen::make_ca(spec);
        spec.common_name = "someone else's CA";
        other_ca = keygen::make_ca(spec);
        ca_file = write_temp_file("ca.pem", ca.cert_pem);
        other_ca_file = write_temp_file("other-ca.pem", other_ca.cert_pem);
    }

    keygen::Certificate server(std::vector<std::string> dns, std::vector<std::string> ips) const
    {
        keygen::CertSpec spec;
        spec.common_name = dns.empty() ? "server" : dns.front();
        spec.dns_names = std::move(dns);
        spec.ip_addresses = std::move(ips);
        return keygen::issue(ca, spec);
    }
};

HttpReceiverOptions tls_receiver(const keygen::Certificate& cert)
{
    HttpReceiverOptions o;
    o.tls_cert_pem = cert.cert_pem;
    o.tls_key_pem = cert.key.private_pem;
    return o;
}

/// One scripted answer: `pieces` written verbatim, one write each with `gap` between, then
/// `filler` bytes of 'a' (written in 64 KiB pieces until done or the client goes away).
struct RawAnswer {
    std::vector<std::string> pieces;
    std::size_t filler{0};
    std::chrono::milliseconds gap{20};
};

/// A raw HTTP/1.1 server on 127.0.0.1, run by the test's own io_context (so it makes progress while
/// the client is awaited). It reads each request with Beast and answers with the next scripted
/// answer (then "200, empty body"), keeping the connection open for the next request.
class RawServer {
public:
    explicit RawServer(asio::io_context& ioc) : state_(std::make_shared<State>(ioc))
    {
        asio::ip::tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
        state_->acceptor.open(endpoint.protocol());
        state_->acceptor.set_option(asio::ip::tcp::acceptor::reuse_address(true));
        state_->acceptor.bind(endpoint);
        state_->acceptor.listen();
        asio::awaitable<void> accepting = accept_loop(state_);
        asio::co_spawn(ioc, std::move(accepting), asio::detached);
    }

    ~RawServer()
    {
        boost::system::error_code ignored;
        state_->acceptor.close(ignored);
    }

    RawServer(const RawServer&) = delete;
    RawServer& operator=(const RawServer&) = delete;

    std::string url() const
    {
        return "http://127.0.0.1:" + std::to_string(state_->acceptor.local_endpoint().port()) + "/events";
    }

    void push(RawAnswer answer) { state_->answers.push_back(std::move(answer)); }

    /// Per request read, in order: which connection (1, 2, ...) carried it.
    const std::vector<int>& request_connections() const { return state_->request_connections; }
    int connections() const { return state_->connections; }

private:
    struct State {
        explicit State(asio::io_context& ioc) : acceptor(ioc) {}
        asio::ip::tcp::acceptor acceptor;
        std::deque<RawAnswer> answers;
        std::vector<int> request_connections;
        int connections{0};
    };

    static asio::awaitable<void> accept_loop(std::shared_ptr<State> state)
    {
        for (;;) {
            auto [ec, socket] = co_await state->acceptor.async_accept(kUseTuple);
            if (ec) {
                co_return;
            }
            ++state->connections;
            asio::awaitable<void> session = serve(state, std::move(socket), state->connections);
            asio::co_spawn(state->acceptor.get_executor(), std::move(session), asio::detached);
        }
    }

    static asio::awaitable<void> serve(std::shared_ptr<State> state, asio::ip::tcp::socket socket, int connection)
    {
        boost::beast::flat_buffer buffer;
        for (;;) {
            boost::beast::http::request<boost::beast::http::string_body> request;
            auto [rec, read] = co_await boost::beast::http::async_read(socket, buffer, request, kUseTuple);
            if (rec) {
                co_return;
            }
            state->request_connections.push_back(connection);
            RawAnswer answer;
            answer.pieces.emplace_back("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            if (!state->answers.empty()) {
                answer = std::move(state->answers.front());
                state->answers.pop_front();
            }
            for (std::size_t i = 0; i < answer.pieces.size(); ++i) {
                if (i > 0) {
                    asio::steady_timer pause(socket.get_executor(), answer.gap);
                    co_await pause.async_wait(kUseTuple);
                }
                const asio::const_buffer piece = asio::buffer(answer.pieces[i]);
                auto [wec, written] = co_await asio::async_write(socket, piece, kUseTuple);
                if (wec) {
                    co_return;
                }
            }
            const std::string filler(64 * 1024, 'a');
            for (std::size_t sent = 0; sent < answer.filler; sent += filler.size()) {
                const asio::const_buffer piece = asio::buffer(filler);
                auto [wec, written] = co_await asio::async_write(socket, piece, kUseTuple);
                if (wec) {
                    co_return;
                }
            }
        }
    }

    std::shared_ptr<State> state_;
};

}  // namespace

TEST_CASE("keep-alive: sequential requests share one pooled connection")
{
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url("/hooks?x=1")});
    for (int i = 0; i < 5; ++i) {
        PostResult r = post(ioc, *client, R"({"n":)" + std::to_string(i) + "}");
        REQUIRE(r.response.has_value());
        CHECK(r.response->status == 200);
    }
    std::set<std::uint64_t> connections;
    for (const ReceivedRequest& r : receiver.requests()) {
        connections.insert(r.connection);
        CHECK(r.target == "/hooks?x=1");
        CHECK(r.webhook_id == "evt_1");
    }
    CHECK(receiver.requests().back().body == R"({"n":4})");
    CHECK(connections.size() == 1);
    CHECK(client->stats().connections_opened == 1);
    CHECK(client->stats().connections_reused == 4);
    CHECK(client->idle_connections() == 1);
}

TEST_CASE("a pooled connection the server closed is replaced transparently")
{
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url()});
    REQUIRE(post(ioc, *client).response.has_value());
    receiver.stop();
    REQUIRE(receiver.start());
    run_for(ioc, 50ms);
    PostResult r = post(ioc, *client);
    REQUIRE(r.response.has_value());
    CHECK(r.response->status == 200);
    CHECK(client->stats().connections_opened == 2);
    CHECK(receiver.count() == 2);
}

TEST_CASE("pooled connections the server closed while idle are all left and one new one carries the request")
{
    // A CRM whose keep-alive timeout is shorter than ours (Node.js, Apache: 5 s) closes every idle
    // connection. The client used to take a stale one, then on the retry another stale one, and
    // fail an attempt the CRM never saw (a step of the schedule; a dead letter on the last one).
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    receiver.set_response_delay(100ms);
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url(), .concurrency = 3});
    int finished = 0;
    for (int i = 0; i < 3; ++i) {
        crm::Headers headers;
        headers.emplace_back("Content-Type", "application/json");
        asio::awaitable<PostResult> request = client->post(std::move(headers), "{}");
        asio::co_spawn(ioc, std::move(request), [&](std::exception_ptr, PostResult) { ++finished; });
    }
    REQUIRE(run_until(ioc, [&] { return finished == 3; }, 10s));
    REQUIRE(client->idle_connections() == 3);
    REQUIRE(client->stats().connections_opened == 3);
    receiver.set_response_delay(0ms);
    receiver.stop();  // closes the three idle connections
    REQUIRE(receiver.start());
    run_for(ioc, 50ms);
    PostResult r = post(ioc, *client);
    REQUIRE_MESSAGE(r.response.has_value(), r.error_detail);
    CHECK(r.response->status == 200);
    CHECK(client->stats().connections_opened == 4);
    CHECK(client->stats().stale_retries == 0);  // the closes were seen before a request was written
    CHECK(receiver.count() == 4);
}

TEST_CASE("the deadline covers the whole attempt")
{
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    const auto response_delay = 3s;
    receiver.set_response_delay(response_delay);
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url(), .timeout = 300ms});
    const auto started = std::chrono::steady_clock::now();
    PostResult r = post(ioc, *client);
    const auto elapsed = std::chrono::steady_clock::now() - started;
    // Cut at the deadline while waiting for the answer: no response (the receiver answers after
    // 3 s), a timeout, in the read.
    REQUIRE_FALSE(r.response.has_value());
    CHECK(r.response.error() == errc::timeout);
    CHECK(r.error_detail.starts_with("read:"));
    CHECK(elapsed >= 290ms);
    // Just under the receiver's 3 s: an attempt not cut at its deadline would last until the
    // answer came (and would have a response). Normally it ends at about 300 ms.
    CHECK(elapsed < response_delay);
    CHECK(client->idle_connections() == 0);  // a timed-out connection is never reused
}

TEST_CASE("connection refused is crm_unavailable")
{
    asio::io_context ioc;
    std::string url;
    {
        HttpReceiver receiver(HttpReceiverOptions{});
        url = receiver.url();
    }
    auto client = make_client(ioc, HttpClientOptions{.url = url, .timeout = 1000ms});
    PostResult r = post(ioc, *client);
    REQUIRE_FALSE(r.response.has_value());
    CHECK(r.response.error() == errc::crm_unavailable);
    CHECK(r.error_detail.starts_with("connect:"));
}

TEST_CASE("response body is read fully but only its head kept — Retry-After is passed through")
{
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    receiver.set_response_body(std::string(100'000, 'z'));
    receiver.push_statuses({503, 200});
    receiver.set_retry_after("7");
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url()});
    PostResult r = post(ioc, *client);
    REQUIRE(r.response.has_value());
    CHECK(r.response->status == 503);
    CHECK(r.response->retry_after == "7");
    CHECK(r.response->body_head == std::string(256, 'z'));
    // The body was drained, so the connection is reused for the next request.
    PostResult second = post(ioc, *client);
    REQUIRE(second.response.has_value());
    CHECK(second.response->status == 200);
    CHECK(second.response->retry_after.empty());
    CHECK(client->stats().connections_opened == 1);

    // A body above max_body: the status still counts, the connection is dropped.
    auto small = make_client(ioc, HttpClientOptions{.url = receiver.url(), .max_body = 1000});
    PostResult big = post(ioc, *small);
    REQUIRE(big.response.has_value());
    CHECK(big.response->status == 200);
    CHECK(big.response->body_head.size() == 256);
    CHECK(small->idle_connections() == 0);
}

TEST_CASE("at most `concurrency` requests are in flight")
{
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    receiver.set_response_delay(300ms);
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url(), .concurrency = 2});
    int finished = 0;
    int ok = 0;
    const auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < 6; ++i) {
        crm::Headers headers;
        headers.emplace_back("Content-Type", "application/json");
        asio::awaitable<PostResult> request = client->post(std::move(headers), "{}");
        asio::co_spawn(ioc, std::move(request), [&](std::exception_ptr e, PostResult r) {
            ++finished;
            if (!e && r.response && r.response->status == 200) {
                ++ok;
            }
        });
    }
    REQUIRE(run_until(ioc, [&] { return finished == 6; }, 10s));
    CHECK(ok == 6);
    CHECK(std::chrono::steady_clock::now() - started >= 850ms);  // three rounds of two
    CHECK(client->stats().connections_opened == 2);
}

TEST_CASE("invalid client configuration is refused")
{
    asio::io_context ioc;
    CHECK(HttpClient::create(ioc.get_executor(), HttpClientOptions{.url = "ftp://x/"}).error() ==
          errc::invalid_argument);
    CHECK(HttpClient::create(ioc.get_executor(), HttpClientOptions{.url = "http://x/", .concurrency = 0}).error() ==
          errc::invalid_argument);
    CHECK(HttpClient::create(ioc.get_executor(),
                             HttpClientOptions{.url = "https://x/", .ca_file = "/nonexistent/ca.pem"})
              .error() == errc::invalid_argument);
}

TEST_CASE("TLS: a certificate from the configured CA is accepted, by IP and by host name")
{
    Pki pki;
    HttpReceiver receiver(tls_receiver(pki.server({"localhost"}, {"127.0.0.1"})));
    asio::io_context ioc;
    for (const char* host : {"127.0.0.1", "localhost"}) {
        CAPTURE(host);
        auto client = make_client(ioc, HttpClientOptions{.url = receiver.url("/events", host), .ca_file = pki.ca_file});
        PostResult r = post(ioc, *client);
        REQUIRE(r.response.has_value());
        CHECK(r.response->status == 200);
        PostResult again = post(ioc, *client);  // over the pooled TLS connection
        REQUIRE(again.response.has_value());
        CHECK(client->stats().connections_opened == 1);
    }
    CHECK(receiver.count() == 4);
}

TEST_CASE("TLS: an untrusted certificate is refused")
{
    Pki pki;
    HttpReceiver receiver(tls_receiver(pki.server({"localhost"}, {"127.0.0.1"})));
    asio::io_context ioc;
    // Another CA in the trust store, then the system's default store: neither knows our test CA.
    for (const std::string& ca_file : {pki.other_ca_file, std::string()}) {
        CAPTURE(ca_file);
        auto client = make_client(ioc, HttpClientOptions{.url = receiver.url(), .ca_file = ca_file});
        PostResult r = post(ioc, *client);
        REQUIRE_FALSE(r.response.has_value());
        CHECK(r.response.error() == errc::crm_unavailable);
        CHECK(r.error_detail.starts_with("tls handshake:"));
        CHECK(r.error_detail.find("certificate") != std::string::npos);
    }
    CHECK(receiver.count() == 0);
}

TEST_CASE("TLS: a trusted certificate for another host name is refused")
{
    Pki pki;
    asio::io_context ioc;
    {
        // Valid chain, but issued for another name only: neither 127.0.0.1 nor localhost matches.
        HttpReceiver receiver(tls_receiver(pki.server({"crm.example.com"}, {})));
        for (const char* host : {"127.0.0.1", "localhost"}) {
            CAPTURE(host);
            auto client = make_client(ioc, HttpClientOptions{.url = receiver.url("/e", host), .ca_file = pki.ca_file});
            PostResult r = post(ioc, *client);
            REQUIRE_FALSE(r.response.has_value());
            CHECK(r.response.error() == errc::crm_unavailable);
            CHECK(r.error_detail.find("mismatch") != std::string::npos);
        }
        CHECK(receiver.count() == 0);
    }
    {
        // A certificate for the IP only does not vouch for the name "localhost".
        HttpReceiver receiver(tls_receiver(pki.server({}, {"127.0.0.1"})));
        auto by_name = make_client(ioc, HttpClientOptions{.url = receiver.url("/e", "localhost"), .ca_file = pki.ca_file});
        PostResult r = post(ioc, *by_name);
        REQUIRE_FALSE(r.response.has_value());
        CHECK(r.error_detail.find("hostname mismatch") != std::string::npos);
        auto by_ip = make_client(ioc, HttpClientOptions{.url = receiver.url("/e"), .ca_file = pki.ca_file});
        CHECK(post(ioc, *by_ip).response.has_value());
    }
}

TEST_CASE("interim 1xx responses are skipped: the final response answers its own request")
{
    asio::io_context ioc;
    RawServer server(ioc);
    // A: 103, then (in a later write) the final 200. B: 100 and 102 then 500, in one write. Taking
    // the 103 as A's answer would leave A's 200 on the connection for B.
    server.push(RawAnswer{.pieces = {"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                                     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}});
    server.push(RawAnswer{.pieces = {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                                     "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope"}});
    auto client = make_client(ioc, HttpClientOptions{.url = server.url(), .timeout = 5000ms});
    PostResult a = post(ioc, *client);
    REQUIRE(a.response.has_value());
    CHECK(a.response->status == 200);
    CHECK(a.response->body_head == "ok");
    PostResult b = post(ioc, *client);
    REQUIRE(b.response.has_value());
    CHECK(b.response->status == 500);
    CHECK(b.response->body_head == "nope");
    CHECK(server.request_connections() == std::vector<int>{1, 1});  // one keep-alive connection
    CHECK(client->stats().connections_opened == 1);
    CHECK(client->idle_connections() == 1);
}

TEST_CASE("101 Switching Protocols or too many interim responses fail the attempt")
{
    asio::io_context ioc;
    RawServer server(ioc);
    auto client = make_client(ioc, HttpClientOptions{.url = server.url(), .timeout = 5000ms});

    server.push(RawAnswer{.pieces = {"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                     "Upgrade: websocket\r\n\r\n"}});
    PostResult upgraded = post(ioc, *client);
    REQUIRE_FALSE(upgraded.response.has_value());
    CHECK(upgraded.response.error() == errc::crm_unavailable);
    CHECK(upgraded.error_detail == "read: unexpected 101 Switching Protocols");
    CHECK(client->idle_connections() == 0);

    // Eight interim responses are skipped; a ninth fails.
    std::string eight;
    for (int i = 0; i < 8; ++i) {
        eight += "HTTP/1.1 103 Early Hints\r\n\r\n";
    }
    server.push(RawAnswer{.pieces = {eight, "HTTP/1.1 204 No Content\r\n\r\n"}});
    PostResult patient = post(ioc, *client);
    REQUIRE(patient.response.has_value());
    CHECK(patient.response->status == 204);

    server.push(RawAnswer{.pieces = {eight + "HTTP/1.1 103 Early Hints\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"}});
    PostResult chatty = post(ioc, *client);
    REQUIRE_FALSE(chatty.response.has_value());
    CHECK(chatty.response.error() == errc::crm_unavailable);
    CHECK(chatty.error_detail.starts_with("read: more than 8 interim"));
    CHECK(client->idle_connections() == 0);
    // The last request went over the connection pooled after the 204, and is not retried: the
    // server had answered.
    CHECK(client->stats().connections_opened == 2);
    CHECK(client->stats().connections_reused == 1);
    CHECK(client->stats().stale_retries == 0);
    CHECK(server.request_connections() == std::vector<int>{1, 2, 2});
}

TEST_CASE("endless chunk framing overflows the bounded buffer and fails the attempt")
{
    asio::io_context ioc;
    RawServer server(ioc);
    // A 200 whose chunked body never gets past a chunk-size line's extension, or past the trailer.
    // Beast bounds neither: the client's buffer limit must stop the read long before 10 MB.
    const std::string chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (const std::string& head : {chunked + "1;", chunked + "0\r\nX-Filler: "}) {
        CAPTURE(head);
        auto client = make_client(ioc, HttpClientOptions{.url = server.url(), .timeout = 10'000ms});
        server.push(RawAnswer{.pieces = {head}, .filler = 10 * 1024 * 1024});
        PostResult r = post(ioc, *client);
        REQUIRE_FALSE(r.response.has_value());
        // A transport failure, not the deadline: the overflow ends the read.
        CHECK(r.response.error() == errc::crm_unavailable);
        CHECK(r.error_detail == "read: buffer overflow");
        CHECK(client->idle_connections() == 0);

        // The broken connection is not reused: the next request opens another.
        PostResult next = post(ioc, *client);
        REQUIRE(next.response.has_value());
        CHECK(next.response->status == 200);
        CHECK(client->stats().connections_opened == 2);
        CHECK(client->stats().connections_reused == 0);
    }
    CHECK(server.connections() == 4);
}

TEST_CASE("a connection with unread response bytes is not reused: the next request reads its own answer")
{
    asio::io_context ioc;
    RawServer server(ioc);
    auto client = make_client(ioc, HttpClientOptions{.url = server.url(), .timeout = 5000ms});

    // The first request gets two complete 200s in one write (a proxy's or CRM's framing bug); the
    // second request's own answer is a 500. Reusing the connection would read the leftover 200 as
    // the second answer: an event the CRM refused would be recorded delivered.
    server.push(RawAnswer{.pieces = {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"}});
    server.push(RawAnswer{.pieces = {"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope"}});
    PostResult first = post(ioc, *client);
    REQUIRE(first.response.has_value());
    CHECK(first.response->status == 200);
    CHECK(first.response->body_head == "ok");
    CHECK(client->idle_connections() == 0);
    PostResult second = post(ioc, *client);
    REQUIRE(second.response.has_value());
    CHECK(second.response->status == 500);
    CHECK(second.response->body_head == "nope");
    CHECK(server.request_connections() == std::vector<int>{1, 2});
    CHECK(client->stats().connections_reused == 0);

    // Bytes that arrive after the answer was read, while the connection waits in the pool (here a
    // second 200, 500 ms after the first: time for the client to have pooled it, even on a loaded
    // machine): the pooled connection is dropped when next taken.
    server.push(RawAnswer{.pieces = {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"},
                          .gap = 500ms});
    server.push(RawAnswer{.pieces = {"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"}});
    PostResult third = post(ioc, *client);
    REQUIRE(third.response.has_value());
    CHECK(third.response->status == 200);
    CHECK(client->idle_connections() == 1);  // nothing unread yet
    run_for(ioc, 1000ms);
    PostResult fourth = post(ioc, *client);
    REQUIRE(fourth.response.has_value());
    CHECK(fourth.response->status == 503);
    CHECK(fourth.response->body_head == "busy");
    CHECK(server.request_connections() == std::vector<int>{1, 2, 2, 3});  // the 500 left nothing behind
    CHECK(client->stats().connections_reused == 1);
    CHECK(client->stats().connections_opened == 3);
}
