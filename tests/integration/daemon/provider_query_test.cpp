// Active queries end to end: the real paybridged and redis-server, and fake Alipay and WeChat Pay
// APIs on loopback that check each query's signature as the providers do and answer with signed
// answers made by the provider-side simulators. A payment whose notification never came is found
// and applied once (the late notification is then a repeat); an unpaid bill is left alone; a
// forged or unsigned answer, an amount that differs and a provider that is down change nothing
// but what they should.

#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/json.hpp"
#include "tests/support/process.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

using namespace paybridge;
using namespace paybridge::test;
namespace alipay = paybridge::gateways::alipay;
namespace wx = paybridge::gateways::wechatpay::sim;
using namespace std::chrono_literals;

namespace {

constexpr const char* kMerchantSerial = "3775B6A45ACD588826D15E583A95F5DD";

std::int64_t now_unix()
{
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void write_secret(const std::filesystem::path& path, const std::string& content)
{
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << content;
    ::chmod(path.c_str(), 0600);
}

/// What the fake providers know about each bill. Unlisted bills are unknown to both.
struct Trade {
    std::int64_t fen{0};
    std::string id;  ///< trade_no / transaction_id
    std::string state{"paid"};  ///< "paid", "unpaid", "forged" (signed with a key that is not the provider's), "unsigned"
};

/// Fake Alipay gateway + fake WeChat Pay API, and the daemon configured to query them.
struct QueryWorld {
    // Declared (so destroyed) in this order: what the fakes' handlers read, the fakes (their
    // threads end with them), then the daemon, which stops first and so asks nothing more.
    std::mutex mu;
    std::map<std::string, Trade> alipay_trades;
    std::map<std::string, Trade> wechat_trades;
    std::atomic<int> alipay_refused{0};  ///< queries the fake Alipay refused (bad signature, wrong app)
    std::atomic<int> wechat_refused{0};
    keygen::KeyPair app_keys = keygen::generate_rsa();       ///< the Alipay app's own key pair
    keygen::KeyPair merchant_keys = keygen::generate_rsa();  ///< the WeChat Pay merchant API key pair
    keygen::KeyPair stranger = keygen::generate_rsa();       ///< forges answers
    // The providers' own private keys, copied from the fixture for the handlers.
    std::string alipay_private_pem;
    std::string wechat_private_pem;
    HttpReceiver alipay_gw{HttpReceiverOptions{}};
    HttpReceiver wechat_api{HttpReceiverOptions{}};
    std::unique_ptr<DaemonFixture> fx;

    explicit QueryWorld(std::string query_json = R"({"after_s": 1, "until_s": 600, "max_gap_s": 1, "interval_s": 1})")
    {
        DaemonOptions opts;
        opts.workers = 1;
        opts.start = false;
        opts.alipay_app_extra = R"(, "app_private_key": "file:keys/app_private.pem", "gateway_url": ")" +
                                alipay_gw.url("/gateway.do") + "\"";
        opts.wechat_merchant_extra = R"(, "merchant_private_key": "file:keys/merchant_private.pem", "merchant_serial_no": ")" +
                                     std::string(kMerchantSerial) + R"(", "api_url": ")" + wechat_api.url("") + "\"";
        opts.extra_config = "\"provider_query\": " + query_json;
        fx = std::make_unique<DaemonFixture>(opts);
        alipay_private_pem = fx->alipay_keys.private_pem;
        wechat_private_pem = fx->wechat_public_keys.private_pem;
        write_secret(fx->dir() / "keys/app_private.pem", app_keys.private_pem);
        write_secret(fx->dir() / "keys/merchant_private.pem", merchant_keys.private_pem);
        serve_alipay();
        serve_wechat();
        fx->start();
    }

    void serve_alipay()
    {
        alipay_gw.set_handler([this](const ReceivedRequest& req) {
            const crypto::SharedKey app_public = *crypto::load_public_key(app_keys.public_pem);
            const crypto::SharedKey alipay_private = *crypto::load_private_key(alipay_private_pem);
            const crypto::SharedKey forger = *crypto::load_private_key(stranger.private_pem);
            ScriptedResponse r;
            r.content_type = "application/json;charset=utf-8";
            alipay::AnswerSigner signer{.alipay_private_key = alipay_private.get()};
            std::string problem;
            alipay::TradeQueryCheck check;
            check.app_id = DaemonFixture::kAlipayAppId;
            Result<std::string> bill = alipay::check_trade_query_request(req.target, req.body, app_public.get(), check, &problem);
            std::lock_guard lock(mu);
            if (!bill) {
                ++alipay_refused;
                r.body = alipay::make_trade_query_error("40002", "Invalid Arguments", "isv.invalid-signature", problem,
                                                        signer);
                return r;
            }
            const auto found = alipay_trades.find(*bill);
            if (found == alipay_trades.end()) {
                r.body = alipay::make_trade_not_exist_answer(*bill, signer);
                return r;
            }
            const Trade& t = found->second;
            alipay::QueriedTrade trade;
            trade.out_trade_no = *bill;
            trade.amount_fen = t.fen;
            trade.trade_no = t.id;
            trade.trade_status = t.state == "unpaid" ? "WAIT_BUYER_PAY" : "TRADE_SUCCESS";
            if (t.state == "forged") {
                signer.alipay_private_key = forger.get();
            } else if (t.state == "unsigned") {
                signer.alipay_private_key = nullptr;
            }
            r.body = alipay::make_trade_query_answer(trade, signer);
            return r;
        });
    }

    void serve_wechat()
    {
        wechat_api.set_handler([this](const ReceivedRequest& req) {
            const std::vector<wx::V3ApiMerchant> merchants{
                {DaemonFixture::kMchId, kMerchantSerial, *crypto::load_public_key(merchant_keys.public_pem)}};
            wx::V3Signer signer{*crypto::load_private_key(wechat_private_pem), DaemonFixture::kPublicKeyId};
            gateways::QueryRequest asked_for{req.method, req.target, req.headers, req.body};
            Result<wx::V3QueryAsked> asked = wx::check_v3_query_request(asked_for, merchants, now_unix());
            gateways::QueryResponse answer;
            std::lock_guard lock(mu);
            if (!asked) {
                ++wechat_refused;
                answer = wx::make_v3_error_response(401, "SIGN_ERROR", "signature does not verify");
            } else if (const auto found = wechat_trades.find(asked->out_trade_no); found == wechat_trades.end()) {
                answer = *wx::make_v3_order_not_exist(signer);
            } else {
                const Trade& t = found->second;
                wx::V3Transaction tx;
                tx.mchid = DaemonFixture::kMchId;
                tx.appid = DaemonFixture::kAppId;
                tx.out_trade_no = asked->out_trade_no;
                tx.transaction_id = t.id;
                tx.total_fen = t.fen;
                tx.trade_state = t.state == "unpaid" ? "NOTPAY" : "SUCCESS";
                if (t.state == "forged") {
                    signer.private_key = *crypto::load_private_key(stranger.private_pem);
                }
                answer = *wx::make_v3_query_response(tx, signer);
            }
            ScriptedResponse r;
            r.status = answer.status;
            r.headers = answer.headers;
            r.body = answer.body;
            r.content_type = "";  // among the headers
            return r;
        });
    }

    std::string status_of(const std::string& bill)
    {
        const HttpResult r = fx->get_bill(bill);
        REQUIRE_MESSAGE(r.status == 200, r.body);
        return parse_json(r.body)["status"].GetString();
    }
    bool wait_status(const std::string& bill, const std::string& status, std::chrono::seconds limit = 30s)
    {
        return wait_until([&] { return status_of(bill) == status; }, limit);
    }
    /// Queries the fake answered for `bill` so far.
    std::size_t asked(HttpReceiver& provider, const std::string& bill)
    {
        std::size_t n = 0;
        for (const ReceivedRequest& r : provider.requests()) {
            if (r.target.find(bill) != std::string::npos || r.body.find(bill) != std::string::npos) {
                ++n;
            }
        }
        return n;
    }
    std::string metrics() { return http_request(fx->port(), "GET", "/metrics").body; }
};

}  // namespace

TEST_CASE("provider query - a payment whose notification never came is found at Alipay and applied once")
{
    QueryWorld w;
    {
        std::lock_guard lock(w.mu);
        w.alipay_trades["PQ-A1"] = Trade{.fen = 1000, .id = "2026120522001400000001"};
    }
    REQUIRE(w.fx->create_bill("PQ-A1", 1000).status == 201);
    REQUIRE_MESSAGE(w.wait_status("PQ-A1", "PAID"), w.fx->log());

    const HttpResult got = w.fx->get_bill("PQ-A1");
    rapidjson::Document bill = parse_json(got.body);
    CHECK(std::string(bill["provider"].GetString()) == "alipay");
    CHECK(std::string(bill["provider_txn_id"].GetString()) == "2026120522001400000001");
    CHECK(bill["paid_fen"].GetInt64() == 1000);
    REQUIRE(bill["events"].Size() == 1);
    const rapidjson::Value& data = bill["events"][0]["data"];
    CHECK(std::string(data["channel"].GetString()) == "alipay_query");
    CHECK(std::string(data["notification_id"].GetString()) == "query:2026120522001400000001");
    CHECK(w.fx->outbox_length() == 1);
    // Logged by the query thread after its write: wait for the line rather than race it.
    CHECK(wait_until([&] { return w.fx->log().find("\"event\":\"query.payment_found\"") != std::string::npos; }, 10s));
    CHECK(w.alipay_refused == 0);  // every query was signed as Alipay checks it

    // The notification arrives after all: acknowledged, and a repeat of the same transaction.
    alipay::NoticeSpec spec;
    spec.app_id = DaemonFixture::kAlipayAppId;
    spec.seller_id = DaemonFixture::kSellerId;
    spec.out_trade_no = "PQ-A1";
    spec.amount_fen = 1000;
    spec.trade_no = "2026120522001400000001";
    const crypto::SharedKey alipay_key = *crypto::load_private_key(w.fx->alipay_keys.private_pem);
    const HttpResult late = w.fx->post_alipay(alipay::build_alipay_body(alipay::make_paid_notice(spec), alipay_key.get()));
    CHECK(late.status == 200);
    CHECK(late.body == "success");
    rapidjson::Document after = parse_json(w.fx->get_bill("PQ-A1").body);
    CHECK(after["version"].GetInt64() == bill["version"].GetInt64());
    CHECK(after["events"].Size() == 1);
    CHECK(w.fx->outbox_length() == 1);

    // A paid bill leaves the queue: no more queries about it.
    const std::size_t asked_then = w.asked(w.alipay_gw, "PQ-A1");
    std::this_thread::sleep_for(3s);
    CHECK(w.asked(w.alipay_gw, "PQ-A1") == asked_then);
    CHECK(wait_until(
        [&] {
            return w.metrics().find("paybridge_provider_query_payments_total{provider=\"alipay\",outcome=\"applied\"} 1") !=
                   std::string::npos;
        },
        10s));
}

TEST_CASE("provider query - a WeChat Pay payment is found and an unpaid bill is asked about again and left alone")
{
    QueryWorld w;
    {
        std::lock_guard lock(w.mu);
        w.wechat_trades["PQ-W1"] = Trade{.fen = 2500, .id = "4200000000202612050000000001"};
        w.alipay_trades["PQ-OPEN"] = Trade{.fen = 700, .id = "2026120522001400000002", .state = "unpaid"};
    }
    REQUIRE(w.fx->create_bill("PQ-W1", 2500).status == 201);
    REQUIRE(w.fx->create_bill("PQ-OPEN", 700).status == 201);
    REQUIRE_MESSAGE(w.wait_status("PQ-W1", "PAID"), w.fx->log());
    rapidjson::Document bill = parse_json(w.fx->get_bill("PQ-W1").body);
    CHECK(std::string(bill["provider"].GetString()) == "wechatpay");
    CHECK(std::string(bill["provider_txn_id"].GetString()) == "4200000000202612050000000001");
    CHECK(std::string(bill["events"][0]["data"]["channel"].GetString()) == "wechatpay_query");
    CHECK(w.wechat_refused == 0);

    // The open bill: asked about at both providers, again and again, and still PENDING.
    REQUIRE(wait_until([&] { return w.asked(w.alipay_gw, "PQ-OPEN") >= 2 && w.asked(w.wechat_api, "PQ-OPEN") >= 2; }, 30s));
    CHECK(w.status_of("PQ-OPEN") == "PENDING");
    CHECK(parse_json(w.fx->get_bill("PQ-OPEN").body)["events"].Size() == 0);
    const std::string m = w.metrics();
    CHECK(m.find("paybridge_provider_queries_total{provider=\"alipay\",result=\"unpaid\"}") != std::string::npos);
    CHECK(m.find("paybridge_provider_queries_total{provider=\"wechatpay\",result=\"not_found\"}") != std::string::npos);

    // Paid at last: the next query finds it.
    {
        std::lock_guard lock(w.mu);
        w.alipay_trades["PQ-OPEN"].state = "paid";
    }
    REQUIRE_MESSAGE(w.wait_status("PQ-OPEN", "PAID"), w.fx->log());
}

TEST_CASE("provider query - forged and unsigned answers and a different amount apply nothing but the anomaly")
{
    QueryWorld w;
    {
        std::lock_guard lock(w.mu);
        w.alipay_trades["PQ-FORGED"] = Trade{.fen = 1000, .id = "2026120522001400000003", .state = "forged"};
        w.alipay_trades["PQ-UNSIGNED"] = Trade{.fen = 1000, .id = "2026120522001400000004", .state = "unsigned"};
        w.wechat_trades["PQ-WFORGED"] = Trade{.fen = 1000, .id = "4200000000202612050000000002", .state = "forged"};
        w.alipay_trades["PQ-AMOUNT"] = Trade{.fen = 999, .id = "2026120522001400000005"};
    }
    for (const char* id : {"PQ-FORGED", "PQ-UNSIGNED", "PQ-WFORGED", "PQ-AMOUNT"}) {
        REQUIRE(w.fx->create_bill(id, 1000).status == 201);
    }
    // Each is asked about more than once (a forged answer is no answer), and the anomaly is there.
    REQUIRE(wait_until(
        [&] {
            return w.asked(w.alipay_gw, "PQ-FORGED") >= 2 && w.asked(w.alipay_gw, "PQ-UNSIGNED") >= 2 &&
                   w.asked(w.wechat_api, "PQ-WFORGED") >= 2 && w.asked(w.alipay_gw, "PQ-AMOUNT") >= 2;
        },
        30s));
    for (const char* id : {"PQ-FORGED", "PQ-UNSIGNED", "PQ-WFORGED", "PQ-AMOUNT"}) {
        CAPTURE(id);
        CHECK(w.status_of(id) == "PENDING");
    }
    for (const char* id : {"PQ-FORGED", "PQ-UNSIGNED", "PQ-WFORGED"}) {
        CAPTURE(id);
        CHECK(parse_json(w.fx->get_bill(id).body)["events"].Size() == 0);
    }
    // The different amount: one amount_mismatch anomaly, however often the answer repeats it.
    rapidjson::Document amount = parse_json(w.fx->get_bill("PQ-AMOUNT").body);
    REQUIRE(amount["events"].Size() == 1);
    CHECK(std::string(amount["events"][0]["type"].GetString()) == "bill.anomaly");
    const std::string m = w.metrics();
    CHECK(m.find("paybridge_provider_queries_total{provider=\"alipay\",result=\"bad_signature\"}") != std::string::npos);
    CHECK(m.find("paybridge_provider_queries_total{provider=\"wechatpay\",result=\"bad_signature\"}") != std::string::npos);
    const std::string log = w.fx->log();
    CHECK(log.find("\"event\":\"query.failed\"") != std::string::npos);
    // Nothing of a buyer is logged.
    CHECK(log.find("buyer_logon_id") == std::string::npos);
    CHECK(log.find("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o") == std::string::npos);
}

TEST_CASE("provider query - a provider that is down is asked again once it is back")
{
    QueryWorld w;
    {
        std::lock_guard lock(w.mu);
        w.alipay_trades["PQ-DOWN"] = Trade{.fen = 1200, .id = "2026120522001400000006"};
    }
    w.alipay_gw.stop();
    REQUIRE(w.fx->create_bill("PQ-DOWN", 1200).status == 201);
    REQUIRE(wait_until([&] { return w.metrics().find("result=\"provider_unavailable\"") != std::string::npos; }, 30s));
    CHECK(w.status_of("PQ-DOWN") == "PENDING");
    REQUIRE(w.alipay_gw.start());
    REQUIRE_MESSAGE(w.wait_status("PQ-DOWN", "PAID"), w.fx->log());
    CHECK(parse_json(w.fx->get_bill("PQ-DOWN").body)["events"].Size() == 1);
}

TEST_CASE("provider query - --check loads the query keys and names a bad one")
{
    DaemonOptions opts;
    opts.start = false;
    opts.alipay_app_extra = R"(, "app_private_key": "file:keys/app_private.pem")";
    opts.wechat_merchant_extra = R"(, "merchant_private_key": "file:keys/merchant_private.pem", "merchant_serial_no": ")" +
                                 std::string(kMerchantSerial) + "\"";
    opts.extra_config = R"("provider_query": {})";
    DaemonFixture fx(opts);
    write_secret(fx.dir() / "keys/app_private.pem", keygen::generate_rsa().private_pem);
    write_secret(fx.dir() / "keys/merchant_private.pem", fx.wechat_public_keys.public_pem);  // the public half by mistake
    std::string out;
    const std::vector<std::string> check{DaemonFixture::binary("paybridged"), "--config", fx.config_path().string(),
                                         "--check"};
    CHECK(run_command(check, out) == 78);
    CHECK_MESSAGE(out.find("/wechatpay/merchants/0/merchant_private_key: not a PEM private key") != std::string::npos, out);

    write_secret(fx.dir() / "keys/merchant_private.pem", keygen::generate_rsa().private_pem);
    CHECK_MESSAGE(run_command(check, out) == 0, out);
}

TEST_CASE("provider query - two instances on one Redis share the sweeps and apply each payment found once")
{
    QueryWorld w;
    // A second paybridged: the same configuration on another port, the same Redis and providers.
    std::string cfg;
    {
        std::ifstream in(w.fx->config_path());
        std::ostringstream text;
        text << in.rdbuf();
        cfg = text.str();
    }
    const std::string own = "\"listen\": \"127.0.0.1:" + std::to_string(w.fx->port()) + "\"";
    const std::size_t at = cfg.find(own);
    REQUIRE(at != std::string::npos);
    cfg.replace(at, own.size(), "\"listen\": \"127.0.0.1:" + std::to_string(free_port()) + "\"");
    std::ofstream(w.fx->dir() / "second.json") << cfg;
    Process second({DaemonFixture::binary("paybridged"), "--config", (w.fx->dir() / "second.json").string()},
                   w.fx->dir() / "second.log");
    REQUIRE(wait_until([&] { return second.log().find("\"event\":\"query.started\"") != std::string::npos; }, 30s));

    std::vector<std::string> bills;
    {
        std::lock_guard lock(w.mu);
        for (int i = 0; i < 8; ++i) {
            const std::string id = "PQ-TWO-" + std::to_string(i);
            bills.push_back(id);
            if (i % 2 == 0) {
                w.alipay_trades[id] = Trade{.fen = 100 + i, .id = "20261205220014000001" + std::to_string(10 + i)};
            } else {
                w.wechat_trades[id] = Trade{.fen = 100 + i, .id = "42000000002026120500001" + std::to_string(10 + i)};
            }
        }
    }
    for (std::size_t i = 0; i < bills.size(); ++i) {
        REQUIRE(w.fx->create_bill(bills[i], 100 + static_cast<std::int64_t>(i)).status == 201);
    }
    for (const std::string& id : bills) {
        CAPTURE(id);
        REQUIRE_MESSAGE(w.wait_status(id, "PAID"), w.fx->log() << second.log());
        CHECK(parse_json(w.fx->get_bill(id).body)["events"].Size() == 1);
    }
    CHECK(w.fx->outbox_length() == 8);
    // Each payment was found (applied) by exactly one of them; a second find would be a repeat.
    const auto found = [](const std::string& log) {
        std::size_t n = 0;
        for (std::size_t p = log.find("\"event\":\"query.payment_found\""); p != std::string::npos;
             p = log.find("\"event\":\"query.payment_found\"", p + 1)) {
            ++n;
        }
        return n;
    };
    CHECK(wait_until([&] { return found(w.fx->log()) + found(second.log()) >= 8; }, 10s));
    CHECK(found(w.fx->log()) + found(second.log()) == 8);
    CHECK(second.stop(SIGTERM, 15s) == 0);
}

TEST_CASE("provider query - a CLOSED bill paid through the other provider becomes PAID with paid_after_close")
{
    QueryWorld w;
    {
        std::lock_guard lock(w.mu);
        w.wechat_trades["PQ-CLOSED"] = Trade{.fen = 800, .id = "4200000000202612050000000099"};
    }
    REQUIRE(w.fx->create_bill("PQ-CLOSED", 800).status == 201);
    // Alipay closed its (unpaid) trade for the bill: the notification came, the bill is CLOSED.
    alipay::NoticeSpec spec;
    spec.app_id = DaemonFixture::kAlipayAppId;
    spec.seller_id = DaemonFixture::kSellerId;
    spec.out_trade_no = "PQ-CLOSED";
    spec.amount_fen = 800;
    spec.trade_no = "2026120522001400000099";
    const crypto::SharedKey alipay_key = *crypto::load_private_key(w.alipay_private_pem);
    REQUIRE(w.fx->post_alipay(alipay::build_alipay_body(alipay::make_closed_notice(spec), alipay_key.get())).body ==
            "success");
    // The customer paid with WeChat Pay, whose notification never came: the query finds it.
    REQUIRE_MESSAGE(w.wait_status("PQ-CLOSED", "PAID"), w.fx->log());
    rapidjson::Document bill = parse_json(w.fx->get_bill("PQ-CLOSED").body);
    CHECK(std::string(bill["provider"].GetString()) == "wechatpay");
    const rapidjson::Value& events = bill["events"];
    REQUIRE(events.Size() == 2);
    CHECK(std::string(events[1]["type"].GetString()) == "bill.paid");
    CHECK(std::string(events[1]["data"]["anomaly"].GetString()) == "paid_after_close");
    CHECK(std::string(events[1]["data"]["channel"].GetString()) == "wechatpay_query");
}

TEST_CASE("provider query - a provider that hangs holds up neither the other's payments nor the shutdown")
{
    QueryWorld w(R"({"after_s": 1, "until_s": 600, "max_gap_s": 1, "interval_s": 1, "concurrency": 1, "timeout_ms": 25000})");
    w.wechat_api.set_response_delay(60s);
    {
        std::lock_guard lock(w.mu);
        w.alipay_trades["PQ-HANG-2"] = Trade{.fen = 500, .id = "2026120522001400000077"};
    }
    // The first bill is asked about first: WeChat Pay does not answer it for the query's whole
    // timeout. Asking the providers one after the other, the second bill would wait that long.
    REQUIRE(w.fx->create_bill("PQ-HANG-1", 400).status == 201);
    REQUIRE(w.fx->create_bill("PQ-HANG-2", 500).status == 201);
    REQUIRE(wait_until([&] { return w.asked(w.wechat_api, "PQ-HANG-1") >= 1; }, 20s));
    CHECK_MESSAGE(w.wait_status("PQ-HANG-2", "PAID", 12s), w.fx->log());

    // Stopping with a WeChat Pay query in flight: it is cut off, not waited for (no forced stop).
    CHECK(w.fx->stop() == 0);
    CHECK_MESSAGE(w.fx->log().find("daemon.forced_stop") == std::string::npos, w.fx->log());
}

TEST_CASE("provider query - POST /v1/bills/{id}/query asks the providers at the next sweep")
{
    // Bills are due only an hour after registration: nothing is asked unless the CRM asks.
    QueryWorld w(R"({"after_s": 3600, "until_s": 7200, "max_gap_s": 60, "interval_s": 1})");
    {
        std::lock_guard lock(w.mu);
        w.alipay_trades["PQ-NOW"] = Trade{.fen = 1500, .id = "2026120522001400000055"};
    }
    REQUIRE(w.fx->create_bill("PQ-NOW", 1500).status == 201);
    CHECK(w.asked(w.alipay_gw, "PQ-NOW") == 0);

    const HttpResult queued = w.fx->api("POST", "/v1/bills/PQ-NOW/query");
    REQUIRE_MESSAGE(queued.status == 202, queued.body);
    rapidjson::Document answer = parse_json(queued.body);
    CHECK(std::string(answer["bill_id"].GetString()) == "PQ-NOW");
    CHECK(std::string(answer["status"].GetString()) == "PENDING");
    CHECK(std::string(answer["query"].GetString()) == "due");
    CHECK(answer["interval_s"].GetInt64() == 1);
    REQUIRE_MESSAGE(w.wait_status("PQ-NOW", "PAID"), w.fx->log());
    CHECK(w.asked(w.alipay_gw, "PQ-NOW") >= 1);
    CHECK(w.asked(w.wechat_api, "PQ-NOW") <= 1);

    // Settled: nothing to ask.
    const HttpResult settled = w.fx->api("POST", "/v1/bills/PQ-NOW/query");
    CHECK(settled.status == 409);
    CHECK(std::string(parse_json(settled.body)["error"]["code"].GetString()) == "conflict");
    CHECK(w.fx->api("POST", "/v1/bills/PQ-NOBODY/query").status == 404);
    // A bill may be called "query": /v1/bills/query is that bill, not an action.
    CHECK(w.fx->create_bill("query", 100).status == 201);
    CHECK(w.fx->api("GET", "/v1/bills/query").status == 200);
    CHECK(w.fx->api("POST", "/v1/bills/query/query").status == 202);
    CHECK(w.fx->api("POST", "/v1/bills//query").status == 405);
    CHECK(w.fx->api("POST", "/v1/bills/bad%20id/query").status == 400);
    const HttpResult get = w.fx->api("GET", "/v1/bills/PQ-NOW/query");
    CHECK(get.status == 405);
    CHECK(get.header("allow") == "POST");
}

TEST_CASE("provider query - POST /v1/bills/{id}/query without provider_query is a conflict")
{
    DaemonFixture fx;
    REQUIRE(fx.create_bill("PQ-OFF", 100).status == 201);
    const HttpResult r = fx.api("POST", "/v1/bills/PQ-OFF/query");
    CHECK(r.status == 409);
    CHECK_MESSAGE(r.body.find("active queries are off") != std::string::npos, r.body);
}
