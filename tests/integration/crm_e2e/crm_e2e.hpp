#pragma once

// CRM delivery end to end (issue 4): the real paybridged (and, where a test needs it, a second
// paybridged on the same Redis) delivering to the fake CRM of tests/support/http_receiver.hpp, driven
// by signed Alipay notifications and observed through the public /v1 API, the receiver and /metrics.
//
// CrmStack owns, in construction order: the Standard Webhooks secrets of the run, the receiver
// (which checks every request against all of them), and a DaemonFixture whose configuration gains a
// "crm" member pointing at the receiver. Secrets are written as files under the fixture's folder and
// referenced as "file:secrets/crm<N>", as production does.

#include "core/time.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/json.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace paybridge::test::crm_e2e {

using paybridge::test::parse_json;  // for the tests that use this namespace alone
using paybridge::test::wait_until;

using namespace std::chrono_literals;


/// Marks every descriptor of this process close-on-exec. A child that inherited the receiver's
/// listening socket would keep it alive, and a "stopped" receiver would still accept connections
/// (which then hang) instead of refusing them. The support code's children (tests/support/process.cpp,
/// redis_server.cpp) close every descriptor above stdio before exec; this also covers any other way a
/// test starts a child. Call before starting a child process.
inline void keep_descriptors_from_children()
{
    std::vector<int> fds;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        fds.push_back(std::stoi(entry.path().filename().string()));
    }
    for (int fd : fds) {
        const int flags = fd > 2 ? ::fcntl(fd, F_GETFD) : -1;
        if (flags >= 0) {
            ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        }
    }
}

/// The "crm" settings a test varies. The secrets themselves belong to CrmStack.
struct CrmSettings {
    int timeout_ms{2000};
    int concurrency{8};
    std::string retry_schedule_s{"[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"};
    int lease_s{10};
    std::string redis_extra;  ///< extra members of the daemon's "redis" (", \"cluster\": {...}")
};

inline std::string new_whsec()
{
    return "whsec_" + crypto::base64_encode(crypto::random_bytes(32));
}

class CrmStack {
public:
    /// `secret_count` secrets are generated; the daemon starts, signing with the first only.
    explicit CrmStack(CrmSettings settings = {}, std::size_t secret_count = 1, int workers = 2)
        : settings_(std::move(settings)),
          workers_(workers),
          secrets_(make_secrets(secret_count)),
          receiver(HttpReceiverOptions{.secrets = secrets_}),
          fx(DaemonOptions{.workers = workers, .start = false})
    {
        for (std::size_t i = 0; i < secrets_.size(); ++i) {
            std::ofstream(fx.dir() / ("secrets/crm" + std::to_string(i + 1))) << secrets_[i];
        }
        configure({1});
        keep_descriptors_from_children();
        fx.start();
    }

    const std::vector<std::string>& secrets() const noexcept { return secrets_; }

    /// The "crm" member signing with the given secrets (1-based indexes into secrets(), first signs).
    std::string crm_json(const std::vector<int>& signing) const
    {
        std::string refs;
        for (int n : signing) {
            refs += (refs.empty() ? "" : ", ") + std::string("\"file:secrets/crm") + std::to_string(n) + "\"";
        }
        const std::string secret = signing.size() == 1 ? "\"secret\": " + refs : "\"secrets\": [" + refs + "]";
        return "\"crm\": {\"url\": \"" + receiver.url("/paybridge/events") + "\", " + secret +
               ", \"timeout_ms\": " + std::to_string(settings_.timeout_ms) +
               ", \"concurrency\": " + std::to_string(settings_.concurrency) +
               ", \"retry_schedule_s\": " + settings_.retry_schedule_s +
               ", \"lease_s\": " + std::to_string(settings_.lease_s) + "}";
    }

    /// Rewrites paybridge.json so the daemon signs with these secrets (read on start and on SIGHUP).
    void configure(const std::vector<int>& signing)
    {
        DaemonOptions options{.workers = workers_, .start = false};
        options.extra_config = crm_json(signing);
        options.redis_extra = settings_.redis_extra;
        fx.write_config(options);
    }

private:
    static std::vector<std::string> make_secrets(std::size_t n)
    {
        std::vector<std::string> out;
        for (std::size_t i = 0; i < n; ++i) {
            out.push_back(new_whsec());
        }
        return out;
    }

    CrmSettings settings_;
    int workers_;
    std::vector<std::string> secrets_;

public:
    HttpReceiver receiver;  // declared before fx: the daemon stops while the receiver still listens

private:
    bool descriptors_kept_ = (keep_descriptors_from_children(), true);  // before fx starts redis-server

public:
    DaemonFixture fx;
};

/// Signed Alipay notifications for the fixture's public-key app (the provider side).
struct Alipay {
    DaemonFixture& fx;
    crypto::SharedKey key = *crypto::load_private_key(fx.alipay_keys.private_pem);

    static std::string trade_no(const std::string& bill)
    {
        // 28 digits like Alipay's, distinct per bill id.
        const std::string digest = crypto::hex_lower(crypto::sha256(bill)).substr(0, 12);
        char tail[16];
        std::snprintf(tail, sizeof tail, "%09llu", std::stoull(digest, nullptr, 16) % 1'000'000'000ULL);
        return std::string("2026112722001400000") + tail;
    }
    gateways::alipay::NoticeSpec spec(const std::string& bill, std::int64_t fen) const
    {
        gateways::alipay::NoticeSpec s;
        s.app_id = DaemonFixture::kAlipayAppId;
        s.seller_id = DaemonFixture::kSellerId;
        s.out_trade_no = bill;
        s.amount_fen = fen;
        s.trade_no = trade_no(bill);
        return s;
    }
    std::string paid(const std::string& bill, std::int64_t fen) const
    {
        return gateways::alipay::build_alipay_body(gateways::alipay::make_paid_notice(spec(bill, fen)), key.get());
    }
    std::string refund(const std::string& bill, std::int64_t fen, std::int64_t refunded_total,
                       const std::string& refund_no) const
    {
        return gateways::alipay::build_alipay_body(
            gateways::alipay::make_refund_notice(spec(bill, fen), refunded_total, refund_no), key.get());
    }
};

/// POSTs an Alipay notification to paybridged on `port`.
inline HttpResult post_alipay(std::uint16_t port, const std::string& body)
{
    return http_request(port, "POST", "/notify/alipay", body,
                        {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}});
}

/// Registers the bill and notifies its payment; both must succeed.
inline void register_and_pay(DaemonFixture& fx, const Alipay& ali, const std::string& bill, std::int64_t fen,
                             std::uint16_t notify_port = 0)
{
    const HttpResult created = fx.create_bill(bill, fen);
    REQUIRE_MESSAGE(created.status == 201, created.body);
    const HttpResult r = post_alipay(notify_port == 0 ? fx.port() : notify_port, ali.paid(bill, fen));
    REQUIRE_MESSAGE(r.status == 200, r.body);
    REQUIRE(r.body == "success");
}

/// The bill's events (GET /v1/bills/{id} "events"), as JSON text each.
inline std::vector<std::string> bill_event_ids(DaemonFixture& fx, const std::string& bill)
{
    const HttpResult r = fx.get_bill(bill);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    const rapidjson::Document d = parse_json(r.body);
    std::vector<std::string> ids;
    for (const auto& ev : d["events"].GetArray()) {
        ids.emplace_back(ev["id"].GetString());
    }
    return ids;
}

/// Every event of the GET /v1/events feed, id -> event JSON text (the whole feed, page by page).
inline std::map<std::string, std::string> feed(DaemonFixture& fx)
{
    std::map<std::string, std::string> out;
    std::string after;
    for (int page = 0; page < 100; ++page) {
        const HttpResult r = fx.api("GET", "/v1/events?limit=1000" + (after.empty() ? "" : "&after=" + after));
        REQUIRE_MESSAGE(r.status == 200, r.body);
        const rapidjson::Document d = parse_json(r.body);
        const auto& events = d["events"];
        if (events.Empty() || !d["next_cursor"].IsString()) {
            break;
        }
        for (const auto& ev : events.GetArray()) {
            rapidjson::StringBuffer buf;
            rapidjson::Writer<rapidjson::StringBuffer> w(buf);
            ev.Accept(w);
            out[ev["id"].GetString()] = std::string(buf.GetString(), buf.GetSize());
        }
        after = d["next_cursor"].GetString();
    }
    return out;
}

/// GET /v1/events/{id}: the delivery document ({"event","delivery","attempts"}); REQUIREs a 200.
inline rapidjson::Document delivery_doc(DaemonFixture& fx, const std::string& event_id)
{
    const HttpResult r = fx.api("GET", "/v1/events/" + event_id);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    return parse_json(r.body);
}

/// The delivery state of an event ("" when there is no such event).
inline std::string delivery_state(DaemonFixture& fx, const std::string& event_id)
{
    const HttpResult r = fx.api("GET", "/v1/events/" + event_id);
    if (r.status == 404) {
        return {};
    }
    REQUIRE_MESSAGE(r.status == 200, r.body);
    const rapidjson::Document d = parse_json(r.body);
    return d["delivery"]["state"].GetString();
}

/// Event ids listed by GET /v1/deliveries?state=... (every page).
inline std::set<std::string> listed(DaemonFixture& fx, const std::string& state)
{
    std::set<std::string> ids;
    std::string cursor;
    for (int page = 0; page < 100; ++page) {
        const std::string target =
            "/v1/deliveries?state=" + state + "&limit=100" + (cursor.empty() ? "" : "&cursor=" + cursor);
        const HttpResult r = fx.api("GET", target);
        REQUIRE_MESSAGE(r.status == 200, r.body);
        const rapidjson::Document d = parse_json(r.body);
        for (const auto& item : d["items"].GetArray()) {
            CHECK(std::string(item["state"].GetString()) == state);
            ids.insert(item["event_id"].GetString());
        }
        if (!d["next_cursor"].IsString()) {
            break;
        }
        cursor = d["next_cursor"].GetString();
    }
    return ids;
}

/// A sample of /metrics on `port` (the first series with that exact name and no labels); -1 if absent.
inline double metric(std::uint16_t port, const std::string& name)
{
    const HttpResult r = http_request(port, "GET", "/metrics");
    std::istringstream lines(r.body);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.starts_with(name + " ")) {
            return std::stod(line.substr(name.size() + 1));
        }
    }
    return -1;
}

/// Requests per webhook-id that the receiver answered with a 2xx.
inline std::map<std::string, int> acknowledged_counts(const HttpReceiver& receiver)
{
    std::map<std::string, int> counts;
    for (const ReceivedRequest& r : receiver.requests()) {
        if (r.answered && r.status >= 200 && r.status < 300) {
            ++counts[r.webhook_id];
        }
    }
    return counts;
}

/// Every request the receiver got is a POST of a JSON event whose id is the webhook-id, signed with
/// a configured secret and a fresh timestamp; requests for one webhook-id all carry the same body.
inline void check_requests_well_formed(const HttpReceiver& receiver)
{
    std::map<std::string, std::string> body_of;
    for (const ReceivedRequest& r : receiver.requests()) {
        CAPTURE(r.webhook_id);
        CHECK(r.method == "POST");
        CHECK(r.target == "/paybridge/events");
        CHECK(r.content_type == "application/json");
        CHECK(r.signature_ok);
        const rapidjson::Document ev = parse_json(r.body);
        REQUIRE(ev.HasMember("id"));
        CHECK(r.webhook_id == ev["id"].GetString());
        auto [it, fresh] = body_of.emplace(r.webhook_id, r.body);
        if (!fresh) {
            CHECK(it->second == r.body);  // a retry re-sends the same event, byte for byte
        }
    }
}

/// Keeps a loopback port bound (SO_REUSEADDR, never listening) while the receiver is down: a connection
/// to it is refused, as from a CRM that is down, yet no other socket on the machine can take the port
/// as its ephemeral source port meanwhile, so the receiver can listen on it again afterwards.
class PortHold {
public:
    explicit PortHold(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0))
    {
        REQUIRE(fd_ >= 0);
        const int on = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port);
        const int rc = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        const std::string error = rc == 0 ? std::string() : std::strerror(errno);
        REQUIRE_MESSAGE(rc == 0, "bind 127.0.0.1:" << port << ": " << error);
    }
    ~PortHold() { release(); }
    PortHold(const PortHold&) = delete;
    PortHold& operator=(const PortHold&) = delete;

    void release()
    {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }

private:
    int fd_;
};

/// Another paybridged on the fixture's Redis and configuration, listening on its own port.
class SecondDaemon {
public:
    SecondDaemon(DaemonFixture& fx, const std::string& name) : port_(free_port())
    {
        std::ifstream in(fx.config_path());
        std::stringstream text;
        text << in.rdbuf();
        std::string cfg = text.str();
        const std::string listen = "\"127.0.0.1:" + std::to_string(fx.port()) + "\"";
        const auto pos = cfg.find(listen);
        REQUIRE(pos != std::string::npos);
        cfg.replace(pos, listen.size(), "\"127.0.0.1:" + std::to_string(port_) + "\"");
        const std::filesystem::path path = fx.dir() / (name + ".json");
        std::ofstream(path) << cfg;
        keep_descriptors_from_children();
        process_ = std::make_unique<Process>(
            std::vector<std::string>{DaemonFixture::binary("paybridged"), "--config", path.string()},
            fx.dir() / (name + ".log"));
        if (!wait_for_http(port_, "/readyz", 200, 20s)) {
            FAIL("second paybridged did not become ready; log:\n" << process_->log());
        }
    }

    ~SecondDaemon()
    {
        if (process_) {
            // Whether it is still running or not: one that crashed (or was stopped by the test with
            // another code) fails the test, as ~DaemonFixture does for the first.
            const int code = process_->stop(SIGTERM, 20s);
            CHECK_MESSAGE(code == 0, "second paybridged exited with " << code << "; its log:\n" << process_->log());
        }
    }

    std::uint16_t port() const noexcept { return port_; }
    Process& process() { return *process_; }

private:
    std::uint16_t port_;
    std::unique_ptr<Process> process_;
};

}  // namespace paybridge::test::crm_e2e
