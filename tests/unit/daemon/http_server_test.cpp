// The HTTP server in process, where the test decides the order of events: what the kernel holds
// for a connection, and when stop() comes, before the server's io_context runs again.

#include "config/config.hpp"
#include "core/bill_store.hpp"
#include "core/error.hpp"
#include "daemon/http_server.hpp"
#include "webhooks/runtime.hpp"
#include "webhooks/service.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <doctest/doctest.h>

#include <poll.h>

#include <chrono>
#include <memory>
#include <string>

using namespace paybridge;
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;

namespace {

/// A store that is never reached: the requests here are /healthz.
struct UnusedStore final : BillStore {
    awaitable<Result<ApplyResult>> apply(PaymentEvent) override { co_return make_error_code(errc::internal); }
    awaitable<Result<RegisterResult>> register_bill(NewBill) override { co_return make_error_code(errc::internal); }
    awaitable<Result<std::optional<BillView>>> get_bill(std::string) override { co_return make_error_code(errc::internal); }
    awaitable<Result<Page>> list_bills(BillFilter) override { co_return make_error_code(errc::internal); }
    awaitable<Result<Page>> list_events(std::string, std::size_t) override { co_return make_error_code(errc::internal); }
    awaitable<Result<Page>> list_anomalies(std::string, std::size_t) override { co_return make_error_code(errc::internal); }
    awaitable<Result<std::string>> summary(std::int64_t, std::int64_t) override { co_return make_error_code(errc::internal); }
    awaitable<Result<void>> ping() override { co_return Result<void>{}; }
};

/// Reads from the blocking client socket until `text` has arrived, the connection ends or 5 s pass
/// without a byte (the server's io_context does not run meanwhile: a missing answer must fail the
/// test, not hang it).
std::string read_until(tcp::socket& s, std::string_view text)
{
    std::string got;
    char buf[4096];
    boost::system::error_code ec;
    while (got.find(text) == std::string::npos) {
        // Asio's blocking read polls without a limit (and ignores SO_RCVTIMEO): poll here first.
        pollfd p{.fd = s.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&p, 1, 5000) <= 0) {
            break;
        }
        const std::size_t n = s.read_some(asio::buffer(buf), ec);
        got.append(buf, n);
        if (ec) {
            break;
        }
    }
    return got;
}

}  // namespace

TEST_CASE("a request whose bytes arrive with the stop is answered (Connection: close), not dropped")
{
    asio::io_context ioc;
    UnusedStore store;
    const webhooks::RuntimePtr runtime = std::make_shared<webhooks::Runtime>();
    webhooks::Service service(webhooks::Service::Deps{
        .store = store, .deliveries = nullptr, .runtime = [&runtime] { return runtime; }, .ready = [] { return true; }});
    daemon::ConnectionGate gate;
    gate.limit = 100;
    const config::HttpLimits limits;
    daemon::HttpServer server(ioc, limits, service, gate);
    server.listen(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), false);
    server.start();

    asio::io_context client_ioc;
    tcp::socket client(client_ioc);
    client.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server.port()));
    const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    // A first request and its answer: the connection then waits, idle, for the next one.
    asio::write(client, asio::buffer(request));
    ioc.run_for(std::chrono::milliseconds(300));
    const std::string first = read_until(client, "ok\n");
    CHECK(first.starts_with("HTTP/1.1 200"));
    CHECK(first.find("Connection: close") == std::string::npos);
    ioc.run_for(std::chrono::milliseconds(100));
    REQUIRE(server.sessions() == 1);

    // The next request is in the server's socket (loopback delivers it during write) when the stop
    // comes, and the server has not looked at the socket since: its wait is cancelled by stop().
    asio::write(client, asio::buffer(request));
    server.stop();
    ioc.restart();
    ioc.run_for(std::chrono::milliseconds(500));
    const std::string second = read_until(client, "ok\n");
    CHECK_MESSAGE(second.starts_with("HTTP/1.1 200"), second);
    CHECK(second.find("Connection: close") != std::string::npos);
    ioc.restart();
    ioc.run_for(std::chrono::milliseconds(200));
    CHECK(server.sessions() == 0);
}

TEST_CASE("stop closes an idle connection that has nothing to serve")
{
    asio::io_context ioc;
    UnusedStore store;
    const webhooks::RuntimePtr runtime = std::make_shared<webhooks::Runtime>();
    webhooks::Service service(webhooks::Service::Deps{
        .store = store, .deliveries = nullptr, .runtime = [&runtime] { return runtime; }, .ready = [] { return true; }});
    daemon::ConnectionGate gate;
    gate.limit = 100;
    const config::HttpLimits limits;
    daemon::HttpServer server(ioc, limits, service, gate);
    server.listen(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), false);
    server.start();

    asio::io_context client_ioc;
    tcp::socket client(client_ioc);
    client.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server.port()));
    ioc.run_for(std::chrono::milliseconds(300));
    REQUIRE(server.sessions() == 1);
    server.stop();
    ioc.restart();
    ioc.run_for(std::chrono::milliseconds(300));
    CHECK(server.sessions() == 0);
    // The client sees the connection end with no bytes.
    CHECK(read_until(client, "HTTP").empty());
}
