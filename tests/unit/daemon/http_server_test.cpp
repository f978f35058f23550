// The HTTP server in process, where the test decides the order of events: what the kernel holds
// for a connection, and when stop() comes, before the server's io_context runs again.

#include "config/config.hpp"
#include "daemon/http_server.hpp"
#include "tests/support/fake_bill_store.hpp"
#include "webhooks/runtime.hpp"
#include "webhooks/service.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <doctest/doctest.h>

#include <poll.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

using namespace paybridge;
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;

namespace {

/// The real service (with a store it never reaches: the requests here are /healthz) behind an
/// HttpServer on 127.0.0.1, and one connected client. The server's io_context runs only when the
/// test says so, so the test decides what the kernel holds when stop() comes.
struct Server {
    asio::io_context ioc;
    test::FakeBillStore store;  // never reached: the requests here are /healthz
    webhooks::RuntimePtr runtime = std::make_shared<webhooks::Runtime>();
    webhooks::Service service{webhooks::Service::Deps{
        .store = store, .deliveries = nullptr, .runtime = [this] { return runtime; }, .ready = [] { return true; }}};
    daemon::ConnectionGate gate{.open = {}, .limit = 100};
    daemon::HttpServer server{ioc, config::HttpLimits{}, service, gate};
    asio::io_context client_ioc;
    tcp::socket client{client_ioc};

    Server()
    {
        server.listen(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), false);
        server.start();
        client.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server.port()));
    }

    /// Runs the server until `done` holds (false after 10 s).
    bool serve_until(const std::function<bool()>& done)
    {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!done()) {
            if (std::chrono::steady_clock::now() >= until) {
                return false;
            }
            ioc.restart();
            ioc.run_for(std::chrono::milliseconds(10));
        }
        return true;
    }

    /// Runs the server until the client has received `text` or the connection has ended; returns
    /// what the client received.
    std::string answer(std::string_view text)
    {
        std::string got;
        bool ended = false;
        serve_until([&] {
            pollfd p{.fd = client.native_handle(), .events = POLLIN, .revents = 0};
            while (::poll(&p, 1, 0) > 0) {
                char buf[4096];
                boost::system::error_code ec;
                const std::size_t n = client.read_some(asio::buffer(buf), ec);
                got.append(buf, n);
                if (ec) {
                    ended = true;
                    break;
                }
            }
            return ended || got.find(text) != std::string::npos;
        });
        return got;
    }
};

}  // namespace

TEST_CASE("a request whose bytes arrive with the stop is answered (Connection: close), not dropped")
{
    Server s;
    const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    // A first request and its answer: the connection then waits, idle, for the next one.
    asio::write(s.client, asio::buffer(request));
    const std::string first = s.answer("ok\n");
    CHECK(first.starts_with("HTTP/1.1 200"));
    CHECK(first.find("Connection: close") == std::string::npos);
    s.ioc.restart();
    s.ioc.run_for(std::chrono::milliseconds(100));  // back to waiting for the next request
    REQUIRE(s.server.sessions() == 1);

    // The next request is in the server's socket (loopback delivers it during write) when the stop
    // comes, and the server has not looked at the socket since: its wait is cancelled by stop().
    asio::write(s.client, asio::buffer(request));
    s.server.stop();
    const std::string second = s.answer("ok\n");
    CHECK_MESSAGE(second.starts_with("HTTP/1.1 200"), second);
    CHECK(second.find("Connection: close") != std::string::npos);
    CHECK(s.serve_until([&] { return s.server.sessions() == 0; }));
}

TEST_CASE("stop closes an idle connection that has nothing to serve")
{
    Server s;
    REQUIRE(s.serve_until([&] { return s.server.sessions() == 1; }));
    s.server.stop();
    CHECK(s.serve_until([&] { return s.server.sessions() == 0; }));
    // The client sees the connection end with no bytes.
    CHECK(s.answer("HTTP").empty());
}
