#include "tools/cli/http_client.hpp"

#include "core/async.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <openssl/ssl.h>

#include <algorithm>
#include <cctype>
#include <sstream>

namespace paybridge::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

bool iequals(std::string_view a, std::string_view b)
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string host_header(const Url& url)
{
    const bool v6 = url.host.find(':') != std::string::npos;
    std::string host = v6 ? "[" + url.host + "]" : url.host;
    if (url.port != (url.tls ? 443 : 80)) {
        host += ":" + std::to_string(url.port);
    }
    return host;
}

http::request<http::string_body> build(const Url& url, const HttpRequest& req)
{
    http::request<http::string_body> msg;
    msg.method_string(req.method);
    msg.target(req.target);
    msg.version(11);
    msg.set(http::field::host, host_header(url));
    for (const auto& [name, value] : req.headers) {
        msg.insert(name, value);
    }
    msg.body() = req.body;
    if (!req.body.empty() || req.method == "POST" || req.method == "PUT") {
        msg.content_length(req.body.size());
    }
    return msg;
}

std::string describe(const boost::system::error_code& ec, std::chrono::milliseconds timeout)
{
    if (ec == asio::error::connection_refused) {
        return "connection refused";
    }
    if (ec == asio::error::host_not_found || ec == asio::error::host_not_found_try_again ||
        ec == asio::error::no_data) {
        return "the host name does not resolve";
    }
    if (ec == beast::error::timeout || ec == asio::error::timed_out) {
        return "no answer within " + std::to_string(timeout.count() / 1000) + " s";
    }
    if (ec == asio::error::network_unreachable || ec == asio::error::host_unreachable) {
        return "the network or host is unreachable";
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) {
        return "the server closed the connection without answering";
    }
    return ec.message();
}

Failure transport_failure(const Url& url, const boost::system::error_code& ec,
                          std::chrono::milliseconds timeout)
{
    return Failure{Exit::connect, "cannot reach " + url.origin() + ": " + describe(ec, timeout)};
}

HttpResponse to_response(const http::response<http::string_body>& msg)
{
    HttpResponse res;
    res.status = static_cast<int>(msg.result_int());
    res.reason = std::string(msg.reason());
    for (const auto& f : msg) {
        res.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    }
    res.body = msg.body();
    return res;
}

// The request/response exchange over an established stream (plain or TLS).
template <class Stream>
asio::awaitable<Expected<HttpResponse>> exchange(Stream& stream, beast::tcp_stream& tcp_layer, const Url& url,
                                                 http::request<http::string_body>& msg,
                                                 const ClientLimits& limits)
{
    tcp_layer.expires_after(limits.timeout);
    auto [wec, written] = co_await http::async_write(stream, msg, kUseTuple);
    (void)written;
    if (wec) {
        co_return transport_failure(url, wec, limits.timeout);
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(limits.max_body_bytes);
    parser.header_limit(64 * 1024);
    if (msg.method() == http::verb::head) {
        parser.skip(true);
    }
    auto [rec, read] = co_await http::async_read(stream, buffer, parser, kUseTuple);
    (void)read;
    if (rec) {
        if (rec.category() == http::make_error_code(http::error::body_limit).category() &&
            rec != http::error::end_of_stream) {
            co_return Failure{Exit::remote, url.origin() + " sent an invalid HTTP reply: " + rec.message()};
        }
        co_return transport_failure(url, rec, limits.timeout);
    }
    co_return to_response(parser.get());
}

}  // namespace

std::string Url::origin() const
{
    const bool v6 = host.find(':') != std::string::npos;
    return std::string(tls ? "https://" : "http://") + (v6 ? "[" + host + "]" : host) + ":" +
           std::to_string(port);
}

std::string Url::text() const { return origin() + target; }

Expected<Url> parse_url(std::string_view text)
{
    Url url;
    std::string_view rest = text;
    if (rest.starts_with("http://")) {
        rest.remove_prefix(7);
    } else if (rest.starts_with("https://")) {
        url.tls = true;
        url.port = 443;
        rest.remove_prefix(8);
    } else {
        return usage_error("'" + std::string(text) + "' is not an http:// or https:// URL");
    }
    const auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    url.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    if (authority.find('@') != std::string_view::npos) {
        return usage_error("'" + std::string(text) + "': user names in URLs are not supported");
    }
    std::string_view port_text;
    if (authority.starts_with("[")) {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) {
            return usage_error("'" + std::string(text) + "': unterminated [IPv6] host");
        }
        url.host = std::string(authority.substr(1, close - 1));
        authority.remove_prefix(close + 1);
        if (authority.starts_with(":")) {
            port_text = authority.substr(1);
        } else if (!authority.empty()) {
            return usage_error("'" + std::string(text) + "': unexpected text after the host");
        }
    } else {
        const auto colon = authority.rfind(':');
        url.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
        }
    }
    if (url.host.empty()) {
        return usage_error("'" + std::string(text) + "' has no host");
    }
    if (!port_text.empty() || authority.ends_with(":")) {
        std::uint16_t port = 0;
        bool ok = !port_text.empty() && port_text.size() <= 5;
        unsigned long v = 0;
        for (char c : port_text) {
            ok = ok && c >= '0' && c <= '9';
            v = v * 10 + static_cast<unsigned long>(c - '0');
        }
        if (!ok || v == 0 || v > 65535) {
            return usage_error("'" + std::string(text) + "' has an invalid port");
        }
        port = static_cast<std::uint16_t>(v);
        url.port = port;
    }
    return url;
}

Url with_target(const Url& base, std::string_view target)
{
    Url url = base;
    std::string path = base.target;
    while (!path.empty() && path.back() == '/') {
        path.pop_back();
    }
    url.target = path + std::string(target);
    return url;
}

std::string HttpResponse::header(std::string_view name) const
{
    for (const auto& [n, v] : headers) {
        if (iequals(n, name)) {
            return v;
        }
    }
    return {};
}

std::string serialize_request(const Url& url, const HttpRequest& req)
{
    auto msg = build(url, req);
    std::ostringstream out;
    out << msg;
    return out.str();
}

asio::awaitable<Expected<HttpResponse>> send(Url url, HttpRequest req, ClientLimits limits)
{
    auto executor = co_await asio::this_coro::executor;
    tcp::resolver resolver(executor);
    beast::tcp_stream tcp_stream(executor);
    auto msg = build(url, req);

    // The resolver has no deadline of its own; loopback and /etc/hosts names answer at once, and
    // a DNS stall ends with the resolver's own timeout.
    auto [rec, endpoints] = co_await resolver.async_resolve(url.host, std::to_string(url.port), kUseTuple);
    if (rec) {
        co_return transport_failure(url, rec, limits.timeout);
    }
    tcp_stream.expires_after(limits.timeout);
    auto [cec, endpoint] = co_await tcp_stream.async_connect(endpoints, kUseTuple);
    (void)endpoint;
    if (cec) {
        co_return transport_failure(url, cec, limits.timeout);
    }
    if (!url.tls) {
        Expected<HttpResponse> res = co_await exchange(tcp_stream, tcp_stream, url, msg, limits);
        boost::system::error_code ignored;
        tcp_stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        co_return res;
    }

    asio::ssl::context ctx(asio::ssl::context::tls_client);
    ctx.set_default_verify_paths();
    ctx.set_verify_mode(asio::ssl::verify_peer);
    ctx.set_verify_callback(asio::ssl::host_name_verification(url.host));
    asio::ssl::stream<beast::tcp_stream> tls_stream(std::move(tcp_stream), ctx);
    if (SSL_set_tlsext_host_name(tls_stream.native_handle(), url.host.c_str()) != 1) {
        co_return Failure{Exit::connect, "cannot reach " + url.origin() + ": cannot set the TLS server name"};
    }
    beast::get_lowest_layer(tls_stream).expires_after(limits.timeout);
    auto [hec] = co_await tls_stream.async_handshake(asio::ssl::stream_base::client, kUseTuple);
    if (hec) {
        co_return Failure{Exit::connect,
                          "cannot reach " + url.origin() + ": TLS handshake failed: " + hec.message()};
    }
    Expected<HttpResponse> res =
        co_await exchange(tls_stream, beast::get_lowest_layer(tls_stream), url, msg, limits);
    co_return res;
}

Expected<HttpResponse> send_blocking(const Url& url, const HttpRequest& req, ClientLimits limits)
{
    asio::io_context ioc;
    Expected<HttpResponse> result =
        Failure{Exit::connect, "cannot reach " + url.origin() + ": not attempted"};
    auto task = [&]() -> asio::awaitable<void> {
        result = co_await send(url, req, limits);
    };
    asio::co_spawn(ioc, std::move(task), [](std::exception_ptr e) {
        if (e) {
            std::rethrow_exception(e);
        }
    });
    ioc.run();
    return result;
}

Failure daemon_hint(Failure failure)
{
    if (failure.exit == Exit::connect) {
        failure.message += " — is paybridged running? (see README Quickstart)";
    }
    return failure;
}

}  // namespace paybridge::cli
