#pragma once

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

namespace paybridge::test {

namespace asio = boost::asio;
using asio::ip::tcp;

/// The real service (with a store it never reaches: the requests here are /healthz) behind an
/// HttpServer on 127.0.0.1, and one client. The server's io_context runs only when the
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

    /// `connect`: the client connects at once (before the server has run at all).
    explicit Server(bool connect = true)
    {
        server.listen(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), false);
        server.start();
        if (connect) {
            client.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server.port()));
        }
    }

    /// Ends every session while the server they are listed in still exists (the io_context, which
    /// would otherwise destroy them, outlives the server).
    ~Server()
    {
        server.abort();
        serve_until([&] { return server.sessions() == 0; });
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

}  // namespace paybridge::test
