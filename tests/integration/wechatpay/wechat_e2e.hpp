#pragma once

// Helpers for the WeChat Pay end-to-end tests (issue 3): "WeChat Pay" signs with the private keys
// DaemonFixture generated (the public key PUB_KEY_ID_… and the platform certificate), the
// provider simulator builds the wire bytes, and everything goes over HTTP to the real paybridged.

#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/json.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace wxe2e {

namespace sim = paybridge::gateways::wechatpay::sim;
namespace wx = paybridge::gateways::wechatpay;
namespace crypto = paybridge::crypto;
using paybridge::test::DaemonFixture;
using paybridge::test::HttpResult;
using paybridge::test::parse_json;

/// Serial of the fixture's platform certificate as WeChat sends it (the fixture issues it as
/// 05157F…; the header carries it without the leading zero, as the Java SDK prints it).
inline constexpr const char* kPlatformSerial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";

inline std::int64_t now_unix()
{
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

inline std::string str(const rapidjson::Value& v, const char* name)
{
    REQUIRE_MESSAGE(v.HasMember(name), name);
    if (v[name].IsNull()) {
        return "null";
    }
    REQUIRE_MESSAGE(v[name].IsString(), name);
    return v[name].GetString();
}

/// GET /v1/bills/{id}: must exist.
inline rapidjson::Document bill_of(DaemonFixture& fx, const std::string& id)
{
    auto r = fx.get_bill(id);
    REQUIRE_MESSAGE(r.status == 200, (id + ": " + r.body));
    return parse_json(r.body);
}

inline std::string status_of(DaemonFixture& fx, const std::string& id) { return str(bill_of(fx, id), "status"); }

inline std::size_t events_of(DaemonFixture& fx, const std::string& id)
{
    return bill_of(fx, id)["events"].Size();
}

/// The event types of a bill's history, oldest first.
inline std::vector<std::string> event_types(DaemonFixture& fx, const std::string& id)
{
    auto bill = bill_of(fx, id);
    std::vector<std::string> out;
    for (const auto& e : bill["events"].GetArray()) {
        out.emplace_back(e["type"].GetString());
    }
    return out;
}

/// Kinds of every recorded anomaly for `bill_id`.
inline std::vector<std::string> anomalies_of(DaemonFixture& fx, const std::string& bill_id)
{
    auto r = fx.api("GET", "/v1/anomalies?limit=100");
    REQUIRE_MESSAGE(r.status == 200, r.body);
    auto d = parse_json(r.body);
    std::vector<std::string> kinds;
    for (const auto& a : d["anomalies"].GetArray()) {
        if (str(a, "bill_id") == bill_id) {
            kinds.emplace_back(a["kind"].GetString());
        }
    }
    return kinds;
}

/// A v3 failure reply: JSON {"code":"FAIL","message":"<non-empty>"}.
inline void check_v3_fail(const HttpResult& r, int status)
{
    CHECK(r.status == status);
    CHECK(r.header("content-type").starts_with("application/json"));
    auto d = parse_json(r.body);
    CHECK(str(d, "code") == "FAIL");
    CHECK(!str(d, "message").empty());
}

/// A v2 failure reply: XML with return_code FAIL.
inline void check_v2_fail(const HttpResult& r)
{
    CHECK(r.status >= 400);
    CHECK(r.status < 500);
    CHECK(r.body.find("<return_code><![CDATA[FAIL]]></return_code>") != std::string::npos);
    CHECK(r.body.find("SUCCESS") == std::string::npos);
}

/// A v2 failure reply when the change could not be persisted (Redis unavailable): XML with
/// return_code FAIL and a 5xx, so that WeChat Pay retries (API.md).
inline void check_v2_unavailable(const HttpResult& r)
{
    CHECK(r.status >= 500);
    CHECK(r.status < 600);
    CHECK(r.header("content-type").find("xml") != std::string::npos);
    CHECK(r.body.find("<return_code><![CDATA[FAIL]]></return_code>") != std::string::npos);
    CHECK(r.body.find("SUCCESS") == std::string::npos);
}

/// WeChat Pay, as seen by one DaemonFixture.
struct Wechat {
    DaemonFixture& fx;
    sim::V3Signer public_key{*crypto::load_private_key(fx.wechat_public_keys.private_pem),
                             DaemonFixture::kPublicKeyId};
    sim::V3Signer platform{*crypto::load_private_key(fx.wechat_platform.key.private_pem), kPlatformSerial};

    sim::V3Transaction tx(const std::string& bill, std::int64_t fen, const std::string& txn) const
    {
        return sim::V3Transaction{.mchid = DaemonFixture::kMchId,
                                  .appid = DaemonFixture::kAppId,
                                  .out_trade_no = bill,
                                  .transaction_id = txn,
                                  .total_fen = fen};
    }

    sim::V3Refund refund(const std::string& bill, const std::string& txn, const std::string& out_refund_no,
                         std::int64_t total, std::int64_t refund_fen,
                         const std::string& status = "SUCCESS") const
    {
        return sim::V3Refund{.mchid = DaemonFixture::kMchId,
                             .out_trade_no = bill,
                             .transaction_id = txn,
                             .out_refund_no = out_refund_no,
                             .refund_status = status,
                             .total_fen = total,
                             .refund_fen = refund_fen};
    }

    /// A signed TRANSACTION.SUCCESS.
    sim::V3Notification pay(const sim::V3Transaction& t, const sim::V3Signer& signer, std::int64_t ts = 0,
                            sim::V3Envelope envelope = {}) const
    {
        auto n = sim::make_v3_payment(t, fx.apiv3_key, signer, ts, std::move(envelope));
        REQUIRE(n.has_value());
        return *n;
    }
    sim::V3Notification pay(const sim::V3Transaction& t) const { return pay(t, public_key); }

    /// A signed REFUND.<status>.
    sim::V3Notification refund_notice(const sim::V3Refund& r, const sim::V3Signer& signer) const
    {
        auto n = sim::make_v3_refund(r, fx.apiv3_key, signer);
        REQUIRE(n.has_value());
        return *n;
    }
    sim::V3Notification refund_notice(const sim::V3Refund& r) const { return refund_notice(r, public_key); }

    /// The same body signed again with a new timestamp and nonce: how WeChat Pay retries.
    static sim::V3Notification resign(const sim::V3Notification& n, const sim::V3Signer& signer, std::int64_t ts)
    {
        auto again = sim::sign_v3(n.body, signer, ts);
        REQUIRE(again.has_value());
        return *again;
    }

    HttpResult post_v3(const sim::V3Notification& n, const std::string& mchid = DaemonFixture::kMchId) const
    {
        paybridge::test::Headers headers(n.headers.begin(), n.headers.end());
        return paybridge::test::http_request(fx.port(), "POST", "/notify/wechatpay/" + mchid, n.body, headers);
    }

    HttpResult post_v2(const std::string& xml, const std::string& mchid = DaemonFixture::kMchId) const
    {
        return paybridge::test::http_request(fx.port(), "POST", "/notify/wechatpay/" + mchid + "/v2", xml,
                                             {{"Content-Type", "text/xml"}});
    }

    sim::V2Payment v2_payment(const std::string& bill, std::int64_t fen, const std::string& txn) const
    {
        return sim::V2Payment{.appid = DaemonFixture::kAppId,
                              .mch_id = DaemonFixture::kMchId,
                              .out_trade_no = bill,
                              .transaction_id = txn,
                              .total_fen = fen};
    }

    sim::V2Refund v2_refund(const std::string& bill, const std::string& txn, const std::string& out_refund_no,
                            std::int64_t total, std::int64_t refund_fen) const
    {
        return sim::V2Refund{.appid = DaemonFixture::kAppId,
                             .mch_id = DaemonFixture::kMchId,
                             .out_trade_no = bill,
                             .transaction_id = txn,
                             .out_refund_no = out_refund_no,
                             .total_fen = total,
                             .refund_fen = refund_fen};
    }

    std::string v2_refund_xml(const sim::V2Refund& r) const
    {
        auto xml = sim::build_v2_refund_xml(r, fx.apiv2_key);
        REQUIRE(xml.has_value());
        return *xml;
    }
};

/// The value of resource.ciphertext in a v3 body.
inline std::string ciphertext_of(const std::string& body)
{
    const std::string marker = "\"ciphertext\":\"";
    const auto start = body.find(marker);
    REQUIRE(start != std::string::npos);
    return body.substr(start + marker.size(), body.find('"', start + marker.size()) - start - marker.size());
}

/// `body` with resource.ciphertext replaced.
inline std::string with_ciphertext(std::string body, const std::string& ciphertext_b64)
{
    const std::string old = ciphertext_of(body);
    body.replace(body.find(old), old.size(), ciphertext_b64);
    return body;
}

}  // namespace wxe2e
