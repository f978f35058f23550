#include "daemon/http_server.hpp"

#include "core/async.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "gateways/gateway.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/socket_base.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

namespace paybridge::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using tcp = asio::ip::tcp;

struct HttpServer::Session {
    std::function<void()> cancel;
    bool busy{false};
    /// While a plain connection waits for its next request without a read in flight, the time by
    /// which it must have one; the idle sweep closes it after that. max() otherwise.
    std::chrono::steady_clock::time_point idle_until{std::chrono::steady_clock::time_point::max()};
};

/// One accepted connection's place in the ConnectionGate, taken by the accept loop and handed to
/// the connection's coroutine, which gives it back when it ends, however it ends (a failed TLS
/// handshake included). Whoever holds it last gives it back: the accept loop too, when the
/// coroutine could not be started (its frame not allocated).
class HttpServer::GateSlot {
public:
    /// Takes a place if one is free. Taking is the check, so workers racing for the last place
    /// cannot both have it.
    static std::optional<GateSlot> take(ConnectionGate& gate) noexcept
    {
        if (gate.open.fetch_add(1, std::memory_order_relaxed) >= gate.limit) {
            gate.open.fetch_sub(1, std::memory_order_relaxed);
            return std::nullopt;
        }
        return GateSlot(gate);
    }
    GateSlot(GateSlot&& other) noexcept : gate_(std::exchange(other.gate_, nullptr)) {}
    GateSlot& operator=(GateSlot&&) = delete;
    GateSlot(const GateSlot&) = delete;
    GateSlot& operator=(const GateSlot&) = delete;
    ~GateSlot()
    {
        if (gate_ != nullptr) {
            gate_->open.fetch_sub(1, std::memory_order_relaxed);
        }
    }

private:
    explicit GateSlot(ConnectionGate& gate) noexcept : gate_(&gate) {}
    ConnectionGate* gate_;
};

namespace {

/// A connection's entry in its server's session list (for stop() and abort()) and in the open
/// connections gauge, for exactly as long as its coroutine runs, however it ends: an exception
/// must not leave a dangling Session* behind.
class Registration {
public:
    Registration(std::list<HttpServer::Session*>& list, HttpServer::Session* s, metrics::Gauge& open)
        : list_(list), self_(list.insert(list.end(), s)), open_(open)
    {
        open_.add(1);
    }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration()
    {
        list_.erase(self_);
        open_.add(-1);
    }

private:
    std::list<HttpServer::Session*>& list_;
    std::list<HttpServer::Session*>::iterator self_;
    metrics::Gauge& open_;
};

struct Instruments {
    metrics::Family<metrics::Counter>& requests =
        metrics::registry().counter("paybridge_http_requests_total", "HTTP requests by route and status code.");
    metrics::Family<metrics::Histogram>& latency = metrics::registry().histogram(
        "paybridge_http_request_duration_seconds", "HTTP request latency by route.",
        {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5});
    metrics::Family<metrics::Gauge>& open =
        metrics::registry().gauge("paybridge_open_connections", "Open client connections.");
    metrics::Family<metrics::Counter>& rejected = metrics::registry().counter(
        "paybridge_connections_rejected_total", "Connections refused by the connection cap.");

    Instruments() { rejected.with({}); }  // at 0 from the start, so increase() sees the first
};

Instruments& instruments()
{
    static Instruments i;
    return i;
}

/// A low-cardinality route label for metrics: ids and mchids are replaced by placeholders.
std::string route_label(std::string_view target)
{
    const std::string_view path = target.substr(0, target.find('?'));
    static constexpr std::string_view kFixed[] = {"/notify/alipay", "/healthz", "/readyz", "/metrics", "/v1/bills",
                                                  "/v1/events", "/v1/anomalies", "/v1/deliveries",
                                                  "/v1/deliveries/recover", "/v1/reconciliation/summary"};
    for (auto f : kFixed) {
        if (path == f) {
            return std::string(f);
        }
    }
    if (path.starts_with("/notify/wechatpay/")) {
        return path.ends_with("/v2") ? "/notify/wechatpay/{mchid}/v2" : "/notify/wechatpay/{mchid}";
    }
    if (path.starts_with("/v1/bills/")) {
        return "/v1/bills/{id}";
    }
    if (path.starts_with("/v1/events/")) {
        return path.ends_with("/redeliver") ? "/v1/events/{id}/redeliver" : "/v1/events/{id}";
    }
    return "other";
}

bool valid_request_id(std::string_view id)
{
    if (id.empty() || id.size() > 64) {
        return false;
    }
    for (char c : id) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.')) {
            return false;
        }
    }
    return true;
}

std::string new_request_id()
{
    // A random per-thread prefix and a counter: unique without a syscall per request.
    thread_local std::uint64_t prefix = [] {
        std::uint64_t p = 0;
        RAND_bytes(reinterpret_cast<unsigned char*>(&p), sizeof p);
        return p;
    }();
    thread_local std::uint64_t counter = 0;
    // "%016llx-%08llx" without printf: fixed-width hex, the counter widening past 8 digits.
    static constexpr char kHex[] = "0123456789abcdef";
    const std::uint64_t n = ++counter;
    int counter_digits = 8;
    while (counter_digits < 16 && (n >> (4 * counter_digits)) != 0) {
        ++counter_digits;
    }
    std::string id(17 + static_cast<std::size_t>(counter_digits), '-');
    for (int i = 0; i < 16; ++i) {
        id[static_cast<std::size_t>(15 - i)] = kHex[(prefix >> (4 * i)) & 0xF];
    }
    for (int i = 0; i < counter_digits; ++i) {
        id[id.size() - 1 - static_cast<std::size_t>(i)] = kHex[(n >> (4 * i)) & 0xF];
    }
    return id;
}

template <class Stream>
beast::tcp_stream& lowest(Stream& s)
{
    return beast::get_lowest_layer(s);
}

/// How long an error answer to a request that was not read to its end waits for the client to
/// stop sending (at most; and never longer than the read deadline).
constexpr std::chrono::seconds kLingerMax{2};

/// Headroom of the request buffer beyond the header limit: one read's worth (Beast reads up to
/// 64 KiB at a time).
constexpr std::size_t kReadChunk = 64 * 1024;

/// The first read of a request on a plain connection: a notification with its headers fits.
constexpr std::size_t kFirstRead = 4096;

/// How often each worker looks for plain connections idle past their deadline.
std::chrono::milliseconds idle_sweep_period(std::chrono::milliseconds idle_timeout)
{
    return std::clamp(idle_timeout / 8, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
}

/// Lingering close (as nginx does it): after an error answer to a request that was not read to its
/// end, the client may still be sending. Closing a socket with unread bytes makes the kernel send a
/// reset, which can destroy the answer before the client has read it (a client that writes its
/// whole body before reading sees "connection reset" instead of 413). So: no more sending, then
/// read and discard what still comes, into a small fixed buffer, until the client closes or the
/// time is up.
template <class Stream>
awaitable<void> linger(Stream& stream, std::chrono::steady_clock::duration at_most)
{
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }
    lowest(stream).expires_after(at_most);
    std::array<char, 2048> sink{};
    for (;;) {
        auto [ec, n] = co_await stream.async_read_some(asio::buffer(sink), kUseTuple);
        if (ec) {
            break;
        }
    }
}

/// Calls f(token) for every member of a comma-separated field list, in every instance of the
/// field, optional whitespace trimmed, empty members skipped (RFC 9110 §5.6.1).
template <class F>
void for_each_member(const webhooks::Request& req, http::field name, F&& f)
{
    for (auto it = req.find(name); it != req.end() && it->name() == name; ++it) {
        std::string_view list = it->value();
        while (!list.empty()) {
            const std::size_t comma = list.find(',');
            std::string_view m = list.substr(0, comma);
            list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
            while (!m.empty() && (m.front() == ' ' || m.front() == '\t')) {
                m.remove_prefix(1);
            }
            while (!m.empty() && (m.back() == ' ' || m.back() == '\t')) {
                m.remove_suffix(1);
            }
            if (!m.empty()) {
                f(m);
            }
        }
    }
}

/// What a request's header alone rules out, before its body is read (RFC 9112): a status and a
/// reason, or nothing. Beast's parser frames the body by a final "chunked" or by Content-Length;
/// a request with any other transfer coding would be read as having no body, and its body as the
/// next request on the connection (request smuggling behind a proxy that reads it otherwise).
std::optional<std::pair<unsigned, std::string_view>> refused_header(const webhooks::Request& req)
{
    int chunked = 0;
    bool other = false;
    for_each_member(req, http::field::transfer_encoding, [&](std::string_view coding) {
        if (gateways::ascii_iequals(coding, "chunked")) {
            ++chunked;
        } else {
            other = true;
        }
    });
    if (other) {
        return std::pair{501u, std::string_view("transfer coding not implemented: only chunked is\n")};
    }
    if (chunked > 1) {
        return std::pair{400u, std::string_view("chunked applied more than once\n")};
    }
    if (req.version() >= 11 && req.find(http::field::host) == req.end()) {
        return std::pair{400u, std::string_view("an HTTP/1.1 request needs a Host header\n")};
    }
    return std::nullopt;
}

/// A request target in absolute form ("http://host/path?q", RFC 9112 §3.2.2, which a server must
/// accept) as the origin form every route is matched on ("/path?q"); other targets unchanged.
std::optional<std::string> origin_form(std::string_view target)
{
    std::size_t after_scheme = 0;
    if (target.size() >= 7 && gateways::ascii_iequals(target.substr(0, 7), "http://")) {
        after_scheme = 7;
    } else if (target.size() >= 8 && gateways::ascii_iequals(target.substr(0, 8), "https://")) {
        after_scheme = 8;
    } else {
        return std::nullopt;
    }
    const std::size_t path = target.find_first_of("/?", after_scheme);
    if (path == std::string_view::npos) {
        return std::string("/");
    }
    std::string origin(target.substr(path));
    if (origin.front() == '?') {
        origin.insert(origin.begin(), '/');
    }
    return origin;
}

/// For a request whose request line did not fit the header limit (a 414): from the bytes read,
/// whether it is clearly a request for the API, "<method> /v1/..." or the absolute form of such a
/// target, so that it is refused in the API's error shape. Anything less clear gets plain text.
bool api_request_line(std::string_view bytes)
{
    const std::size_t sp = bytes.find(' ');
    if (sp == 0 || sp == std::string_view::npos || sp > 20) {
        return false;
    }
    // RFC 9110 §5.6.2 token characters: a method, not a stray byte sequence.
    constexpr std::string_view kTokenPunctuation = "!#$%&'*+-.^_`|~";
    for (const char c : bytes.substr(0, sp)) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && kTokenPunctuation.find(c) == std::string_view::npos) {
            return false;
        }
    }
    std::string_view target = bytes.substr(sp + 1);
    for (std::string_view scheme : {std::string_view("http://"), std::string_view("https://")}) {
        if (target.size() >= scheme.size() && gateways::ascii_iequals(target.substr(0, scheme.size()), scheme)) {
            target.remove_prefix(scheme.size());
            const std::size_t path = target.find('/');
            const std::size_t end = target.find_first_of(" ?#");
            if (path == std::string_view::npos || (end != std::string_view::npos && end < path)) {
                return false;
            }
            target.remove_prefix(path);
            break;
        }
    }
    return target.starts_with("/v1/");
}

bool expects_continue(const webhooks::Request& req)
{
    bool found = false;
    for_each_member(req, http::field::expect, [&](std::string_view e) {
        found = found || gateways::ascii_iequals(e, "100-continue");
    });
    return found;
}

webhooks::Response plain_error(unsigned status, std::string_view text)
{
    webhooks::Response res{static_cast<http::status>(status), 11};
    res.set(http::field::content_type, "text/plain");
    res.set(http::field::connection, "close");
    res.keep_alive(false);
    res.body() = std::string(text);
    res.prepare_payload();
    return res;
}

}  // namespace

HttpServer::HttpServer(asio::io_context& ioc, const config::HttpLimits& limits, webhooks::Service& service,
                       ConnectionGate& gate)
    : ioc_(ioc), limits_(limits), service_(service), gate_(gate)
{
    instruments();
}

HttpServer::~HttpServer() = default;

void HttpServer::listen(const tcp::endpoint& endpoint, bool tls, unsigned routes)
{
    auto l = std::make_unique<Listener>(Listener{tcp::acceptor(ioc_), tls, routes});
    l->acceptor.open(endpoint.protocol());
    l->acceptor.set_option(asio::socket_base::reuse_address(true));
    int one = 1;
    if (::setsockopt(l->acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        throw boost::system::system_error(errno, boost::system::system_category(), "SO_REUSEPORT");
    }
    l->acceptor.bind(endpoint);
    l->acceptor.listen(asio::socket_base::max_listen_connections);
    listeners_.push_back(std::move(l));
}

void HttpServer::set_tls_context(std::shared_ptr<asio::ssl::context> ctx) { tls_ = std::move(ctx); }

std::uint16_t HttpServer::port(std::size_t listener) const
{
    return listeners_.at(listener)->acceptor.local_endpoint().port();
}

void HttpServer::start()
{
    asio::co_spawn(ioc_, idle_sweep(), asio::detached);
    for (std::size_t i = 0; i < listeners_.size(); ++i) {
        asio::co_spawn(ioc_, accept_loop(i), LogFailure("http.accept_loop_failed"));
    }
}

void HttpServer::stop()
{
    stopping_ = true;
    if (cancel_sweep_) {
        cancel_sweep_();
    }
    for (auto& l : listeners_) {
        boost::system::error_code ec;
        l->acceptor.close(ec);
    }
    for (Session* s : sessions_) {
        if (!s->busy) {
            s->cancel();
        }
    }
}

void HttpServer::abort()
{
    stop();
    for (Session* s : sessions_) {
        s->cancel();
    }
}

awaitable<void> HttpServer::idle_sweep()
{
    asio::steady_timer timer(ioc_);
    cancel_sweep_ = [&timer] { timer.cancel(); };
    // However the frame ends (even destroyed unfinished with its io_context), stop() must not
    // reach a timer that is gone.
    struct Forget {
        std::function<void()>& cancel;
        ~Forget() { cancel = nullptr; }
    } forget{cancel_sweep_};
    while (!stopping_) {
        timer.expires_after(idle_sweep_period(limits_.idle_timeout));
        auto [ec] = co_await timer.async_wait(kUseTuple);
        if (ec || stopping_) {
            break;
        }
        const auto now = std::chrono::steady_clock::now();
        for (Session* s : sessions_) {
            if (s->idle_until <= now) {
                s->idle_until = std::chrono::steady_clock::time_point::max();
                s->cancel();
            }
        }
    }
}

awaitable<void> HttpServer::accept_loop(std::size_t index)
{
    Listener& l = *listeners_[index];
    while (!stopping_) {
        // An exception (bad_alloc starting an accept or a session) costs at most the connection
        // at hand, never the worker's listener: its socket and place go back as the stack unwinds
        // (the arguments not moved into a session's frame included), and accepting goes on after
        // the same pause as for EMFILE.
        Accepted next = Accepted::pause;
        try {
            next = co_await accept_one(l);
        } catch (const std::exception& e) {
            log::error("http.accept_failed", {{"error", e.what()}});
        }
        if (next == Accepted::end) {
            break;
        }
        if (next == Accepted::pause && !stopping_) {
            asio::steady_timer timer(ioc_, std::chrono::milliseconds(50));
            co_await timer.async_wait(kUseTuple);
        }
    }
}

awaitable<HttpServer::Accepted> HttpServer::accept_one(Listener& l)
{
    auto [ec, socket] = co_await l.acceptor.async_accept(kUseTuple);
    if (ec) {
        if (stopping_ || ec == asio::error::operation_aborted) {
            co_return Accepted::end;
        }
        // EMFILE and friends: back off briefly instead of spinning.
        log::error("http.accept_failed", {{"error", ec.message()}});
        co_return Accepted::pause;
    }
    // A connection holds its place from accept (a TLS handshake holds a socket too) to the end of
    // its session.
    std::optional<GateSlot> slot = GateSlot::take(gate_);
    if (!slot) {
        instruments().rejected.with({}).inc();
        boost::system::error_code ignored;
        if (!l.tls) {
            // A plain client (a provider, a health probe) is told why rather than reset: one
            // non-blocking write of a fixed answer, and what it already sent is read and dropped
            // so that the close is a FIN, not a reset that could destroy the answer. No session,
            // no buffer beyond the stack: the cap is what bounds them.
            static constexpr std::string_view kFull =
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n"
                "Retry-After: 1\r\nConnection: close\r\n\r\nover limits.max_connections; retry\n";
            socket.non_blocking(true, ignored);
            socket.write_some(asio::buffer(kFull), ignored);
            socket.shutdown(tcp::socket::shutdown_send, ignored);
            std::array<char, 4096> sink{};
            socket.read_some(asio::buffer(sink), ignored);
        }
        socket.close(ignored);
        co_return Accepted::next;
    }
    socket.set_option(tcp::no_delay(true), ec);
    const LogFailure handler("http.session_failed");
    if (l.tls) {
        asio::co_spawn(ioc_, run_tls(std::move(socket), std::move(*slot), l.routes), handler);
    } else {
        asio::co_spawn(ioc_, run_plain(std::move(socket), std::move(*slot), l.routes), handler);
    }
    co_return Accepted::next;
}

awaitable<void> HttpServer::run_plain(tcp::socket socket, [[maybe_unused]] GateSlot slot, unsigned routes)
{
    boost::system::error_code ec;
    socket.non_blocking(true, ec);  // serve() tries a read before it waits; asio's async ops are unaffected
    if (ec) {
        co_return;
    }
    beast::tcp_stream stream(std::move(socket));
    Session session;
    session.cancel = [&stream] { stream.cancel(); };
    const Registration registration(sessions_, &session, instruments().open.with({}));
    co_await serve(stream, session, routes);
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
}

awaitable<void> HttpServer::run_tls(tcp::socket socket, [[maybe_unused]] GateSlot slot, unsigned routes)
{
    std::shared_ptr<asio::ssl::context> ctx = tls_;
    if (!ctx) {
        co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *ctx);
    Session session;
    session.cancel = [&stream] { beast::get_lowest_layer(stream).cancel(); };
    // Listed from before the handshake, so stop() and abort() reach a client that never finishes it.
    const Registration registration(sessions_, &session, instruments().open.with({}));
    beast::get_lowest_layer(stream).expires_after(limits_.read_timeout);
    auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, kUseTuple);
    if (ec) {
        log::debug("http.tls_handshake_failed", {{"error", ec.message()}});
        co_return;
    }
    co_await serve(stream, session, routes);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(2));
    co_await stream.async_shutdown(kUseTuple);
}

template <class Stream>
awaitable<void> HttpServer::serve(Stream& stream, Session& session, unsigned routes)
{
    auto& inst = instruments();

    // Bounded: the parser caps the header and the declared body, but not a chunk-size line's
    // extensions or a chunked trailer, which it keeps buffering until their line ends. Body bytes
    // leave the buffer as they are parsed, so a request never needs more than its header plus one
    // read's worth here; beyond that the read fails (buffer_overflow, answered 400).
    beast::flat_buffer buffer(limits_.max_header_bytes + kReadChunk);
    // A plain connection accepted just before the stop still gets its one look at the socket
    // (below: a request already there is served, nothing ends it), rather than a close with its
    // request unread (a reset). A TLS one would first wait for its handshake: it is closed.
    bool first_look = std::is_same_v<Stream, beast::tcp_stream>;
    while (first_look || !stopping_) {
        first_look = false;
        // Wait for the first bytes of the next request under the idle deadline; only then start
        // the per-request read deadline, so keep-alive idleness and slow requests are bounded
        // apart. An idle connection holds no heap buffer.
        if (buffer.size() == 0) {
            if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
                // Plain TCP: take what has arrived with one non-blocking recv into a buffer sized
                // for a whole notification; if nothing has, wait for readability holding no buffer
                // at all (the idle sweep enforces the deadline) and try again. One recv per
                // request where Asio's own way makes a would-block recv, a small first read and a
                // second one for the rest. A wake-up without data waits again; a stop that comes
                // with the bytes of a request still serves it (answered Connection: close).
                auto& socket = stream.socket();
                const auto idle_until = std::chrono::steady_clock::now() + limits_.idle_timeout;
                bool ended = false;
                for (;;) {
                    boost::system::error_code ec;
                    const std::size_t n = socket.read_some(buffer.prepare(kFirstRead), ec);
                    if (!ec) {
                        buffer.commit(n);
                        break;
                    }
                    if (ec != asio::error::would_block || stopping_) {
                        ended = true;  // eof, reset; or stopping with nothing to serve
                        break;
                    }
                    buffer.shrink_to_fit();
                    session.idle_until = idle_until;
                    auto [wec] = co_await socket.async_wait(tcp::socket::wait_read, kUseTuple);
                    session.idle_until = std::chrono::steady_clock::time_point::max();
                    if (wec && stopping_) {
                        continue;  // one more recv: bytes that came with the stop are a request to serve
                    }
                    if (wec) {
                        ended = true;  // cancelled: idle too long
                        break;
                    }
                }
                if (ended) {
                    break;
                }
            } else {
                // TLS: readable bytes may already sit decrypted-ahead in the stream, so the wait
                // must be a read; it goes into a small buffer in the frame.
                buffer.shrink_to_fit();
                std::array<char, 512> first{};
                lowest(stream).expires_after(limits_.idle_timeout);
                auto [ec, n] = co_await stream.async_read_some(asio::buffer(first), kUseTuple);
                if (ec) {
                    break;
                }
                auto space = buffer.prepare(std::max<std::size_t>(n, 4096));
                asio::buffer_copy(space, asio::buffer(first.data(), n));
                buffer.commit(n);
            }
        }
        session.busy = true;
        const auto started = std::chrono::steady_clock::now();
        http::request_parser<http::string_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(limits_.max_header_bytes));
        parser.body_limit(limits_.max_body_bytes);
        lowest(stream).expires_after(limits_.read_timeout);
        // The header first, so that a request can be refused or told to go on (100 Continue)
        // before its body is read: from what the first read brought when it is all there (no
        // extra read, no extra completion), else from the stream. Then the body.
        boost::system::error_code rec;
        parser.eager(false);
        buffer.consume(parser.put(buffer.data(), rec));
        if (rec == http::error::need_more) {
            rec = {};
        }
        if (!rec && !parser.is_header_done()) {
            auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, kUseTuple);
            rec = hec;
        }
        std::optional<std::pair<unsigned, std::string_view>> refused;
        if (!rec) {
            if (std::optional<std::string> origin = origin_form(parser.get().target())) {
                parser.get().target(*origin);
            }
            refused = refused_header(parser.get());
        }
        if (!rec && !refused && !parser.is_done()) {
            if (buffer.size() == 0 && parser.get().version() >= 11 && expects_continue(parser.get())) {
                // The client waits for this before it sends the body (curl: for a second).
                static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
                auto [cec, cn] = co_await asio::async_write(stream, asio::buffer(kContinue), kUseTuple);
                rec = cec;
            }
            if (!rec) {
                parser.eager(true);
                auto [bec, bn] = co_await http::async_read(stream, buffer, parser, kUseTuple);
                rec = bec;
            }
        }
        if (rec || refused) {
            std::optional<webhooks::Response> reply;
            // With its request line read, a provider's route is answered in the provider's format.
            // (A Content-Length over the limit is refused while the fields are parsed: the
            // target is known, the fields after Content-Length are not.)
            auto refuse = [&](unsigned status, std::string_view text) {
                return parser.get().target().empty() ? plain_error(status, text)
                                                     : service_.reject(parser.get(), status, text);
            };
            if (refused) {
                reply = refuse(refused->first, refused->second);
            } else if (rec == http::error::header_limit && parser.get().target().empty()) {
                // The request line alone did not fit (RFC 9112 §3: a target longer than the
                // server will parse is a 414). The parser has taken none of it: what the buffer
                // holds starts with the request line, which says whether it is for the API.
                const auto* bytes = static_cast<const char*>(buffer.data().data());
                if (api_request_line(std::string_view(bytes, buffer.size()))) {
                    webhooks::Request api_request{http::verb::get, "/v1/", 11};  // what reject() looks at
                    reply = service_.reject(api_request, 414, "uri too long\n");
                } else {
                    reply = plain_error(414, "uri too long\n");
                }
            } else if (rec == http::error::header_limit) {
                reply = refuse(431, "request header fields too large\n");
            } else if (rec == http::error::body_limit) {
                reply = refuse(413, "payload too large\n");
            } else if (rec != beast::error::timeout && rec != http::error::end_of_stream &&
                       rec != asio::error::operation_aborted && rec != asio::error::eof &&
                       rec != asio::error::connection_reset) {
                reply = refuse(400, "bad request\n");
            }
            if (reply) {
                reply->set("X-Request-Id", new_request_id());
                const std::string_view target = parser.get().target();
                inst.requests.with({{"route", target.empty() ? std::string("other") : route_label(target)},
                                    {"code", std::to_string(reply->result_int())}})
                    .inc();
                lowest(stream).expires_after(limits_.write_timeout);
                auto [wec, wn] = co_await http::async_write(stream, *reply, kUseTuple);
                if (!wec) {
                    co_await linger(stream, std::min<std::chrono::steady_clock::duration>(limits_.read_timeout, kLingerMax));
                }
            }
            break;
        }
        webhooks::Request req = parser.release();
        std::string request_id;
        if (auto it = req.find("X-Request-Id"); it != req.end() && valid_request_id(it->value())) {
            request_id = std::string(it->value());
        } else {
            request_id = new_request_id();
        }
        req.set("X-Request-Id", request_id);  // handlers log it
        const std::string route = route_label(req.target());
        const bool head = req.method() == http::verb::head;
        webhooks::Response res = co_await service_.handle(std::move(req), routes);
        res.set("X-Request-Id", request_id);
        if (stopping_) {
            res.keep_alive(false);
        }
        const bool keep_alive = res.keep_alive();
        // Counted before the write: once the client has the answer, /metrics must already show it.
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        const std::string code = std::to_string(res.result_int());
        inst.requests.cached<2>({"route", "code"}, {route, code}).inc();
        inst.latency.cached<1>({"route"}, {route}).observe(secs);
        lowest(stream).expires_after(limits_.write_timeout);
        boost::system::error_code wec;
        if (head) {
            // The answer to HEAD is the header a GET would get (its Content-Length included) and
            // no body: a body here would be read by a keep-alive client as its next response.
            http::response_serializer<http::string_body> header_only(res);
            auto [hec, hn] = co_await http::async_write_header(stream, header_only, kUseTuple);
            wec = hec;
        } else {
            auto [bec, bn] = co_await http::async_write(stream, res, kUseTuple);
            wec = bec;
        }
        session.busy = false;
        if (wec || !keep_alive) {
            break;
        }
    }
}

}  // namespace paybridge::daemon
