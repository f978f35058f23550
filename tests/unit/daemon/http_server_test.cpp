// The HTTP server in process, where the test decides the order of events: what the kernel holds
// for a connection, and when stop() comes, before the server's io_context runs again.

#include "tests/unit/daemon/server_fixture.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace paybridge;
namespace asio = boost::asio;
using test::Server;

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
