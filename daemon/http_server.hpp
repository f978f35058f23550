#pragma once

#include "config/config.hpp"
#include "webhooks/service.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <optional>

namespace boost::asio::ssl {
class context;
}

namespace paybridge::daemon {

/// Process-wide connection cap shared by every worker's server.
struct ConnectionGate {
    std::atomic<std::size_t> open{0};
    std::size_t limit{0};
};

/// One worker's HTTP/1.1 server: an acceptor per listener (SO_REUSEPORT, so every worker binds
/// the same port and the kernel spreads connections), one coroutine per connection with header
/// and body limits (431/413), an idle deadline between requests and a read deadline per request
/// (a slow client cannot hold a connection), keep-alive and pipelining, an X-Request-Id on every
/// response, and graceful stop (stop accepting, let in-flight requests finish, close idle ones).
class HttpServer {
public:
    HttpServer(boost::asio::io_context& ioc, const config::HttpLimits& limits, webhooks::Service& service,
               ConnectionGate& gate);
    ~HttpServer();

    /// Binds a listener. `tls` non-null: connections are TLS (the context is owned by the caller
    /// and may be swapped on reload through set_tls_context). Throws system_error on failure.
    /// `routes`: the config::RouteGroup bits it serves; other paths are answered 404.
    void listen(const boost::asio::ip::tcp::endpoint& endpoint, bool tls, unsigned routes = config::kRoutesAll);

    /// The TLS context new connections use (reload swaps it; live connections keep theirs).
    void set_tls_context(std::shared_ptr<boost::asio::ssl::context> ctx);

    /// Port actually bound by the first listener (useful with port 0).
    std::uint16_t port(std::size_t listener = 0) const;

    void start();

    /// Stops accepting and closes idle connections; busy ones close after their response.
    void stop();

    /// Closes every connection, busy or not (after the shutdown grace period).
    void abort();

    std::size_t sessions() const noexcept { return sessions_.size(); }

    struct Session;

private:
    struct Listener;
    boost::asio::awaitable<void> accept_loop(std::size_t index);
    enum class Accepted { next, pause, end };
    /// Accepts one connection and starts its session. Says whether to go on, to pause first (an
    /// error such as EMFILE) or to end (the listener is closed).
    boost::asio::awaitable<Accepted> accept_one(Listener& l);
    /// Closes plain connections idle past limits.idle_timeout (they wait with no read, so no
    /// per-read timer bounds them).
    boost::asio::awaitable<void> idle_sweep();
    template <class Stream>
    boost::asio::awaitable<void> serve(Stream& stream, Session& session, unsigned routes);
    class GateSlot;
    boost::asio::awaitable<void> run_plain(boost::asio::ip::tcp::socket socket, GateSlot slot, unsigned routes);
    boost::asio::awaitable<void> run_tls(boost::asio::ip::tcp::socket socket, GateSlot slot, unsigned routes);

    boost::asio::io_context& ioc_;
    config::HttpLimits limits_;
    webhooks::Service& service_;
    ConnectionGate& gate_;
    struct Listener {
        boost::asio::ip::tcp::acceptor acceptor;
        bool tls;
        unsigned routes;
    };
    std::vector<std::unique_ptr<Listener>> listeners_;
    std::shared_ptr<boost::asio::ssl::context> tls_;
    std::list<Session*> sessions_;
    std::function<void()> cancel_sweep_;  ///< set while idle_sweep runs
    bool stopping_{false};
};

}  // namespace paybridge::daemon
