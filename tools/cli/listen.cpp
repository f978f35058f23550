#include "tools/cli/listen.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "crm/webhook_signer.hpp"
#include "tools/cli/args.hpp"
#include "tools/cli/cli_config.hpp"
#include "tools/cli/http_client.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <iostream>
#include <ostream>
#include <sstream>

namespace paybridge::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr const char* kHelp =
    R"(usage: paybridge listen [--port P] [--secret whsec_...] [--status CODE] [--fail-rate R]
                        [--tolerance S] [--json] [--host ADDR] [--config FILE]

A CRM stand-in for development: accepts the events paybridged pushes (POST, any path), verifies
their Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature) and prints
each one: type, bill, sequence, amounts and webhook-id. A request that does not verify is
answered 401 and the reason is printed (wrong secret, changed body, stale timestamp, missing
headers).

options:
  --port P         port to listen on (default: the port of crm.url in the configuration, else
                   9000; 0 picks a free port, printed on start)
  --host ADDR      address to bind (default 127.0.0.1)
  --secret S       the webhook secret "whsec_..." (default: crm.secret from the configuration)
  --status CODE    answer every verified event with CODE (default 200); e.g. 500 or 503 to watch
                   paybridged retry, 410 to watch it give up (dead letter); 204 and 304 are
                   answered without a body
  --fail-rate R    answer a random fraction R (0..1) of verified events with 500 (or with
                   --status when that is a failure code), the rest with 200 (or with --status
                   when that is a 2xx code)
  --tolerance S    accept a webhook-timestamp up to S seconds from this machine's clock (default
                   300, as paybridged's receivers are told to)
  --json           print one JSON object per request (for scripts) instead of readable lines
  --config FILE    configuration to take the defaults from (see 'paybridge --help')

Runs until Ctrl-C. Repeated webhook-ids (retries) are marked "delivery #N".

exit codes: 0 stopped by a signal, 2 usage error, 4 cannot bind the port, or the configuration
            (or its crm.secret) is missing or unusable
)";

const std::vector<OptionSpec> kOptions = {{"port"},      {"host"},        {"secret"}, {"status"},
                                          {"fail-rate"}, {"json", false}, {"config"}, {"tolerance"}};

// Statuses whose responses carry no body (RFC 9110 §6.4.1); Beast refuses to frame one with a body.
bool bodiless(int status) { return status / 100 == 1 || status == 204 || status == 304; }

// Logs what ended a coroutine with an exception (a bug: every I/O error is a value).
void log_exception(std::ostream& err, std::string_view what, std::exception_ptr e)
{
    if (!e) {
        return;
    }
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        err << "paybridge listen: " << what << ": " << ex.what() << std::endl;
    } catch (...) {
        err << "paybridge listen: " << what << ": unknown exception" << std::endl;
    }
}

std::string now_clock()
{
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[16];
    std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
    return buf;
}

std::string compact(const rapidjson::Value& v)
{
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    v.Accept(w);
    return std::string(buf.GetString(), buf.GetSize());
}

std::string str_member(const rapidjson::Value& obj, const char* key)
{
    if (!obj.IsObject()) {
        return {};
    }
    const auto it = obj.FindMember(key);
    if (it == obj.MemberEnd()) {
        return {};
    }
    if (it->value.IsString()) {
        return std::string(it->value.GetString(), it->value.GetStringLength());
    }
    if (it->value.IsInt64()) {
        return std::to_string(it->value.GetInt64());
    }
    if (it->value.IsNull()) {
        return {};
    }
    return compact(it->value);
}

std::string yuan_member(const rapidjson::Value& obj, const char* key)
{
    if (obj.IsObject()) {
        const auto it = obj.FindMember(key);
        if (it != obj.MemberEnd() && it->value.IsInt64()) {
            return format_yuan(it->value.GetInt64());
        }
    }
    return "-";
}

std::string rejection_reason(const boost::system::error_code& ec, const std::string& timestamp,
                             std::int64_t now, std::int64_t tolerance)
{
    if (ec == errc::stale_timestamp) {
        return "stale webhook-timestamp " + timestamp + " (now " + std::to_string(now) + ", tolerance " +
               std::to_string(tolerance) + " s)";
    }
    if (ec == errc::malformed_request) {
        return "missing or malformed webhook-id / webhook-timestamp / webhook-signature headers";
    }
    return "bad signature: no v1 entry matches the secret (wrong --secret, or the body or headers were "
           "changed)";
}

}  // namespace

CrmListener::CrmListener(asio::io_context& ioc, ListenOptions options, std::ostream& out)
    : CrmListener(ioc, std::move(options), out, std::cerr)
{
}

CrmListener::CrmListener(asio::io_context& ioc, ListenOptions options, std::ostream& out, std::ostream& err)
    : ioc_(ioc),
      options_(std::move(options)),
      out_(out),
      err_(err),
      acceptor_(ioc),
      rng_(options_.seed ? *options_.seed : std::random_device{}())
{
}

CrmListener::~CrmListener() = default;

Expected<std::uint16_t> CrmListener::start()
{
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(options_.host, ec);
    if (ec) {
        return usage_error("--host '" + options_.host + "' is not an IP address");
    }
    const tcp::endpoint endpoint(address, options_.port);
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) {
        acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
        acceptor_.bind(endpoint, ec);
    }
    if (!ec) {
        acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        return local_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port) + ": " +
                           ec.message() +
                           " (is another listener running? pick another --port, and point crm.url at it)");
    }
    auto loop = [this]() -> asio::awaitable<void> {
        co_await accept_loop();
    };
    asio::co_spawn(ioc_, std::move(loop),
                   [this](std::exception_ptr e) { log_exception(err_, "stopped accepting connections", e); });
    return acceptor_.local_endpoint().port();
}

void CrmListener::stop()
{
    boost::system::error_code ignored;
    acceptor_.close(ignored);
}

asio::awaitable<void> CrmListener::accept_loop()
{
    while (acceptor_.is_open()) {
        auto [ec, socket] = co_await acceptor_.async_accept(kUseTuple);
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor_.is_open()) {
                co_return;
            }
            // e.g. EMFILE: keep serving the connections we have, and retry once some may have
            // closed instead of spinning on an error that will not go away at once.
            asio::steady_timer pause(ioc_, std::chrono::milliseconds(100));
            auto [wec] = co_await pause.async_wait(kUseTuple);
            (void)wec;
            continue;
        }
        auto task = [this, s = std::move(socket)]() mutable -> asio::awaitable<void> {
            co_await session(std::move(s));
        };
        // A session only throws on a bug (every I/O error is a value); dropping that one connection is
        // the right blast radius for a development tool, but it must say so: the event was printed
        // and counted already, and the daemon saw no answer.
        asio::co_spawn(ioc_, std::move(task),
                       [this](std::exception_ptr e) { log_exception(err_, "dropped a connection", e); });
    }
}

asio::awaitable<void> CrmListener::session(tcp::socket socket)
{
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(64 * 1024);
        parser.body_limit(8 * 1024 * 1024);
        stream.expires_after(std::chrono::seconds(60));
        auto [rec, n] = co_await http::async_read(stream, buffer, parser, kUseTuple);
        (void)n;
        if (rec) {
            break;
        }
        const auto& req = parser.get();
        std::map<std::string, std::string> headers;
        for (const auto& f : req) {
            std::string name(f.name_string());
            for (auto& c : name) {
                c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            }
            if (name.starts_with("webhook-") && headers.count(name) == 0) {
                headers[name] = std::string(f.value());
            }
        }
        std::string reply_body;
        const Delivery d = handle(std::string(req.method_string()), std::string(req.target()), headers,
                                  req.body(), reply_body);
        http::response<http::string_body> res{static_cast<http::status>(d.answered), req.version()};
        res.set(http::field::server, "paybridge-listen");
        if (!reply_body.empty()) {
            res.set(http::field::content_type, "text/plain; charset=utf-8");
        }
        res.keep_alive(req.keep_alive());
        res.body() = std::move(reply_body);
        res.prepare_payload();
        stream.expires_after(std::chrono::seconds(30));
        auto [wec, written] = co_await http::async_write(stream, res, kUseTuple);
        (void)written;
        if (wec || !res.keep_alive()) {
            break;
        }
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

Delivery CrmListener::handle(const std::string& method, const std::string& target,
                             const std::map<std::string, std::string>& headers, const std::string& body,
                             std::string& reply_body)
{
    Delivery d;
    auto header = [&headers](const char* name) {
        const auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    };
    d.webhook_id = header("webhook-id");
    const std::string timestamp = header("webhook-timestamp");
    const std::string signature = header("webhook-signature");
    const std::int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();

    if (method != "POST") {
        d.reason = "method " + method + " (events are POSTed)";
        d.answered = 405;
    } else {
        boost::system::error_code last = make_error_code(errc::bad_signature);
        for (const auto& secret : options_.secrets) {
            Result<void> r = crm::check(secret, d.webhook_id, timestamp, signature, body, now,
                                        std::chrono::seconds(options_.tolerance_s));
            if (r) {
                d.verified = true;
                break;
            }
            last = r.error();
        }
        if (!d.verified) {
            d.reason = rejection_reason(last, timestamp, now, options_.tolerance_s);
            d.answered = 401;
        }
    }
    if (d.verified) {
        d.delivery = ++seen_[d.webhook_id];
        d.answered = options_.status;
        if (options_.fail_rate > 0.0) {
            std::uniform_real_distribution<double> dist(0.0, 1.0);
            if (dist(rng_) < options_.fail_rate) {
                d.answered = options_.fail_status;
            }
        }
        reply_body =
            d.answered >= 200 && d.answered < 300 ? "ok\n" : "paybridge listen: failing on purpose\n";
    } else {
        reply_body = "paybridge listen: rejected: " + d.reason + "\n";
    }
    if (bodiless(d.answered)) {
        reply_body.clear();
    }

    rapidjson::Document event;
    event.Parse(body.data(), body.size());
    const bool event_ok = !event.HasParseError() && event.IsObject();

    if (options_.json) {
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        w.StartObject();
        w.Key("received_at");
        w.String(format_rfc3339(now * 1000));
        w.Key("method");
        w.String(method);
        w.Key("path");
        w.String(target);
        w.Key("webhook_id");
        w.String(d.webhook_id);
        w.Key("webhook_timestamp");
        w.String(timestamp);
        w.Key("verified");
        w.Bool(d.verified);
        if (!d.verified) {
            w.Key("reason");
            w.String(d.reason);
        }
        w.Key("delivery");
        w.Int(d.delivery);
        w.Key("answered");
        w.Int(d.answered);
        w.Key("event");
        if (event_ok) {
            event.Accept(w);
        } else {
            w.Null();
        }
        w.EndObject();
        out_ << std::string_view(buf.GetString(), buf.GetSize()) << '\n';
    } else if (!d.verified) {
        out_ << now_clock() << " REJECTED " << method << " " << target << " webhook-id=" << d.webhook_id
             << ": " << d.reason << " -> " << d.answered << '\n';
    } else {
        out_ << now_clock() << ' ';
        if (event_ok) {
            const rapidjson::Value& bill = event.HasMember("bill") ? event["bill"] : event;
            out_ << str_member(event, "type") << "  bill=" << str_member(event, "bill_id")
                 << " seq=" << str_member(event, "sequence");
            if (bill.IsObject() && bill.HasMember("status")) {
                out_ << " status=" << str_member(bill, "status")
                     << " amount=" << yuan_member(bill, "amount_fen")
                     << " paid=" << yuan_member(bill, "paid_fen")
                     << " refunded=" << yuan_member(bill, "refunded_fen");
            } else {
                out_ << " (bill not registered yet)";  // "bill": null, e.g. an unknown_bill anomaly
            }
            if (event.HasMember("data") && event["data"].IsObject()) {
                const rapidjson::Value& data = event["data"];
                if (const std::string via = str_member(data, "channel"); !via.empty()) {
                    out_ << " via=" << via;
                }
                if (const std::string anomaly = str_member(data, "anomaly"); !anomaly.empty()) {
                    out_ << " anomaly=" << anomaly;
                }
                if (data.HasMember("refund_fen") && data["refund_fen"].IsInt64()) {
                    out_ << " refund=" << yuan_member(data, "refund_fen") << " ("
                         << str_member(data, "refund_id") << ")";
                }
            }
        } else {
            out_ << "(body is not a JSON object: " << body.size() << " bytes)";
        }
        out_ << "  webhook-id=" << d.webhook_id;
        if (d.delivery > 1) {
            out_ << " (delivery #" << d.delivery << ")";
        }
        out_ << " -> " << d.answered << '\n';
    }
    out_.flush();
    return d;
}

namespace {

Expected<ListenOptions> options_from(const Args& args)
{
    if (!args.positional().empty()) {
        return args.usage("listen takes no arguments, only options");
    }
    ListenOptions options;
    options.json = args.flag("json");
    options.host = args.value("host").value_or(options.host);
    auto port = args.integer("port", 0, 65535);
    auto status = args.integer("status", 200, 599);
    auto tolerance = args.integer("tolerance", 1, 86400 * 365);
    for (const auto* r : {&port, &status, &tolerance}) {
        if (!*r) {
            return r->error();
        }
    }
    options.tolerance_s = tolerance->value_or(300);
    if (auto rate = args.value("fail-rate")) {
        char* end = nullptr;
        const double v = std::strtod(rate->c_str(), &end);
        if (rate->empty() || end != rate->c_str() + rate->size() || !(v >= 0.0 && v <= 1.0)) {
            return args.usage("--fail-rate must be a number from 0 to 1, e.g. 0.3");
        }
        options.fail_rate = v;
    }
    // --fail-rate splits the answers in two: --status names one side, by whether it is a failure.
    const int given = static_cast<int>(status->value_or(200));
    options.status = given;
    if (options.fail_rate > 0.0) {
        const bool given_fails = given < 200 || given > 299;
        options.status = given_fails ? 200 : given;
        options.fail_status = given_fails ? given : 500;
    }

    // Defaults from the configuration, only when something is missing.
    const bool need_config = !args.value("secret") || !*port;
    std::optional<CliConfig> cfg;
    if (need_config) {
        Expected<CliConfig> loaded = locate_config(args.value("config"));
        if (loaded) {
            cfg = std::move(*loaded);
        } else if (!args.value("secret")) {
            return Failure{Exit::local, loaded.error().message + " (or give the secret with --secret whsec_...)"};
        }
    }
    if (auto secret = args.value("secret")) {
        if (!crm::decode_secret(*secret)) {
            return args.usage(
                "the --secret is not \"whsec_\" + base64 (copy it from the crm_secret file 'paybridge keys "
                "init' wrote)");
        }
        options.secrets.push_back(*secret);
    } else {
        if (cfg->crm_secret_refs.empty()) {
            return local_error(cfg->path.string() + " has no crm.secret; pass --secret whsec_...");
        }
        for (const auto& ref : cfg->crm_secret_refs) {
            Expected<std::string> s = cfg->secret(ref);
            if (!s) {
                return s.error();
            }
            if (!crm::decode_secret(*s)) {
                // Named by its reference, never by its value.
                return local_error(cfg->path.string() + ": the CRM secret " + ref +
                                   " is not \"whsec_\" + base64; fix crm.secret there ('paybridged --config " +
                                   cfg->path.string() + " --check' shows the problem), or pass --secret whsec_...");
            }
            options.secrets.push_back(*s);
        }
    }
    if (*port) {
        options.port = static_cast<std::uint16_t>(**port);
    } else if (cfg && !cfg->crm_url.empty()) {
        Expected<Url> url = parse_url(cfg->crm_url);
        options.port = url ? url->port : 9000;
    }
    return options;
}

Expected<Args> parse_args(const std::vector<std::string>& argv) { return Args::parse("listen", argv, kOptions); }

}  // namespace

Expected<ListenOptions> listen_options(const std::vector<std::string>& argv)
{
    Expected<Args> args = parse_args(argv);
    if (!args) {
        return args.error();
    }
    return options_from(*args);
}

std::string describe_answers(const ListenOptions& options)
{
    if (options.fail_rate <= 0.0) {
        return std::to_string(options.status);
    }
    std::ostringstream text;
    text << "a fraction " << options.fail_rate << " with " << options.fail_status << ", else " << options.status;
    return text.str();
}

int cmd_listen(const std::vector<std::string>& argv, const Io& io)
{
    Expected<Args> args = parse_args(argv);
    if (!args) {
        return report(io, args.error());
    }
    if (args->help()) {
        io.out << kHelp;
        return code(Exit::ok);
    }
    Expected<ListenOptions> options = options_from(*args);
    if (!options) {
        return report(io, options.error());
    }

    asio::io_context ioc;
    CrmListener listener(ioc, *options, io.out, io.err);
    Expected<std::uint16_t> bound = listener.start();
    if (!bound) {
        return report(io, bound.error());
    }
    const bool v6 = options->host.find(':') != std::string::npos;
    io.err << "paybridge listen: listening on http://" << (v6 ? "[" : "") << options->host << (v6 ? "]" : "")
           << ":" << *bound << " (any path); verifying with " << options->secrets.size()
           << " secret(s); answering " << describe_answers(*options) << "; Ctrl-C stops" << std::endl;
    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code&, int) {
        listener.stop();
        ioc.stop();
    });
    ioc.run();
    io.out.flush();
    return code(Exit::ok);
}

}  // namespace paybridge::cli
