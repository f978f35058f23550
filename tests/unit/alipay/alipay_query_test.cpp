// alipay.trade.query (PROTOCOLS.md §1.10): the signed request, checked by the simulator as Alipay
// would, and the reading of answers: signature on the raw response object first, state after.

#include "gateways/alipay/alipay_query.hpp"

#include "alipay_test_support.hpp"
#include "core/error.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/form.hpp"

#include <doctest/doctest.h>

#include <ctime>

using namespace paybridge;
using namespace paybridge::gateways;
using namespace paybridge::gateways::alipay;
using namespace alipay_test;

namespace {

constexpr std::int64_t kNow = 1714536000;             // 2024-05-01 12:00:00 in Beijing
constexpr std::int64_t kPaidMs = 1714535970000;       // 2024-05-01 11:59:30 in Beijing
constexpr std::string_view kTradeNo = "2024050122001400001234567890";
AlipayQuerySigner signer(std::string app_cert_sn = {})
{
    return AlipayQuerySigner{private_key(app_keys()), std::move(app_cert_sn)};
}

struct CertModeApp {
    keygen::Certificate ca;
    keygen::Certificate leaf;  ///< Alipay's public certificate
    AlipayAppKeys keys;
};

CertModeApp cert_mode_app()
{
    CertModeApp out;
    out.ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    out.leaf = keygen::issue(out.ca, {.common_name = "alipay public cert"});
    config::AlipayApp app;
    app.app_id = std::string(kAppId);
    app.public_cert_pem = out.leaf.cert_pem;
    app.root_cert_pem = out.ca.cert_pem;
    out.keys = load(app);
    return out;
}

QueriedTrade trade(std::string trade_status = "TRADE_SUCCESS")
{
    QueriedTrade t;
    t.out_trade_no = "BILL-1001";
    t.trade_status = std::move(trade_status);
    t.amount_fen = 1234;
    t.trade_no = std::string(kTradeNo);
    t.paid_unix_ms = kPaidMs;
    return t;
}

// Alipay's key signs, as in a real answer.
AnswerSigner by_alipay(std::string alipay_cert_sn = {})
{
    static const crypto::SharedKey key = private_key(alipay_keys());
    AnswerSigner s;
    s.alipay_private_key = key.get();
    s.alipay_cert_sn = std::move(alipay_cert_sn);
    return s;
}

AnswerSigner unsigned_answer() { return AnswerSigner{}; }

Result<QueryAnswer> read(const AlipayAppKeys& app, std::string body, std::string* detail = nullptr,
                         std::int64_t now_unix = 0)
{
    return read_trade_query(app, "BILL-1001", http(std::move(body)), detail, now_unix);
}

std::string replace_all(std::string text, std::string_view from, std::string_view to)
{
    for (std::size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
        text.replace(pos, from.size(), to);
    }
    return text;
}


}  // namespace

// ---- the request ----

TEST_CASE("build_trade_query: a POST that the simulated gateway accepts and reads the bill from")
{
    const AlipayAppKeys app = load(app_config());
    auto request = build_trade_query(app, signer(), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(request.has_value());
    CHECK(request->method == "POST");
    CHECK(request->headers ==
          std::vector<std::pair<std::string, std::string>>{
              {"Content-Type", "application/x-www-form-urlencoded;charset=utf-8"}});

    const auto app_public = public_key(app_keys());
    std::string problem;
    auto bill = check_trade_query_request(request->target, request->body, app_public.get(),
                                          {.app_id = std::string(kAppId)}, &problem);
    REQUIRE_MESSAGE(bill.has_value(), problem);
    CHECK(*bill == "BILL-1001");

    // What Alipay refuses: another bill in the body, another app, a key that is not the app's.
    const std::string other_body = "biz_content=" + form_encode(R"({"out_trade_no":"BILL-1002"})");
    auto tampered = check_trade_query_request(request->target, other_body, app_public.get(), {}, &problem);
    REQUIRE_FALSE(tampered.has_value());
    CHECK(tampered.error() == make_error_code(errc::bad_signature));
    CHECK(problem == "sign does not verify");
    auto other_app = check_trade_query_request(request->target, request->body, app_public.get(),
                                               {.app_id = "2021000000000002"});
    REQUIRE_FALSE(other_app.has_value());
    CHECK(other_app.error() == make_error_code(errc::unknown_account));
    const auto stranger = public_key(other_keys());
    auto wrong_key = check_trade_query_request(request->target, request->body, stranger.get());
    REQUIRE_FALSE(wrong_key.has_value());
    CHECK(wrong_key.error() == make_error_code(errc::bad_signature));
}

TEST_CASE("build_trade_query: the exact sign string and wire form for a fixed timestamp")
{
    const AlipayAppKeys app = load(app_config());
    auto request = build_trade_query(app, signer(), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(request.has_value());
    CHECK(request->target.starts_with(
        "/gateway.do?app_id=2021000000000001&method=alipay.trade.query&format=JSON&charset=utf-8&sign_type=RSA2&"
        "timestamp=2024-05-01%2012%3A00%3A00&version=1.0&sign="));
    CHECK(request->body == "biz_content=%7B%22out_trade_no%22%3A%22BILL-1001%22%7D");

    // Sorted by key, raw values, sign excluded: checked against the signature with the public key.
    const std::string expected =
        "app_id=2021000000000001&biz_content={\"out_trade_no\":\"BILL-1001\"}&charset=utf-8&format=JSON&"
        "method=alipay.trade.query&sign_type=RSA2&timestamp=2024-05-01 12:00:00&version=1.0";
    auto signature = crypto::base64_decode(target_param(request->target, "sign"));
    REQUIRE(signature.has_value());
    const auto app_public = public_key(app_keys());
    CHECK(crypto::rsa_verify(app_public.get(), crypto::Digest::sha256, expected, *signature));
    CHECK_FALSE(crypto::rsa_verify(app_public.get(), crypto::Digest::sha256, expected + "&", *signature));

    // RSA (SHA1withRSA) apps declare and use it.
    const AlipayAppKeys rsa1 = load(app_config("RSA"));
    auto old = build_trade_query(rsa1, signer(), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(old.has_value());
    CHECK(target_param(old->target, "sign_type") == "RSA");
    auto old_signature = crypto::base64_decode(target_param(old->target, "sign"));
    REQUIRE(old_signature.has_value());
    CHECK(crypto::rsa_verify(app_public.get(), crypto::Digest::sha1, replace_all(expected, "RSA2", "RSA"),
                             *old_signature));
    CHECK(check_trade_query_request(old->target, old->body, app_public.get(), {.sign_type = "RSA"}).has_value());
}

TEST_CASE("build_trade_query: reserved characters in a bill id are percent-encoded and JSON-escaped")
{
    const AlipayAppKeys app = load(app_config());
    const std::string bill = "A&B=C+D/E?F#G %H\"I\\J~K._-\xE8\xAE\xA2";
    auto request = build_trade_query(app, signer(), "/gateway.do", bill, kNow);
    REQUIRE(request.has_value());
    CHECK(request->body ==
          "biz_content=%7B%22out_trade_no%22%3A%22"
          "A%26B%3DC%2BD%2FE%3FF%23G%20%25H%5C%22I%5C%5CJ~K._-%E8%AE%A2"
          "%22%7D");
    auto bill_back = check_trade_query_request(request->target, request->body, public_key(app_keys()).get());
    REQUIRE(bill_back.has_value());
    CHECK(*bill_back == bill);

    // The gateway URL's own query is kept; the parameters follow it.
    auto with_query = build_trade_query(app, signer(), "/api/gateway.do?tenant=1", "B", kNow);
    REQUIRE(with_query.has_value());
    CHECK(with_query->target.starts_with("/api/gateway.do?tenant=1&app_id=2021000000000001&method="));

    // Refused inputs.
    for (std::string_view target : {"gateway.do", "", "/gate way.do", "/gateway.do#x"}) {
        auto r = build_trade_query(app, signer(), target, "B", kNow);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error() == make_error_code(errc::invalid_argument));
    }
    auto empty_bill = build_trade_query(app, signer(), "/gateway.do", "", kNow);
    REQUIRE_FALSE(empty_bill.has_value());
    CHECK(empty_bill.error() == make_error_code(errc::invalid_argument));
    auto no_key = build_trade_query(app, AlipayQuerySigner{}, "/gateway.do", "B", kNow);
    REQUIRE_FALSE(no_key.has_value());
    CHECK(no_key.error() == make_error_code(errc::invalid_argument));
}

TEST_CASE("build_trade_query: certificate mode sends and signs app_cert_sn and alipay_root_cert_sn")
{
    const CertModeApp cert = cert_mode_app();
    REQUIRE(cert.keys.alipay_root_cert_sn.size() == 32);
    auto request = build_trade_query(cert.keys, signer(std::string(kAppCertSn)), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(request.has_value());
    CHECK(target_param(request->target, "app_cert_sn") == kAppCertSn);
    CHECK(target_param(request->target, "alipay_root_cert_sn") == cert.keys.alipay_root_cert_sn);

    const std::string expected = "alipay_root_cert_sn=" + cert.keys.alipay_root_cert_sn + "&app_cert_sn=" +
                                 std::string(kAppCertSn) +
                                 "&app_id=2021000000000001&biz_content={\"out_trade_no\":\"BILL-1001\"}&"
                                 "charset=utf-8&format=JSON&method=alipay.trade.query&sign_type=RSA2&"
                                 "timestamp=2024-05-01 12:00:00&version=1.0";
    auto signature = crypto::base64_decode(target_param(request->target, "sign"));
    REQUIRE(signature.has_value());
    CHECK(crypto::rsa_verify(public_key(app_keys()).get(), crypto::Digest::sha256, expected, *signature));

    const auto app_public = public_key(app_keys());
    const TradeQueryCheck cert_check{.app_id = std::string(kAppId),
                                     .app_cert_sn = std::string(kAppCertSn),
                                     .alipay_root_cert_sn = cert.keys.alipay_root_cert_sn};
    CHECK(check_trade_query_request(request->target, request->body, app_public.get(), cert_check).has_value());
    // A gateway expecting public-key mode refuses SNs it did not ask for.
    auto key_mode = check_trade_query_request(request->target, request->body, app_public.get());
    REQUIRE_FALSE(key_mode.has_value());
    CHECK(key_mode.error() == make_error_code(errc::bad_signature));

    // Half a pair is a configuration Alipay refuses: one SN without the other.
    const AlipayAppKeys key_app = load(app_config());
    auto half = build_trade_query(key_app, signer(std::string(kAppCertSn)), "/gateway.do", "B", kNow);
    REQUIRE_FALSE(half.has_value());
    CHECK(half.error() == make_error_code(errc::invalid_argument));
    auto other_half = build_trade_query(cert.keys, signer(), "/gateway.do", "B", kNow);
    REQUIRE_FALSE(other_half.has_value());
    CHECK(other_half.error() == make_error_code(errc::invalid_argument));
}

TEST_CASE("check_trade_query_request: what Alipay's gateway refuses")
{
    const AlipayAppKeys app = load(app_config());
    auto request = build_trade_query(app, signer(), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(request.has_value());
    const auto app_public = public_key(app_keys());
    auto refusal = [&](std::string_view target, std::string_view body) {
        std::string problem;
        auto r = check_trade_query_request(target, body, app_public.get(), {}, &problem);
        REQUIRE_FALSE(r.has_value());
        return std::make_pair(r.error(), problem);
    };
    CHECK(refusal(request->target, "") ==
          std::make_pair(make_error_code(errc::malformed_request), std::string("missing parameter biz_content")));
    CHECK(refusal(request->target, request->body + "&app_id=2021000000000001") ==
          std::make_pair(make_error_code(errc::malformed_request), std::string("parameter app_id is sent twice")));
    CHECK(refusal(replace_all(request->target, "alipay.trade.query", "alipay.trade.close"), request->body).second ==
          "method is not alipay.trade.query");
    CHECK(refusal(replace_all(request->target, "sign_type=RSA2", "sign_type=RSA"), request->body) ==
          std::make_pair(make_error_code(errc::bad_signature), std::string("sign_type is not RSA2")));
    CHECK(refusal(replace_all(request->target, "version=1.0", "version=2.0"), request->body).second ==
          "version is not 1.0");

    // Well signed, but asking by trade_no: this checker reads out_trade_no only.
    FormFields params = {{"app_id", std::string(kAppId)}, {"method", "alipay.trade.query"}, {"charset", "utf-8"},
                         {"sign_type", "RSA2"},           {"timestamp", "2024-05-01 12:00:00"},
                         {"version", "1.0"},              {"biz_content", R"({"trade_no":"1"})"}};
    std::string target = "/gateway.do?";
    for (const auto& [key, value] : params) {
        target += form_encode(key) + "=" + form_encode(value) + "&";
    }
    auto signature = crypto::rsa_sign(private_key(app_keys()).get(), crypto::Digest::sha256,
                                      "app_id=2021000000000001&biz_content={\"trade_no\":\"1\"}&charset=utf-8&"
                                      "method=alipay.trade.query&sign_type=RSA2&timestamp=2024-05-01 12:00:00&"
                                      "version=1.0");
    REQUIRE(signature.has_value());
    target += "sign=" + form_encode(crypto::base64_encode(*signature));
    CHECK(refusal(target, "") ==
          std::make_pair(make_error_code(errc::malformed_request), std::string("biz_content has no out_trade_no")));
}

// ---- the answer: states ----

TEST_CASE("read_trade_query: TRADE_SUCCESS is paid with the payment event of a notification")
{
    const AlipayAppKeys app = load(app_config());
    std::string detail = "stale";
    auto answer = read(app, make_trade_query_answer(trade(), by_alipay()), &detail);
    REQUIRE_MESSAGE(answer.has_value(), detail);
    CHECK(detail.empty());
    CHECK(answer->state == QueryState::paid);
    CHECK(answer->provider_status == "TRADE_SUCCESS");
    const PaymentEvent& e = answer->payment;
    CHECK(e.provider == "alipay");
    CHECK(e.channel == "alipay_query");
    CHECK(e.kind == EventKind::payment);
    CHECK(e.account == kAppId);
    CHECK(e.bill_id == "BILL-1001");
    CHECK(e.provider_txn_id == kTradeNo);
    CHECK(e.total_fen == 1234);
    CHECK(e.currency == "CNY");
    CHECK(e.notification_id == "query:" + std::string(kTradeNo));
    CHECK(e.provider_status == "TRADE_SUCCESS");
    CHECK(e.occurred_at == "2024-05-01T03:59:30.000Z");
    CHECK(e.paid_at == "2024-05-01T03:59:30.000Z");
    CHECK(e.problem.empty());
    CHECK(e.refund_fen == 0);
    CHECK(e.refund_id.empty());
}

TEST_CASE("read_trade_query: TRADE_FINISHED is paid too")
{
    const AlipayAppKeys app = load(app_config());
    auto answer = read(app, make_trade_query_answer(trade("TRADE_FINISHED"), by_alipay()));
    REQUIRE(answer.has_value());
    CHECK(answer->state == QueryState::paid);
    CHECK(answer->payment.kind == EventKind::payment);
    CHECK(answer->payment.provider_status == "TRADE_FINISHED");
    CHECK(answer->payment.total_fen == 1234);
}

TEST_CASE("read_trade_query: WAIT_BUYER_PAY and 10003 are unpaid and TRADE_CLOSED is closed")
{
    const AlipayAppKeys app = load(app_config());
    auto waiting = read(app, make_trade_query_answer(trade("WAIT_BUYER_PAY"), by_alipay()));
    REQUIRE(waiting.has_value());
    CHECK(waiting->state == QueryState::unpaid);
    CHECK(waiting->provider_status == "WAIT_BUYER_PAY");
    CHECK(waiting->payment.kind == EventKind::none);

    auto closed = read(app, make_trade_query_answer(trade("TRADE_CLOSED"), by_alipay()));
    REQUIRE(closed.has_value());
    CHECK(closed->state == QueryState::closed);
    CHECK(closed->provider_status == "TRADE_CLOSED");
    CHECK(closed->payment.kind == EventKind::none);

    // A status Alipay may add later: the trade exists and is not known to be paid.
    auto future = read(app, make_trade_query_answer(trade("TRADE_PENDING"), by_alipay()));
    REQUIRE(future.has_value());
    CHECK(future->state == QueryState::unpaid);
    CHECK(future->provider_status == "TRADE_PENDING");

    auto paying = read(app, make_trade_query_error("10003", "Processing", "", "", by_alipay()));
    REQUIRE(paying.has_value());
    CHECK(paying->state == QueryState::unpaid);
    CHECK(paying->provider_status == "10003");
}

TEST_CASE("read_trade_query: 40004 ACQ.TRADE_NOT_EXIST is not_found")
{
    const AlipayAppKeys app = load(app_config());
    const std::string body = make_trade_not_exist_answer("BILL-1001", by_alipay());
    CHECK(body.starts_with(R"({"alipay_trade_query_response":{"code":"40004","msg":"Business Failed",)"
                           R"("sub_code":"ACQ.TRADE_NOT_EXIST",)"));
    auto answer = read(app, body);
    REQUIRE(answer.has_value());
    CHECK(answer->state == QueryState::not_found);
    CHECK(answer->provider_status == "ACQ.TRADE_NOT_EXIST");
    CHECK(answer->payment.kind == EventKind::none);
    // Signed, but about another bill.
    CHECK(error_of(read(app, make_trade_not_exist_answer("BILL-1002", by_alipay()))) ==
          make_error_code(errc::malformed_request));
}

TEST_CASE("read_trade_query: 20000 is provider_unavailable and other codes are provider_rejected")
{
    const AlipayAppKeys app = load(app_config());
    std::string detail;
    CHECK(error_of(read(app, make_service_unavailable_answer(by_alipay()), &detail)) ==
          make_error_code(errc::provider_unavailable));
    CHECK(detail == R"(code "20000" sub_code "isp.unknow-error")");

    CHECK(error_of(read(app, make_trade_query_error("40004", "Business Failed", "ACQ.SYSTEM_ERROR", "", by_alipay()),
                        &detail)) == make_error_code(errc::provider_rejected));
    CHECK(detail == R"(code "40004" sub_code "ACQ.SYSTEM_ERROR")");
    for (std::string_view code : {"40001", "40002", "40003", "40005", "40006"}) {
        CHECK(error_of(read(app, make_trade_query_error(code, "Invalid Arguments", "isv.x", "", by_alipay()))) ==
              make_error_code(errc::provider_rejected));
    }
    // The error node of a request Alipay could not route, with a GBK sub_msg: verified on bytes.
    const std::string gbk_object =
        R"({"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id","sub_msg":")"
        "\xCE\xDE\xD0\xA7\xB5\xC4" "AppID\xB2\xCE\xCA\xFD" R"("})";
    CHECK(error_of(read(app, sign_alipay_answer("error_response", gbk_object, by_alipay()), &detail)) ==
          make_error_code(errc::provider_rejected));
    CHECK(detail == R"(code "40002" sub_code "isv.invalid-app-id")");
}

TEST_CASE("read_trade_query: unsigned answers give errors only")
{
    const AlipayAppKeys app = load(app_config());
    std::string detail;
    CHECK(error_of(read(app, make_trade_query_answer(trade(), unsigned_answer()), &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == R"(unsigned answer, code "10000")");
    CHECK(error_of(read(app, make_trade_query_error("10003", "Processing", "", "", unsigned_answer()))) ==
          make_error_code(errc::bad_signature));
    // An unsigned "not found" is not trusted as one.
    CHECK(error_of(read(app, make_trade_not_exist_answer("BILL-1001", unsigned_answer()))) ==
          make_error_code(errc::provider_rejected));
    CHECK(error_of(read(app, make_service_unavailable_answer(unsigned_answer()))) ==
          make_error_code(errc::provider_unavailable));
    CHECK(error_of(read(app, R"({"error_response":{"code":"40002","sub_code":"isv.invalid-signature"}})")) ==
          make_error_code(errc::provider_rejected));
    // Classifying an unsigned answer parses it: no nesting depth may exhaust the stack.
    const std::size_t depth = 1'000'000;
    const std::string deep = R"({"error_response":{"code":"40002","x":)" + std::string(depth, '[') +
                             std::string(depth, ']') + "}}";
    CHECK(error_of(read(app, deep)) == make_error_code(errc::provider_rejected));
    // An empty sign is no sign.
    CHECK(error_of(read(app, R"({"alipay_trade_query_response":{"code":"20000"},"sign":""})")) ==
          make_error_code(errc::provider_unavailable));
}

// ---- the answer: authenticity ----

TEST_CASE("read_trade_query: one changed byte inside the response object fails verification")
{
    const AlipayAppKeys app = load(app_config());
    const std::string body = make_trade_query_answer(trade(), by_alipay());
    REQUIRE(read(app, body).has_value());
    const std::string changed = replace_all(body, R"("total_amount":"12.34")", R"("total_amount":"92.34")");
    REQUIRE(changed != body);
    std::string detail;
    CHECK(error_of(read(app, changed, &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "no key verifies the sign");
    // Signed by a key that is not Alipay's.
    const auto stranger = private_key(other_keys());
    AnswerSigner forger;
    forger.alipay_private_key = stranger.get();
    CHECK(error_of(read(app, make_trade_query_answer(trade(), forger))) == make_error_code(errc::bad_signature));
    // A sign that is not base64.
    CHECK(error_of(read(app, R"({"alipay_trade_query_response":{"code":"10000"},"sign":"@@@"})")) ==
          make_error_code(errc::bad_signature));
}

TEST_CASE("read_trade_query: a signature over the unescaped text of a body sent with escaped slashes")
{
    const AlipayAppKeys app = load(app_config());
    // Alipay signed "/"; the body on the wire carries "\/" (a JSON writer escaped it after signing).
    std::string object = trade_query_object(trade());
    object.insert(object.find(R"("total_amount")"), R"("store_name":"Shop A/B",)");
    const std::string signed_body = sign_alipay_answer("alipay_trade_query_response", object, by_alipay());
    const std::string escaped_body = replace_all(signed_body, "Shop A/B", "Shop A\\/B");
    REQUIRE(escaped_body != signed_body);
    std::string detail;
    auto answer = read(app, escaped_body, &detail);
    REQUIRE_MESSAGE(answer.has_value(), detail);
    CHECK(answer->state == QueryState::paid);
    CHECK(detail == R"(verified with "\/" read as "/")");
    // Plain: no note. Tampered elsewhere: the fallback does not rescue it.
    auto plain = read(app, signed_body, &detail);
    REQUIRE(plain.has_value());
    CHECK(detail.empty());
    CHECK(error_of(read(app, replace_all(escaped_body, "12.34", "12.35"))) == make_error_code(errc::bad_signature));
}

TEST_CASE("read_trade_query: the response object is found by structure not by key order or text")
{
    const AlipayAppKeys app = load(app_config());
    // Braces, quotes and backslashes inside strings, a string ending in an escaped backslash, and
    // a decoy key name inside a value.
    std::string object = trade_query_object(trade());
    object.insert(object.find(R"("total_amount")"),
                  R"("store_name":"br}ace \"{q\\","subject":"x\"sign\":\"y\\\"}}","goods":[{"a":"]}"}],)");
    const std::string signed_body = sign_alipay_answer("alipay_trade_query_response", object, by_alipay());
    const std::size_t sign_at = signed_body.rfind(R"(,"sign":)");
    REQUIRE(sign_at != std::string::npos);
    const std::string sign_member = signed_body.substr(sign_at + 1, signed_body.size() - sign_at - 2);
    // sign first, the response object after it, and a trailing member with a brace in it.
    const std::string reordered = "{ " + sign_member + R"(, "alipay_trade_query_response" : )" + object +
                                  R"(,"note":"}alipay_trade_query_response{"})";
    std::string detail;
    auto answer = read(app, reordered, &detail);
    REQUIRE_MESSAGE(answer.has_value(), detail);
    CHECK(answer->state == QueryState::paid);
    CHECK(answer->payment.total_fen == 1234);

    // The node twice: which copy was signed cannot be told.
    const std::string twice = signed_body.substr(0, signed_body.size() - 1) +
                              R"(,"alipay_trade_query_response":{"code":"10000"}})";
    CHECK(error_of(read(app, twice)) == make_error_code(errc::bad_signature));
    // Not one JSON object, or no node.
    CHECK(error_of(read(app, signed_body + "x")) == make_error_code(errc::malformed_request));
    CHECK(error_of(read(app, "<html>busy</html>")) == make_error_code(errc::malformed_request));
    CHECK(error_of(read(app, R"({"sign":"AAAA"})")) == make_error_code(errc::malformed_request));
    CHECK(error_of(read(app, signed_body.substr(0, signed_body.size() - 20))) ==
          make_error_code(errc::malformed_request));
}

TEST_CASE("read_trade_query: an answer about another out_trade_no is refused")
{
    const AlipayAppKeys app = load(app_config());
    QueriedTrade other = trade();
    other.out_trade_no = "BILL-1002";
    std::string detail;
    CHECK(error_of(read(app, make_trade_query_answer(other, by_alipay()), &detail)) ==
          make_error_code(errc::malformed_request));
    CHECK(detail == "the answer is about another out_trade_no");
    // Without out_trade_no at all.
    std::string object = trade_query_object(trade());
    object = replace_all(object, R"("out_trade_no":"BILL-1001",)", "");
    CHECK(error_of(read(app, sign_alipay_answer("alipay_trade_query_response", object, by_alipay()))) ==
          make_error_code(errc::malformed_request));
}

TEST_CASE("read_trade_query: a paid answer whose amount or trade_no does not read is unusable")
{
    const AlipayAppKeys app = load(app_config());
    const std::string object = trade_query_object(trade());
    auto signed_with = [](std::string text) {
        return sign_alipay_answer("alipay_trade_query_response", text, by_alipay());
    };

    auto three_decimals = read(app, signed_with(replace_all(object, R"("total_amount":"12.34")",
                                                            R"("total_amount":"12.345")")));
    REQUIRE(three_decimals.has_value());
    CHECK(three_decimals->state == QueryState::paid);
    CHECK(three_decimals->payment.kind == EventKind::unusable);
    CHECK(three_decimals->payment.problem ==
          R"(total_amount "12.345" is not an amount in yuan (digits, at most two decimals))");
    CHECK(three_decimals->payment.notification_id == "query:" + std::string(kTradeNo));
    CHECK(three_decimals->payment.bill_id == "BILL-1001");

    auto no_trade_no = read(app, signed_with(replace_all(object, R"("trade_no":")" + std::string(kTradeNo) + "\",",
                                                         "")));
    REQUIRE(no_trade_no.has_value());
    CHECK(no_trade_no->payment.kind == EventKind::unusable);
    CHECK(no_trade_no->payment.problem == "a TRADE_SUCCESS payment without a readable trade_no");
    CHECK(no_trade_no->payment.notification_id == "query:no-trade_no:BILL-1001");

    auto no_amount = read(app, signed_with(replace_all(object, R"("total_amount":"12.34",)", "")));
    REQUIRE(no_amount.has_value());
    CHECK(no_amount->payment.kind == EventKind::unusable);
    CHECK(no_amount->payment.problem == "a TRADE_SUCCESS payment without total_amount");

    // An amount sent as a JSON number reads exactly, as text.
    auto number = read(app, signed_with(replace_all(object, R"("total_amount":"12.34")", R"("total_amount":12.34)")));
    REQUIRE(number.has_value());
    CHECK(number->payment.kind == EventKind::payment);
    CHECK(number->payment.total_fen == 1234);
}

TEST_CASE("read_trade_query: trans_currency names the currency of total_amount")
{
    const AlipayAppKeys app = load(app_config());
    const std::string object = trade_query_object(trade());
    auto with_currency = [&](std::string_view currency) {
        std::string text = object;
        text.insert(text.find(R"("total_amount")"), "\"trans_currency\":\"" + std::string(currency) + "\",");
        return read(app, sign_alipay_answer("alipay_trade_query_response", text, by_alipay()));
    };
    auto usd = with_currency("USD");
    REQUIRE(usd.has_value());
    CHECK(usd->payment.kind == EventKind::payment);
    CHECK(usd->payment.currency == "USD");
    auto empty = with_currency("");
    REQUIRE(empty.has_value());
    CHECK(empty->payment.currency == "CNY");
    auto bad = with_currency("usd");
    REQUIRE(bad.has_value());
    CHECK(bad->payment.kind == EventKind::unusable);
    CHECK(bad->payment.problem == R"(trans_currency "usd" is not a currency code)");
}

TEST_CASE("read_trade_query: HTTP status other than 200")
{
    const AlipayAppKeys app = load(app_config());
    const std::string body = make_trade_query_answer(trade(), by_alipay());
    std::string detail;
    auto status = [&](unsigned code) {
        auto r = read_trade_query(app, "BILL-1001", http(body, code), &detail);
        REQUIRE_FALSE(r.has_value());
        return r.error();
    };
    CHECK(status(502) == make_error_code(errc::provider_unavailable));
    CHECK(detail == "HTTP 502");
    CHECK(status(500) == make_error_code(errc::provider_unavailable));
    CHECK(status(503) == make_error_code(errc::provider_unavailable));
    CHECK(status(429) == make_error_code(errc::provider_unavailable));
    CHECK(status(400) == make_error_code(errc::provider_rejected));
    CHECK(status(404) == make_error_code(errc::provider_rejected));
    CHECK(status(302) == make_error_code(errc::provider_rejected));
    CHECK(status(204) == make_error_code(errc::provider_rejected));
}

TEST_CASE("read_trade_query: certificate mode checks alipay_cert_sn")
{
    const CertModeApp cert = cert_mode_app();
    const auto leaf_key = private_key(cert.leaf.key);
    AnswerSigner s;
    s.alipay_private_key = leaf_key.get();
    s.alipay_cert_sn = cert.keys.alipay_cert_sn;
    const std::string body = make_trade_query_answer(trade(), s);
    // Alipay's order: the response object, then alipay_cert_sn, then sign.
    CHECK(body.find(R"(},"alipay_cert_sn":")" + cert.keys.alipay_cert_sn + R"(","sign":")") != std::string::npos);
    auto answer = read(cert.keys, body);
    REQUIRE(answer.has_value());
    CHECK(answer->state == QueryState::paid);

    // A re-issued certificate paybridge was not given: refused, even though the key still verifies.
    s.alipay_cert_sn = "0123456789abcdef0123456789abcdef";
    std::string detail;
    CHECK(error_of(read(cert.keys, make_trade_query_answer(trade(), s), &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == R"(alipay_cert_sn "0123456789abcdef0123456789abcdef" is not a configured Alipay certificate)");
    // Without alipay_cert_sn, the configured certificate's key decides.
    s.alipay_cert_sn.clear();
    CHECK(read(cert.keys, make_trade_query_answer(trade(), s)).has_value());
}

TEST_CASE("read_trade_query: key rotation in public-key mode")
{
    auto config = app_config();
    config.previous_public_key_pem = other_keys().public_pem;
    const AlipayAppKeys app = load(config);
    const auto previous = private_key(other_keys());
    AnswerSigner old_key;
    old_key.alipay_private_key = previous.get();
    std::string detail;
    auto answer = read(app, make_trade_query_answer(trade(), old_key), &detail);
    REQUIRE_MESSAGE(answer.has_value(), detail);
    CHECK(answer->state == QueryState::paid);
    CHECK(detail == "verified with the previous Alipay key (rotation not finished)");
    CHECK(read(app, make_trade_query_answer(trade(), by_alipay()), &detail).has_value());
    CHECK(detail.empty());
    // Once the previous key is removed from the configuration, its answers are refused.
    CHECK(error_of(read(load(app_config()), make_trade_query_answer(trade(), old_key))) ==
          make_error_code(errc::bad_signature));
}

TEST_CASE("read_trade_query: key rotation in certificate mode selects the key by alipay_cert_sn")
{
    const auto ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    const auto current = keygen::issue(ca, {.common_name = "alipay public cert 2027"});
    const std::int64_t now = std::time(nullptr);
    const auto previous = keygen::issue(ca, {.common_name = "alipay public cert 2026",
                                             .not_before_unix = now - 300 * 86400,
                                             .not_after_unix = now + 3600});
    config::AlipayApp config;
    config.app_id = std::string(kAppId);
    config.public_cert_pem = current.cert_pem;
    config.root_cert_pem = ca.cert_pem;
    config.previous_public_cert_pem = previous.cert_pem;
    const AlipayAppKeys app = load(config);
    REQUIRE(app.keys.size() == 2);
    REQUIRE_FALSE(app.keys[1].cert_sn.empty());
    CHECK(app.keys[0].cert_sn == app.alipay_cert_sn);
    CHECK(app.keys[1].cert_sn != app.alipay_cert_sn);

    // Alipay still signs with the previous certificate and names it.
    const auto previous_key = private_key(previous.key);
    AnswerSigner s;
    s.alipay_private_key = previous_key.get();
    s.alipay_cert_sn = app.keys[1].cert_sn;
    const std::string body = make_trade_query_answer(trade(), s);
    std::string detail;
    auto answer = read(app, body, &detail, now);
    REQUIRE_MESSAGE(answer.has_value(), detail);
    CHECK(detail == "verified with the previous Alipay key (rotation not finished)");
    // Past the previous certificate's notAfter it is no longer used.
    CHECK(error_of(read(app, body, &detail, now + 3601)) == make_error_code(errc::bad_signature));
    // The previous certificate's key with the current certificate's SN: the SN selects the key.
    s.alipay_cert_sn = app.alipay_cert_sn;
    CHECK(error_of(read(app, make_trade_query_answer(trade(), s), &detail, now)) ==
          make_error_code(errc::bad_signature));
}

TEST_CASE("read_trade_query: details never carry buyer data")
{
    const AlipayAppKeys app = load(app_config());
    QueriedTrade other = trade();
    other.out_trade_no = "BILL-1002";
    const std::string bodies[] = {
        make_trade_query_answer(other, by_alipay()),
        make_trade_query_answer(trade(), unsigned_answer()),
        replace_all(make_trade_query_answer(trade(), by_alipay()), "12.34", "12.35"),
        make_trade_query_error("40004", "Business Failed", "ACQ.TRADE_HAS_CLOSE", "158****1234", by_alipay()),
    };
    for (const std::string& body : bodies) {
        std::string detail;
        REQUIRE_FALSE(read(app, body, &detail).has_value());
        CHECK_FALSE(detail.empty());
        CHECK(detail.find("158****1234") == std::string::npos);
        CHECK(detail.find("2088") == std::string::npos);
    }
}

TEST_CASE("make_trade_query_answer: Alipay's layout and fields")
{
    const std::string body = make_trade_query_answer(trade(), by_alipay());
    CHECK(body.starts_with(R"({"alipay_trade_query_response":{"code":"10000","msg":"Success","buyer_logon_id":)"));
    CHECK(body.find(R"("send_pay_date":"2024-05-01 11:59:30","total_amount":"12.34","trade_no":")" +
                    std::string(kTradeNo) + R"(","trade_status":"TRADE_SUCCESS"},"sign":")") != std::string::npos);
    CHECK(body.find(R"("fund_bill_list":[{"amount":"12.34","fund_channel":"ALIPAYACCOUNT"}])") != std::string::npos);
    CHECK(body.ends_with("\"}"));
    const std::string waiting = trade_query_object(trade("WAIT_BUYER_PAY"));
    CHECK(waiting.find("send_pay_date") == std::string::npos);
    CHECK(waiting.find(R"("receipt_amount":"0.00")") != std::string::npos);
    CHECK(make_trade_query_answer(trade(), unsigned_answer()).find("sign") == std::string::npos);
}
