#include "core/error.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"
#include "tests/unit/wechatpay/fixtures.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

using namespace wxtest;
using paybridge::errc;
using paybridge::EventKind;
using gw::QueryState;

namespace {

/// The merchant API certificate's serial (serial_no in Authorization).
constexpr const char* kMerchantSerial = "3775B6A45ACD588826D15E583A95F5DD12345678";
constexpr const char* kNonce = "593BEC0C930BF1AFEB40B4A08C8FB242";
constexpr const char* kOpenid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// The merchant's own API key pair (apiclient_key.pem), which signs requests.
const keygen::KeyPair& merchant_api_keys()
{
    static const keygen::KeyPair pair = keygen::generate_rsa();
    return pair;
}

wx::V3QuerySigner query_signer()
{
    return wx::V3QuerySigner{.merchant_private_key = private_key(merchant_api_keys().private_pem),
                             .merchant_serial_no = kMerchantSerial};
}

/// The merchant as WeChat Pay knows it, to check requests.
std::vector<sim::V3ApiMerchant> api_merchants()
{
    auto key = crypto::load_public_key(merchant_api_keys().public_pem);
    REQUIRE(key);
    return {sim::V3ApiMerchant{.mchid = kMchid, .serial_no = kMerchantSerial, .public_key = *key}};
}

wx::V3Merchant v3_merchant(paybridge::config::WechatMerchant m)
{
    std::vector<std::string> problems;
    auto loaded = wx::load_v3_merchants({m}, problems);
    INFO((problems.empty() ? std::string() : problems.front()));
    REQUIRE(loaded);
    REQUIRE(loaded->size() == 1);
    return std::move(loaded->front());
}

wx::V3Merchant v3_merchant(bool with_public_key = true, bool with_certificates = true)
{
    return v3_merchant(merchant(with_public_key, with_certificates));
}

std::optional<std::string> header_of(const std::vector<std::pair<std::string, std::string>>& headers,
                                     std::string_view name)
{
    for (const auto& [n, v] : headers) {
        if (gw::ascii_iequals(n, name)) {
            return v;
        }
    }
    return std::nullopt;
}

void remove_header(gw::QueryResponse& response, std::string_view name)
{
    std::erase_if(response.headers, [name](const auto& h) { return gw::ascii_iequals(h.first, name); });
}

void set_header(gw::QueryRequest& request, std::string_view name, std::string value)
{
    for (auto& [n, v] : request.headers) {
        if (gw::ascii_iequals(n, name)) {
            v = std::move(value);
            return;
        }
    }
    request.headers.emplace_back(std::string(name), std::move(value));
}

sim::V3Transaction transaction(std::string trade_state = "SUCCESS")
{
    return sim::V3Transaction{.mchid = kMchid,
                              .appid = kAppid,
                              .out_trade_no = "BILL-1",
                              .transaction_id = "4200000985202301011234567890",
                              .total_fen = 1234,
                              .trade_state = std::move(trade_state),
                              .success_unix = 1528425296};
}

gw::QueryResponse answer(const sim::V3Transaction& tx, const sim::V3Signer& signer, std::int64_t timestamp)
{
    auto response = sim::make_v3_query_response(tx, signer, timestamp);
    REQUIRE(response);
    return *response;
}

/// A 200 whose body is `body`, signed by `signer`.
gw::QueryResponse signed_answer(unsigned status, std::string body, const sim::V3Signer& signer, std::int64_t timestamp)
{
    auto n = sim::sign_v3(std::move(body), signer, timestamp);
    REQUIRE(n);
    return gw::QueryResponse{.status = status, .headers = n->headers, .body = n->body};
}

std::string replaced(std::string text, const std::string& from, const std::string& to)
{
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

paybridge::Result<gw::QueryAnswer> read(const wx::V3Merchant& m, const gw::QueryResponse& response, std::int64_t now,
                                        std::string* detail = nullptr, std::string_view out_trade_no = "BILL-1")
{
    return wx::read_transaction_query(m, out_trade_no, response, now, detail);
}

}  // namespace

// ---- requests ----

TEST_CASE("v3 query: the request and its Authorization header for a fixed timestamp and nonce")
{
    const auto m = v3_merchant(false, true);
    const auto signer = query_signer();
    auto request = wx::build_transaction_query(m, signer, "", "BILL-1", 1554208460, kNonce);
    REQUIRE(request);
    CHECK(request->method == "GET");
    CHECK(request->target == "/v3/pay/transactions/out-trade-no/BILL-1?mchid=1900000109");
    CHECK(request->body.empty());
    CHECK(header_of(request->headers, "Accept") == "application/json");

    // PKCS#1 v1.5 signatures are deterministic, so the whole header is known byte for byte.
    const std::string message = "GET\n/v3/pay/transactions/out-trade-no/BILL-1?mchid=1900000109\n1554208460\n"
                                "593BEC0C930BF1AFEB40B4A08C8FB242\n\n";
    const auto expected_signature =
        crypto::rsa_sign(signer.merchant_private_key.get(), crypto::Digest::sha256, message);
    REQUIRE(expected_signature);
    const std::string expected =
        std::string("WECHATPAY2-SHA256-RSA2048 mchid=\"1900000109\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",") +
        "timestamp=\"1554208460\",serial_no=\"" + kMerchantSerial + "\",signature=\"" +
        crypto::base64_encode(*expected_signature) + "\"";
    CHECK(header_of(request->headers, "Authorization") == expected);

    // And the signature verifies with the merchant's public key over that message only.
    auto public_key = crypto::load_public_key(merchant_api_keys().public_pem);
    REQUIRE(public_key);
    CHECK(crypto::rsa_verify(public_key->get(), crypto::Digest::sha256, message, *expected_signature));
    CHECK_FALSE(crypto::rsa_verify(public_key->get(), crypto::Digest::sha256, message.substr(0, message.size() - 1),
                                   *expected_signature));
}

TEST_CASE("v3 query: the base path of the API URL prefixes the signed target")
{
    const auto m = v3_merchant();
    for (const char* base : {"/proxy/wechat", "/proxy/wechat/"}) {
        CAPTURE(base);
        auto request = wx::build_transaction_query(m, query_signer(), base, "BILL-1", 1554208460, kNonce);
        REQUIRE(request);
        CHECK(request->target == "/proxy/wechat/v3/pay/transactions/out-trade-no/BILL-1?mchid=1900000109");
        auto asked = sim::check_v3_query_request(*request, api_merchants(), 1554208460, "/proxy/wechat");
        REQUIRE(asked);
        CHECK(asked->out_trade_no == "BILL-1");
    }
}

TEST_CASE("v3 query: a bill id with reserved characters is path-escaped and signed as sent")
{
    const auto m = v3_merchant();
    const std::string bill = "A|B*C D/\xC3\xA9%?#+&=~._-";
    auto request = wx::build_transaction_query(m, query_signer(), "", bill, 1554208460, kNonce);
    REQUIRE(request);
    CHECK(request->target ==
          "/v3/pay/transactions/out-trade-no/A%7CB%2AC%20D%2F%C3%A9%25%3F%23%2B%26%3D~._-?mchid=1900000109");
    auto asked = sim::check_v3_query_request(*request, api_merchants(), 1554208460);
    REQUIRE(asked);
    CHECK(asked->out_trade_no == bill);
    CHECK(asked->mchid == kMchid);
}

TEST_CASE("v3 query: Wechatpay-Serial is sent in public-key mode only")
{
    auto with_key =
        wx::build_transaction_query(v3_merchant(true, true), query_signer(), "", "BILL-1", 1554208460, kNonce);
    REQUIRE(with_key);
    CHECK(header_of(with_key->headers, "Wechatpay-Serial") == kPublicKeyId);
    auto asked = sim::check_v3_query_request(*with_key, api_merchants(), 1554208460);
    REQUIRE(asked);
    CHECK(asked->wechatpay_serial == kPublicKeyId);

    auto certificates_only =
        wx::build_transaction_query(v3_merchant(false, true), query_signer(), "", "BILL-1", 1554208460, kNonce);
    REQUIRE(certificates_only);
    CHECK_FALSE(header_of(certificates_only->headers, "Wechatpay-Serial"));
    auto asked_plain = sim::check_v3_query_request(*certificates_only, api_merchants(), 1554208460);
    REQUIRE(asked_plain);
    CHECK(asked_plain->wechatpay_serial.empty());
}

TEST_CASE("v3 query: the sim checks requests as WeChat Pay does")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    auto built = wx::build_transaction_query(m, query_signer(), "", "BILL-1", now, kNonce);
    REQUIRE(built);
    const gw::QueryRequest request = *built;
    const auto merchants = api_merchants();
    REQUIRE(sim::check_v3_query_request(request, merchants, now));
    CHECK(sim::check_v3_query_request(request, merchants, now + 299));
    CHECK(sim::check_v3_query_request(request, merchants, now + 300).error() == errc::stale_timestamp);
    CHECK(sim::check_v3_query_request(request, merchants, now - 300).error() == errc::stale_timestamp);

    SUBCASE("the parameters in another order still verify")
    {
        auto copy = request;
        const std::string authorization = *header_of(copy.headers, "Authorization");
        const auto params = authorization.substr(authorization.find(' ') + 1);
        const auto signature_at = params.find(",signature=");
        REQUIRE(signature_at != std::string::npos);
        const std::string reordered = params.substr(signature_at + 1) + "," + params.substr(0, signature_at);
        set_header(copy, "Authorization", "WECHATPAY2-SHA256-RSA2048 " + reordered);
        CHECK(sim::check_v3_query_request(copy, merchants, now));
    }
    SUBCASE("another bill under the same signature")
    {
        auto copy = request;
        copy.target = replaced(copy.target, "BILL-1", "BILL-2");
        CHECK(sim::check_v3_query_request(copy, merchants, now).error() == errc::bad_signature);
    }
    SUBCASE("signed by another key")
    {
        auto other = query_signer();
        other.merchant_private_key = private_key(keys().wechat_public().private_pem);
        auto forged = wx::build_transaction_query(m, other, "", "BILL-1", now, kNonce);
        REQUIRE(forged);
        CHECK(sim::check_v3_query_request(*forged, merchants, now).error() == errc::bad_signature);
    }
    SUBCASE("another serial_no")
    {
        auto other = query_signer();
        other.merchant_serial_no = "1775B6A45ACD588826D15E583A95F5DD12345678";
        auto wrong = wx::build_transaction_query(m, other, "", "BILL-1", now, kNonce);
        REQUIRE(wrong);
        CHECK(sim::check_v3_query_request(*wrong, merchants, now).error() == errc::bad_signature);
    }
    SUBCASE("a query for another merchant than the signer")
    {
        auto copy = request;
        copy.target = replaced(copy.target, "mchid=1900000109", "mchid=1900000999");
        CHECK(sim::check_v3_query_request(copy, merchants, now).error() == errc::unknown_account);
    }
    SUBCASE("malformed requests")
    {
        auto post = request;
        post.method = "POST";
        CHECK(sim::check_v3_query_request(post, merchants, now).error() == errc::malformed_request);
        auto no_auth = request;
        std::erase_if(no_auth.headers, [](const auto& h) { return h.first == "Authorization"; });
        CHECK(sim::check_v3_query_request(no_auth, merchants, now).error() == errc::malformed_request);
        auto missing_param = request;
        set_header(missing_param, "Authorization",
                   replaced(*header_of(request.headers, "Authorization"), "nonce_str=", "nonce="));
        CHECK(sim::check_v3_query_request(missing_param, merchants, now).error() == errc::malformed_request);
        auto bad_escape = request;
        bad_escape.target = replaced(bad_escape.target, "BILL-1", "BILL%2");
        CHECK(sim::check_v3_query_request(bad_escape, merchants, now).error() == errc::malformed_request);
    }
}

TEST_CASE("v3 query: requests that cannot be built are refused")
{
    const auto m = v3_merchant();
    const auto signer = query_signer();
    CHECK(wx::build_transaction_query(m, signer, "", "", 1554208460, kNonce).error() == errc::invalid_argument);
    CHECK(wx::build_transaction_query(m, signer, "", "BILL-1", 1554208460, "").error() == errc::invalid_argument);
    CHECK(wx::build_transaction_query(m, signer, "", "BILL-1", 1554208460, "a\"b").error() == errc::invalid_argument);
    CHECK(wx::build_transaction_query(m, signer, "v3", "BILL-1", 1554208460, kNonce).error() == errc::invalid_argument);
    CHECK(wx::build_transaction_query(m, signer, "/a?b", "BILL-1", 1554208460, kNonce).error() ==
          errc::invalid_argument);
    CHECK(wx::build_transaction_query(m, signer, "", "BILL-1", 0, kNonce).error() == errc::invalid_argument);
    auto no_serial = signer;
    no_serial.merchant_serial_no.clear();
    CHECK(wx::build_transaction_query(m, no_serial, "", "BILL-1", 1554208460, kNonce).error() ==
          errc::invalid_argument);
    auto no_key = signer;
    no_key.merchant_private_key.reset();
    CHECK(wx::build_transaction_query(m, no_key, "", "BILL-1", 1554208460, kNonce).error() == errc::invalid_argument);
}

// ---- answers ----

TEST_CASE("v3 query: SUCCESS is the payment the TRANSACTION.SUCCESS notification gives")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    std::string detail;
    auto a = read(m, answer(transaction(), signer, now), now, &detail);
    REQUIRE(a);
    CHECK(a->state == QueryState::paid);
    CHECK(a->provider_status == "SUCCESS");
    const auto& ev = a->payment;
    CHECK(ev.provider == "wechatpay");
    CHECK(ev.channel == "wechatpay_query");
    CHECK(ev.kind == EventKind::payment);
    CHECK(ev.notification_id == "query:4200000985202301011234567890");
    CHECK(ev.account == kMchid);
    CHECK(ev.bill_id == "BILL-1");
    CHECK(ev.provider_txn_id == "4200000985202301011234567890");
    CHECK(ev.total_fen == 1234);
    CHECK(ev.currency == "CNY");
    CHECK(ev.provider_status == "SUCCESS");
    CHECK(ev.occurred_at == "2018-06-08T02:34:56.000Z");
    CHECK(ev.problem.empty());
    CHECK(detail == "200 SUCCESS key=platform_certificate:A1B2C3D4E5F60718293A4B5C6D7E8F901234567");
    CHECK(detail.find(kOpenid) == std::string::npos);

    // The notification of the same transaction, through the gateway.
    std::vector<std::string> problems;
    auto gateway = wx::make_wechat_v3_gateway({merchant(true, true)}, problems);
    REQUIRE(gateway);
    auto n = sim::make_v3_payment(transaction(), keys().apiv3_key, signer, now, sim::V3Envelope{.id = "EV-1"});
    REQUIRE(n);
    const auto headers = n->header_views();
    auto v = (*gateway)->verify_and_parse(request(headers, n->body, kMchid, now));
    REQUIRE(v);
    auto from_query = ev;
    from_query.channel = v->event.channel;
    from_query.notification_id = v->event.notification_id;
    from_query.provider_status = v->event.provider_status;
    CHECK(from_query.provider == v->event.provider);
    CHECK(from_query.kind == v->event.kind);
    CHECK(from_query.account == v->event.account);
    CHECK(from_query.bill_id == v->event.bill_id);
    CHECK(from_query.provider_txn_id == v->event.provider_txn_id);
    CHECK(from_query.currency == v->event.currency);
    CHECK(from_query.total_fen == v->event.total_fen);
    CHECK(from_query.refund_id == v->event.refund_id);
    CHECK(from_query.refund_fen == v->event.refund_fen);
    CHECK(from_query.refund_cumulative == v->event.refund_cumulative);
    CHECK(from_query.occurred_at == v->event.occurred_at);
    CHECK(from_query.paid_at == v->event.paid_at);
    CHECK(from_query.problem == v->event.problem);
}

TEST_CASE("v3 query: a SUCCESS answer in another currency keeps it")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    auto tx = transaction();
    tx.currency = "HKD";
    auto a = read(m, answer(tx, public_key_signer(), now), now);
    REQUIRE(a);
    CHECK(a->payment.currency == "HKD");
}

TEST_CASE("v3 query: trade states other than SUCCESS")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    const auto signer = public_key_signer();
    const struct {
        const char* trade_state;
        QueryState state;
    } cases[] = {
        {"NOTPAY", QueryState::unpaid},    {"USERPAYING", QueryState::unpaid}, {"ACCEPT", QueryState::unpaid},
        {"CLOSED", QueryState::closed},    {"REVOKED", QueryState::closed},    {"PAYERROR", QueryState::closed},
        {"REFUND", QueryState::closed},    {"SOMETHING_NEW", QueryState::unpaid},
    };
    for (const auto& c : cases) {
        CAPTURE(c.trade_state);
        std::string detail;
        auto a = read(m, answer(transaction(c.trade_state), signer, now), now, &detail);
        REQUIRE(a);
        CHECK(a->state == c.state);
        CHECK(a->provider_status == c.trade_state);
        // Nothing to apply: REFUND was paid, but its refund amounts are not in the answer.
        CHECK(a->payment.kind == EventKind::none);
        CHECK(a->payment.bill_id.empty());
        CHECK(detail.find(c.trade_state) != std::string::npos);
    }
}

TEST_CASE("v3 query: the unpaid answer has no transaction_id and no payer")
{
    const std::string body = sim::v3_query_transaction_json(transaction("NOTPAY"));
    CHECK(body.find("transaction_id") == std::string::npos);
    CHECK(body.find("success_time") == std::string::npos);
    CHECK(body.find("openid") == std::string::npos);
    CHECK(body.find(R"("trade_state":"NOTPAY")") != std::string::npos);
    CHECK(sim::v3_query_transaction_json(transaction("REFUND")).find("transaction_id") != std::string::npos);
}

TEST_CASE("v3 query: a SUCCESS answer that does not read is unusable with the reason")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    const auto signer = public_key_signer();
    const std::string good = sim::v3_query_transaction_json(transaction());

    std::string detail;
    auto a = read(m, signed_answer(200, replaced(good, "\"total\":1234", "\"total\":\"12.34\""), signer, now), now,
                  &detail);
    REQUIRE(a);
    CHECK(a->state == QueryState::paid);
    CHECK(a->payment.kind == EventKind::unusable);
    CHECK(a->payment.problem == "trade_state SUCCESS: amount.total is missing or not an amount in fen");
    CHECK(a->payment.bill_id == "BILL-1");
    CHECK(a->payment.notification_id == "query:4200000985202301011234567890");
    CHECK(a->payment.channel == "wechatpay_query");
    CHECK(detail.find("unusable") != std::string::npos);
    CHECK(detail.find(kOpenid) == std::string::npos);

    a = read(m, signed_answer(200, replaced(good, "\"transaction_id\"", "\"transaction_no\""), signer, now), now);
    REQUIRE(a);
    CHECK(a->payment.kind == EventKind::unusable);
    CHECK(a->payment.problem == "trade_state SUCCESS: the resource has no transaction_id");
    CHECK(a->payment.notification_id == "query:bill:BILL-1");
}

TEST_CASE("v3 query: a signed 404 ORDER_NOT_EXIST is not_found")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    for (const auto& signer : {public_key_signer(), cert_signer(keys().platform(), kPlatformSerial)}) {
        CAPTURE(signer.serial);
        auto response = sim::make_v3_order_not_exist(signer, now);
        REQUIRE(response);
        CHECK(response->status == 404);
        std::string detail;
        auto a = read(m, *response, now, &detail);
        REQUIRE(a);
        CHECK(a->state == QueryState::not_found);
        CHECK(a->provider_status == "ORDER_NOT_EXIST");
        CHECK(detail.rfind("404 ORDER_NOT_EXIST key=", 0) == 0);
    }
    // The v2 spelling.
    auto v2 = read(m, signed_answer(404, R"({"code":"ORDERNOTEXIST","message":"x"})", public_key_signer(), now), now);
    REQUIRE(v2);
    CHECK(v2->state == QueryState::not_found);
    CHECK(v2->provider_status == "ORDERNOTEXIST");
}

TEST_CASE("v3 query: a 404 ORDER_NOT_EXIST that is unsigned or does not verify is never not_found")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    std::string detail;
    const auto unsigned_404 = sim::make_v3_error_response(404, "ORDER_NOT_EXIST", "订单不存在");
    CHECK(read(m, unsigned_404, now, &detail).error() == errc::provider_rejected);
    CHECK(detail == "404 ORDER_NOT_EXIST unsigned");

    auto signed_404 = sim::make_v3_order_not_exist(public_key_signer(), now);
    REQUIRE(signed_404);
    auto tampered = *signed_404;
    tampered.body = replaced(tampered.body, "ORDER_NOT_EXIST\",\"message\":\"", "ORDER_NOT_EXIST\",\"message\":\"!");
    CHECK(read(m, tampered, now, &detail).error() == errc::bad_signature);
    CHECK(detail == "404 ORDER_NOT_EXIST not verified: bad_signature");

    auto stale = sim::make_v3_order_not_exist(public_key_signer(), now - 300);
    REQUIRE(stale);
    CHECK(read(m, *stale, now).error() == errc::stale_timestamp);

    // Another 404 is a refusal whether signed or not.
    CHECK(read(m, signed_answer(404, R"({"code":"NOT_FOUND","message":"x"})", public_key_signer(), now), now).error() ==
          errc::provider_rejected);
}

TEST_CASE("v3 query: a 200 must be signed and verify")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const auto good = answer(transaction(), signer, now);
    REQUIRE(read(m, good, now));
    std::string detail;

    SUBCASE("unsigned")
    {
        auto bare = good;
        for (const char* name : {"Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial",
                                 "Wechatpay-Signature-Type"}) {
            remove_header(bare, name);
        }
        CHECK(read(m, bare, now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 unsigned");
        auto no_signature = good;
        remove_header(no_signature, "Wechatpay-Signature");
        CHECK(read(m, no_signature, now).error() == errc::bad_signature);
    }
    SUBCASE("a signature header without the rest")
    {
        for (const char* name : {"Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial"}) {
            CAPTURE(name);
            auto partial = good;
            remove_header(partial, name);
            CHECK(read(m, partial, now, &detail).error() == errc::bad_signature);
            CHECK(detail == "200 not verified: malformed_request");
        }
    }
    SUBCASE("one body byte flipped")
    {
        auto flipped = good;
        flipped.body[flipped.body.find("1234")] ^= 0x01;  // 1234 fen → 0234
        CHECK(read(m, flipped, now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 not verified: bad_signature");
    }
    SUBCASE("a stale timestamp")
    {
        CHECK(read(m, answer(transaction(), signer, now - 300), now).error() == errc::stale_timestamp);
        CHECK(read(m, answer(transaction(), signer, now + 300), now).error() == errc::stale_timestamp);
        CHECK(read(m, answer(transaction(), signer, now - 299), now));
    }
    SUBCASE("an unknown serial")
    {
        const auto unknown = cert_signer(keys().platform(), "5157F09EFDC096DE15EBE81A47057A7232F1B8E1");
        CHECK(read(m, answer(transaction(), unknown, now), now).error() == errc::bad_signature);
    }
    SUBCASE("a probe signature")
    {
        auto probe = good;
        for (auto& [name, value] : probe.headers) {
            if (name == "Wechatpay-Signature") {
                value = "WECHATPAY/SIGNTEST/" + value.substr(0, 40);
            }
        }
        CHECK(read(m, probe, now).error() == errc::bad_signature);
    }
}

TEST_CASE("v3 query: platform certificate mode and public key mode")
{
    const std::int64_t now = now_unix();
    const auto by_certificate = answer(transaction(), cert_signer(keys().platform(), kPlatformSerial), now);
    const auto by_public_key = answer(transaction(), public_key_signer(), now);

    const auto certificates_only = v3_merchant(false, true);
    CHECK(read(certificates_only, by_certificate, now));
    CHECK(read(certificates_only, by_public_key, now).error() == errc::bad_signature);

    const auto key_only = v3_merchant(true, false);
    std::string detail;
    CHECK(read(key_only, by_public_key, now, &detail));
    CHECK(detail == "200 SUCCESS key=public_key");
    CHECK(read(key_only, by_certificate, now).error() == errc::bad_signature);

    // During the migration both are accepted (WeChat may ignore Wechatpay-Serial until the
    // switch is enabled in the merchant portal, §2.3).
    const auto both = v3_merchant(true, true);
    CHECK(read(both, by_certificate, now));
    CHECK(read(both, by_public_key, now));

    // The public key id announced with a certificate's key does not verify.
    CHECK(read(both, answer(transaction(), cert_signer(keys().platform(), kPublicKeyId), now), now).error() ==
          errc::bad_signature);
}

TEST_CASE("v3 query: the answer must be about the merchant and the bill asked")
{
    const std::int64_t now = now_unix();
    const auto signer = public_key_signer();
    auto cfg = merchant(true, true);
    cfg.other_appids = {"wx0000000000000app"};
    const auto m = v3_merchant(cfg);
    std::string detail;

    auto tx = transaction();
    tx.mchid = "1900000999";
    CHECK(read(m, answer(tx, signer, now), now, &detail).error() == errc::unknown_account);
    CHECK(detail == "200 Transaction of mchid \"1900000999\" appid \"wxd678efh567hg6787\" is not the merchant's");

    tx = transaction();
    tx.appid = "wx0000000000000bad";
    CHECK(read(m, answer(tx, signer, now), now).error() == errc::unknown_account);

    tx.appid = "wx0000000000000app";
    auto other_app = read(m, answer(tx, signer, now), now);
    REQUIRE(other_app);
    CHECK(other_app->payment.kind == EventKind::payment);

    tx = transaction();
    tx.out_trade_no = "BILL-2";
    CHECK(read(m, answer(tx, signer, now), now, &detail).error() == errc::malformed_request);
    CHECK(detail == "200 out_trade_no is not the one asked");
    CHECK(read(m, answer(transaction(), signer, now), now, nullptr, "BILL-2").error() == errc::malformed_request);

    const std::string partner = replaced(sim::v3_query_transaction_json(transaction()), "\"mchid\"", "\"sub_mchid\"");
    CHECK(read(m, signed_answer(200, partner, signer, now), now).error() == errc::malformed_request);
    CHECK(read(m, signed_answer(200, "not json", signer, now), now).error() == errc::malformed_request);
    const std::string no_state =
        replaced(sim::v3_query_transaction_json(transaction()), "\"trade_state\"", "\"state\"");
    CHECK(read(m, signed_answer(200, no_state, signer, now), now).error() == errc::malformed_request);
}

TEST_CASE("v3 query: error statuses")
{
    const auto m = v3_merchant();
    const std::int64_t now = now_unix();
    std::string detail;
    CHECK(read(m, sim::make_v3_error_response(500, "SYSTEM_ERROR", "系统错误"), now, &detail).error() ==
          errc::provider_unavailable);
    CHECK(detail == "500 SYSTEM_ERROR");
    CHECK(read(m, sim::make_v3_error_response(429, "FREQUENCY_LIMITED", "频率超限"), now).error() ==
          errc::provider_unavailable);
    CHECK(read(m, gw::QueryResponse{.status = 502, .headers = {}, .body = "<html>bad gateway</html>"}, now, &detail)
              .error() == errc::provider_unavailable);
    CHECK(detail == "502");

    CHECK(read(m, sim::make_v3_error_response(401, "SIGN_ERROR", "签名错误"), now, &detail).error() ==
          errc::provider_rejected);
    CHECK(detail == "401 SIGN_ERROR");
    CHECK(read(m, sim::make_v3_error_response(400, "PARAM_ERROR", "参数错误"), now).error() ==
          errc::provider_rejected);
    CHECK(read(m, sim::make_v3_error_response(403, "NO_AUTH", "无权限"), now).error() == errc::provider_rejected);
    CHECK(read(m, gw::QueryResponse{.status = 302, .headers = {}, .body = ""}, now).error() == errc::provider_rejected);

    // An error message is never logged, nor a code that is not a plain code.
    CHECK(read(m, sim::make_v3_error_response(400, "PARAM_ERROR", "openid oUpF8uMuAJO invalid"), now, &detail)
              .error() == errc::provider_rejected);
    CHECK(detail == "400 PARAM_ERROR");
    CHECK(read(m, sim::make_v3_error_response(400, "bad code\n", "x"), now, &detail).error() ==
          errc::provider_rejected);
    CHECK(detail == "400");
}
