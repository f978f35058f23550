#pragma once

// The CLI's HTTP/1.1 client (Beast): one request per connection, http:// or https:// (system CA
// store, host name verified), a deadline on the whole exchange and a size limit on the reply.
// Transport failures come back as Failure{Exit::connect} with the reason in words; any HTTP
// answer, whatever its status, is a value.

#include "tools/cli/common.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::cli {

/// An absolute http(s) URL split for connecting.
struct Url {
    bool tls{false};
    std::string host;  ///< without brackets for IPv6
    std::uint16_t port{80};
    std::string target;  ///< path and query, at least "/"

    /// "http://host:port" (IPv6 hosts in brackets).
    std::string origin() const;
    /// origin() + target.
    std::string text() const;
};

/// Parses "http://host[:port][/path]" or "https://…". Errors (Exit::usage): another scheme, no
/// host, a bad port, user info.
Expected<Url> parse_url(std::string_view text);

/// A base URL with `target` appended to its path (`target` starts with '/').
Url with_target(const Url& base, std::string_view target);

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
    std::string method{"GET"};
    std::string target{"/"};  ///< path and query
    HeaderList headers;       ///< sent in this order, after Host
    std::string body;
};

struct HttpResponse {
    int status{0};
    std::string reason;
    HeaderList headers;
    std::string body;

    /// The first header with this name (case-insensitive), or "".
    std::string header(std::string_view name) const;
    bool ok() const noexcept { return status >= 200 && status < 300; }
};

struct ClientLimits {
    std::chrono::milliseconds timeout{15'000};  ///< resolve + connect + write + read
    std::size_t max_body_bytes{16 * 1024 * 1024};
};

/// The exact bytes sent for `req` to `url`'s host: request line, Host, the headers in order,
/// Content-Length (for a body or a POST), then the body. What --print shows.
std::string serialize_request(const Url& url, const HttpRequest& req);

/// Sends one request on a new connection to url (url.target is ignored; req.target is used).
/// Errors (Exit::connect): "cannot reach http://h:p: connection refused" and similar, or
/// "… did not answer within 15 s"; Exit::remote when the reply is not valid HTTP.
boost::asio::awaitable<Expected<HttpResponse>> send(Url url, HttpRequest req, ClientLimits limits);

/// send() on a private io_context, blocking the caller.
Expected<HttpResponse> send_blocking(const Url& url, const HttpRequest& req, ClientLimits limits = {});

/// Appends the daemon hint to a connection failure: " — is paybridged running? (see README Quickstart)".
Failure daemon_hint(Failure failure);

}  // namespace paybridge::cli
