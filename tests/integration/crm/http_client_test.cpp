// crm::HttpClient against real loopback servers: keep-alive pooling, deadlines, concurrency, body
// capping, and TLS verification (trusted CA, untrusted CA, wrong host name).

#include "crm/http_client.hpp"

#include "core/error.hpp"
#include "tests/integration/crm/crm_fixture.hpp"

#include <boost/asio/co_spawn.hpp>
#include <doctest/doctest.h>

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
    receiver.start();
    run_for(ioc, 50ms);
    PostResult r = post(ioc, *client);
    REQUIRE(r.response.has_value());
    CHECK(r.response->status == 200);
    CHECK(client->stats().connections_opened == 2);
    CHECK(receiver.count() == 2);
}

TEST_CASE("the deadline covers the whole attempt")
{
    asio::io_context ioc;
    HttpReceiver receiver(HttpReceiverOptions{});
    receiver.set_response_delay(3s);
    auto client = make_client(ioc, HttpClientOptions{.url = receiver.url(), .timeout = 300ms});
    const auto started = std::chrono::steady_clock::now();
    PostResult r = post(ioc, *client);
    const auto elapsed = std::chrono::steady_clock::now() - started;
    REQUIRE_FALSE(r.response.has_value());
    CHECK(r.response.error() == errc::timeout);
    CHECK(r.error_detail.starts_with("read:"));
    CHECK(elapsed >= 290ms);
    CHECK(elapsed < 2s);
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
