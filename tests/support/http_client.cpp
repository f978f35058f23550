#include "tests/support/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/dynamic_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <cstddef>

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cctype>

namespace paybridge::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Every operation is asynchronous and run to completion on the client's own io_context: a Beast
// stream's expiry applies to asynchronous operations only, so this is what makes the timeouts
// hold against a server that accepts and never answers.
struct HttpClient::Impl {
    asio::io_context ioc;
    std::unique_ptr<beast::tcp_stream> stream_ptr = std::make_unique<beast::tcp_stream>(ioc);
    beast::tcp_stream& stream() { return *stream_ptr; }
    void reset()
    {
        boost::system::error_code ignored;
        stream().socket().close(ignored);
        stream_ptr = std::make_unique<beast::tcp_stream>(ioc);
        connected = false;
    }
    beast::flat_buffer buffer;
    std::uint16_t port;
    std::chrono::milliseconds timeout;
    bool connected{false};
    std::size_t connections{0};

    /// Starts one asynchronous operation with a handler that records its error, and runs it.
    template <class Start>
    boost::system::error_code run(Start start)
    {
        boost::system::error_code result = asio::error::would_block;
        start([&result](boost::system::error_code ec, auto&&...) { result = ec; });
        ioc.restart();
        ioc.run();
        return result;
    }

    boost::system::error_code connect()
    {
        boost::system::error_code ec;
        if (!connected) {
            stream().expires_after(timeout);
            const tcp::endpoint to(asio::ip::make_address("127.0.0.1"), port);
            ec = run([&](auto handler) { stream().async_connect(to, std::move(handler)); });
            connected = !ec;
            connections += connected ? 1 : 0;
            buffer.clear();
        }
        return ec;
    }
};

HttpClient::HttpClient(std::uint16_t port, std::chrono::milliseconds timeout) : impl_(std::make_unique<Impl>())
{
    impl_->port = port;
    impl_->timeout = timeout;
}

HttpClient::~HttpClient()
{
    boost::system::error_code ec;
    impl_->stream().socket().close(ec);
}

std::size_t HttpClient::connections() const noexcept { return impl_->connections; }

HttpResult HttpClient::request(const std::string& method, const std::string& target, const std::string& body,
                               const Headers& headers)
{
    HttpResult out;
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (auto ec = impl_->connect()) {
            out.error = ec.message();
            return out;
        }
        http::request<http::string_body> req{http::string_to_verb(method), target, 11};
        req.set(http::field::host, "127.0.0.1");
        for (const auto& [k, v] : headers) {
            req.set(k, v);
        }
        req.body() = body;
        req.prepare_payload();
        impl_->stream().expires_after(impl_->timeout);
        boost::system::error_code ec =
            impl_->run([&](auto handler) { http::async_write(impl_->stream(), req, std::move(handler)); });
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 * 1024 * 1024);
        parser.skip(method == "HEAD");  // the answer to HEAD has a Content-Length and no body
        if (!ec) {
            ec = impl_->run(
                [&](auto handler) { http::async_read(impl_->stream(), impl_->buffer, parser, std::move(handler)); });
        }
        if (ec) {
            impl_->reset();
            out.error = ec.message();
            if (attempt == 0 && (ec == http::error::end_of_stream || ec == asio::error::connection_reset ||
                                 ec == asio::error::broken_pipe)) {
                // The server closed an idle keep-alive connection: retry once on a new one
                // (connections() tells a test that cares).
                continue;
            }
            return out;
        }
        auto res = parser.release();
        out.status = static_cast<int>(res.result_int());
        out.body = res.body();
        for (const auto& f : res) {
            std::string name(f.name_string());
            std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
            out.headers[name] = std::string(f.value());
        }
        out.error.clear();
        if (!res.keep_alive()) {
            impl_->reset();
        }
        return out;
    }
    return out;
}

std::string HttpClient::raw(const std::string& bytes, std::chrono::milliseconds wait)
{
    if (auto ec = impl_->connect()) {
        return {};
    }
    impl_->stream().expires_after(wait);
    boost::system::error_code ec =
        impl_->run([&](auto handler) { asio::async_write(impl_->stream(), asio::buffer(bytes), std::move(handler)); });
    std::string out;
    char buf[4096];
    while (!ec) {
        std::size_t n = 0;
        impl_->stream().expires_after(wait);
        ec = impl_->run([&](auto handler) {
            impl_->stream().async_read_some(asio::buffer(buf), [&n, h = std::move(handler)](boost::system::error_code e,
                                                                                          std::size_t got) mutable {
                n = got;
                h(e);
            });
        });
        out.append(buf, n);
    }
    impl_->reset();
    return out;
}

std::chrono::milliseconds HttpClient::time_until_closed(std::uint16_t port, const std::string& bytes,
                                                        std::chrono::milliseconds max_wait)
{
    asio::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    asio::write(s, asio::buffer(bytes));
    const auto start = std::chrono::steady_clock::now();
    // Blocking reads bounded by poll(): a Beast stream's expiry applies to async operations only,
    // so a server that never closes must not hang the test past max_wait.
    char buf[1024];
    for (;;) {
        const auto left = max_wait - (std::chrono::steady_clock::now() - start);
        if (left <= std::chrono::steady_clock::duration::zero()) {
            break;
        }
        pollfd p{s.native_handle(), POLLIN, 0};
        const int ready =
            ::poll(&p, 1, static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count()));
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        if (ready <= 0) {
            break;
        }
        boost::system::error_code ec;
        s.read_some(asio::buffer(buf), ec);
        if (ec) {
            break;
        }
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
}

HttpResult http_request(std::uint16_t port, const std::string& method, const std::string& target,
                        const std::string& body, const Headers& headers)
{
    HttpClient c(port);
    return c.request(method, target, body, headers);
}

}  // namespace paybridge::test
