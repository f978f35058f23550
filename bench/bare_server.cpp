// The bare HTTP server of the benchmark: the same Beast + coroutine + SO_REUSEPORT structure as
// paybridged (one io_context per worker thread, keep-alive, a request parser with the same
// limits), answering every request with "success" and doing nothing else. The ratio of
// paybridged's rate to this one's, measured with the same client in the same run, says how
// much of the HTTP ceiling the verification and the Redis transaction cost.
//   paybridge_bare_server PORT [WORKERS]

#include "core/async.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using tcp = asio::ip::tcp;
using paybridge::kUseTuple;

namespace {

awaitable<void> session(tcp::socket socket)
{
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(8192);
        parser.body_limit(65536);
        stream.expires_after(std::chrono::seconds(60));
        auto [ec, n] = co_await http::async_read(stream, buffer, parser, kUseTuple);
        if (ec) {
            co_return;
        }
        auto req = parser.release();
        http::response<http::string_body> res{http::status::ok, req.version()};
        res.set(http::field::content_type, "text/plain");
        res.set("X-Request-Id", "0000000000000000-00000000");
        res.keep_alive(req.keep_alive());
        res.body() = "success";
        res.prepare_payload();
        auto [wec, wn] = co_await http::async_write(stream, res, kUseTuple);
        if (wec || !res.keep_alive()) {
            co_return;
        }
    }
}

awaitable<void> listener(tcp::acceptor& acceptor)
{
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(kUseTuple);
        if (ec) {
            co_return;
        }
        socket.set_option(tcp::no_delay(true), ec);
        asio::co_spawn(acceptor.get_executor(), session(std::move(socket)), asio::detached);
    }
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    const auto port = static_cast<unsigned short>(std::stoi(argv[1]));
    const int workers = argc > 2 ? std::stoi(argv[2]) : static_cast<int>(std::thread::hardware_concurrency());
    std::vector<std::unique_ptr<asio::io_context>> loops;
    std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
    for (int i = 0; i < workers; ++i) {
        loops.push_back(std::make_unique<asio::io_context>(1));
        auto a = std::make_unique<tcp::acceptor>(*loops.back());
        tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), port);
        a->open(ep.protocol());
        a->set_option(asio::socket_base::reuse_address(true));
        int one = 1;
        ::setsockopt(a->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        a->bind(ep);
        a->listen();
        asio::co_spawn(*loops.back(), listener(*a), asio::detached);
        acceptors.push_back(std::move(a));
    }
    asio::signal_set signals(*loops.front(), SIGTERM, SIGINT);
    signals.async_wait([&](auto, int) {
        for (auto& l : loops) {
            l->stop();
        }
    });
    std::vector<std::thread> threads;
    for (int i = 1; i < workers; ++i) {
        threads.emplace_back([&loops, i] { loops[static_cast<std::size_t>(i)]->run(); });
    }
    loops.front()->run();
    for (auto& t : threads) {
        t.join();
    }
    return 0;
}
