// Alipay re-issues its public certificate (PROTOCOLS.md §1.6): the alipay.open.app.alipaycert.download
// request, checked by the simulator as Alipay would; the reading of its answer (chain to the
// configured roots, SN, signature by the new or a held key); and the downloaded certificates in
// use: query answers naming them (or naming one not held yet, which asks for its download) and
// notifications verified by them.

#include "gateways/alipay/alipay_cert_download.hpp"

#include "alipay_test_support.hpp"
#include "core/error.hpp"
#include "fixture_certs.hpp"
#include "gateways/alipay/alipay_query.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/certificate_book.hpp"
#include "gateways/form.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <ctime>
#include <string>
#include <utility>
#include <vector>

using namespace paybridge;
using namespace paybridge::gateways;
using namespace paybridge::gateways::alipay;
using namespace alipay_test;

namespace {

constexpr std::int64_t kNow = 1714536000;  // 2024-05-01 12:00:00 in Beijing
constexpr std::string_view kGatewayNode = "alipay_open_app_alipaycert_download_response";

AlipayQuerySigner signer(std::string app_cert_sn = std::string(kAppCertSn))
{
    return AlipayQuerySigner{private_key(app_keys()), std::move(app_cert_sn)};
}

std::string sn_of(const std::string& pem)
{
    auto certs = crypto::load_certificates(pem);
    REQUIRE(certs.has_value());
    return crypto::alipay_cert_sn(certs->front().get());
}

// One CA, the certificate configured (alipay_public_cert_file) and the one Alipay re-issued.
struct Alipay {
    keygen::Certificate ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    keygen::Certificate current = keygen::issue(ca, {.common_name = "alipay public cert"});
    // Re-issued after the configured one (a kept copy must be newer than it).
    keygen::Certificate reissued =
        keygen::issue(ca, {.common_name = "alipay public cert", .not_before_unix = std::time(nullptr) - 3600});
    std::string current_sn = sn_of(current.cert_pem);
    std::string reissued_sn = sn_of(reissued.cert_pem);
    crypto::SharedKey current_key = private_key(current.key);
    crypto::SharedKey reissued_key = private_key(reissued.key);
};

const Alipay& provider()
{
    static const Alipay a;
    return a;
}

config::AlipayApp cert_config(bool download = true)
{
    config::AlipayApp app;
    app.app_id = std::string(kAppId);
    app.public_cert_pem = provider().current.cert_pem;
    app.root_cert_pem = provider().ca.cert_pem;
    app.download_certificates = download;
    return app;
}

AnswerSigner signed_by(const crypto::SharedKey& key, std::string alipay_cert_sn)
{
    AnswerSigner s;
    s.alipay_private_key = key.get();
    s.alipay_cert_sn = std::move(alipay_cert_sn);
    return s;
}

Result<ProviderCertificate> read(const AlipayAppKeys& app, std::string body, std::string* detail = nullptr,
                                 std::string_view asked = {})
{
    const std::string sn = asked.empty() ? provider().reissued_sn : std::string(asked);
    return read_cert_download(app, sn, http(std::move(body)), 0, detail);
}

ProviderCertificate provider_certificate(const keygen::Certificate& cert)
{
    auto certs = crypto::load_certificates(cert.cert_pem);
    REQUIRE(certs.has_value());
    X509* x = certs->front().get();
    return ProviderCertificate{.serial = crypto::alipay_cert_sn(x),
                               .key = crypto::certificate_key(x),
                               .not_before = crypto::certificate_not_before(x),
                               .not_after = crypto::certificate_not_after(x)};
}

// A certificate for a P-256 key, issued by `ca`: chains like Alipay's, but holds no RSA key.
std::string ec_certificate(const keygen::Certificate& ca)
{
    EVP_PKEY* key = EVP_EC_gen("P-256");
    REQUIRE(key != nullptr);
    const auto ca_key = private_key(ca.key);
    auto ca_certs = crypto::load_certificates(ca.cert_pem);
    REQUIRE(ca_certs.has_value());
    X509* x = X509_new();
    REQUIRE(x != nullptr);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 424242);
    X509_gmtime_adj(X509_getm_notBefore(x), -86400);
    X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("alipay ec cert"), -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(ca_certs->front().get()));
    REQUIRE(X509_sign(x, ca_key.get(), EVP_sha256()) > 0);
    BIO* bio = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_X509(bio, x) == 1);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string pem(data, static_cast<std::size_t>(n));
    BIO_free(bio);
    X509_free(x);
    EVP_PKEY_free(key);
    return pem;
}

}  // namespace

// ---- the request ----

TEST_CASE("build_cert_download: the exact request for a fixed time, which the simulated gateway accepts")
{
    // The fixture certificates have fixed SNs, so the whole request but its signature is fixed.
    config::AlipayApp config;
    config.app_id = std::string(kAppId);
    config.public_cert_pem = std::string(alipay_fixture::kFixtureLeafPem);
    config.root_cert_pem = std::string(alipay_fixture::kFixtureRootRsaSha256Pem) +
                           std::string(alipay_fixture::kFixtureRootRsaSha1Pem);
    const AlipayAppKeys app = load(config);
    const std::string root_sn =
        std::string(alipay_fixture::kRootRsaSha256Sn) + "_" + std::string(alipay_fixture::kRootRsaSha1Sn);
    REQUIRE(app.alipay_root_cert_sn == root_sn);
    const std::string wanted = "0123456789abcdef0123456789abcdef";

    auto request = build_cert_download(app, signer(), "/gateway.do", wanted, kNow);
    REQUIRE(request.has_value());
    CHECK(request->method == "POST");
    CHECK(request->headers == std::vector<std::pair<std::string, std::string>>{
                                  {"Content-Type", "application/x-www-form-urlencoded;charset=utf-8"}});
    CHECK(request->target.starts_with(
        "/gateway.do?app_id=2021000000000001&method=alipay.open.app.alipaycert.download&format=JSON&"
        "charset=utf-8&sign_type=RSA2&timestamp=2024-05-01%2012%3A00%3A00&version=1.0&"
        "app_cert_sn=f5476a255774929671073404f7af2b90&alipay_root_cert_sn=" +
        root_sn + "&sign="));
    CHECK(request->body == "biz_content=%7B%22alipay_cert_sn%22%3A%220123456789abcdef0123456789abcdef%22%7D");

    const std::string expected = "alipay_root_cert_sn=" + root_sn +
                                 "&app_cert_sn=f5476a255774929671073404f7af2b90&app_id=2021000000000001&"
                                 "biz_content={\"alipay_cert_sn\":\"0123456789abcdef0123456789abcdef\"}&"
                                 "charset=utf-8&format=JSON&method=alipay.open.app.alipaycert.download&"
                                 "sign_type=RSA2&timestamp=2024-05-01 12:00:00&version=1.0";
    auto signature = crypto::base64_decode(target_param(request->target, "sign"));
    REQUIRE(signature.has_value());
    const auto app_public = public_key(app_keys());
    CHECK(crypto::rsa_verify(app_public.get(), crypto::Digest::sha256, expected, *signature));
    CHECK_FALSE(crypto::rsa_verify(app_public.get(), crypto::Digest::sha256, expected + "&", *signature));

    const TradeQueryCheck check{.app_id = std::string(kAppId),
                                .app_cert_sn = std::string(kAppCertSn),
                                .alipay_root_cert_sn = root_sn};
    std::string problem;
    auto sn = check_cert_download_request(request->target, request->body, app_public.get(), check, &problem);
    REQUIRE_MESSAGE(sn.has_value(), problem);
    CHECK(*sn == wanted);

    // The same app's trade query is the same request but for its method and biz_content.
    auto query = build_trade_query(app, signer(), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(query.has_value());
    constexpr std::string_view kMethod = "alipay.open.app.alipaycert.download";
    std::string as_query = request->target.substr(0, request->target.find("&sign="));
    as_query.replace(as_query.find(kMethod), kMethod.size(), "alipay.trade.query");
    CHECK(query->target.substr(0, query->target.find("&sign=")) == as_query);
}

TEST_CASE("build_cert_download: refused inputs")
{
    const AlipayAppKeys app = load(cert_config());
    const std::string sn = provider().reissued_sn;
    auto refused = [](const Result<QueryRequest>& r) { return error_of(r) == make_error_code(errc::invalid_argument); };
    CHECK(refused(build_cert_download(app, signer(), "/gateway.do", "", kNow)));
    CHECK(refused(build_cert_download(app, signer(""), "/gateway.do", sn, kNow)));  // no app_cert_sn
    CHECK(refused(build_cert_download(app, AlipayQuerySigner{.app_cert_sn = std::string(kAppCertSn)}, "/gateway.do",
                                      sn, kNow)));  // no key
    CHECK(refused(build_cert_download(app, signer(), "gateway.do", sn, kNow)));
    CHECK(refused(build_cert_download(app, signer(), "/gateway.do#x", sn, kNow)));
    // A public-key-mode app has no certificate to download.
    CHECK(refused(build_cert_download(load(app_config()), signer(), "/gateway.do", sn, kNow)));
}

TEST_CASE("check_cert_download_request: what Alipay's gateway refuses")
{
    const AlipayAppKeys app = load(cert_config());
    const TradeQueryCheck check{.app_id = std::string(kAppId),
                                .app_cert_sn = std::string(kAppCertSn),
                                .alipay_root_cert_sn = app.alipay_root_cert_sn};
    const auto app_public = public_key(app_keys());
    auto refusal = [&](std::string_view target, std::string_view body) {
        std::string problem;
        auto r = check_cert_download_request(target, body, app_public.get(), check, &problem);
        REQUIRE_FALSE(r.has_value());
        return std::make_pair(r.error(), problem);
    };
    auto download = build_cert_download(app, signer(), "/gateway.do", provider().reissued_sn, kNow);
    REQUIRE(download.has_value());
    // Another SN in the body than the one signed.
    const std::string other = "biz_content=" + form_encode(R"({"alipay_cert_sn":"00000000000000000000000000000000"})");
    CHECK(refusal(download->target, other) ==
          std::make_pair(make_error_code(errc::bad_signature), std::string("sign does not verify")));
    // A trade query is not a download, nor the other way round.
    auto query = build_trade_query(app, signer(), "/gateway.do", "BILL-1001", kNow);
    REQUIRE(query.has_value());
    CHECK(refusal(query->target, query->body) ==
          std::make_pair(make_error_code(errc::malformed_request),
                         std::string("method is not alipay.open.app.alipaycert.download")));
    std::string problem;
    auto as_query = check_trade_query_request(download->target, download->body, app_public.get(), check, &problem);
    REQUIRE_FALSE(as_query.has_value());
    CHECK(problem == "method is not alipay.trade.query");
    // Public-key mode SNs are refused by a certificate-mode gateway.
    auto no_sns = check_cert_download_request(download->target, download->body, app_public.get(),
                                              {.app_id = std::string(kAppId)}, &problem);
    REQUIRE_FALSE(no_sns.has_value());
    CHECK(problem == "app_cert_sn or alipay_root_cert_sn is not the expected one");
}

// ---- the answer ----

TEST_CASE("read_cert_download: the re-issued certificate, signed with its own key, round trip")
{
    const AlipayAppKeys app = load(cert_config());
    const Alipay& a = provider();
    const std::string body = make_cert_download_answer(a.reissued.cert_pem, signed_by(a.reissued_key, a.reissued_sn));
    CHECK(body.starts_with(R"({"alipay_open_app_alipaycert_download_response":{"code":"10000","msg":"Success",)"
                           R"("alipay_cert_content":")" +
                           crypto::base64_encode(a.reissued.cert_pem) + R"("},"alipay_cert_sn":")" + a.reissued_sn +
                           R"(","sign":")"));
    std::string detail = "stale";
    auto cert = read(app, body, &detail);
    REQUIRE_MESSAGE(cert.has_value(), detail);
    CHECK(detail.empty());
    const ProviderCertificate expected = provider_certificate(a.reissued);
    CHECK(cert->serial == a.reissued_sn);
    CHECK(cert->serial.size() == 32);
    CHECK(cert->not_before == expected.not_before);
    CHECK(cert->not_after == expected.not_after);
    CHECK(cert->not_after > cert->not_before);
    REQUIRE(cert->key);
    CHECK(EVP_PKEY_eq(cert->key.get(), expected.key.get()) == 1);
    CHECK(EVP_PKEY_eq(cert->key.get(), public_key(a.reissued.key).get()) == 1);

    // Signed with the configured certificate (which it names), or naming none: accepted too.
    auto by_current = read(app, make_cert_download_answer(a.reissued.cert_pem, signed_by(a.current_key, a.current_sn)),
                           &detail);
    REQUIRE_MESSAGE(by_current.has_value(), detail);
    CHECK(by_current->serial == a.reissued_sn);
    auto unnamed = read(app, make_cert_download_answer(a.reissued.cert_pem, signed_by(a.reissued_key, "")), &detail);
    REQUIRE_MESSAGE(unnamed.has_value(), detail);
    CHECK(unnamed->serial == a.reissued_sn);
}

TEST_CASE("read_cert_download: the certificate may come with its intermediate, in either order")
{
    const auto root = keygen::make_ca({.common_name = "Test Root"});
    const auto intermediate = keygen::issue(root, {.common_name = "Test Intermediate", .is_ca = true});
    const auto current = keygen::issue(intermediate, {.common_name = "alipay public cert"});
    const auto reissued = keygen::issue(intermediate, {.common_name = "alipay public cert"});
    config::AlipayApp config = cert_config();
    config.public_cert_pem = current.cert_pem + intermediate.cert_pem;
    config.root_cert_pem = root.cert_pem;
    const AlipayAppKeys app = load(config);
    const std::string sn = sn_of(reissued.cert_pem);
    const auto key = private_key(reissued.key);
    for (const std::string& file : {reissued.cert_pem + intermediate.cert_pem, intermediate.cert_pem + reissued.cert_pem}) {
        std::string detail;
        auto cert = read_cert_download(app, sn, http(make_cert_download_answer(file, signed_by(key, sn))), 0, &detail);
        REQUIRE_MESSAGE(cert.has_value(), detail);
        CHECK(cert->serial == sn);
    }
    // Without the intermediate it does not reach the root.
    std::string detail;
    CHECK(error_of(read_cert_download(app, sn, http(make_cert_download_answer(reissued.cert_pem, signed_by(key, sn))),
                                      0, &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + sn + " does not chain to alipay_root_cert_file");
}

TEST_CASE("read_cert_download: a certificate that is not the one asked for, or not trusted, is refused")
{
    const AlipayAppKeys app = load(cert_config());
    const Alipay& a = provider();
    std::string detail;

    // Another certificate of Alipay's CA than the one asked for.
    const std::string asked = "0123456789abcdef0123456789abcdef";
    CHECK(error_of(read(app, make_cert_download_answer(a.reissued.cert_pem, signed_by(a.reissued_key, a.reissued_sn)),
                        &detail, asked)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + a.reissued_sn +
                        R"( is not the one asked for ("0123456789abcdef0123456789abcdef"))");

    // From another CA, though it names itself and signs with its own key.
    const auto other_ca = keygen::make_ca({.common_name = "Test Alipay Root"});  // the same name, another key
    const auto stranger = keygen::issue(other_ca, {.common_name = "alipay public cert"});
    const std::string stranger_sn = sn_of(stranger.cert_pem);
    const auto stranger_key = private_key(stranger.key);
    CHECK(error_of(read(app, make_cert_download_answer(stranger.cert_pem, signed_by(stranger_key, stranger_sn)),
                        &detail, stranger_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + stranger_sn + " does not chain to alipay_root_cert_file");
    // Even when the answer is signed with the configured key: the chain decides.
    CHECK(error_of(read(app, make_cert_download_answer(stranger.cert_pem, signed_by(a.current_key, a.current_sn)),
                        &detail, stranger_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + stranger_sn + " does not chain to alipay_root_cert_file");

    // The root also issues merchants' app certificates, whose holders have their keys: one of them
    // (another subject) is not Alipay's, though it chains, names itself and signs with its own key.
    const auto merchant_app = keygen::issue(a.ca, {.common_name = "2088000000000009-2021000000000009"});
    const std::string merchant_sn = sn_of(merchant_app.cert_pem);
    const auto merchant_key = private_key(merchant_app.key);
    CHECK(error_of(read(app, make_cert_download_answer(merchant_app.cert_pem, signed_by(merchant_key, merchant_sn)),
                        &detail, merchant_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + merchant_sn + " does not name the subject of alipay_public_cert_file");
    // Nor is a CA certificate, even of Alipay's name.
    const auto ca_named = keygen::issue(a.ca, {.common_name = "alipay public cert", .is_ca = true});
    const std::string ca_sn = sn_of(ca_named.cert_pem);
    CHECK(error_of(read(app, make_cert_download_answer(ca_named.cert_pem, signed_by(a.current_key, a.current_sn)),
                        &detail, ca_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + ca_sn + " is a CA certificate");

    // Expired, and not valid yet.
    const std::int64_t now = std::time(nullptr);
    const auto expired = keygen::issue(a.ca, {.common_name = "alipay public cert", .not_before_unix = now - 20 * 86400,
                                              .not_after_unix = now - 10 * 86400});
    const std::string expired_sn = sn_of(expired.cert_pem);
    const auto expired_key = private_key(expired.key);
    CHECK(error_of(read(app, make_cert_download_answer(expired.cert_pem, signed_by(expired_key, expired_sn)), &detail,
                        expired_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + expired_sn + " has expired");
    const auto future = keygen::issue(a.ca, {.common_name = "alipay public cert", .not_before_unix = now + 10 * 86400,
                                             .not_after_unix = now + 20 * 86400});
    const std::string future_sn = sn_of(future.cert_pem);
    CHECK(error_of(read(app, make_cert_download_answer(future.cert_pem, signed_by(a.current_key, a.current_sn)),
                        &detail, future_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + future_sn + " is not valid yet");
    // The same certificates are accepted at a time they are valid (now_unix is the judge).
    CHECK(read_cert_download(app, future_sn,
                             http(make_cert_download_answer(future.cert_pem, signed_by(a.current_key, a.current_sn))),
                             now + 15 * 86400)
              .has_value());

    // Chained and valid, but not an RSA key (Alipay signs RSA2).
    const std::string ec = ec_certificate(a.ca);
    const std::string ec_sn = sn_of(ec);
    CHECK(error_of(read(app, make_cert_download_answer(ec, signed_by(a.current_key, a.current_sn)), &detail, ec_sn)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + ec_sn + " does not hold an RSA public key");

    // Content that is not a certificate.
    const std::string not_base64 = sign_alipay_answer(
        kGatewayNode, R"({"code":"10000","msg":"Success","alipay_cert_content":"@@@"})", signed_by(a.current_key, ""));
    CHECK(error_of(read(app, not_base64, &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "alipay_cert_content is not base64");
    CHECK(error_of(read(app, make_cert_download_answer("not a certificate", signed_by(a.current_key, "")), &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "alipay_cert_content holds no PEM certificate, or one that does not read");
}

TEST_CASE("read_cert_download: unsigned and forged answers are not trusted")
{
    const AlipayAppKeys app = load(cert_config());
    const Alipay& a = provider();
    std::string detail;

    // Unsigned: a good certificate is still not taken from an answer nobody signed.
    CHECK(error_of(read(app, make_cert_download_answer(a.reissued.cert_pem, AnswerSigner{}), &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == R"(unsigned answer, code "10000")");

    // Signed with a key that is neither the certificate's nor a held one, whatever it names.
    const auto stranger = private_key(other_keys());
    for (const std::string& named : {a.reissued_sn, a.current_sn, std::string()}) {
        CHECK(error_of(read(app, make_cert_download_answer(a.reissued.cert_pem, signed_by(stranger, named)),
                            &detail)) == make_error_code(errc::bad_signature));
        CHECK(detail == "no key verifies the sign");
    }
    // Naming a certificate that is neither the downloaded one nor held.
    CHECK(error_of(read(app, make_cert_download_answer(a.reissued.cert_pem,
                                                        signed_by(a.reissued_key, "00000000000000000000000000000000")),
                        &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == R"(alipay_cert_sn "00000000000000000000000000000000" is neither the downloaded certificate nor one held)");

    // Changed after signing: the content is another certificate (also Alipay's, valid and chained).
    const std::string body = make_cert_download_answer(a.reissued.cert_pem, signed_by(a.current_key, a.current_sn));
    const std::string swapped = sign_alipay_answer(kGatewayNode, cert_download_object(a.current.cert_pem),
                                                   signed_by(a.current_key, a.current_sn));
    const std::string sign = body.substr(body.rfind(R"("sign":)"));
    const std::string forged = swapped.substr(0, swapped.rfind(R"("sign":)")) + sign;
    REQUIRE(forged != swapped);
    CHECK(error_of(read(app, forged, &detail, a.current_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "no key verifies the sign");
    CHECK(read(app, swapped, &detail, a.current_sn).has_value());  // the untouched one reads

    // The response object twice.
    const std::string twice = body.substr(0, body.size() - 1) + ",\"" + std::string(kGatewayNode) +
                              R"(":{"code":"10000"}})";
    CHECK(error_of(read(app, twice, &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "a top-level key appears twice");
    // The trade query's node is not this one's.
    CHECK(error_of(read(app, make_trade_query_error("10000", "Success", "", "", signed_by(a.current_key, "")),
                        &detail)) == make_error_code(errc::malformed_request));
    CHECK(detail == "no alipay_open_app_alipaycert_download_response or error_response object");
}

TEST_CASE("read_cert_download: Alipay's error codes and HTTP statuses")
{
    const AlipayAppKeys app = load(cert_config());
    const Alipay& a = provider();
    const AnswerSigner by_current = signed_by(a.current_key, a.current_sn);
    std::string detail;

    CHECK(error_of(read(app, make_cert_download_error("40004", "Business Failed", "isv.cert-not-exist", "", by_current),
                        &detail)) == make_error_code(errc::provider_rejected));
    CHECK(detail == R"(code "40004" sub_code "isv.cert-not-exist")");
    CHECK(error_of(read(app, make_cert_download_error("40002", "Invalid Arguments", "isv.invalid-signature", "",
                                                      by_current),
                        &detail)) == make_error_code(errc::provider_rejected));
    CHECK(detail == R"(code "40002" sub_code "isv.invalid-signature")");
    CHECK(error_of(read(app, make_cert_download_error("20000", "Service Currently Unavailable", "isp.unknow-error", "",
                                                      by_current),
                        &detail)) == make_error_code(errc::provider_unavailable));
    CHECK(detail == R"(code "20000" sub_code "isp.unknow-error")");
    // Signed success without the certificate.
    CHECK(error_of(read(app, sign_alipay_answer(kGatewayNode, R"({"code":"10000","msg":"Success"})", by_current),
                        &detail)) == make_error_code(errc::malformed_request));
    CHECK(detail == "no alipay_cert_content");
    // Unsigned errors are only classified.
    CHECK(error_of(read(app, make_cert_download_error("20000", "Service Currently Unavailable", "", "", AnswerSigner{}),
                        &detail)) == make_error_code(errc::provider_unavailable));
    CHECK(detail == R"(unsigned answer, code "20000")");
    CHECK(error_of(read(app, make_cert_download_error("40004", "Business Failed", "isv.cert-not-exist", "",
                                                      AnswerSigner{}),
                        &detail)) == make_error_code(errc::provider_rejected));
    // error_response (a bad method or parameters) is read the same way.
    CHECK(error_of(read(app, sign_alipay_answer("error_response", R"({"code":"40001","msg":"Missing Required Arguments"})",
                                                by_current),
                        &detail)) == make_error_code(errc::provider_rejected));
    CHECK(detail == R"(code "40001")");

    const std::string good = make_cert_download_answer(a.reissued.cert_pem, by_current);
    auto status = [&](unsigned code) {
        return error_of(read_cert_download(app, a.reissued_sn, http(good, code), 0, &detail));
    };
    CHECK(status(502) == make_error_code(errc::provider_unavailable));
    CHECK(detail == "HTTP 502");
    CHECK(status(500) == make_error_code(errc::provider_unavailable));
    CHECK(status(429) == make_error_code(errc::provider_unavailable));
    CHECK(status(400) == make_error_code(errc::provider_rejected));
    CHECK(detail == "HTTP 400");
    CHECK(status(404) == make_error_code(errc::provider_rejected));
    CHECK(status(302) == make_error_code(errc::provider_rejected));

    // A public-key-mode app has no roots to check a certificate against.
    CHECK(error_of(read(load(app_config()), good, &detail)) == make_error_code(errc::invalid_argument));
}

TEST_CASE("read_cert_download: the answer may be signed with a certificate downloaded before")
{
    CertificateBooks books;
    const AlipayAppKeys app = load(cert_config(), &books);
    const Alipay& a = provider();
    const auto next = keygen::issue(a.ca, {.common_name = "alipay public cert"});
    const std::string next_sn = sn_of(next.cert_pem);
    const std::string body = make_cert_download_answer(next.cert_pem, signed_by(a.reissued_key, a.reissued_sn));
    std::string detail;
    CHECK(error_of(read(app, body, &detail, next_sn)) == make_error_code(errc::bad_signature));
    CHECK(detail == "alipay_cert_sn \"" + a.reissued_sn + "\" is neither the downloaded certificate nor one held");
    app.downloaded->replace({provider_certificate(a.reissued)});
    auto cert = read(app, body, &detail, next_sn);
    REQUIRE_MESSAGE(cert.has_value(), detail);
    CHECK(cert->serial == next_sn);
    CHECK(detail == "verified with the downloaded Alipay certificate " + a.reissued_sn);
}

// ---- the downloaded certificates in use ----

TEST_CASE("load_alipay_app: a book for certificate-mode apps with download_certificates when books are given")
{
    CertificateBooks books;
    const AlipayAppKeys app = load(cert_config(), &books);
    REQUIRE(app.downloaded);
    CHECK(app.downloaded == books.book(std::string(kAppId)));
    CHECK(app.downloaded->account() == kAppId);
    REQUIRE(app.roots);
    CHECK(app.roots->size() == 1);
    CHECK(books.all().size() == 1);

    CHECK_FALSE(load(cert_config(), nullptr).downloaded);          // no registry: --check, tests
    CHECK_FALSE(load(cert_config(false), &books).downloaded);      // not asked for
    auto key_mode = app_config();
    key_mode.download_certificates = true;                          // refused by the config loader
    const AlipayAppKeys key_app = load(key_mode, &books);
    CHECK_FALSE(key_app.downloaded);
    CHECK_FALSE(key_app.roots);
    CHECK(books.all().size() == 1);

    // The gateway's apps get the same book.
    std::vector<std::string> problems;
    auto gw = make_alipay_gateway({cert_config()}, problems, &books);
    REQUIRE(gw.has_value());
    const auto* alipay_gw = dynamic_cast<const AlipayGateway*>(gw->get());
    REQUIRE(alipay_gw != nullptr);
    CHECK(alipay_gw->find_app(kAppId)->downloaded == app.downloaded);
}

TEST_CASE("read_trade_query: an alipay_cert_sn not held asks for its download, once held it verifies")
{
    CertificateBooks books;
    std::vector<std::pair<std::string, std::string>> asked;
    books.set_hook([&asked](const std::string& account, const std::string& serial) { asked.emplace_back(account, serial); });
    const AlipayAppKeys app = load(cert_config(), &books);
    const Alipay& a = provider();
    QueriedTrade trade;
    trade.out_trade_no = "BILL-1001";
    trade.amount_fen = 1234;
    trade.trade_no = "2024050122001400001234567890";
    trade.paid_unix_ms = 1714535970000;
    const std::string body = make_trade_query_answer(trade, signed_by(a.reissued_key, a.reissued_sn));

    std::string detail;
    CHECK(error_of(read_trade_query(app, "BILL-1001", http(body), &detail)) ==
          make_error_code(errc::provider_unavailable));
    CHECK(detail == "signed with Alipay certificate \"" + a.reissued_sn + "\", not held yet: its download was asked for");
    CHECK(asked == std::vector<std::pair<std::string, std::string>>{{std::string(kAppId), a.reissued_sn}});

    // Held (downloaded meanwhile): verified with it, and said so.
    app.downloaded->replace({provider_certificate(a.reissued)});
    auto answer = read_trade_query(app, "BILL-1001", http(body), &detail);
    REQUIRE_MESSAGE(answer.has_value(), detail);
    CHECK(answer->state == QueryState::paid);
    CHECK(answer->payment.total_fen == 1234);
    CHECK(detail == "verified with the downloaded Alipay certificate " + a.reissued_sn);
    // Naming no certificate, the held one is tried after the configured one.
    auto unnamed = read_trade_query(app, "BILL-1001", http(make_trade_query_answer(trade, signed_by(a.reissued_key, ""))),
                                    &detail);
    REQUIRE_MESSAGE(unnamed.has_value(), detail);
    CHECK(detail == "verified with the downloaded Alipay certificate " + a.reissued_sn);
    // The SN selects the key: the held certificate's SN with another key is refused.
    CHECK(error_of(read_trade_query(app, "BILL-1001",
                                    http(make_trade_query_answer(trade, signed_by(a.current_key, a.reissued_sn))),
                                    &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "no key verifies the sign");
    // Outside its validity it is not used.
    const ProviderCertificate held = provider_certificate(a.reissued);
    CHECK(error_of(read_trade_query(app, "BILL-1001", http(body), &detail, held.not_after + 1)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "alipay_cert_sn \"" + a.reissued_sn + "\" is a downloaded Alipay certificate not valid now");
    // The configured certificate still verifies without a note.
    auto configured = read_trade_query(
        app, "BILL-1001", http(make_trade_query_answer(trade, signed_by(a.current_key, a.current_sn))), &detail);
    REQUIRE_MESSAGE(configured.has_value(), detail);
    CHECK(detail.empty());
    CHECK(asked.size() == 1);  // nothing else was asked for

    // Something that is not an SN is not asked for.
    const std::string not_sn = make_trade_query_answer(trade, signed_by(a.reissued_key, "../../etc/passwd"));
    CHECK(error_of(read_trade_query(app, "BILL-1001", http(not_sn), &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == R"(alipay_cert_sn "../../etc/passwd" is not a configured Alipay certificate)");
    CHECK(asked.size() == 1);

    // Without a book: the SN is refused as before, nothing is asked for.
    const AlipayAppKeys without = load(cert_config(false), &books);
    CHECK(error_of(read_trade_query(without, "BILL-1001", http(body), &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "alipay_cert_sn \"" + a.reissued_sn + "\" is not a configured Alipay certificate");
    CHECK(asked.size() == 1);
}

TEST_CASE("notifications: verified by a downloaded certificate, with a note, and refused without it")
{
    CertificateBooks books;
    int hook_calls = 0;
    books.set_hook([&hook_calls](const std::string&, const std::string&) { ++hook_calls; });
    std::vector<std::string> problems;
    auto made = make_alipay_gateway({cert_config()}, problems, &books);
    REQUIRE(made.has_value());
    const auto& gw = dynamic_cast<const AlipayGateway&>(**made);
    const Alipay& a = provider();
    const auto notice = make_paid_notice(spec());
    const std::string by_reissued = build_alipay_body(notice, a.reissued_key.get());
    const std::string by_current = build_alipay_body(notice, a.current_key.get());

    auto before = gw.verify(by_reissued);
    REQUIRE_FALSE(before.has_value());
    CHECK(before.error() == make_error_code(errc::bad_signature));
    CHECK(hook_calls == 0);  // a notification names no certificate: nothing to ask for

    books.book(std::string(kAppId))->replace({provider_certificate(a.reissued)});
    auto after = gw.verify(by_reissued);
    REQUIRE(after.has_value());
    CHECK(after->notes == "verified with the downloaded Alipay certificate " + a.reissued_sn);
    gateways::InboundRequest req;
    req.body = by_reissued;
    auto parsed = gw.verify_and_parse(req);
    REQUIRE(parsed.has_value());
    CHECK(parsed->event.kind == EventKind::payment);
    CHECK(parsed->notes == "verified with the downloaded Alipay certificate " + a.reissued_sn);

    // The configured certificate first, without a note.
    auto current = gw.verify(by_current);
    REQUIRE(current.has_value());
    CHECK(current->notes.empty());
    // Outside the downloaded certificate's validity, and with a key nobody holds: refused.
    const ProviderCertificate held = provider_certificate(a.reissued);
    CHECK_FALSE(gw.verify(by_reissued, {}, held.not_after + 1).has_value());
    CHECK_FALSE(gw.verify(by_reissued, {}, held.not_before - 1).has_value());
    CHECK(gw.verify(by_reissued, {}, held.not_after).has_value());
    CHECK_FALSE(gw.verify(build_alipay_body(notice, private_key(other_keys()).get())).has_value());
    // An app without download_certificates has no book: refused.
    CertificateBooks other_books;
    other_books.book(std::string(kAppId))->replace({provider_certificate(a.reissued)});
    auto plain = make_alipay_gateway({cert_config(false)}, problems, &other_books);
    REQUIRE(plain.has_value());
    CHECK_FALSE(dynamic_cast<const AlipayGateway&>(**plain).verify(by_reissued).has_value());
    CHECK(hook_calls == 0);
}

TEST_CASE("check_kept_certificate: a downloaded certificate, kept as read_cert_download gave it, checks again")
{
    const AlipayAppKeys app = load(cert_config());
    const Alipay& a = provider();
    // Whitespace inside alipay_cert_content (as some answers wrap it) is not kept.
    std::string wrapped = crypto::base64_encode(a.reissued.cert_pem);
    wrapped.insert(64, "\\r\\n");
    wrapped.insert(10, " ");
    const std::string body = sign_alipay_answer(
        kGatewayNode, R"({"code":"10000","msg":"Success","alipay_cert_content":")" + wrapped + R"("})",
        signed_by(a.reissued_key, a.reissued_sn));
    REQUIRE(body.find("\\r\\n") != std::string::npos);
    std::string detail;
    std::string content = "stale";
    auto downloaded = read_cert_download(app, a.reissued_sn, http(body), 0, &detail, &content);
    REQUIRE_MESSAGE(downloaded.has_value(), detail);
    CHECK(content == crypto::base64_encode(a.reissued.cert_pem));
    CHECK(content.find_first_of(" \r\n\t") == std::string::npos);

    auto kept = check_kept_certificate(app, a.reissued_sn, content, 0, &detail);
    REQUIRE_MESSAGE(kept.has_value(), detail);
    CHECK(detail.empty());
    CHECK(kept->serial == a.reissued_sn);
    CHECK(kept->not_after == downloaded->not_after);
    CHECK(kept->not_before == downloaded->not_before);
    CHECK(EVP_PKEY_eq(kept->key.get(), downloaded->key.get()) == 1);

    // A failed download gives no content.
    std::string untouched = "untouched";
    CHECK(!read_cert_download(app, "0123456789abcdef0123456789abcdef", http(body), 0, &detail, &untouched).has_value());
    CHECK(untouched == "untouched");
}

TEST_CASE("check_kept_certificate: what was kept is checked as a download is, against this app's configuration")
{
    const AlipayAppKeys app = load(cert_config());
    const Alipay& a = provider();
    std::string detail;
    const auto kept_as = [](const std::string& pem) { return crypto::base64_encode(pem); };

    // Under another SN than its own.
    CHECK(error_of(check_kept_certificate(app, "0123456789abcdef0123456789abcdef", kept_as(a.reissued.cert_pem), 0,
                                          &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + a.reissued_sn +
                        R"( is not the one asked for ("0123456789abcdef0123456789abcdef"))");
    // Another CA's, kept under its own SN (someone wrote it into Redis, or an instance configured
    // with another root kept it).
    const auto other_ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    const auto stranger = keygen::issue(other_ca, {.common_name = "alipay public cert"});
    const std::string stranger_sn = sn_of(stranger.cert_pem);
    CHECK(error_of(check_kept_certificate(app, stranger_sn, kept_as(stranger.cert_pem), 0, &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + stranger_sn + " does not chain to alipay_root_cert_file");
    // A merchant's app certificate of the same root.
    const auto merchant_app = keygen::issue(a.ca, {.common_name = "2088000000000009-2021000000000009"});
    const std::string merchant_sn = sn_of(merchant_app.cert_pem);
    CHECK(error_of(check_kept_certificate(app, merchant_sn, kept_as(merchant_app.cert_pem), 0, &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + merchant_sn + " does not name the subject of alipay_public_cert_file");
    // Expired since it was kept.
    const std::int64_t now = std::time(nullptr);
    const auto expired = keygen::issue(a.ca, {.common_name = "alipay public cert", .not_before_unix = now - 20 * 86400,
                                              .not_after_unix = now - 10 * 86400});
    const std::string expired_sn = sn_of(expired.cert_pem);
    CHECK(error_of(check_kept_certificate(app, expired_sn, kept_as(expired.cert_pem), 0, &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + expired_sn + " has expired");
    // Alipay's, valid, chained, but not newer than the configured one: a retired certificate is
    // not brought back (a download of it needs Alipay to name it; a kept copy does not).
    const auto retired = keygen::issue(a.ca, {.common_name = "alipay public cert", .not_before_unix = now - 2 * 86400});
    const std::string retired_sn = sn_of(retired.cert_pem);
    CHECK(error_of(check_kept_certificate(app, retired_sn, kept_as(retired.cert_pem), 0, &detail)) ==
          make_error_code(errc::bad_signature));
    CHECK(detail == "the downloaded certificate " + retired_sn +
                        " is not newer than alipay_public_cert_file (an older certificate is not brought back)");
    // Damaged.
    CHECK(error_of(check_kept_certificate(app, a.reissued_sn, "@@@", 0, &detail)) == make_error_code(errc::bad_signature));
    CHECK(detail == "alipay_cert_content is not base64");
    CHECK(error_of(check_kept_certificate(app, a.reissued_sn, kept_as("not a certificate"), 0, &detail)) ==
          make_error_code(errc::bad_signature));
    // A public-key-mode app trusts no certificate; an empty SN is no SN.
    config::AlipayApp public_key_mode;
    public_key_mode.app_id = std::string(kAppId);
    public_key_mode.public_key_pem = a.current.key.public_pem;
    const AlipayAppKeys pk_app = load(public_key_mode);
    CHECK(error_of(check_kept_certificate(pk_app, a.reissued_sn, kept_as(a.reissued.cert_pem), 0, &detail)) ==
          make_error_code(errc::invalid_argument));
    CHECK(error_of(check_kept_certificate(app, "", kept_as(a.reissued.cert_pem), 0, &detail)) ==
          make_error_code(errc::invalid_argument));
}
