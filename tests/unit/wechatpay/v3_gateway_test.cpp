#include "core/error.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"
#include "tests/unit/wechatpay/fixtures.hpp"

#include <doctest/doctest.h>

#include <cctype>
#include <memory>
#include <string>

using namespace wxtest;
using paybridge::errc;
using paybridge::EventKind;

namespace {

// PROTOCOLS.md §2.7 test vector.
constexpr const char* kVectorKey = "0123456789abcdef0123456789abcdef";
constexpr const char* kVectorNonce = "Kj7QIyUiYx1q";
constexpr const char* kVectorCiphertext =
    "3o+HCNs3jCx1rxUzdmAZxsbr4jGt2omLqvZ+gQ5Vls99tP634Mk6aM2PPuB9PQplwi67/kYW4i21IZWNfSsOsdVSw356CbZiXTcRwX56A+0u5fWgZD79Q2duOgUMQovgBC5ro14QDA==";
constexpr const char* kVectorPlaintext =
    R"({"mchid":"1900000109","out_trade_no":"T1","trade_state":"SUCCESS","amount":{"total":1}})";

std::unique_ptr<gw::Gateway> make_gateway(bool with_public_key = true, bool with_certificates = true,
                                          paybridge::config::WechatMerchant m = {})
{
    std::vector<std::string> problems;
    if (m.mchid.empty()) {
        m = merchant(with_public_key, with_certificates);
    }
    auto gateway = wx::make_wechat_v3_gateway({m}, problems);
    INFO((problems.empty() ? std::string() : problems.front()));
    REQUIRE(gateway);
    CHECK(problems.empty());
    return std::move(*gateway);
}

sim::V3Transaction transaction(std::int64_t total = 1234)
{
    return sim::V3Transaction{.mchid = kMchid,
                              .appid = kAppid,
                              .out_trade_no = "BILL-1",
                              .transaction_id = "4200000985202301011234567890",
                              .total_fen = total,
                              .success_unix = 1528425296};
}

sim::V3Notification payment(const sim::V3Signer& signer, std::int64_t timestamp,
                            const sim::V3Transaction& tx = transaction())
{
    sim::V3Envelope envelope{.id = "EV-2018022511223320873"};
    auto n = sim::make_v3_payment(tx, keys().apiv3_key, signer, timestamp, envelope);
    REQUIRE(n);
    return *n;
}

paybridge::Result<gw::Verified> verify(const gw::Gateway& gateway, const sim::V3Notification& n, std::int64_t now,
                                       std::string_view mchid = kMchid)
{
    const auto headers = n.header_views();
    return gateway.verify_and_parse(request(headers, n.body, mchid, now));
}

/// Replaces the resource ciphertext of a body and re-signs it (a body WeChat signed but we cannot open).
sim::V3Notification with_ciphertext(const sim::V3Notification& n, const std::string& ciphertext_b64,
                                    const sim::V3Signer& signer, std::int64_t timestamp)
{
    const std::string marker = "\"ciphertext\":\"";
    const auto start = n.body.find(marker) + marker.size();
    const auto end = n.body.find('"', start);
    std::string body = n.body;
    body.replace(start, end - start, ciphertext_b64);
    auto signed_again = sim::sign_v3(body, signer, timestamp);
    REQUIRE(signed_again);
    return *signed_again;
}

std::string ciphertext_of(const std::string& body)
{
    const std::string marker = "\"ciphertext\":\"";
    const auto start = body.find(marker) + marker.size();
    return body.substr(start, body.find('"', start) - start);
}

}  // namespace

TEST_CASE("v3: the §2.7 AES-256-GCM vector through the decrypt path")
{
    auto plain = wx::decrypt_resource(kVectorKey, kVectorNonce, "transaction", kVectorCiphertext);
    REQUIRE(plain);
    CHECK(*plain == kVectorPlaintext);

    std::string flipped = *crypto::base64_decode(kVectorCiphertext);
    flipped[5] ^= 0x01;
    CHECK(wx::decrypt_resource(kVectorKey, kVectorNonce, "transaction", crypto::base64_encode(flipped)).error() ==
          errc::bad_signature);
    CHECK(wx::decrypt_resource(kVectorKey, kVectorNonce, "refund", kVectorCiphertext).error() == errc::bad_signature);
    CHECK(wx::decrypt_resource(kVectorKey, kVectorNonce, "transaction", "not base64!").error() ==
          errc::malformed_request);
    CHECK(wx::decrypt_resource("short", kVectorNonce, "transaction", kVectorCiphertext).error() ==
          errc::malformed_request);
}

TEST_CASE("v3: the §2.7 vector inside a signed notification is decrypted by the gateway")
{
    auto m = merchant(false, true);
    m.apiv3_key = kVectorKey;
    m.mchid = "1900000109";
    auto gateway = make_gateway(false, true, m);
    // The vector's plaintext has no appid, so deliver it under an event type the gateway only
    // acknowledges: bill_id can then only come from the decrypted object.
    const std::string body =
        std::string(R"({"id":"EV-1","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource",)") +
        R"("event_type":"TRANSACTION.PROBE","summary":"x","resource":{"original_type":"transaction",)" +
        R"("algorithm":"AEAD_AES_256_GCM","ciphertext":")" + kVectorCiphertext +
        R"(","associated_data":"transaction","nonce":")" + kVectorNonce + R"("}})";
    const std::int64_t now = now_unix();
    auto n = sim::sign_v3(body, cert_signer(keys().platform(), kPlatformSerial), now);
    REQUIRE(n);
    auto v = verify(*gateway, *n, now);
    REQUIRE(v);
    CHECK(v->event.kind == EventKind::none);
    CHECK(v->event.bill_id == "T1");
    CHECK(v->event.notification_id == "EV-1");
    CHECK(v->event.occurred_at == "2015-05-20T05:29:35.000Z");
}

TEST_CASE("v3: a payment signed with the platform certificate becomes a payment event")
{
    auto gateway = make_gateway(false, true);
    CHECK(gateway->name() == "wechatpay_v3");
    const std::int64_t now = now_unix();
    const auto n = payment(cert_signer(keys().platform(), kPlatformSerial), now);
    auto v = verify(*gateway, n, now);
    REQUIRE(v);
    const auto& ev = v->event;
    CHECK(ev.provider == "wechatpay");
    CHECK(ev.channel == "wechatpay_v3");
    CHECK(ev.kind == EventKind::payment);
    CHECK(ev.notification_id == "EV-2018022511223320873");
    CHECK(ev.account == kMchid);
    CHECK(ev.bill_id == "BILL-1");
    CHECK(ev.provider_txn_id == "4200000985202301011234567890");
    CHECK(ev.total_fen == 1234);
    CHECK(ev.currency == "CNY");
    CHECK(ev.provider_status == "TRANSACTION.SUCCESS");
    CHECK(ev.occurred_at == "2018-06-08T02:34:56.000Z");
    CHECK(v->notes.find("platform_certificate") != std::string::npos);
}

TEST_CASE("v3: the timestamp window accepts 299 s and rejects 300 s in both directions")
{
    auto gateway = make_gateway();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const std::int64_t ts = now_unix();
    const auto n = payment(signer, ts);
    CHECK(verify(*gateway, n, ts));
    CHECK(verify(*gateway, n, ts + 299));
    CHECK(verify(*gateway, n, ts - 299));
    CHECK(verify(*gateway, n, ts + 300).error() == errc::stale_timestamp);
    CHECK(verify(*gateway, n, ts - 300).error() == errc::stale_timestamp);
    CHECK(verify(*gateway, n, ts + 86400).error() == errc::stale_timestamp);

    for (const char* bad : {"abc", "-5", "+1700000000", "1.5", "", "99999999999999999999"}) {
        auto copy = n;
        copy.set_header("Wechatpay-Timestamp", bad);
        if (std::string_view(bad).empty()) {
            copy.headers.emplace_back("Wechatpay-Timestamp", "");
        }
        CAPTURE(bad);
        CHECK(verify(*gateway, copy, ts).error() == errc::malformed_request);
    }
}

TEST_CASE("v3: key selection by Wechatpay-Serial")
{
    auto gateway = make_gateway(true, true, merchant(true, true, true));
    const std::int64_t now = now_unix();

    SUBCASE("public key and platform certificate configured together both verify")
    {
        auto by_key = verify(*gateway, payment(public_key_signer(), now), now);
        REQUIRE(by_key);
        CHECK(by_key->notes.find("public_key") != std::string::npos);
        auto by_cert = verify(*gateway, payment(cert_signer(keys().platform(), kPlatformSerial), now), now);
        REQUIRE(by_cert);
        CHECK(by_cert->notes.find("platform_certificate") != std::string::npos);
    }
    SUBCASE("serial compared case-insensitively and ignoring leading zeros")
    {
        for (const char* serial : {"0a1b2c3d4e5f60718293a4b5c6d7e8f901234567", "A1B2C3D4E5F60718293A4B5C6D7E8F901234567",
                                   "000A1B2C3D4E5F60718293A4B5C6D7E8F901234567"}) {
            CAPTURE(serial);
            CHECK(verify(*gateway, payment(cert_signer(keys().platform(), serial), now), now));
        }
    }
    SUBCASE("unknown serial")
    {
        auto n = payment(cert_signer(keys().platform(), "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"), now);
        CHECK(verify(*gateway, n, now).error() == errc::bad_signature);
        auto other_id = payment(cert_signer(keys().platform(), "PUB_KEY_ID_0000000000000000000000000000000099"), now);
        CHECK(verify(*gateway, other_id, now).error() == errc::bad_signature);
    }
    SUBCASE("the public key id with the certificate's key does not verify")
    {
        auto n = payment(cert_signer(keys().platform(), kPublicKeyId), now);
        CHECK(verify(*gateway, n, now).error() == errc::bad_signature);
    }
    SUBCASE("an expired or not yet valid certificate is refused, though it verifies inside its validity")
    {
        auto expired = payment(cert_signer(keys().expired(), "7E57000000000000000000000000000000000001"), now);
        CHECK(verify(*gateway, expired, now).error() == errc::bad_signature);
        const std::int64_t back_then = keys().created - 100 * 86400;
        auto old = payment(cert_signer(keys().expired(), "7E57000000000000000000000000000000000001"), back_then);
        CHECK(verify(*gateway, old, back_then));

        auto future = payment(cert_signer(keys().future(), "7E57000000000000000000000000000000000002"), now);
        CHECK(verify(*gateway, future, now).error() == errc::bad_signature);
        const std::int64_t later = keys().created + 100 * 86400;
        auto next = payment(cert_signer(keys().future(), "7E57000000000000000000000000000000000002"), later);
        CHECK(verify(*gateway, next, later));
    }
    SUBCASE("public-key-only merchant refuses certificate serials")
    {
        auto key_only = make_gateway(true, false);
        CHECK(verify(*key_only, payment(public_key_signer(), now), now));
        CHECK(verify(*key_only, payment(cert_signer(keys().platform(), kPlatformSerial), now), now).error() ==
              errc::bad_signature);
    }
}

TEST_CASE("v3: probe signatures and signatures by other keys or over other bytes are rejected")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const auto n = payment(signer, now);
    REQUIRE(verify(*gateway, n, now));

    auto probe = n;
    probe.set_header("Wechatpay-Signature", "WECHATPAY/SIGNTEST/" + std::string(n.headers[1].second).substr(0, 40));
    CHECK(verify(*gateway, probe, now).error() == errc::bad_signature);

    auto other_key = n;  // valid base64 signature made by another key
    auto foreign = sim::sign_v3(n.body, public_key_signer(), now, std::string(n.headers[0].second));
    REQUIRE(foreign);
    other_key.set_header("Wechatpay-Signature", foreign->headers[1].second);
    CHECK(verify(*gateway, other_key, now).error() == errc::bad_signature);

    auto body_changed = n;
    body_changed.body.replace(body_changed.body.find("encrypt-resource"), 7, "ENCRYPT");
    CHECK(verify(*gateway, body_changed, now).error() == errc::bad_signature);

    auto nonce_changed = n;
    nonce_changed.set_header("Wechatpay-Nonce", "another-nonce");
    CHECK(verify(*gateway, nonce_changed, now).error() == errc::bad_signature);

    auto trailing_newline = n;  // the signed message ends in "\n"; the body itself does not
    trailing_newline.body += "\n";
    CHECK(verify(*gateway, trailing_newline, now).error() == errc::bad_signature);

    auto wrong_type = n;
    wrong_type.set_header("Wechatpay-Signature-Type", "WECHATPAY2-SM2-WITH-SM3");
    CHECK(verify(*gateway, wrong_type, now).error() == errc::bad_signature);

    auto no_type = n;  // absent means WECHATPAY2-SHA256-RSA2048
    no_type.set_header("Wechatpay-Signature-Type", "");
    CHECK(verify(*gateway, no_type, now));
}

TEST_CASE("v3: each required header is required")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto n = payment(cert_signer(keys().platform(), kPlatformSerial), now);
    for (const char* name : {"Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"}) {
        auto copy = n;
        copy.set_header(name, "");
        CAPTURE(name);
        CHECK(verify(*gateway, copy, now).error() == errc::malformed_request);
    }
    // Header names are case-insensitive.
    auto lower = n;
    for (auto& [name, value] : lower.headers) {
        for (char& c : name) {
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        }
    }
    CHECK(verify(*gateway, lower, now));
}

TEST_CASE("v3: an empty Wechatpay-Nonce is refused even when the signature covers it")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    auto n = payment(signer, now);
    const auto signature =
        crypto::rsa_sign(signer.private_key.get(), crypto::Digest::sha256, std::to_string(now) + "\n\n" + n.body + "\n");
    REQUIRE(signature);
    int replaced = 0;
    for (auto& [name, value] : n.headers) {
        if (name == "Wechatpay-Nonce") {
            value.clear();
            ++replaced;
        } else if (name == "Wechatpay-Signature") {
            value = crypto::base64_encode(*signature);
            ++replaced;
        }
    }
    REQUIRE(replaced == 2);
    CHECK(verify(*gateway, n, now).error() == errc::malformed_request);
}

TEST_CASE("v3: decryption failures are answered 400 and not 401")
{
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const auto n = payment(signer, now);

    SUBCASE("a flipped ciphertext byte fails the GCM tag")
    {
        auto gateway = make_gateway();
        std::string raw = *crypto::base64_decode(ciphertext_of(n.body));
        raw[10] ^= 0x40;
        const auto damaged = with_ciphertext(n, crypto::base64_encode(raw), signer, now);
        auto v = verify(*gateway, damaged, now);
        REQUIRE_FALSE(v);
        CHECK(v.error() == errc::malformed_request);
        CHECK(gateway->failure(v.error()).status == 400);
    }
    SUBCASE("a wrong APIv3 key")
    {
        auto m = merchant(true, true);
        m.apiv3_key = std::string(32, 'k');
        auto gateway = make_gateway(true, true, m);
        auto v = verify(*gateway, n, now);
        REQUIRE_FALSE(v);
        CHECK(v.error() == errc::malformed_request);
        CHECK(gateway->failure(v.error()).status == 400);
    }
    SUBCASE("a ciphertext that is not base64")
    {
        auto gateway = make_gateway();
        CHECK(verify(*gateway, with_ciphertext(n, "@@@@", signer, now), now).error() == errc::malformed_request);
    }
}

TEST_CASE("v3: envelopes that are not JSON or not AEAD_AES_256_GCM are malformed")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    for (const char* body : {"not json", "[]", R"({"id":"x","event_type":"TRANSACTION.SUCCESS"})",
                             R"({"id":"x","event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AES_128_CBC",)"
                             R"("ciphertext":"AAAA","nonce":"123456789012"}})"}) {
        auto n = sim::sign_v3(body, signer, now);
        REQUIRE(n);
        CAPTURE(body);
        CHECK(verify(*gateway, *n, now).error() == errc::malformed_request);
    }
}

TEST_CASE("v3: mchid and appid must match the route and the configuration")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const auto n = payment(signer, now);
    CHECK(verify(*gateway, n, now, "1900000999").error() == errc::unknown_account);

    auto tx = transaction();
    tx.mchid = "1900000999";
    CHECK(verify(*gateway, payment(signer, now, tx), now).error() == errc::unknown_account);

    tx = transaction();
    tx.appid = "wx0000000000000bad";
    CHECK(verify(*gateway, payment(signer, now, tx), now).error() == errc::unknown_account);
}

TEST_CASE("v3: a payment through another AppID bound to the merchant (other_appids) is the merchant's")
{
    auto m = merchant(true, true);
    m.other_appids = {"wx00000000miniprog", "wx0000000000000app"};
    auto gateway = make_gateway(true, true, m);
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    auto tx = transaction();
    tx.appid = "wx0000000000000app";
    auto v = verify(*gateway, payment(signer, now, tx), now);
    REQUIRE(v);
    CHECK(v->event.kind == EventKind::payment);
    CHECK(v->event.account == kMchid);
    tx.appid = "wx0000000000000bad";
    CHECK(verify(*gateway, payment(signer, now, tx), now).error() == errc::unknown_account);
}

TEST_CASE("v3: trade_state other than SUCCESS and unknown events are acknowledged without a kind")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    auto tx = transaction();
    tx.trade_state = "NOTPAY";
    auto v = verify(*gateway, payment(signer, now, tx), now);
    REQUIRE(v);
    CHECK(v->event.kind == EventKind::none);

    sim::V3Envelope envelope{.event_type = "MCHTRANSFER.BILL.FINISHED"};
    auto other = sim::make_v3_payment(transaction(), keys().apiv3_key, signer, now, envelope);
    REQUIRE(other);
    auto w = verify(*gateway, *other, now);
    REQUIRE(w);
    CHECK(w->event.kind == EventKind::none);
    CHECK(w->event.provider_status == "MCHTRANSFER.BILL.FINISHED");
}

TEST_CASE("v3: refunds")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = public_key_signer();
    sim::V3Refund refund{.mchid = kMchid,
                         .out_trade_no = "BILL-1",
                         .transaction_id = "4200000985202301011234567890",
                         .out_refund_no = "R-1",
                         .refund_id = "50000000382019052709732678859",
                         .total_fen = 1234,
                         .refund_fen = 234,
                         .success_unix = 1528425296};

    SUBCASE("REFUND.SUCCESS")
    {
        auto n = sim::make_v3_refund(refund, keys().apiv3_key, signer, now);
        REQUIRE(n);
        auto v = verify(*gateway, *n, now);
        REQUIRE(v);
        const auto& ev = v->event;
        CHECK(ev.kind == EventKind::refund);
        CHECK(ev.provider_status == "REFUND.SUCCESS");
        CHECK(ev.bill_id == "BILL-1");
        CHECK(ev.refund_id == "R-1");
        CHECK(ev.refund_fen == 234);
        CHECK(ev.total_fen == 1234);
        CHECK_FALSE(ev.refund_cumulative);
        CHECK(ev.provider_txn_id == "4200000985202301011234567890");
        CHECK(ev.occurred_at == "2018-06-08T02:34:56.000Z");
    }
    SUBCASE("REFUND.CLOSED and REFUND.ABNORMAL")
    {
        refund.refund_status = "CLOSED";
        auto closed = sim::make_v3_refund(refund, keys().apiv3_key, signer, now);
        REQUIRE(closed);
        auto v = verify(*gateway, *closed, now);
        REQUIRE(v);
        CHECK(v->event.kind == EventKind::refund_closed);
        CHECK(v->event.refund_id == "R-1");

        refund.refund_status = "ABNORMAL";
        auto abnormal = sim::make_v3_refund(refund, keys().apiv3_key, signer, now);
        REQUIRE(abnormal);
        auto w = verify(*gateway, *abnormal, now);
        REQUIRE(w);
        CHECK(w->event.kind == EventKind::refund_abnormal);
    }
    SUBCASE("another merchant's refund")
    {
        refund.mchid = "1900000999";
        auto n = sim::make_v3_refund(refund, keys().apiv3_key, signer, now);
        REQUIRE(n);
        CHECK(verify(*gateway, *n, now).error() == errc::unknown_account);
    }
}

TEST_CASE("v3: an empty associated_data is allowed")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    sim::V3Envelope envelope{.associated_data = std::string()};
    auto n = sim::make_v3_payment(transaction(), keys().apiv3_key, public_key_signer(), now, envelope);
    REQUIRE(n);
    REQUIRE(n->body.find(R"("associated_data":"")") != std::string::npos);
    CHECK(verify(*gateway, *n, now));
    // §2.7: a missing associated_data counts as empty, and so does null.
    for (const std::string& replacement : {std::string(), std::string(R"("associated_data":null,)")}) {
        std::string body = n->body;
        const std::string field = R"("associated_data":"",)";
        const auto at = body.find(field);
        REQUIRE(at != std::string::npos);
        body.replace(at, field.size(), replacement);
        CAPTURE(body);
        auto resigned = sim::sign_v3(body, public_key_signer(), now);
        REQUIRE(resigned);
        CHECK(verify(*gateway, *resigned, now));
    }
}

TEST_CASE("v3: REFUND.SUCCESS whose refund_status is not SUCCESS moves no money")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    sim::V3Refund refund{.mchid = kMchid,
                         .out_trade_no = "BILL-1",
                         .transaction_id = "4200000985202301011234567890",
                         .out_refund_no = "R-1",
                         .refund_id = "50000000382019052709732678859",
                         .refund_status = "PROCESSING",
                         .total_fen = 1234,
                         .refund_fen = 234};
    const sim::V3Envelope envelope{.event_type = "REFUND.SUCCESS", .original_type = "refund"};
    const auto verify_refund = [&] {
        auto body = sim::build_v3_body(envelope, sim::v3_refund_json(refund), keys().apiv3_key);
        REQUIRE(body);
        auto n = sim::sign_v3(*body, public_key_signer(), now);
        REQUIRE(n);
        auto v = verify(*gateway, *n, now);
        REQUIRE(v);
        return std::move(*v);
    };
    const auto v = verify_refund();
    CHECK(v.event.kind == EventKind::none);
    CHECK(v.event.refund_fen == 234);
    CHECK(v.notes.find("refund_status is not SUCCESS") != std::string::npos);
    // The same with refund_status SUCCESS is a refund (so the check above is the status's doing).
    refund.refund_status = "SUCCESS";
    const auto w = verify_refund();
    CHECK(w.event.kind == EventKind::refund);
}

TEST_CASE("v3: a partner-mode resource (sp_mchid / sub_mchid, no mchid) is refused as malformed")
{
    // Partner (service provider) mode is not supported (config/README.md): refused, never applied
    // to a bill of the merchant the route names.
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const std::string partner_tx =
        R"({"sp_appid":"wx8888888888888888","sp_mchid":"1230000109","sub_appid":"wxd678efh567hg6999",)"
        R"("sub_mchid":")" + std::string(kMchid) +
        R"(","out_trade_no":"BILL-1","transaction_id":"4200000985202301011234567890","trade_type":"JSAPI",)"
        R"("trade_state":"SUCCESS","trade_state_desc":"ok","bank_type":"CMC","success_time":"2018-06-08T10:34:56+08:00",)"
        R"("payer":{"sp_openid":"o1","sub_openid":"o2"},"amount":{"total":1234,"payer_total":1234,"currency":"CNY","payer_currency":"CNY"}})";
    auto body = sim::build_v3_body(sim::V3Envelope{}, partner_tx, keys().apiv3_key);
    REQUIRE(body);
    auto n = sim::sign_v3(*body, public_key_signer(), now);
    REQUIRE(n);
    CHECK(verify(*gateway, *n, now).error() == errc::malformed_request);
    const auto refused = gateway->failure(paybridge::make_error_code(errc::malformed_request));
    CHECK(refused.status == 400);
}

TEST_CASE("v3: replies")
{
    auto gateway = make_gateway();
    const auto ok = gateway->success();
    CHECK(ok.status == 204);
    CHECK(ok.body.empty());

    const auto bad = gateway->failure(make_error_code(errc::bad_signature));
    CHECK(bad.status == 401);
    CHECK(bad.content_type == "application/json");
    CHECK(bad.body == R"({"code":"FAIL","message":"signature verification failed"})");
    CHECK(gateway->failure(make_error_code(errc::stale_timestamp)).status == 401);
    CHECK(gateway->failure(make_error_code(errc::malformed_request)).status == 400);
    CHECK(gateway->failure(make_error_code(errc::unknown_account)).status == 400);
    CHECK(gateway->failure(make_error_code(errc::unsupported_event)).status == 400);
    CHECK(gateway->failure(make_error_code(errc::store_unavailable)).status == 503);
    CHECK(gateway->failure(make_error_code(errc::timeout)).status == 503);
    CHECK(gateway->failure(make_error_code(errc::internal)).status == 500);
}

TEST_CASE("v3: the factory reports every problem specifically")
{
    std::vector<std::string> problems;
    auto no_keys = merchant(false, false);
    auto short_key = merchant(true, false);
    short_key.mchid = "1900000002";
    short_key.apiv3_key = "too-short";
    auto bad_pem = merchant(false, true);
    bad_pem.mchid = "1900000003";
    bad_pem.platform_certificates_pem = {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"};
    auto id_only = merchant(false, false);
    id_only.mchid = "1900000004";
    id_only.public_key_id = kPublicKeyId;
    auto bad_key = merchant(true, false);
    bad_key.mchid = "1900000005";
    bad_key.public_key_pem = "garbage";
    auto duplicate = merchant(true, true);

    auto gateway = wx::make_wechat_v3_gateway({no_keys, short_key, bad_pem, id_only, bad_key, duplicate}, problems);
    REQUIRE_FALSE(gateway);
    CHECK(gateway.error() == errc::invalid_argument);
    const std::string all = [&] {
        std::string s;
        for (const auto& p : problems) {
            s += p + "\n";
        }
        return s;
    }();
    INFO(all);
    CHECK(all.find("/wechatpay/merchants/0: needs public_key_id + public_key_file, platform_certificates") !=
          std::string::npos);
    CHECK(all.find("/wechatpay/merchants/1/apiv3_key: must be 32 bytes, got 9") != std::string::npos);
    CHECK(all.find("/wechatpay/merchants/2/platform_certificates/0: is not a PEM certificate") != std::string::npos);
    CHECK(all.find("/wechatpay/merchants/3/public_key_id: is set but public_key_file is not") != std::string::npos);
    CHECK(all.find("/wechatpay/merchants/4/public_key_file: is not a PEM public key") != std::string::npos);
    CHECK(all.find("/wechatpay/merchants/5/mchid: 1900000109 is configured twice") != std::string::npos);
    CHECK(problems.size() == 6);

    std::vector<std::string> none;
    auto fine = wx::make_wechat_v3_gateway({merchant(true, true)}, none);
    REQUIRE(fine);
    CHECK(none.empty());
}

TEST_CASE("v3: normalize_serial")
{
    CHECK(wx::normalize_serial("00ab12") == "AB12");
    CHECK(wx::normalize_serial("5157F09EFDC096DE15EBE81A47057A7232F1B8E1") == "5157F09EFDC096DE15EBE81A47057A7232F1B8E1");
    CHECK(wx::normalize_serial("000") == "0");
    CHECK(wx::normalize_serial("") == "");
}

TEST_CASE("v3: an authentic resource with a field that does not read is unusable, with the reason")
{
    auto gateway = make_gateway();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const sim::V3Envelope envelope{.id = "EV-UNUSABLE-1"};
    auto notification = [&](const std::string& plaintext) {
        auto body = sim::build_v3_body(envelope, plaintext, keys().apiv3_key);
        REQUIRE(body);
        auto n = sim::sign_v3(*body, signer, now);
        REQUIRE(n);
        return *n;
    };
    auto replaced = [](std::string text, const std::string& from, const std::string& to) {
        const auto at = text.find(from);
        REQUIRE(at != std::string::npos);
        return text.replace(at, from.size(), to);
    };
    const std::string good = sim::v3_transaction_json(transaction(1234));
    REQUIRE(verify(*gateway, notification(good), now)->event.kind == EventKind::payment);

    auto v = verify(*gateway, notification(replaced(good, "\"total\":1234", "\"total\":\"12.34\"")), now);
    REQUIRE(v);
    CHECK(v->event.kind == EventKind::unusable);
    CHECK(v->event.problem == "TRANSACTION.SUCCESS: amount.total is missing or not an amount in fen");
    CHECK(v->event.bill_id == "BILL-1");
    CHECK(v->event.notification_id == "EV-UNUSABLE-1");

    v = verify(*gateway, notification(replaced(good, "\"transaction_id\"", "\"transaction_no\"")), now);
    REQUIRE(v);
    CHECK(v->event.problem == "TRANSACTION.SUCCESS: the resource has no transaction_id");

    // No bill to file it under: refused as malformed (and logged), as before.
    CHECK(verify(*gateway, notification(replaced(good, "\"out_trade_no\"", "\"out_trade_id\"")), now).error() ==
          errc::malformed_request);
    // Another merchant's object stays a refusal, never an anomaly on our bill.
    CHECK(verify(*gateway, notification(replaced(good, kMchid, "1999999999")), now).error() == errc::unknown_account);
}

namespace {

/// The platform certificate as a download gives it to a book.
wx::PlatformCertificate downloaded(const keygen::Certificate& cert)
{
    auto loaded = crypto::load_certificates(cert.cert_pem);
    REQUIRE(loaded);
    REQUIRE(loaded->size() == 1);
    X509* x = loaded->front().get();
    return wx::PlatformCertificate{.serial = wx::normalize_serial(crypto::certificate_serial_hex(x)),
                                   .key = crypto::certificate_key(x),
                                   .not_before = crypto::certificate_not_before(x),
                                   .not_after = crypto::certificate_not_after(x)};
}

}  // namespace

TEST_CASE("v3: downloaded certificates (download_certificates) verify after the configured keys, and an unknown serial "
          "asks for a download")
{
    wx::CertificateBooks books;
    std::vector<std::string> told;
    books.set_hook([&told](const std::string& mchid, const std::string& serial) { told.push_back(mchid + "/" + serial); });
    auto m = merchant(true, false);  // public key only: the platform certificate is not configured
    m.download_certificates = true;
    std::vector<std::string> problems;
    auto made = wx::make_wechat_v3_gateway({m}, problems, &books);
    REQUIRE(made);
    const auto& gateway = *made;
    const auto book = books.book(kMchid);
    CHECK(book->certificates()->empty());
    const std::int64_t now = now_unix();
    const auto by_cert = payment(cert_signer(keys().platform(), kPlatformSerial), now);

    // Not downloaded yet: refused, and the hook is told (once: a second within the second is not).
    CHECK(verify(*gateway, by_cert, now).error() == errc::bad_signature);
    CHECK(verify(*gateway, by_cert, now).error() == errc::bad_signature);
    CHECK(told == std::vector<std::string>{std::string(kMchid) + "/" + wx::normalize_serial(kPlatformSerial)});

    // Downloaded: the same notification verifies, by the book's certificate, in the gateway built before.
    book->replace({downloaded(keys().platform())});
    auto v = verify(*gateway, by_cert, now);
    REQUIRE(v);
    CHECK(v->notes == "key=downloaded_certificate:" + wx::normalize_serial(kPlatformSerial));
    CHECK(told.size() == 1);
    // The configured key still comes first, and a merchant the book is not given to does not see it.
    CHECK(verify(*gateway, payment(public_key_signer(), now), now)->notes == "key=public_key");
    auto without = wx::make_wechat_v3_gateway({m}, problems);
    REQUIRE(without);
    CHECK(verify(**without, by_cert, now).error() == errc::bad_signature);
    // A downloaded certificate outside its validity is refused like a configured one.
    book->replace({downloaded(keys().expired())});
    CHECK(verify(*gateway, payment(cert_signer(keys().expired(), "7E57000000000000000000000000000000000001"), now), now)
              .error() == errc::bad_signature);
    CHECK(problems.empty());

    // A merchant with neither key configured is accepted when it downloads, not otherwise.
    auto bare = merchant(false, false);
    bare.download_certificates = true;
    std::vector<std::string> none;
    CHECK(wx::make_wechat_v3_gateway({bare}, none, &books));
    CHECK(none.empty());
    bare.download_certificates = false;
    CHECK_FALSE(wx::make_wechat_v3_gateway({bare}, none, &books));
    CHECK(none.size() == 1);
}
