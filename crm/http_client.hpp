#pragma once

// A small HTTP/1.1 client for one origin (the CRM endpoint, a provider's API), over TCP or TLS.
//
// - TLS: peer verification and host-name verification (DNS name or IP address, checked by OpenSSL
//   during chain verification) are always on; SNI is sent for DNS names; the trust store is the
//   custom CA file when configured, else OpenSSL's system default paths. TLS 1.2 minimum.
// - Keep-alive: connections go back to a per-instance pool after a complete response that allows
//   reuse and leaves no unread byte behind (a body longer than its Content-Length, a second
//   response: the next request would take them for its answer); idle connections older than
//   idle_timeout, or on which bytes arrived while idle, are dropped. A request that fails on a reused
//   connection before any response byte arrived (the server closed it while idle) is retried once on
//   a fresh connection.
// - At most `concurrency` requests are in flight; further callers wait (the wait is not part of the
//   deadline).
// - One deadline per attempt covers resolve + connect + TLS handshake + write + read.
// - The response body is read (so the connection can be reused) up to max_body bytes, and its first
//   keep_body bytes are kept for the delivery record. A body that is too long or cut short still
//   counts as the answer (the connection is dropped).
// - Response bytes are buffered up to max_header + 64 KiB: a response whose framing (chunk
//   extensions, a chunked trailer) exceeds that fails the attempt instead of filling memory.
// - Interim 1xx responses (100, 102, 103, ...) are skipped, at most 8 of them per request; only the
//   final (>= 200) response counts. 101 Switching Protocols fails the attempt.
//
// Lives on one executor (single-threaded io_context); not thread-safe. Failures are values.

#include "core/result.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::crm {

/// An absolute http(s) URL, split for the client.
struct Url {
    bool tls{false};
    std::string host;         ///< DNS name or IP literal (IPv6 without brackets)
    std::uint16_t port{0};
    std::string target{"/"};  ///< path + query
    std::string host_header;  ///< "host[:port]" as sent in Host (port only when not the default)
};

/// Parses "http://host[:port][/path][?query]" and "https://...". No userinfo, no fragment.
/// Errors: errc::invalid_argument.
Result<Url> parse_url(std::string_view text);

struct HttpClientOptions {
    std::string url;                                   ///< the endpoint every request is POSTed to
    std::string ca_file;                               ///< PEM bundle; empty: system default paths
    std::chrono::milliseconds timeout{10'000};         ///< per attempt, all steps included
    int concurrency{32};                               ///< requests in flight at most
    std::chrono::milliseconds idle_timeout{30'000};    ///< pooled connections unused longer are closed
    std::size_t keep_body{256};                        ///< response body bytes kept
    std::size_t max_body{1024 * 1024};                 ///< read (and discard) at most this much body
    std::size_t max_header{16 * 1024};
    std::string user_agent{"paybridge-webhooks"};
    bool keep_headers{false};                          ///< keep every response header (HttpResponse::headers)
};

using Headers = std::vector<std::pair<std::string, std::string>>;

/// A complete (or body-truncated) response.
struct HttpResponse {
    unsigned status{0};
    std::string body_head;    ///< the first keep_body bytes of the body
    std::string retry_after;  ///< the Retry-After header, verbatim ("" when absent)
    Headers headers;          ///< every response header, in order (only with keep_headers)
    /// The whole body was read (not cut short by a closed connection, a deadline or max_body):
    /// body_head is all of it when it is not longer than keep_body.
    bool complete{true};
};

/// One attempt. `response` errors: errc::timeout (the deadline passed), errc::crm_unavailable (DNS,
/// connect, TLS, certificate, write/read or protocol failure). `error_detail` says which step failed
/// and why ("tls handshake: certificate verify failed (hostname mismatch)"), for the delivery record.
struct PostResult {
    Result<HttpResponse> response{HttpResponse{}};
    std::string error_detail;
};

struct HttpClientStats {
    std::uint64_t requests{0};
    std::uint64_t connections_opened{0};
    std::uint64_t connections_reused{0};
    std::uint64_t stale_retries{0};
};

class HttpClient final {
public:
    /// Errors: errc::invalid_argument for a bad URL, a CA file that cannot be loaded, or a
    /// non-positive concurrency.
    static Result<std::unique_ptr<HttpClient>> create(boost::asio::any_io_executor executor,
                                                      HttpClientOptions options);
    ~HttpClient();
    HttpClient(const HttpClient&) = delete;
    HttpClient& operator=(const HttpClient&) = delete;

    /// POSTs `body` with `headers` (Host, User-Agent, Content-Length and Connection are set here;
    /// pass Content-Type). Waits for a free slot first.
    boost::asio::awaitable<PostResult> post(Headers headers, std::string body);

    /// The same for any method and target (path + query) on this origin: a provider's query API.
    /// `method` is an HTTP token ("GET", "POST"); an unknown one is errc::invalid_argument.
    boost::asio::awaitable<PostResult> send(std::string method, std::string target, Headers headers,
                                            std::string body);

    /// Closes the idle pooled connections (shutdown). In-flight requests finish on their own.
    void close_idle();
    /// Ends every request in flight now, and every later one before it starts: for a shutdown that
    /// must not wait for a slow server. A request cut off fails (crm_unavailable; error_detail says
    /// where), or, when its status line was in, comes back with `complete` false; a request waiting for
    /// a host name look-up stops waiting (the look-up itself finishes in the background). For
    /// requests whose repeat is harmless only (queries, idempotent deliveries).
    void abort_in_flight();

    const Url& url() const noexcept;
    const HttpClientStats& stats() const noexcept;
    std::size_t idle_connections() const noexcept;

private:
    struct Impl;
    explicit HttpClient(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace paybridge::crm
