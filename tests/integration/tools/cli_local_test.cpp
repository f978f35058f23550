// The `paybridge` command line without a daemon: usage errors and exit codes, `trigger --print`
// checked byte for byte against the daemon's own gateways (in process, with the keys and the
// configuration `keys init` wrote), and the `listen` stand-in's verdicts.

#include "config/load.hpp"
#include "core/error.hpp"
#include "crm/webhook_signer.hpp"
#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/wechatpay/wechatpay_v2_gateway.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"
#include "tests/support/http_client.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/process.hpp"
#include "tools/cli/cli.hpp"
#include "tools/cli/http_client.hpp"
#include "tools/cli/keys_init.hpp"
#include "tools/cli/listen.hpp"
#include "tools/cli/table.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

using namespace paybridge;
namespace pcli = paybridge::cli;

namespace {

struct Captured {
    int code{-1};
    std::string out;
    std::string err;
};

Captured run_cli(std::vector<std::string> args)
{
    std::ostringstream out;
    std::ostringstream err;
    Captured c;
    c.code = pcli::run(args, pcli::Io{out, err});
    c.out = out.str();
    c.err = err.str();
    return c;
}

bool contains(const std::string& text, std::string_view what) { return text.find(what) != std::string::npos; }

// A development configuration in a temporary folder, and the daemon's gateways built from it.
struct DevKeys {
    test::TempDir tmp;
    std::filesystem::path config = tmp / "paybridge.dev.json";
    std::unique_ptr<gateways::Gateway> alipay;
    std::unique_ptr<gateways::Gateway> wechat_v3;
    std::unique_ptr<gateways::Gateway> wechat_v2;
    std::uint16_t closed_port = test::free_port();

    DevKeys()
    {
        pcli::KeysInitOptions o;
        o.dir = tmp / "keys";
        auto report = pcli::keys_init(o);
        REQUIRE_MESSAGE(report.has_value(), (report ? "" : report.error().message));
        config::LoadReport loaded = config::load_config(config, config::SecretSource{});
        std::string all;
        for (const auto& p : loaded.problems) {
            all += p + "\n";
        }
        REQUIRE_MESSAGE(loaded.config.has_value(), all);
        std::vector<std::string> problems;
        auto a = gateways::alipay::make_alipay_gateway(loaded.config->alipay_apps, problems);
        auto w3 = gateways::wechatpay::make_wechat_v3_gateway(loaded.config->wechat_merchants, problems);
        auto w2 = gateways::wechatpay::make_wechat_v2_gateway(loaded.config->wechat_merchants, problems);
        const std::string first_problem = problems.empty() ? std::string() : problems.front();
        REQUIRE_MESSAGE((a && w3 && w2), first_problem);
        alipay = std::move(*a);
        wechat_v3 = std::move(*w3);
        wechat_v2 = std::move(*w2);
    }
};

// A raw HTTP request as `trigger --print` writes it.
struct RawRequest {
    std::string request_line;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    std::string header(std::string_view name) const
    {
        for (const auto& [n, v] : headers) {
            if (n == name) {
                return v;
            }
        }
        return {};
    }
};

RawRequest parse_raw(const std::string& raw)
{
    RawRequest r;
    const auto end = raw.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    r.body = raw.substr(end + 4);
    std::istringstream head(raw.substr(0, end));
    std::string line;
    std::getline(head, line);
    r.request_line = line.substr(0, line.size() - (line.ends_with('\r') ? 1 : 0));
    while (std::getline(head, line)) {
        if (line.ends_with('\r')) {
            line.pop_back();
        }
        const auto colon = line.find(": ");
        REQUIRE(colon != std::string::npos);
        r.headers.emplace_back(line.substr(0, colon), line.substr(colon + 2));
    }
    return r;
}

Result<gateways::Verified> verify(const gateways::Gateway& gw, const RawRequest& raw,
                                  std::string_view mchid = {}, std::optional<std::int64_t> at = std::nullopt)
{
    gateways::InboundRequest in;
    for (const auto& [n, v] : raw.headers) {
        in.headers.emplace_back(n, v);
    }
    in.body = raw.body;
    in.route_param = mchid;
    in.now_unix = at ? *at
                     : std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    return gw.verify_and_parse(in);
}

// `trigger ... --print` against a closed port: refunds try to read the bill first and must carry
// on with --amount when the daemon is not there.
RawRequest print(DevKeys& keys, std::vector<std::string> args)
{
    args.insert(args.begin(), "trigger");
    args.insert(args.end(), {"--print", "--url", "http://127.0.0.1:" + std::to_string(keys.closed_port),
                             "--config", keys.config.string()});
    Captured c = run_cli(args);
    REQUIRE_MESSAGE(c.code == 0, c.err);
    return parse_raw(c.out);
}

std::string sign_event(const std::string& secret, const std::string& id, std::int64_t ts,
                       const std::string& body)
{
    return crm::sign({secret}, id, ts, body);
}

std::int64_t now_s()
{
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

const std::string kEvent =
    R"({"id":"evt_B1_1","type":"bill.paid","created_at":"2026-01-01T00:00:00.000Z","bill_id":"B1","sequence":1,)"
    R"("bill":{"id":"B1","status":"PAID","amount_fen":1234,"paid_fen":1234,"refunded_fen":0},)"
    R"("data":{"channel":"alipay","kind":"payment","amount_fen":1234}})";

// The development configuration with `edit` applied to its JSON, written next to it as `name`.
std::filesystem::path edited_config(const DevKeys& keys, const std::string& name,
                                    const std::function<void(rapidjson::Document&)>& edit)
{
    std::ifstream in(keys.config, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    rapidjson::Document doc;
    doc.Parse(text.str().c_str());
    REQUIRE(!doc.HasParseError());
    edit(doc);
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    doc.Accept(w);
    keys.tmp.write(name, buf.GetString());
    return keys.tmp / name;
}

// One verified event POSTed to a listener over a real socket, as paybridged pushes it.
test::HttpResult post_event(std::uint16_t port, const std::string& secret)
{
    const std::int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    return test::http_request(port, "POST", "/paybridge/events", kEvent,
                              {{"webhook-id", "evt_B1_1"},
                               {"webhook-timestamp", std::to_string(now)},
                               {"webhook-signature", crm::sign({secret}, "evt_B1_1", now, kEvent)},
                               {"Content-Type", "application/json"}});
}

}  // namespace

TEST_SUITE("tools/cli")
{
    TEST_CASE("every command has --help and usage errors exit 2 with the reason")
    {
        for (const std::vector<std::string>& args : {std::vector<std::string>{"--help"},
                                                     {"keys", "init", "--help"},
                                                     {"trigger", "--help"},
                                                     {"listen", "--help"},
                                                     {"bills", "--help"},
                                                     {"bills", "create", "--help"},
                                                     {"bills", "get", "--help"},
                                                     {"bills", "query", "--help"},
                                                     {"bills", "list", "--help"},
                                                     {"events", "--help"},
                                                     {"anomalies", "--help"}}) {
            CAPTURE(args.front());
            Captured c = run_cli(args);
            CHECK(c.code == 0);
            CHECK(contains(c.out, "usage: paybridge"));
            CHECK(contains(c.out, "exit codes"));
        }
        CHECK(contains(run_cli({"listen", "--help"}).out, "--tolerance S"));
        CHECK(contains(run_cli({"trigger", "--help"}).out, "--sign-type T"));
        struct Case {
            std::vector<std::string> args;
            std::string_view says;
        };
        for (const Case& tc : std::vector<Case>{
                 {{}, "usage: paybridge"},
                 {{"frobnicate"}, "unknown command 'frobnicate'"},
                 {{"keys", "init"}, "exactly one DIR"},
                 {{"keys", "init", "d", "--redis-port", "70000"}, "--redis-port must be a whole number"},
                 {{"trigger", "paypal", "paid", "--bill", "B1"}, "unknown trigger 'paypal paid'"},
                 {{"trigger", "alipay", "refund-closed", "--bill", "B1"}, "unknown trigger"},
                 {{"trigger", "alipay", "paid"}, "--bill ID is required"},
                 {{"trigger", "alipay", "paid", "--bill", "B1", "--stale"},
                  "--stale does not apply to Alipay"},
                 {{"trigger", "wechatpay-v2", "paid", "--bill", "B1", "--stale"},
                  "--stale does not apply to WeChat Pay API v2"},
                 {{"trigger", "alipay", "paid", "--bill", "B1", "--amount", "12.34"},
                  "--amount must be a whole number"},
                 {{"trigger", "alipay", "paid", "--bill", "B1", "--refund-amount", "5"},
                  "only applies to refund"},
                 {{"trigger", "alipay", "paid", "--bill", "B1", "--bogus"}, "unknown option '--bogus'"},
                 // Checked before anything is read or built, with the accepted values.
                 {{"trigger", "alipay", "paid", "--bill", "B1", "--amount", "1", "--charset", "latin1"},
                  "--charset must be utf-8, gbk, gb2312 or gb18030"},
                 {{"trigger", "wechatpay-v2", "paid", "--bill", "B1", "--amount", "1", "--sign-type", "SHA1"},
                  "--sign-type must be MD5, HMAC-SHA256 or none"},
                 {{"bills", "create", "--id", "B1", "--amount", "5.5", "--customer", "c"},
                  "whole number of fen"},
                 {{"bills", "create", "--id", "B1"}, "needs --id, --amount and --customer"},
                 {{"bills", "list", "--status", "LOST"}, "--status must be"},
                 {{"bills", "get"}, "one bill ID"},
                 {{"bills", "query"}, "one bill ID"},
                 {{"events", "--limit", "0"}, "--limit must be a whole number from 1"},
                 {{"listen", "--secret", "whsec_x", "--fail-rate", "2"},
                  "--fail-rate must be a number from 0 to 1"},
                 {{"listen", "--secret", "not-a-secret!", "--port", "0"}, "not \"whsec_\" + base64"},
                 {{"bills", "list", "--url", "ftp://x"}, "not an http:// or https:// URL"},
             }) {
            CAPTURE(tc.args.size() ? tc.args.front() : std::string());
            CAPTURE(tc.says);
            Captured c = run_cli(tc.args);
            CHECK(c.code == 2);
            CHECK(contains(c.err, tc.says));
        }
    }

    TEST_CASE("a missing configuration or key file is a local problem (exit 4) that says how to fix it")
    {
        test::TempDir tmp;
        Captured c = run_cli({"trigger", "alipay", "paid", "--bill", "B1", "--amount", "100", "--config",
                              (tmp / "nope.json").string()});
        CHECK(c.code == 4);
        CHECK(contains(c.err, "cannot read the configuration"));
        CHECK(contains(c.err, "paybridge keys init"));

        DevKeys keys;
        std::filesystem::remove(keys.tmp / "keys" / "alipay_private.pem");
        c = run_cli({"trigger", "alipay", "paid", "--bill", "B1", "--amount", "100", "--print", "--config",
                     keys.config.string()});
        CHECK(c.code == 4);
        CHECK(contains(c.err, "alipay_private.pem"));
        CHECK(contains(c.err, "paybridge keys init"));
    }

    TEST_CASE("cannot connect: exit 3 and a hint to start paybridged")
    {
        DevKeys keys;
        const std::string url = "http://127.0.0.1:" + std::to_string(test::free_port());
        Captured c = run_cli({"trigger", "alipay", "paid", "--bill", "B1", "--amount", "100", "--url", url,
                              "--config", keys.config.string()});
        CHECK(c.code == 3);
        CHECK(contains(c.err, "cannot reach " + url +
                                  ": connection refused — is paybridged running? (see README Quickstart)"));
        c = run_cli({"bills", "list", "--url", url, "--config", keys.config.string()});
        CHECK(c.code == 3);
        CHECK(contains(c.err, "connection refused"));
        // Without --amount the bill must be read first: the same failure, saying why it was needed.
        c = run_cli(
            {"trigger", "wechatpay", "paid", "--bill", "B1", "--url", url, "--config", keys.config.string()});
        CHECK(c.code == 3);
        CHECK(contains(c.err, "or pass --amount FEN"));
    }

    TEST_CASE("trigger --print: Alipay notifications verify with the daemon's gateway but --tamper does not")
    {
        DevKeys keys;
        RawRequest paid = print(keys, {"alipay", "paid", "--bill", "B1", "--amount", "1234"});
        CHECK(paid.request_line == "POST /notify/alipay HTTP/1.1");
        CHECK(paid.header("Host") == "127.0.0.1:" + std::to_string(keys.closed_port));
        CHECK(contains(paid.header("Content-Type"), "application/x-www-form-urlencoded"));
        CHECK(paid.header("Content-Length") == std::to_string(paid.body.size()));
        auto v = verify(*keys.alipay, paid);
        REQUIRE_MESSAGE(v.has_value(), error_name(v.error()));
        CHECK(v->event.kind == EventKind::payment);
        CHECK(v->event.bill_id == "B1");
        CHECK(v->event.total_fen == 1234);

        RawRequest refund = print(keys, {"alipay", "refund", "--bill", "B1", "--amount", "1234",
                                         "--refund-amount", "234", "--refund-id", "R-1"});
        v = verify(*keys.alipay, refund);
        REQUIRE(v.has_value());
        CHECK(v->event.kind == EventKind::refund);
        CHECK(v->event.refund_fen == 234);
        CHECK(v->event.refund_id == "R-1");

        RawRequest closed = print(keys, {"alipay", "closed", "--bill", "B2", "--amount", "500"});
        v = verify(*keys.alipay, closed);
        REQUIRE(v.has_value());
        CHECK(v->event.kind == EventKind::close);

        RawRequest gbk = print(keys, {"alipay", "paid", "--bill", "B3", "--amount", "1", "--charset", "gbk"});
        CHECK(contains(gbk.body, "charset=gbk"));
        CHECK(verify(*keys.alipay, gbk).has_value());

        RawRequest tampered = print(keys, {"alipay", "paid", "--bill", "B1", "--amount", "1234", "--tamper"});
        v = verify(*keys.alipay, tampered);
        REQUIRE(!v.has_value());
        CHECK(v.error() == errc::bad_signature);
    }

    TEST_CASE("trigger --print: WeChat Pay v3 and v2 notifications verify but --tamper and --stale do not")
    {
        DevKeys keys;
        for (const char* signer : {"public-key", "platform"}) {
            CAPTURE(signer);
            RawRequest paid =
                print(keys, {"wechatpay", "paid", "--bill", "W1", "--amount", "800", "--signer", signer});
            CHECK(paid.request_line == "POST /notify/wechatpay/1900000001 HTTP/1.1");
            CHECK(paid.header("Content-Type") == "application/json");
            const bool platform = std::string(signer) == "platform";
            CHECK(paid.header("Wechatpay-Serial").starts_with("PUB_KEY_ID_") == !platform);
            const auto ts = std::stoll(paid.header("Wechatpay-Timestamp"));
            CHECK(std::abs(ts - now_s()) < 30);
            auto v = verify(*keys.wechat_v3, paid, "1900000001");
            REQUIRE_MESSAGE(v.has_value(), error_name(v.error()));
            CHECK(v->event.kind == EventKind::payment);
            CHECK(v->event.total_fen == 800);
            // The gateway says which key verified it: the one the signer was asked for.
            CHECK(v->notes.find(platform ? "key=platform_certificate:" : "key=public_key") != std::string::npos);
        }
        struct RefundCase {
            const char* event;
            EventKind kind;
        };
        for (const RefundCase& rc :
             {RefundCase{"refund", EventKind::refund}, RefundCase{"refund-closed", EventKind::refund_closed},
              RefundCase{"refund-abnormal", EventKind::refund_abnormal}}) {
            CAPTURE(rc.event);
            RawRequest r = print(
                keys, {"wechatpay", rc.event, "--bill", "W1", "--amount", "800", "--refund-amount", "300"});
            auto v = verify(*keys.wechat_v3, r, "1900000001");
            REQUIRE_MESSAGE(v.has_value(), error_name(v.error()));
            CHECK(v->event.kind == rc.kind);
            CHECK(v->event.refund_fen == 300);
        }
        RawRequest tampered =
            print(keys, {"wechatpay", "paid", "--bill", "W1", "--amount", "800", "--tamper"});
        auto v = verify(*keys.wechat_v3, tampered, "1900000001");
        REQUIRE(!v.has_value());
        CHECK(v.error() == errc::bad_signature);
        RawRequest stale = print(keys, {"wechatpay", "paid", "--bill", "W1", "--amount", "800", "--stale"});
        CHECK(std::abs(std::stoll(stale.header("Wechatpay-Timestamp")) - (now_s() - 600)) < 30);
        v = verify(*keys.wechat_v3, stale, "1900000001");
        REQUIRE(!v.has_value());
        CHECK(v.error() == errc::stale_timestamp);
        // The gateway checks the window before the signature, so stale_timestamp alone does not show
        // that the signature is sound: at the time it claims, the same request must verify.
        const std::int64_t claimed = std::stoll(stale.header("Wechatpay-Timestamp"));
        v = verify(*keys.wechat_v3, stale, "1900000001", claimed);
        CHECK_MESSAGE(v.has_value(), (v ? "" : error_name(v.error())));

        for (const char* type : {"HMAC-SHA256", "MD5"}) {
            CAPTURE(type);
            RawRequest v2 =
                print(keys, {"wechatpay-v2", "paid", "--bill", "X1", "--amount", "600", "--sign-type", type});
            CHECK(v2.request_line == "POST /notify/wechatpay/1900000001/v2 HTTP/1.1");
            CHECK(contains(v2.header("Content-Type"), "xml"));
            auto pv = verify(*keys.wechat_v2, v2, "1900000001");
            REQUIRE_MESSAGE(pv.has_value(), error_name(pv.error()));
            CHECK(pv->event.total_fen == 600);
        }
        // --sign-type none: WeChat's own default, MD5 with no <sign_type> (the receiver tells the
        // algorithm by the length of the sign).
        RawRequest bare =
            print(keys, {"wechatpay-v2", "paid", "--bill", "X2", "--amount", "600", "--sign-type", "none"});
        CHECK(!contains(bare.body, "<sign_type>"));
        std::smatch sign;
        REQUIRE(std::regex_search(bare.body, sign, std::regex("<sign><!\\[CDATA\\[([^\\]]*)\\]\\]></sign>")));
        CHECK(std::regex_match(sign[1].str(), std::regex("[0-9A-F]{32}")));
        auto bv = verify(*keys.wechat_v2, bare, "1900000001");
        REQUIRE_MESSAGE(bv.has_value(), error_name(bv.error()));
        CHECK(bv->event.total_fen == 600);
        RawRequest md5 =
            print(keys, {"wechatpay-v2", "paid", "--bill", "X2", "--amount", "600", "--sign-type", "MD5"});
        CHECK(contains(md5.body, "<sign_type><![CDATA[MD5]]></sign_type>"));

        RawRequest v2_refund = print(keys, {"wechatpay-v2", "refund", "--bill", "X1", "--amount", "600"});
        auto rv = verify(*keys.wechat_v2, v2_refund, "1900000001");
        REQUIRE_MESSAGE(rv.has_value(), error_name(rv.error()));
        CHECK(rv->event.kind == EventKind::refund);
        CHECK(rv->event.refund_fen == 600);
        for (const char* event : {"paid", "refund"}) {
            CAPTURE(event);
            RawRequest t =
                print(keys, {"wechatpay-v2", event, "--bill", "X1", "--amount", "600", "--tamper"});
            CHECK(!verify(*keys.wechat_v2, t, "1900000001").has_value());
        }
    }

    TEST_CASE("listen: verifies Standard Webhooks signatures and answers as asked")
    {
        boost::asio::io_context ioc;
        const std::string secret = "whsec_" + std::string("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        std::ostringstream out;
        pcli::ListenOptions options;
        options.secrets = {secret};
        pcli::CrmListener listener(ioc, options, out);
        std::string reply;
        const std::int64_t now = now_s();

        std::map<std::string, std::string> h{
            {"webhook-id", "evt_B1_1"},
            {"webhook-timestamp", std::to_string(now)},
            {"webhook-signature", sign_event(secret, "evt_B1_1", now, kEvent)}};
        pcli::Delivery d = listener.handle("POST", "/paybridge/events", h, kEvent, reply);
        CHECK(d.verified);
        CHECK(d.answered == 200);
        CHECK(d.delivery == 1);
        CHECK(contains(out.str(),
                       "bill.paid  bill=B1 seq=1 status=PAID amount=12.34 paid=12.34 refunded=0.00"));
        CHECK(contains(out.str(), "webhook-id=evt_B1_1 -> 200"));
        d = listener.handle("POST", "/paybridge/events", h, kEvent, reply);
        CHECK(d.delivery == 2);
        CHECK(contains(out.str(), "(delivery #2)"));

        // One byte of the body changed: refused, and the reason says so.
        std::string changed = kEvent;
        changed[changed.find("1234")] = '9';
        d = listener.handle("POST", "/paybridge/events", h, changed, reply);
        CHECK(!d.verified);
        CHECK(d.answered == 401);
        CHECK(contains(d.reason, "bad signature"));
        CHECK(contains(reply, "bad signature"));

        // Signed with another secret.
        auto other = h;
        other["webhook-signature"] =
            sign_event("whsec_" + std::string("QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"), "evt_B1_1", now, kEvent);
        CHECK(listener.handle("POST", "/", other, kEvent, reply).answered == 401);

        // Stale timestamp (correctly signed).
        auto stale = h;
        stale["webhook-timestamp"] = std::to_string(now - 3600);
        stale["webhook-signature"] = sign_event(secret, "evt_B1_1", now - 3600, kEvent);
        d = listener.handle("POST", "/", stale, kEvent, reply);
        CHECK(d.answered == 401);
        CHECK(contains(d.reason, "stale"));

        // Missing headers.
        d = listener.handle("POST", "/", {}, kEvent, reply);
        CHECK(d.answered == 401);
        CHECK(contains(d.reason, "missing"));
        CHECK(listener.handle("GET", "/", h, "", reply).answered == 405);

        // An event for a bill that is not registered yet carries "bill": null.
        const std::string orphan =
            R"({"id":"evt_X_u1","type":"bill.anomaly","bill_id":"X","sequence":0,"bill":null,)"
            R"("data":{"channel":"alipay","anomaly":"unknown_bill"}})";
        auto oh = h;
        oh["webhook-id"] = "evt_X_u1";
        oh["webhook-signature"] = sign_event(secret, "evt_X_u1", now, orphan);
        CHECK(listener.handle("POST", "/", oh, orphan, reply).answered == 200);
        CHECK(
            contains(out.str(),
                     "bill.anomaly  bill=X seq=0 (bill not registered yet) via=alipay anomaly=unknown_bill"));
    }

    TEST_CASE("listen: --status and --fail-rate answer failures and --json prints one object per request")
    {
        boost::asio::io_context ioc;
        const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        const std::int64_t now = now_s();
        std::map<std::string, std::string> h{
            {"webhook-id", "evt_B1_1"},
            {"webhook-timestamp", std::to_string(now)},
            {"webhook-signature", sign_event(secret, "evt_B1_1", now, kEvent)}};
        std::string reply;
        {
            std::ostringstream out;
            pcli::ListenOptions o;
            o.secrets = {secret};
            o.status = 503;
            o.fail_status = 503;
            pcli::CrmListener l(ioc, o, out);
            CHECK(l.handle("POST", "/", h, kEvent, reply).answered == 503);
        }
        {
            std::ostringstream out;
            pcli::ListenOptions o;
            o.secrets = {secret};
            o.fail_rate = 1.0;
            pcli::CrmListener l(ioc, o, out);
            CHECK(l.handle("POST", "/", h, kEvent, reply).answered == 500);
        }
        {
            std::ostringstream out;
            pcli::ListenOptions o;
            o.secrets = {secret};
            o.fail_rate = 0.5;
            pcli::CrmListener l(ioc, o, out);
            int failures = 0;
            for (int i = 0; i < 200; ++i) {
                failures += l.handle("POST", "/", h, kEvent, reply).answered == 500 ? 1 : 0;
            }
            CHECK(failures > 50);
            CHECK(failures < 150);
        }
        {
            std::ostringstream out;
            pcli::ListenOptions o;
            o.secrets = {secret};
            o.json = true;
            pcli::CrmListener l(ioc, o, out);
            l.handle("POST", "/paybridge/events", h, kEvent, reply);
            rapidjson::Document d;
            d.Parse(out.str().c_str());
            REQUIRE(!d.HasParseError());
            CHECK(d["verified"].GetBool());
            CHECK(d["answered"].GetInt() == 200);
            CHECK(std::string(d["webhook_id"].GetString()) == "evt_B1_1");
            CHECK(std::string(d["event"]["type"].GetString()) == "bill.paid");
        }
    }

    TEST_CASE("listen: --status and --fail-rate map to the answers docs/cli.md promises")
    {
        const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        auto options = [&](std::vector<std::string> args) {
            args.insert(args.end(), {"--secret", secret, "--port", "0"});
            auto o = pcli::listen_options(args);
            REQUIRE_MESSAGE(o.has_value(), (o ? "" : o.error().message));
            return *o;
        };
        // What a run answers, over n verified events, with fail_rate's draws seeded.
        auto answers = [&](pcli::ListenOptions o, int n) {
            o.seed = 20260101;
            boost::asio::io_context ioc;
            std::ostringstream out;
            pcli::CrmListener l(ioc, o, out);
            const std::int64_t now = now_s();
            std::map<std::string, std::string> h{
                {"webhook-id", "evt_B1_1"},
                {"webhook-timestamp", std::to_string(now)},
                {"webhook-signature", sign_event(secret, "evt_B1_1", now, kEvent)}};
            std::map<int, int> seen;
            std::string reply;
            for (int i = 0; i < n; ++i) {
                ++seen[l.handle("POST", "/", h, kEvent, reply).answered];
            }
            return seen;
        };

        // A failure --status with --fail-rate: that status at random, 200 for the rest.
        pcli::ListenOptions o = options({"--status", "503", "--fail-rate", "0.3"});
        CHECK(o.status == 200);
        CHECK(o.fail_status == 503);
        CHECK(o.fail_rate == doctest::Approx(0.3));
        CHECK(pcli::describe_answers(o) == "a fraction 0.3 with 503, else 200");
        std::map<int, int> seen = answers(o, 100);
        CHECK(seen.size() == 2);
        CHECK(seen[200] > 0);
        CHECK(seen[503] > 0);

        // A 2xx --status with --fail-rate: 500 at random, that status for the rest.
        o = options({"--status", "204", "--fail-rate", "0.5"});
        CHECK(o.status == 204);
        CHECK(o.fail_status == 500);
        CHECK(pcli::describe_answers(o) == "a fraction 0.5 with 500, else 204");
        seen = answers(o, 100);
        CHECK(seen.size() == 2);
        CHECK(seen[204] > 0);
        CHECK(seen[500] > 0);

        // --fail-rate alone; --status alone; --fail-rate 1.
        o = options({"--fail-rate", "0.5"});
        CHECK((o.status == 200 && o.fail_status == 500));
        o = options({"--status", "503"});
        CHECK(pcli::describe_answers(o) == "503");
        CHECK(answers(o, 10) == std::map<int, int>{{503, 10}});
        o = options({"--status", "410", "--fail-rate", "1"});
        CHECK(answers(o, 10) == std::map<int, int>{{410, 10}});
        CHECK(pcli::describe_answers(options({})) == "200");

        // --tolerance reaches the check.
        o = options({"--tolerance", "5"});
        CHECK(o.tolerance_s == 5);
        CHECK(!pcli::listen_options({"--secret", secret, "--port", "0", "--tolerance", "0"}).has_value());

        // The same draws for the same seed: the choice is reproducible.
        o = options({"--status", "503", "--fail-rate", "0.3"});
        CHECK(answers(o, 50) == answers(o, 50));
    }

    TEST_CASE("listen: serves HTTP on a free port and stops")
    {
        boost::asio::io_context ioc;
        const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        std::ostringstream out;
        pcli::ListenOptions o;
        o.port = 0;
        o.secrets = {secret};
        pcli::CrmListener listener(ioc, o, out);
        auto port = listener.start();
        REQUIRE(port.has_value());
        std::thread runner([&ioc] { ioc.run(); });
        const std::int64_t now = now_s();
        auto ok = test::http_request(*port, "POST", "/paybridge/events", kEvent,
                                     {{"webhook-id", "evt_B1_1"},
                                      {"webhook-timestamp", std::to_string(now)},
                                      {"webhook-signature", sign_event(secret, "evt_B1_1", now, kEvent)},
                                      {"Content-Type", "application/json"}});
        auto bad = test::http_request(*port, "POST", "/paybridge/events", kEvent,
                                      {{"webhook-id", "evt_B1_1"},
                                       {"webhook-timestamp", std::to_string(now)},
                                       {"webhook-signature", "v1,AAAA"}});
        boost::asio::post(ioc, [&] {
            listener.stop();
            ioc.stop();
        });
        runner.join();
        CHECK(ok.status == 200);
        CHECK(bad.status == 401);
        CHECK(contains(bad.body, "bad signature"));
        CHECK(contains(out.str(), "bill.paid"));
        CHECK(contains(out.str(), "REJECTED"));

        // The port is now free again: a second listener can take it; a busy port is a local error.
        boost::asio::io_context ioc2;
        o.port = *port;
        pcli::CrmListener first(ioc2, o, out);
        REQUIRE(first.start().has_value());
        pcli::CrmListener second(ioc2, o, out);
        auto busy = second.start();
        REQUIRE(!busy.has_value());
        CHECK(busy.error().exit == pcli::Exit::local);
        CHECK(contains(busy.error().message, "pick another --port"));
    }

    TEST_CASE("trigger --url BASE/path: the notification goes under the path, like the API calls")
    {
        DevKeys keys;
        struct Case {
            std::vector<std::string> args;
            std::string base;
            std::string line;
        };
        for (const Case& tc : std::vector<Case>{
                 {{"alipay", "paid"}, "http://127.0.0.1:1/pfx", "POST /pfx/notify/alipay HTTP/1.1"},
                 {{"alipay", "paid"}, "http://127.0.0.1:1/pfx/", "POST /pfx/notify/alipay HTTP/1.1"},
                 {{"wechatpay", "paid"}, "http://127.0.0.1:1/a/b", "POST /a/b/notify/wechatpay/1900000001 HTTP/1.1"},
                 {{"wechatpay-v2", "paid"}, "http://127.0.0.1:1/pfx",
                  "POST /pfx/notify/wechatpay/1900000001/v2 HTTP/1.1"},
                 {{"alipay", "paid"}, "http://127.0.0.1:1", "POST /notify/alipay HTTP/1.1"},
             }) {
            CAPTURE(tc.base);
            std::vector<std::string> args{"trigger"};
            args.insert(args.end(), tc.args.begin(), tc.args.end());
            args.insert(args.end(), {"--bill", "B1", "--amount", "1", "--print", "--url", tc.base, "--config",
                                     keys.config.string()});
            Captured c = run_cli(args);
            REQUIRE_MESSAGE(c.code == 0, c.err);
            CHECK(parse_raw(c.out).request_line == tc.line);
        }

        // And it is sent there: a receiver sees the prefixed path.
        test::HttpReceiver receiver({});
        receiver.set_response_body("success");
        Captured sent = run_cli({"trigger", "alipay", "paid", "--bill", "B1", "--amount", "1", "--url",
                                 receiver.url("/pfx"), "--config", keys.config.string()});
        CHECK_MESSAGE(sent.code == 0, sent.err);
        REQUIRE(receiver.count() == 1);
        CHECK(receiver.requests().front().target == "/pfx/notify/alipay");
    }

    TEST_CASE("trigger: acknowledged means what the provider requires, not just a 2xx")
    {
        DevKeys keys;
        test::HttpReceiver receiver({});
        auto send = [&](const char* provider) {
            return run_cli({"trigger", provider, "paid", "--bill", "B1", "--amount", "100", "--url",
                            receiver.url(""), "--config", keys.config.string()});
        };
        // Alipay resends unless the body is exactly "success" (PROTOCOLS.md §1.7).
        receiver.set_response_body("fail");
        Captured c = send("alipay");
        CHECK(c.code == 1);
        CHECK(contains(c.err, "did not acknowledge"));
        CHECK(contains(c.err, "\"success\""));
        receiver.set_response_body("success\n");
        CHECK(send("alipay").code == 1);
        receiver.set_response_body("success");
        c = send("alipay");
        CHECK_MESSAGE(c.code == 0, c.err);

        // WeChat Pay v2 resends unless return_code is SUCCESS (§3.4).
        receiver.set_response_body("<xml><return_code><![CDATA[FAIL]]></return_code>"
                                   "<return_msg><![CDATA[busy]]></return_msg></xml>");
        c = send("wechatpay-v2");
        CHECK(c.code == 1);
        CHECK(contains(c.err, "return_code SUCCESS"));
        receiver.set_response_body("success");
        CHECK(send("wechatpay-v2").code == 1);
        receiver.set_response_body("<xml><return_code><![CDATA[SUCCESS]]></return_code>"
                                   "<return_msg><![CDATA[OK]]></return_msg></xml>");
        c = send("wechatpay-v2");
        CHECK_MESSAGE(c.code == 0, c.err);

        // WeChat Pay v3: only the status decides, 200 or 204 (§2.10), whatever the body says.
        receiver.set_response_body(R"({"code":"FAIL","message":"x"})");
        c = send("wechatpay");
        CHECK_MESSAGE(c.code == 0, c.err);
        receiver.set_default_status(202);
        c = send("wechatpay");
        CHECK(c.code == 1);
        CHECK(contains(c.err, "200 or 204"));
    }

    TEST_CASE("trigger: a configuration without the provider's account is a configuration problem (exit 4)")
    {
        DevKeys keys;
        const auto no_alipay = edited_config(keys, "no-alipay.json", [](rapidjson::Document& d) {
            d.RemoveMember("alipay");
        });
        Captured c = run_cli({"trigger", "alipay", "paid", "--bill", "B1", "--amount", "1", "--print",
                              "--config", no_alipay.string()});
        CHECK(c.code == 4);
        CHECK(contains(c.err, no_alipay.string()));
        CHECK(contains(c.err, "configures no Alipay app"));

        const auto no_wechat = edited_config(keys, "no-wechat.json", [](rapidjson::Document& d) {
            d["wechatpay"]["merchants"].Clear();
        });
        c = run_cli({"trigger", "wechatpay", "paid", "--bill", "B1", "--amount", "1", "--print", "--config",
                     no_wechat.string()});
        CHECK(c.code == 4);
        CHECK(contains(c.err, "configures no WeChat Pay merchant"));

        // A wrong --account stays a usage error.
        c = run_cli({"trigger", "alipay", "paid", "--bill", "B1", "--amount", "1", "--print", "--account", "nope",
                     "--config", keys.config.string()});
        CHECK(c.code == 2);
    }

    TEST_CASE("listen: a malformed crm.secret in the configuration is a configuration problem (exit 4)")
    {
        DevKeys keys;
        keys.tmp.write("keys/bad_secret", "not-a-secret\n");
        const auto bad = edited_config(keys, "bad-secret.json", [](rapidjson::Document& d) {
            d["crm"]["secret"].SetString("file:keys/bad_secret");
        });
        Captured c = run_cli({"listen", "--port", "0", "--config", bad.string()});
        CHECK(c.code == 4);
        CHECK(contains(c.err, bad.string()));
        CHECK(contains(c.err, "file:keys/bad_secret"));
        CHECK(!contains(c.err, "not-a-secret"));  // never print a secret, even a broken one
        CHECK(!contains(c.err, "copy it from the crm_secret file"));
    }

    TEST_CASE("listen: --status 204 and 304 are answered, with no body")
    {
        const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for (int status : {204, 304}) {
            CAPTURE(status);
            boost::asio::io_context ioc;
            std::ostringstream out;
            std::ostringstream err;
            pcli::ListenOptions o;
            o.port = 0;
            o.secrets = {secret};
            o.status = status;
            o.fail_status = status;
            pcli::CrmListener listener(ioc, o, out);
            auto port = listener.start();
            REQUIRE(port.has_value());
            std::thread runner([&ioc] { ioc.run(); });
            const test::HttpResult res = post_event(*port, secret);
            boost::asio::post(ioc, [&] {
                listener.stop();
                ioc.stop();
            });
            runner.join();
            CHECK_MESSAGE(res.status == status, res.error);
            CHECK(res.body.empty());
            CHECK(contains(out.str(), "-> " + std::to_string(status)));
        }
    }

    TEST_CASE("URLs and tables")
    {
        auto u = pcli::parse_url("http://127.0.0.1:8080/base");
        REQUIRE(u.has_value());
        CHECK(u->host == "127.0.0.1");
        CHECK(u->port == 8080);
        CHECK(pcli::with_target(*u, "/v1/bills").target == "/base/v1/bills");
        u = pcli::parse_url("https://[::1]/");
        REQUIRE(u.has_value());
        CHECK(u->tls);
        CHECK(u->host == "::1");
        CHECK(u->port == 443);
        CHECK(u->origin() == "https://[::1]:443");
        for (const char* bad :
             {"ftp://x", "http://", "http://h:0", "http://h:99999", "http://u@h/", "http://h:x"}) {
            CAPTURE(bad);
            CHECK(!pcli::parse_url(bad).has_value());
        }

        CHECK(pcli::display_width("abc") == 3);
        CHECK(pcli::display_width("客户") == 4);
        CHECK(pcli::display_width("é") == 1);
        pcli::Table t({"ID", "CUSTOMER", "X"});
        t.add({"B1", "客户", ""});
        t.add({"B22", "c", "y"});
        std::ostringstream out;
        t.print(out);
        CHECK(out.str() == "ID   CUSTOMER  X\nB1   客户      -\nB22  c         y\n");
    }
}
