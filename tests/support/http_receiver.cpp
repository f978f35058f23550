#include "tests/support/http_receiver.hpp"

#include "core/async.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/support/process.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

namespace paybridge::test {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

// Standard Webhooks, written out independently of crm/webhook_signer.
bool signed_by(const std::string& secret, const ReceivedRequest& r)
{
    std::string_view encoded = secret;
    if (encoded.starts_with("whsec_")) {
        encoded.remove_prefix(6);
    }
    const std::optional<std::string> key = crypto::base64_decode(encoded);
    if (!key) {
        return false;
    }
    const std::string content = r.webhook_id + "." + r.webhook_timestamp + "." + r.body;
    const std::string expected = crypto::base64_encode(crypto::hmac_sha256(*key, content));
    std::string_view header = r.webhook_signature;
    bool found = false;
    while (!header.empty()) {
        const std::size_t space = header.find(' ');
        const std::string_view entry = header.substr(0, space);
        header = space == std::string_view::npos ? std::string_view{} : header.substr(space + 1);
        if (entry.starts_with("v1,") && crypto::constant_time_equal(entry.substr(3), expected)) {
            found = true;
        }
    }
    return found;
}

bool timestamp_fresh(const std::string& ts)
{
    if (ts.empty() || ts.find_first_not_of("0123456789") != std::string::npos || ts.size() > 12) {
        return false;
    }
    const std::int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    const std::int64_t value = std::stoll(ts);
    return value >= now - 300 && value <= now + 300;
}

}  // namespace

struct HttpReceiver::Impl {
    HttpReceiverOptions options;
    std::uint16_t port{0};

    mutable std::mutex mu;
    mutable std::condition_variable cv;
    std::deque<unsigned> scripted;
    unsigned default_status{200};
    std::string retry_after;
    std::string response_body{"{}"};
    RequestHandler handler;
    std::chrono::milliseconds delay{0};
    std::vector<ReceivedRequest> received;

    // io thread only
    std::set<tcp::socket*> live;
    std::uint64_t next_connection{1};

    std::optional<ssl::context> tls;
    asio::io_context ioc;
    std::shared_ptr<tcp::acceptor> acceptor;  // declared after ioc: destroyed before it
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    std::thread thread;

    template <class F>
    void run_on_io(F f)
    {
        std::promise<void> done;
        auto task = [&f, &done] {
            f();
            done.set_value();
        };
        asio::post(ioc, std::move(task));
        done.get_future().wait();
    }

    /// Listens on 127.0.0.1:port. Never throws: it runs inside a handler posted to the io thread
    /// (start()), where an exception would end the io thread and with it the test binary.
    boost::system::error_code listen()
    {
        boost::system::error_code ec;
        auto acc = std::make_shared<tcp::acceptor>(ioc);
        const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
        acc->open(endpoint.protocol(), ec);
        if (!ec) {
            acc->set_option(asio::socket_base::reuse_address(true), ec);
        }
        if (!ec) {
            acc->bind(endpoint, ec);
        }
        if (!ec) {
            acc->listen(asio::socket_base::max_listen_connections, ec);
        }
        if (ec) {
            return ec;
        }
        acceptor = acc;
        asio::co_spawn(ioc, accept_loop(acc), asio::detached);
        return ec;
    }

    asio::awaitable<void> accept_loop(std::shared_ptr<tcp::acceptor> acc)
    {
        for (;;) {
            auto [ec, socket] = co_await acc->async_accept(kUseTuple);
            if (ec) {
                co_return;
            }
            const std::uint64_t id = next_connection++;
            asio::co_spawn(ioc, session(std::move(socket), id), asio::detached);
        }
    }

    asio::awaitable<void> session(tcp::socket socket, std::uint64_t id)
    {
        if (tls) {
            ssl::stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *tls);
            tcp::socket* raw = &stream.next_layer().socket();
            live.insert(raw);
            stream.next_layer().expires_after(std::chrono::seconds{10});
            auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, kUseTuple);
            if (!ec) {
                co_await serve(stream, stream.next_layer(), id);
            }
            live.erase(raw);
        } else {
            beast::tcp_stream stream(std::move(socket));
            tcp::socket* raw = &stream.socket();
            live.insert(raw);
            co_await serve(stream, stream, id);
            live.erase(raw);
        }
    }

    template <class Stream>
    asio::awaitable<void> serve(Stream& stream, beast::tcp_stream& tcp_layer, std::uint64_t id)
    {
        beast::flat_buffer buffer;
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(4 * 1024 * 1024);
            tcp_layer.expires_after(std::chrono::seconds{60});
            auto [ec, n] = co_await http::async_read(stream, buffer, parser, kUseTuple);
            if (ec) {
                co_return;
            }
            http::request<http::string_body> req = parser.release();

            ReceivedRequest rec;
            rec.connection = id;
            rec.method = std::string(req.method_string());
            rec.target = std::string(req.target());
            rec.content_type = std::string(req[http::field::content_type]);
            rec.webhook_id = std::string(req["webhook-id"]);
            rec.webhook_timestamp = std::string(req["webhook-timestamp"]);
            rec.webhook_signature = std::string(req["webhook-signature"]);
            rec.body = req.body();
            for (const auto& field : req) {
                rec.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
            }
            rec.at = std::chrono::steady_clock::now();
            bool any = false;
            for (const std::string& secret : options.secrets) {
                const bool ok = signed_by(secret, rec);
                rec.verified_by.push_back(ok);
                any = any || ok;
            }
            rec.signature_ok = any && timestamp_fresh(rec.webhook_timestamp);

            std::size_t index = 0;
            std::chrono::milliseconds hold{0};
            http::response<http::string_body> res;
            std::string content_type = "application/json";
            RequestHandler answer;
            {
                std::lock_guard lock(mu);
                answer = handler;
            }
            std::optional<ScriptedResponse> made;
            if (answer) {
                made = answer(rec);  // outside the lock: a fake provider signs its answer here
            }
            {
                std::lock_guard lock(mu);
                rec.status = default_status;
                if (made) {
                    rec.status = made->status;
                    res.result(rec.status);
                    for (const auto& [name, value] : made->headers) {
                        res.set(name, value);
                    }
                    res.body() = std::move(made->body);
                    content_type = made->content_type;
                } else {
                    if (!scripted.empty()) {
                        rec.status = scripted.front();
                        scripted.pop_front();
                    }
                    res.result(rec.status);
                    res.body() = response_body;
                    if (!retry_after.empty() && (rec.status == 429 || rec.status == 503)) {
                        res.set(http::field::retry_after, retry_after);
                    }
                }
                hold = delay;
                index = received.size();
                received.push_back(rec);
            }
            cv.notify_all();

            if (hold.count() > 0) {
                asio::steady_timer timer(co_await asio::this_coro::executor, hold);
                co_await timer.async_wait(kUseTuple);
            }
            res.version(req.version());
            if (!content_type.empty()) {
                res.set(http::field::content_type, content_type);
            }
            res.keep_alive(req.keep_alive());
            res.prepare_payload();
            tcp_layer.expires_after(std::chrono::seconds{10});
            auto [wec, written] = co_await http::async_write(stream, res, kUseTuple);
            if (wec) {
                co_return;
            }
            {
                std::lock_guard lock(mu);
                if (index < received.size()) {
                    received[index].answered = true;
                }
            }
            cv.notify_all();
            if (!res.keep_alive()) {
                co_return;
            }
        }
    }

    void close_all()
    {
        if (acceptor) {
            boost::system::error_code ec;
            acceptor->close(ec);
            acceptor.reset();
        }
        for (tcp::socket* s : live) {
            boost::system::error_code ec;
            s->shutdown(tcp::socket::shutdown_both, ec);
            s->close(ec);
        }
    }
};

HttpReceiver::HttpReceiver(HttpReceiverOptions options) : impl_(std::make_unique<Impl>())
{
    impl_->options = std::move(options);
    impl_->default_status = impl_->options.default_status;
    if (!impl_->options.tls_cert_pem.empty()) {
        ssl::context& ctx = impl_->tls.emplace(ssl::context::tls_server);
        ctx.use_certificate_chain(asio::buffer(impl_->options.tls_cert_pem));
        ctx.use_private_key(asio::buffer(impl_->options.tls_key_pem), ssl::context::pem);
    }
    // A port from free_port(): below the kernel's ephemeral range, so that no outgoing connection
    // (the daemon's Redis or CRM connections, a test's client) can take it as its source port while
    // the receiver is stopped, and start() can listen on it again. Another test's free_port() may
    // still pick it between the check and the bind: then another one is tried.
    boost::system::error_code ec;
    for (int attempt = 0; attempt < 20; ++attempt) {
        impl_->port = free_port();
        ec = impl_->listen();
        if (!ec) {
            break;
        }
    }
    if (ec) {
        throw std::runtime_error("HttpReceiver: cannot listen on 127.0.0.1: " + ec.message());
    }
    impl_->work.emplace(impl_->ioc.get_executor());
    impl_->thread = std::thread([impl = impl_.get()] { impl->ioc.run(); });
}

HttpReceiver::~HttpReceiver()
{
    impl_->run_on_io([impl = impl_.get()] { impl->close_all(); });
    impl_->work.reset();
    impl_->ioc.stop();
    impl_->thread.join();
}

std::uint16_t HttpReceiver::port() const
{
    return impl_->port;
}

std::string HttpReceiver::url(std::string_view path, std::string_view host) const
{
    std::string u = impl_->tls ? "https://" : "http://";
    u.append(host);
    u += ":" + std::to_string(impl_->port);
    u.append(path);
    return u;
}

void HttpReceiver::push_statuses(std::vector<unsigned> statuses)
{
    std::lock_guard lock(impl_->mu);
    impl_->scripted.insert(impl_->scripted.end(), statuses.begin(), statuses.end());
}

void HttpReceiver::set_default_status(unsigned status)
{
    std::lock_guard lock(impl_->mu);
    impl_->default_status = status;
}

void HttpReceiver::set_retry_after(std::string value)
{
    std::lock_guard lock(impl_->mu);
    impl_->retry_after = std::move(value);
}

void HttpReceiver::set_handler(RequestHandler handler)
{
    std::lock_guard lock(impl_->mu);
    impl_->handler = std::move(handler);
}

void HttpReceiver::set_response_body(std::string body)
{
    std::lock_guard lock(impl_->mu);
    impl_->response_body = std::move(body);
}

void HttpReceiver::set_response_delay(std::chrono::milliseconds delay)
{
    std::lock_guard lock(impl_->mu);
    impl_->delay = delay;
}

void HttpReceiver::stop()
{
    impl_->run_on_io([impl = impl_.get()] { impl->close_all(); });
}

bool HttpReceiver::start()
{
    // The port may be held for a moment by someone else (another test's free_port() probing it, a
    // PortHold being released): retry for a while, then let the caller fail the test.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
        boost::system::error_code ec;
        impl_->run_on_io([impl = impl_.get(), &ec] {
            if (!impl->acceptor) {
                ec = impl->listen();
            }
        });
        if (!ec) {
            return true;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            std::fprintf(stderr, "HttpReceiver::start: cannot listen on 127.0.0.1:%u again: %s\n",
                         static_cast<unsigned>(impl_->port), ec.message().c_str());
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

std::vector<ReceivedRequest> HttpReceiver::requests() const
{
    std::lock_guard lock(impl_->mu);
    return impl_->received;
}

std::size_t HttpReceiver::count() const
{
    std::lock_guard lock(impl_->mu);
    return impl_->received.size();
}

std::set<std::string> HttpReceiver::acknowledged_ids() const
{
    std::lock_guard lock(impl_->mu);
    std::set<std::string> ids;
    for (const ReceivedRequest& r : impl_->received) {
        if (r.answered && r.status >= 200 && r.status < 300) {
            ids.insert(r.webhook_id);
        }
    }
    return ids;
}

bool HttpReceiver::wait_for(const std::function<bool(const std::vector<ReceivedRequest>&)>& pred,
                            std::chrono::milliseconds timeout) const
{
    std::unique_lock lock(impl_->mu);
    return impl_->cv.wait_for(lock, timeout, [&] { return pred(impl_->received); });
}

}  // namespace paybridge::test
