#include "crm/http_client.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/resolve.hpp"

#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <exception>
#include <optional>
#include <set>

namespace paybridge::crm {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

/// Beast reads at most this much per read_some; the response buffer holds a header plus one read.
constexpr std::size_t kReadChunk = 64 * 1024;
/// Interim (1xx) responses skipped before the final one; more fail the attempt.
constexpr int kMaxInterimResponses = 8;

bool iequals_prefix(std::string_view text, std::string_view prefix)
{
    if (text.size() < prefix.size()) {
        return false;
    }
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) {
            return false;
        }
    }
    return true;
}

bool is_ip_literal(const std::string& host)
{
    error_code ec;
    (void)asio::ip::make_address(host, ec);
    return !ec;
}

bool valid_dns_name(std::string_view host)
{
    return !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    });
}

struct Connection {
    Connection(const asio::any_io_executor& ex, ssl::context* ctx, std::size_t buffer_limit) : buffer(buffer_limit)
    {
        if (ctx != nullptr) {
            tls.emplace(ex, *ctx);
        } else {
            plain.emplace(ex);
        }
    }
    beast::tcp_stream& tcp_layer() { return tls ? tls->next_layer() : *plain; }

    std::optional<beast::tcp_stream> plain;
    std::optional<ssl::stream<beast::tcp_stream>> tls;
    // Bounded: Beast's parser does not limit a chunk-size line's extensions or a chunked trailer, so
    // a response streaming either would otherwise grow the buffer until the deadline. Body bytes
    // leave it as they are parsed (buffer_body), so the bound only stops such framing.
    beast::flat_buffer buffer;
    Clock::time_point last_used{};
};

using ConnectionPtr = std::unique_ptr<Connection>;

/// Bytes received on the connection that no response has consumed: in the read buffer, in
/// OpenSSL's buffers (TLS), or queued in the socket; or the server's end of the stream (a
/// keep-alive timeout shorter than ours: Node.js and Apache close after 5 s). Whatever they are (a
/// body longer than its Content-Length, a second response, a close), the next request on the
/// connection would fail or read them as its own answer, so such a connection is never reused.
bool has_unread_bytes(Connection& conn)
{
    if (conn.buffer.size() != 0) {
        return true;
    }
    if (conn.tls) {
        SSL* ssl = conn.tls->native_handle();
        if (SSL_has_pending(ssl) == 1 || BIO_pending(SSL_get_rbio(ssl)) > 0) {
            return true;
        }
    }
    // available() says 0 for a FIN; a peek tells a close (0) from nothing yet (would block).
    char byte = 0;
    const ssize_t n = ::recv(conn.tcp_layer().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}

/// What one exchange on one connection produced.
struct Exchange {
    error_code ec;                 ///< set when the attempt failed (no usable final response)
    std::string step;              ///< which step failed
    std::string detail;            ///< replaces describe(step, ec) when set
    bool response_started{false};  ///< some response bytes arrived before the failure
    bool reusable{false};
    HttpResponse response;
};

std::string describe(std::string_view step, const error_code& ec)
{
    std::string text(step);
    text.append(": ");
    text.append(ec.message());
    return text;
}

PostResult failure(const error_code& ec, std::string detail)
{
    const bool timed_out = ec == beast::error::timeout || ec == asio::error::timed_out;
    PostResult result;
    result.response = make_error_code(timed_out ? errc::timeout : errc::crm_unavailable);
    result.error_detail = std::move(detail);
    return result;
}

}  // namespace

Result<Url> parse_url(std::string_view text)
{
    Url url;
    if (iequals_prefix(text, "https://")) {
        url.tls = true;
        text.remove_prefix(8);
    } else if (iequals_prefix(text, "http://")) {
        text.remove_prefix(7);
    } else {
        return make_error_code(errc::invalid_argument);
    }
    if (text.find('#') != std::string_view::npos) {
        return make_error_code(errc::invalid_argument);
    }
    const std::size_t authority_end = text.find_first_of("/?");
    std::string_view authority = text.substr(0, authority_end);
    const std::string_view rest = authority_end == std::string_view::npos ? "" : text.substr(authority_end);
    if (authority.empty() || authority.find('@') != std::string_view::npos) {
        return make_error_code(errc::invalid_argument);
    }

    std::string_view port_text;
    if (authority.front() == '[') {
        const std::size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            return make_error_code(errc::invalid_argument);
        }
        url.host = std::string(authority.substr(1, close - 1));
        const std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') {
                return make_error_code(errc::invalid_argument);
            }
            port_text = after.substr(1);
        }
        error_code ec;
        (void)asio::ip::make_address_v6(url.host, ec);
        if (ec) {
            return make_error_code(errc::invalid_argument);
        }
    } else {
        const std::size_t colon = authority.rfind(':');
        url.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
        }
        if (!valid_dns_name(url.host)) {
            return make_error_code(errc::invalid_argument);
        }
    }

    const std::uint16_t default_port = url.tls ? 443 : 80;
    url.port = default_port;
    if (!port_text.empty() || (authority.back() == ':')) {
        unsigned port = 0;
        const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
        if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() || port == 0 ||
            port > 65535) {
            return make_error_code(errc::invalid_argument);
        }
        url.port = static_cast<std::uint16_t>(port);
    }

    url.target = rest.empty() ? "/" : std::string(rest);
    if (url.target.front() == '?') {
        url.target.insert(url.target.begin(), '/');
    }
    const bool v6 = url.host.find(':') != std::string::npos;
    url.host_header = v6 ? "[" + url.host + "]" : url.host;
    if (url.port != default_port) {
        url.host_header += ":" + std::to_string(url.port);
    }
    return url;
}

struct HttpClient::Impl {
    Impl(asio::any_io_executor ex, HttpClientOptions opts, Url u)
        : executor(std::move(ex)),
          options(std::move(opts)),
          url(std::move(u)),
          host_is_ip(is_ip_literal(url.host)),
          slots(executor, static_cast<std::size_t>(options.concurrency))
    {
    }

    asio::any_io_executor executor;
    HttpClientOptions options;
    Url url;
    bool host_is_ip;
    std::optional<ssl::context> tls_context;
    // A channel with `concurrency` buffer slots is a counting semaphore: a send takes a slot (and
    // waits while none is free), a receive gives one back.
    asio::experimental::channel<void(error_code)> slots;
    std::vector<ConnectionPtr> idle;
    std::set<Connection*> busy;  ///< connections an attempt is using now (abort_in_flight)
    std::vector<asio::cancellation_signal*> resolving;  ///< look-ups being waited for (abort_in_flight)
    bool aborting{false};        ///< abort_in_flight() was called: no new attempt starts
    HttpClientStats stats;

    /// Marks a connection busy for the life of an attempt's use of it.
    struct BusyMark {
        Impl& impl;
        Connection* conn;
        BusyMark(Impl& i, Connection* c) : impl(i), conn(c) { impl.busy.insert(conn); }
        BusyMark(const BusyMark&) = delete;
        BusyMark& operator=(const BusyMark&) = delete;
        ~BusyMark() { impl.busy.erase(conn); }
    };

    ConnectionPtr take_idle()
    {
        const Clock::time_point now = Clock::now();
        while (!idle.empty()) {
            ConnectionPtr conn = std::move(idle.back());
            idle.pop_back();
            // Bytes that arrived while it was idle would be read as the next request's answer.
            if (now - conn->last_used < options.idle_timeout && !has_unread_bytes(*conn)) {
                return conn;
            }
        }
        return nullptr;
    }

    void give_back(ConnectionPtr conn)
    {
        conn->tcp_layer().expires_never();
        conn->last_used = Clock::now();
        if (idle.size() < static_cast<std::size_t>(options.concurrency)) {
            idle.push_back(std::move(conn));
        }
    }

    /// Connects (and handshakes). Returns the failure, if any.
    asio::awaitable<std::optional<PostResult>> open(Connection& conn, Clock::time_point deadline)
    {
        // abort_in_flight() ends the wait for the look-up through this signal.
        asio::cancellation_signal abort_lookup;
        resolving.push_back(&abort_lookup);
        Resolved resolved = co_await resolve_until(executor, url.host, url.port, deadline, abort_lookup.slot());
        std::erase(resolving, &abort_lookup);
        if (aborting) {
            co_return failure(asio::error::operation_aborted, "aborted");
        }
        if (resolved.error) {
            const bool timed_out = resolved.error == asio::error::timed_out;
            PostResult result;
            result.response = make_error_code(timed_out ? errc::timeout : errc::crm_unavailable);
            result.error_detail = timed_out ? std::string("resolve: timed out") : describe("resolve", resolved.error);
            co_return result;
        }
        conn.tcp_layer().expires_at(deadline);
        auto [cec, endpoint] = co_await conn.tcp_layer().async_connect(resolved.endpoints, kUseTuple);
        if (cec) {
            co_return failure(cec, describe("connect", cec));
        }
        error_code ignored;
        conn.tcp_layer().socket().set_option(tcp::no_delay(true), ignored);
        ++stats.connections_opened;
        if (!conn.tls) {
            co_return std::nullopt;
        }

        SSL* ssl_handle = conn.tls->native_handle();
        if (host_is_ip) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_handle), url.host.c_str());
        } else {
            // SNI only for DNS names (RFC 6066 forbids IP literals in server_name).
            SSL_set_tlsext_host_name(ssl_handle, url.host.c_str());
            SSL_set_hostflags(ssl_handle, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            SSL_set1_host(ssl_handle, url.host.c_str());
        }
        conn.tls->set_verify_mode(ssl::verify_peer);
        conn.tcp_layer().expires_at(deadline);
        auto [hec] = co_await conn.tls->async_handshake(ssl::stream_base::client, kUseTuple);
        if (hec) {
            std::string detail = describe("tls handshake", hec);
            const long verify = SSL_get_verify_result(ssl_handle);
            if (verify != X509_V_OK) {
                detail += " (";
                detail += X509_verify_cert_error_string(verify);
                detail += ")";
            }
            co_return failure(hec, std::move(detail));
        }
        co_return std::nullopt;
    }

    template <class Stream>
    asio::awaitable<Exchange> exchange(Stream& stream, Connection& conn,
                                       const http::request<http::string_body>& request,
                                       Clock::time_point deadline)
    {
        Exchange out;
        conn.tcp_layer().expires_at(deadline);
        auto [wec, written] = co_await http::async_write(stream, request, kUseTuple);
        if (wec) {
            out.ec = wec;
            out.step = "write";
            co_return out;
        }

        // Interim 1xx responses (100 Continue, 102 Processing, 103 Early Hints) come before the final
        // one. Beast parses a 1xx as a complete message, so each is skipped with a fresh parser on the
        // same buffer; taking one as the answer would leave the final response for the next request.
        std::optional<http::response_parser<http::buffer_body>> parser;
        for (int interim = 0;; ++interim) {
            parser.emplace();
            parser->header_limit(static_cast<std::uint32_t>(options.max_header));
            // No parser limit: a Content-Length above max_body would fail the header read and lose the
            // status. The loop below stops reading at max_body instead.
            parser->body_limit(boost::none);
            auto [hec, header_bytes] = co_await http::async_read_header(stream, conn.buffer, *parser, kUseTuple);
            if (hec) {
                out.ec = hec;
                out.step = "read";
                out.response_started = interim > 0 || parser->got_some();
                co_return out;
            }
            out.response_started = true;
            const unsigned status = parser->get().result_int();
            if (status / 100 != 1) {
                break;
            }
            if (status == 101) {
                // The server switched protocols: no HTTP answer will follow.
                out.ec = http::error::bad_status;
                out.step = "read";
                out.detail = "read: unexpected 101 Switching Protocols";
                co_return out;
            }
            if (interim == kMaxInterimResponses) {
                out.ec = http::error::bad_status;
                out.step = "read";
                out.detail = "read: more than " + std::to_string(kMaxInterimResponses) + " interim (1xx) responses";
                co_return out;
            }
        }
        out.response.status = parser->get().result_int();
        out.response.retry_after = std::string(parser->get()[http::field::retry_after]);
        if (options.keep_headers) {
            for (const auto& field : parser->get()) {
                out.response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
            }
        }

        // Read the whole body so the connection can be reused; keep only its head.
        char chunk[4096];
        bool complete = true;
        std::size_t body_bytes = 0;
        while (!parser->is_done()) {
            if (body_bytes > options.max_body) {
                complete = false;
                break;
            }
            parser->get().body().data = chunk;
            parser->get().body().size = sizeof chunk;
            auto [rec, n] = co_await http::async_read(stream, conn.buffer, *parser, kUseTuple);
            const std::size_t got = sizeof chunk - parser->get().body().size;
            body_bytes += got;
            const std::size_t keep = std::min(got, options.keep_body - std::min(options.keep_body,
                                                                                  out.response.body_head.size()));
            out.response.body_head.append(chunk, keep);
            if (rec == http::error::buffer_overflow) {
                // Chunk extensions or a trailer filled the bounded buffer: a broken response, not an
                // answer to count.
                out.ec = rec;
                out.step = "read";
                co_return out;
            }
            if (rec && rec != http::error::need_buffer) {
                // The status line is in: the CRM has answered. A body that is too long or cut short
                // only makes the connection unusable.
                complete = false;
                break;
            }
        }
        out.response.complete = complete;
        out.reusable = complete && parser->get().keep_alive() && !parser->need_eof() && !has_unread_bytes(conn);
        co_return out;
    }

    asio::awaitable<Exchange> exchange_on(Connection& conn, const http::request<http::string_body>& request,
                                          Clock::time_point deadline)
    {
        if (conn.tls) {
            co_return co_await exchange(*conn.tls, conn, request, deadline);
        }
        co_return co_await exchange(*conn.plain, conn, request, deadline);
    }

    asio::awaitable<PostResult> attempt(http::verb method, std::string target, Headers headers, std::string body)
    {
        http::request<http::string_body> request{method, target, 11};
        request.set(http::field::host, url.host_header);
        request.set(http::field::user_agent, options.user_agent);
        for (auto& [name, value] : headers) {
            request.set(name, value);
        }
        request.keep_alive(true);
        if (!body.empty() || method == http::verb::post || method == http::verb::put) {
            request.body() = std::move(body);
            request.prepare_payload();
        }
        ++stats.requests;

        const Clock::time_point deadline = Clock::now() + options.timeout;
        for (int round = 0;; ++round) {
            // The retry after a stale pooled connection opens a new one: the pool's others were
            // idle as long, and the server may have closed them all.
            ConnectionPtr conn = round == 0 ? take_idle() : nullptr;
            const bool reused = conn != nullptr;
            if (reused) {
                ++stats.connections_reused;
            } else {
                conn = std::make_unique<Connection>(executor, tls_context ? &*tls_context : nullptr,
                                                    options.max_header + kReadChunk);
            }
            const BusyMark mark(*this, conn.get());
            if (aborting) {
                co_return failure(asio::error::operation_aborted, "aborted");
            }
            if (!reused) {
                std::optional<PostResult> open_failure = co_await open(*conn, deadline);
                if (open_failure) {
                    co_return std::move(*open_failure);
                }
            }
            Exchange ex = co_await exchange_on(*conn, request, deadline);
            if (!ex.ec && ex.response.status != 0) {
                if (ex.reusable && !aborting) {
                    give_back(std::move(conn));
                }
                PostResult result;
                result.response = std::move(ex.response);
                co_return result;
            }
            // A pooled connection the server closed while idle fails before any response byte:
            // retry once on a fresh connection. Deliveries are idempotent (webhook-id), so even a
            // request the server did process may be repeated safely.
            const bool timed_out = ex.ec == beast::error::timeout;
            if (reused && round == 0 && !ex.response_started && !timed_out && !aborting && Clock::now() < deadline) {
                ++stats.stale_retries;
                continue;
            }
            std::string detail = ex.detail.empty() ? describe(ex.step, ex.ec) : std::move(ex.detail);
            co_return failure(ex.ec, std::move(detail));
        }
    }
};

Result<std::unique_ptr<HttpClient>> HttpClient::create(asio::any_io_executor executor, HttpClientOptions options)
{
    Result<Url> url = parse_url(options.url);
    if (!url) {
        return url.error();
    }
    if (options.concurrency <= 0 || options.timeout.count() <= 0) {
        return make_error_code(errc::invalid_argument);
    }
    auto impl = std::make_unique<Impl>(std::move(executor), std::move(options), std::move(*url));
    if (impl->url.tls) {
        ssl::context& ctx = impl->tls_context.emplace(ssl::context::tls_client);
        ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                        ssl::context::no_compression);
        SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
        ctx.set_verify_mode(ssl::verify_peer);
        error_code ec;
        if (impl->options.ca_file.empty()) {
            ctx.set_default_verify_paths(ec);
        } else {
            ctx.load_verify_file(impl->options.ca_file, ec);
        }
        if (ec) {
            return make_error_code(errc::invalid_argument);
        }
    }
    return std::unique_ptr<HttpClient>(new HttpClient(std::move(impl)));
}

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpClient::~HttpClient() = default;

asio::awaitable<PostResult> HttpClient::post(Headers headers, std::string body)
{
    PostResult result = co_await send("POST", impl_->url.target, std::move(headers), std::move(body));
    co_return result;
}

asio::awaitable<PostResult> HttpClient::send(std::string method, std::string target, Headers headers,
                                             std::string body)
{
    const http::verb verb = http::string_to_verb(method);
    if (verb == http::verb::unknown || target.empty() || target.front() != '/') {
        PostResult result;
        result.response = make_error_code(errc::invalid_argument);
        result.error_detail = "bad request line: " + method + " " + target;
        co_return result;
    }
    auto [acquire_ec] = co_await impl_->slots.async_send(error_code{}, kUseTuple);
    if (acquire_ec) {
        PostResult result;
        result.response = make_error_code(errc::shutting_down);
        result.error_detail = "client closed";
        co_return result;
    }
    auto release = [this] { impl_->slots.try_receive([](error_code) {}); };
    try {
        PostResult result = co_await impl_->attempt(verb, std::move(target), std::move(headers), std::move(body));
        release();
        co_return result;
    } catch (...) {
        release();
        throw;
    }
}

void HttpClient::close_idle()
{
    impl_->idle.clear();
}

void HttpClient::abort_in_flight()
{
    impl_->aborting = true;
    impl_->idle.clear();
    for (Connection* conn : impl_->busy) {
        boost::system::error_code ignored;
        // Closing fails every operation pending on the socket (operation_aborted): connect,
        // handshake, write or read. The connect after a look-up is not attempted (aborting).
        conn->tcp_layer().socket().close(ignored);
    }
    // A look-up cannot be interrupted (getaddrinfo), but waiting for it can: it is abandoned.
    const std::vector<asio::cancellation_signal*> resolving = impl_->resolving;
    for (asio::cancellation_signal* lookup : resolving) {
        lookup->emit(asio::cancellation_type::terminal);
    }
}

const Url& HttpClient::url() const noexcept
{
    return impl_->url;
}

const HttpClientStats& HttpClient::stats() const noexcept
{
    return impl_->stats;
}

std::size_t HttpClient::idle_connections() const noexcept
{
    return impl_->idle.size();
}

}  // namespace paybridge::crm
