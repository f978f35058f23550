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

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cctype>

namespace paybridge::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct HttpClient::Impl {
    asio::io_context ioc;
    std::unique_ptr<beast::tcp_stream> stream_ptr = std::make_unique<beast::tcp_stream>(ioc);
    beast::tcp_stream& stream() { return *stream_ptr; }
    void reset() { stream_ptr = std::make_unique<beast::tcp_stream>(ioc); connected = false; }
    beast::flat_buffer buffer;
    std::uint16_t port;
    std::chrono::milliseconds timeout;
    bool connected{false};

    boost::system::error_code connect()
    {
        boost::system::error_code ec;
        if (!connected) {
            stream().expires_after(timeout);
            stream().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
            connected = !ec;
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
        boost::system::error_code ec;
        impl_->stream().expires_after(impl_->timeout);
        http::write(impl_->stream(), req, ec);
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 * 1024 * 1024);
        parser.skip(method == "HEAD");  // the answer to HEAD has a Content-Length and no body
        if (!ec) {
            http::read(impl_->stream(), impl_->buffer, parser, ec);
        }
        if (ec) {
            impl_->connected = false;
            boost::system::error_code ignored;
            impl_->stream().socket().close(ignored);
            impl_->reset();
            out.error = ec.message();
            if (attempt == 0 && (ec == http::error::end_of_stream || ec == asio::error::connection_reset ||
                                 ec == asio::error::broken_pipe)) {
                continue;  // the server closed an idle keep-alive connection: retry once on a new one
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
            impl_->connected = false;
            boost::system::error_code ignored;
            impl_->stream().socket().close(ignored);
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
    boost::system::error_code ec;
    impl_->stream().expires_after(wait);
    asio::write(impl_->stream(), asio::buffer(bytes), ec);
    std::string out;
    char buf[4096];
    while (!ec) {
        impl_->stream().expires_after(wait);
        const std::size_t n = impl_->stream().read_some(asio::buffer(buf), ec);
        out.append(buf, n);
    }
    impl_->connected = false;
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
