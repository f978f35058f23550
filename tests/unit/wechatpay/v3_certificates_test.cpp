#include "core/error.hpp"
#include "gateways/wechatpay/wechatpay_certificates.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"
#include "tests/support/json.hpp"
#include "tests/unit/wechatpay/fixtures.hpp"

#include <doctest/doctest.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using namespace wxtest;
using paybridge::errc;

namespace {

/// The merchant API certificate's serial (serial_no in Authorization).
constexpr const char* kMerchantSerial = "3775B6A45ACD588826D15E583A95F5DD12345678";
constexpr const char* kNonce = "593BEC0C930BF1AFEB40B4A08C8FB242";
/// kPlatformSerial as certificate_serial_hex and normalize_serial give it (no leading zero).
constexpr const char* kPlatformNormal = "A1B2C3D4E5F60718293A4B5C6D7E8F901234567";
/// The certificate WeChat Pay adds during a rotation, which the merchant has not configured.
constexpr const char* kNextSerial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
constexpr std::int64_t kNextNotBefore = 1700000000;  // 2023-11-15T06:13:20+08:00
constexpr std::int64_t kNextNotAfter = 2000000000;   // 2033-05-18T11:33:20+08:00

using Listed = std::pair<std::string, std::string>;  // PEM, serial_no as WeChat writes it

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

std::vector<sim::V3ApiMerchant> api_merchants()
{
    auto key = crypto::load_public_key(merchant_api_keys().public_pem);
    REQUIRE(key);
    return {sim::V3ApiMerchant{.mchid = kMchid, .serial_no = kMerchantSerial, .public_key = *key}};
}

const keygen::Certificate& next_certificate()
{
    static const keygen::Certificate cert =
        keygen::issue(keys().ca(), {.common_name = "Tenpay.com platform 2",
                                    .serial_hex = kNextSerial,
                                    .not_before_unix = kNextNotBefore,
                                    .not_after_unix = kNextNotAfter});
    return cert;
}

template <auto Fn>
struct FreeWith {
    template <class T>
    void operator()(T* p) const noexcept
    {
        Fn(p);
    }
};

/// A certificate for a P-256 key, issued by the test CA: a well-formed certificate WeChat Pay's
/// RSA verification cannot use.
std::string ec_certificate_pem(const char* serial_hex)
{
    std::unique_ptr<EVP_PKEY, FreeWith<EVP_PKEY_free>> key(EVP_EC_gen("P-256"));
    REQUIRE(key);
    std::unique_ptr<BIO, FreeWith<BIO_free>> ca_bio(
        BIO_new_mem_buf(keys().ca().cert_pem.data(), static_cast<int>(keys().ca().cert_pem.size())));
    std::unique_ptr<X509, FreeWith<X509_free>> ca(PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr));
    REQUIRE(ca);
    const auto ca_key = private_key(keys().ca().key.private_pem);

    std::unique_ptr<X509, FreeWith<X509_free>> cert(X509_new());
    REQUIRE(X509_set_version(cert.get(), 2) == 1);
    BIGNUM* raw = nullptr;
    REQUIRE(BN_hex2bn(&raw, serial_hex) != 0);
    std::unique_ptr<BIGNUM, FreeWith<BN_free>> serial(raw);
    REQUIRE(BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) != nullptr);
    ASN1_TIME_set(X509_getm_notBefore(cert.get()), kNextNotBefore);
    ASN1_TIME_set(X509_getm_notAfter(cert.get()), kNextNotAfter);
    REQUIRE(X509_set_pubkey(cert.get(), key.get()) == 1);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>("Tenpay.com EC"), -1, -1, 0);
    REQUIRE(X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get())) == 1);
    REQUIRE(X509_sign(cert.get(), ca_key.get(), EVP_sha256()) > 0);
    std::unique_ptr<BIO, FreeWith<BIO_free>> out(BIO_new(BIO_s_mem()));
    REQUIRE(PEM_write_bio_X509(out.get(), cert.get()) == 1);
    char* data = nullptr;
    const long n = BIO_get_mem_data(out.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
}

wx::V3Merchant v3_merchant(bool with_public_key, bool with_certificates)
{
    std::vector<std::string> problems;
    auto loaded = wx::load_v3_merchants({merchant(with_public_key, with_certificates)}, problems);
    INFO((problems.empty() ? std::string() : problems.front()));
    REQUIRE(loaded);
    REQUIRE(loaded->size() == 1);
    return std::move(loaded->front());
}

/// Platform certificate mode, with kPlatformSerial configured.
wx::V3Merchant certificate_merchant() { return v3_merchant(false, true); }

/// The configured platform certificate and the next one, as WeChat Pay lists them.
Listed platform_entry() { return {keys().platform().cert_pem, kPlatformSerial}; }
Listed next_entry() { return {next_certificate().cert_pem, kNextSerial}; }
sim::V3Signer platform_signer() { return cert_signer(keys().platform(), kPlatformSerial); }

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

std::string replaced(std::string text, const std::string& from, const std::string& to)
{
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

gw::QueryResponse listing(const std::vector<Listed>& certs, const sim::V3Signer& signer, std::int64_t timestamp,
                          std::string_view apiv3_key = keys().apiv3_key)
{
    auto response = sim::make_v3_certificates_response(certs, apiv3_key, signer, timestamp);
    REQUIRE(response);
    return *response;
}

/// `body` signed by `signer`, as a 200 answer.
gw::QueryResponse signed_listing(std::string body, const sim::V3Signer& signer, std::int64_t timestamp)
{
    auto n = sim::sign_v3(std::move(body), signer, timestamp);
    REQUIRE(n);
    return gw::QueryResponse{.status = 200, .headers = n->headers, .body = n->body};
}

paybridge::Result<std::vector<wx::PlatformCertificate>> read(const wx::V3Merchant& m, const gw::QueryResponse& r,
                                                             std::int64_t now, std::string* detail = nullptr)
{
    return wx::read_certificates_response(m, r, now, detail);
}

/// The key verifies what the certificate's private key signs (and nothing else does).
bool key_of(const wx::PlatformCertificate& pc, const keygen::Certificate& cert)
{
    const std::string message = "key check";
    auto signature = crypto::rsa_sign(private_key(cert.key.private_pem).get(), crypto::Digest::sha256, message);
    REQUIRE(signature);
    return crypto::rsa_verify(pc.key.get(), crypto::Digest::sha256, message, *signature);
}

std::int64_t not_before(const std::string& pem)
{
    auto certs = crypto::load_certificates(pem);
    REQUIRE(certs);
    return crypto::certificate_not_before(certs->front().get());
}

std::int64_t not_after(const std::string& pem)
{
    auto certs = crypto::load_certificates(pem);
    REQUIRE(certs);
    return crypto::certificate_not_after(certs->front().get());
}

}  // namespace

// ---- requests ----

TEST_CASE("v3 certificates: the request and its Authorization header for a fixed timestamp and nonce")
{
    const auto m = certificate_merchant();
    const auto signer = query_signer();
    auto request = wx::build_certificates_request(m, signer, "", 1554208460, kNonce);
    REQUIRE(request);
    CHECK(request->method == "GET");
    CHECK(request->target == "/v3/certificates");
    CHECK(request->body.empty());

    // The PROTOCOLS.md §2.12 example message. PKCS#1 v1.5 signatures are deterministic, so the
    // whole header is known byte for byte.
    const std::string message = "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n";
    const auto expected_signature =
        crypto::rsa_sign(signer.merchant_private_key.get(), crypto::Digest::sha256, message);
    REQUIRE(expected_signature);
    const std::string expected_authorization =
        std::string("WECHATPAY2-SHA256-RSA2048 mchid=\"1900000109\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",") +
        "timestamp=\"1554208460\",serial_no=\"" + kMerchantSerial + "\",signature=\"" +
        crypto::base64_encode(*expected_signature) + "\"";
    const std::vector<std::pair<std::string, std::string>> expected_headers{
        {"Authorization", expected_authorization}, {"Accept", "application/json"}};
    REQUIRE(request->headers == expected_headers);

    // The signature as sent verifies with the merchant's public key over that message only.
    const std::string authorization = request->headers.front().second;
    const auto at = authorization.find("signature=\"");
    REQUIRE(at != std::string::npos);
    const auto sent = crypto::base64_decode(authorization.substr(at + 11, authorization.size() - at - 12));
    REQUIRE(sent);
    auto public_key = crypto::load_public_key(merchant_api_keys().public_pem);
    REQUIRE(public_key);
    CHECK(crypto::rsa_verify(public_key->get(), crypto::Digest::sha256, message, *sent));
    CHECK_FALSE(crypto::rsa_verify(public_key->get(), crypto::Digest::sha256,
                                   "GET\n/v3/certificates\n1554208461\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n", *sent));
}

TEST_CASE("v3 certificates: the base path prefixes the signed target, and public-key mode adds Wechatpay-Serial")
{
    const auto m = v3_merchant(true, true);
    for (const char* base : {"/proxy/wechat", "/proxy/wechat/", "/proxy/wechat//"}) {
        CAPTURE(base);
        auto request = wx::build_certificates_request(m, query_signer(), base, 1554208460, kNonce);
        REQUIRE(request);
        CHECK(request->target == "/proxy/wechat/v3/certificates");
        CHECK(header_of(request->headers, "Wechatpay-Serial") == kPublicKeyId);
        const std::string message = "GET\n/proxy/wechat/v3/certificates\n1554208460\n" + std::string(kNonce) + "\n\n";
        const auto signature = crypto::rsa_sign(query_signer().merchant_private_key.get(), crypto::Digest::sha256,
                                                message);
        REQUIRE(signature);
        CHECK(header_of(request->headers, "Authorization")->find("signature=\"" + crypto::base64_encode(*signature) +
                                                                 "\"") != std::string::npos);
        auto asked = sim::check_v3_certificates_request(*request, api_merchants(), 1554208460, "/proxy/wechat");
        REQUIRE(asked);
        CHECK(asked->mchid == kMchid);
        CHECK(asked->wechatpay_serial == kPublicKeyId);
        CHECK(asked->out_trade_no.empty());
        // Not at the API root.
        CHECK(sim::check_v3_certificates_request(*request, api_merchants(), 1554208460).error() ==
              errc::malformed_request);
    }
}

TEST_CASE("v3 certificates: the sim checks the request as WeChat Pay does")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    auto built = wx::build_certificates_request(m, query_signer(), "", now, kNonce);
    REQUIRE(built);
    const gw::QueryRequest request = *built;
    const auto merchants = api_merchants();
    auto asked = sim::check_v3_certificates_request(request, merchants, now);
    REQUIRE(asked);
    CHECK(asked->mchid == kMchid);
    CHECK(asked->wechatpay_serial.empty());
    CHECK(sim::check_v3_certificates_request(request, merchants, now + 299));
    CHECK(sim::check_v3_certificates_request(request, merchants, now + 300).error() == errc::stale_timestamp);
    CHECK(sim::check_v3_certificates_request(request, merchants, now - 300).error() == errc::stale_timestamp);

    auto with_query = request;
    with_query.target += "?algorithm_type=RSA";
    CHECK(sim::check_v3_certificates_request(with_query, merchants, now).error() == errc::malformed_request);
    auto post = request;
    post.method = "POST";
    CHECK(sim::check_v3_certificates_request(post, merchants, now).error() == errc::malformed_request);
    auto no_auth = request;
    std::erase_if(no_auth.headers, [](const auto& h) { return h.first == "Authorization"; });
    CHECK(sim::check_v3_certificates_request(no_auth, merchants, now).error() == errc::malformed_request);

    // Signed by another key, or for another merchant.
    auto other = query_signer();
    other.merchant_private_key = private_key(keys().wechat_public().private_pem);
    auto forged = wx::build_certificates_request(m, other, "", now, kNonce);
    REQUIRE(forged);
    CHECK(sim::check_v3_certificates_request(*forged, merchants, now).error() == errc::bad_signature);
    auto stranger = m;
    stranger.mchid = "1900000999";
    auto unknown = wx::build_certificates_request(stranger, query_signer(), "", now, kNonce);
    REQUIRE(unknown);
    CHECK(sim::check_v3_certificates_request(*unknown, merchants, now).error() == errc::bad_signature);

    // Neither check takes the other's request.
    CHECK(sim::check_v3_query_request(request, merchants, now).error() == errc::malformed_request);
    auto query = wx::build_transaction_query(m, query_signer(), "", "BILL-1", now, kNonce);
    REQUIRE(query);
    CHECK(sim::check_v3_certificates_request(*query, merchants, now).error() == errc::malformed_request);
    CHECK(sim::check_v3_query_request(*query, merchants, now));
}

TEST_CASE("v3 certificates: requests that cannot be built are refused")
{
    const auto m = certificate_merchant();
    const auto signer = query_signer();
    CHECK(wx::build_certificates_request(m, signer, "", 1554208460, "").error() == errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "", 1554208460, "a\"b").error() == errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "", 1554208460, std::string(65, 'A')).error() ==
          errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "", 1554208460, std::string(64, 'A')));
    CHECK(wx::build_certificates_request(m, signer, "v3", 1554208460, kNonce).error() == errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "/a?b", 1554208460, kNonce).error() == errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "/a b", 1554208460, kNonce).error() == errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "", 0, kNonce).error() == errc::invalid_argument);
    CHECK(wx::build_certificates_request(m, signer, "", -1, kNonce).error() == errc::invalid_argument);
    auto no_serial = signer;
    no_serial.merchant_serial_no.clear();
    CHECK(wx::build_certificates_request(m, no_serial, "", 1554208460, kNonce).error() == errc::invalid_argument);
    auto bad_serial = signer;
    bad_serial.merchant_serial_no = "AB\"CD";
    CHECK(wx::build_certificates_request(m, bad_serial, "", 1554208460, kNonce).error() == errc::invalid_argument);
    auto no_key = signer;
    no_key.merchant_private_key.reset();
    CHECK(wx::build_certificates_request(m, no_key, "", 1554208460, kNonce).error() == errc::invalid_argument);
    auto no_mchid = m;
    no_mchid.mchid.clear();
    CHECK(wx::build_certificates_request(no_mchid, signer, "", 1554208460, kNonce).error() == errc::invalid_argument);
}

// ---- answers ----

TEST_CASE("v3 certificates: the sim's answer is WeChat Pay's format")
{
    const std::int64_t now = now_unix();
    const auto response = listing({next_entry()}, platform_signer(), now);
    CHECK(response.status == 200);
    CHECK(header_of(response.headers, "Wechatpay-Serial") == kPlatformSerial);
    CHECK(header_of(response.headers, "Wechatpay-Timestamp") == std::to_string(now));
    CHECK(header_of(response.headers, "Content-Type") == "application/json");
    const auto doc = paybridge::test::parse_json(response.body);
    REQUIRE(doc.IsObject());
    CHECK(doc.MemberCount() == 1);
    REQUIRE(doc["data"].IsArray());
    REQUIRE(doc["data"].Size() == 1);
    const auto& entry = doc["data"][0];
    CHECK(std::string(entry["serial_no"].GetString()) == kNextSerial);
    CHECK(std::string(entry["effective_time"].GetString()) == "2023-11-15T06:13:20+08:00");
    CHECK(std::string(entry["expire_time"].GetString()) == "2033-05-18T11:33:20+08:00");
    const auto& sealed = entry["encrypt_certificate"];
    CHECK(std::string(sealed["algorithm"].GetString()) == "AEAD_AES_256_GCM");
    CHECK(std::string(sealed["associated_data"].GetString()) == "certificate");
    const std::string nonce = sealed["nonce"].GetString();
    CHECK(nonce.size() == 12);
    auto pem = wx::decrypt_resource(keys().apiv3_key, nonce, "certificate", sealed["ciphertext"].GetString());
    REQUIRE(pem);
    CHECK(*pem == next_certificate().cert_pem);
}

TEST_CASE("v3 certificates: two certificates, one of them signs")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const auto response = listing({platform_entry(), next_entry()}, platform_signer(), now);
    std::string detail;
    auto certs = read(m, response, now, &detail);
    REQUIRE(certs);
    REQUIRE(certs->size() == 2);
    CHECK(detail == "200 2 certificates key=platform_certificate:A1B2C3D4E5F60718293A4B5C6D7E8F901234567");

    const auto& first = (*certs)[0];
    CHECK(first.serial == kPlatformNormal);
    CHECK(first.not_before == not_before(keys().platform().cert_pem));
    CHECK(first.not_after == not_after(keys().platform().cert_pem));
    CHECK(key_of(first, keys().platform()));
    CHECK_FALSE(key_of(first, next_certificate()));

    const auto& second = (*certs)[1];
    CHECK(second.serial == kNextSerial);
    CHECK(second.not_before == kNextNotBefore);
    CHECK(second.not_after == kNextNotAfter);
    CHECK(key_of(second, next_certificate()));

    // The configured set is left alone.
    REQUIRE(m.certificates.size() == 1);
    CHECK(m.certificates.front().serial == kPlatformNormal);

    // An empty list signed by a configured certificate is not an error.
    certs = read(m, listing({}, platform_signer(), now), now, &detail);
    REQUIRE(certs);
    CHECK(certs->empty());
    CHECK(detail == "200 0 certificates key=platform_certificate:A1B2C3D4E5F60718293A4B5C6D7E8F901234567");
}

TEST_CASE("v3 certificates: serial_no in lower case or with leading zeros is the certificate's serial")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    for (const char* written :
         {"0a1b2c3d4e5f60718293a4b5c6d7e8f901234567", "000A1B2C3D4E5F60718293A4B5C6D7E8F901234567", kPlatformNormal}) {
        CAPTURE(written);
        // Announced in the header in the same spelling.
        const Listed entry{keys().platform().cert_pem, written};
        const auto response = listing({entry}, cert_signer(keys().platform(), written), now);
        auto certs = read(m, response, now);
        REQUIRE(certs);
        REQUIRE(certs->size() == 1);
        CHECK(certs->front().serial == kPlatformNormal);
    }
}

TEST_CASE("v3 certificates: the answer may be signed by a certificate it introduces")
{
    const std::int64_t now = now_unix();
    const auto response = listing({platform_entry(), next_entry()}, cert_signer(next_certificate(), kNextSerial), now);
    for (const auto& m : {certificate_merchant(), v3_merchant(true, false)}) {
        CAPTURE(m.certificates.size());
        std::string detail;
        auto certs = read(m, response, now, &detail);
        REQUIRE(certs);
        CHECK(certs->size() == 2);
        CHECK(detail == "200 2 certificates key=platform_certificate:5157F09EFDC096DE15EBE81A47057A7232F1B8E1");
    }
    // Without it in the list, the same signature is by an unknown serial.
    const auto without = listing({platform_entry()}, cert_signer(next_certificate(), kNextSerial), now);
    std::string detail;
    CHECK(read(certificate_merchant(), without, now, &detail).error() == errc::bad_signature);
    CHECK(detail == "200 not verified: bad_signature");

    // Public-key mode signatures still verify with the public key.
    auto certs = read(v3_merchant(true, false), listing({next_entry()}, public_key_signer(), now), now, &detail);
    REQUIRE(certs);
    CHECK(detail == "200 1 certificate key=public_key");
}

TEST_CASE("v3 certificates: certificates downloaded before verify the answer too, and the book is not told")
{
    const std::int64_t now = now_unix();
    // A public-key merchant whose book holds the next certificate, from an earlier download.
    auto m = v3_merchant(true, false);
    m.downloaded = std::make_shared<wx::CertificateBook>(kMchid);
    int hook_calls = 0;
    m.downloaded->set_hook([&hook_calls](const std::string&, const std::string&) { ++hook_calls; });
    auto earlier = read(m, listing({next_entry()}, public_key_signer(), now), now);
    REQUIRE(earlier);
    m.downloaded->replace(*earlier);

    // Now only the platform certificate is listed, and the book's certificate signs.
    std::string detail;
    auto certs = read(m, listing({platform_entry()}, cert_signer(next_certificate(), kNextSerial), now), now, &detail);
    REQUIRE(certs);
    REQUIRE(certs->size() == 1);
    CHECK(certs->front().serial == kPlatformNormal);
    CHECK(detail == "200 1 certificate key=platform_certificate:5157F09EFDC096DE15EBE81A47057A7232F1B8E1");
    // The book is left as it was.
    REQUIRE(m.downloaded->certificates()->size() == 1);
    CHECK(m.downloaded->certificates()->front().serial == kNextSerial);

    // A serial known nowhere fails without asking the book for another download.
    const auto stranger = cert_signer(keys().future(), "7E57000000000000000000000000000000000002");
    CHECK(read(m, listing({platform_entry()}, stranger, now), now, &detail).error() == errc::bad_signature);
    CHECK(detail == "200 not verified: bad_signature");
    CHECK(hook_calls == 0);
}

TEST_CASE("v3 certificates: answers that do not verify")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const std::vector<Listed> listed{platform_entry(), next_entry()};
    std::string detail;

    SUBCASE("signed by a key that is neither configured nor listed")
    {
        const auto stranger = cert_signer(keys().future(), "7E57000000000000000000000000000000000002");
        CHECK(read(m, listing(listed, stranger, now), now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 not verified: bad_signature");
    }
    SUBCASE("a listed serial announced, another key signing")
    {
        auto impostor = cert_signer(keys().future(), kNextSerial);
        CHECK(read(m, listing(listed, impostor, now), now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 not verified: bad_signature");
    }
    SUBCASE("one byte of the body changed")
    {
        auto response = listing(listed, cert_signer(keys().platform(), kPlatformSerial), now);
        REQUIRE(read(m, response, now));
        // In effective_time, which is not read: the certificates still decrypt, the signature fails.
        auto flipped = response;
        flipped.body[flipped.body.find("\"effective_time\":\"2") + 18] ^= 0x01;  // the year's first digit
        CHECK(read(m, flipped, now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 not verified: bad_signature");
        // In a ciphertext: the GCM tag fails first.
        auto damaged = response;
        const auto at = damaged.body.find("\"ciphertext\":\"") + 14 + 20;
        damaged.body[at] = damaged.body[at] == 'A' ? 'B' : 'A';
        CHECK(read(m, damaged, now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 data[0] decrypt failed: bad_signature");
    }
    SUBCASE("unsigned")
    {
        auto response = listing(listed, cert_signer(keys().platform(), kPlatformSerial), now);
        std::erase_if(response.headers, [](const auto& h) { return h.first.rfind("Wechatpay-", 0) == 0; });
        CHECK(read(m, response, now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 unsigned");
        auto no_serial = listing(listed, cert_signer(keys().platform(), kPlatformSerial), now);
        std::erase_if(no_serial.headers, [](const auto& h) { return h.first == "Wechatpay-Serial"; });
        CHECK(read(m, no_serial, now, &detail).error() == errc::bad_signature);
        CHECK(detail == "200 not verified: malformed_request");
    }
    SUBCASE("a stale timestamp")
    {
        const auto signer = cert_signer(keys().platform(), kPlatformSerial);
        CHECK(read(m, listing(listed, signer, now - 300), now, &detail).error() == errc::stale_timestamp);
        CHECK(detail == "200 not verified: stale_timestamp");
        CHECK(read(m, listing(listed, signer, now + 300), now).error() == errc::stale_timestamp);
        CHECK(read(m, listing(listed, signer, now - 299), now));
    }
}

TEST_CASE("v3 certificates: a wrong APIv3 key is a decryption failure")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const std::string other_key(32, 'K');
    REQUIRE(other_key != keys().apiv3_key);
    const auto response = listing({{next_certificate().cert_pem, kNextSerial}},
                                  cert_signer(keys().platform(), kPlatformSerial), now, other_key);
    std::string detail;
    CHECK(read(m, response, now, &detail).error() == errc::bad_signature);
    CHECK(detail == "200 data[0] decrypt failed: bad_signature");
    // The tag is checked before anything is taken from the certificate.
    CHECK(detail.find(kNextSerial) == std::string::npos);
}

TEST_CASE("v3 certificates: a certificate that is not the serial_no it is listed under")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    std::string detail;
    const Listed mislabelled{next_certificate().cert_pem, kPlatformSerial};
    CHECK(read(m, listing({platform_entry(), mislabelled}, signer, now), now, &detail).error() ==
          errc::malformed_request);
    CHECK(detail == "200 data[1] serial_no \"0A1B2C3D4E5F60718293A4B5C6D7E8F9...\" is not the certificate's serial "
                    "5157F09EFDC096DE15EBE81A47057A7232F1B8E1");
    CHECK(read(m, listing({{next_certificate().cert_pem, "5157F09EFDC096DE15EBE81A47057A7232F1B8E"}}, signer, now), now,
               &detail)
              .error() == errc::malformed_request);
    // The same certificate twice.
    const Listed again{keys().platform().cert_pem, kPlatformNormal};
    CHECK(read(m, listing({platform_entry(), again}, signer, now), now, &detail).error() == errc::malformed_request);
    CHECK(detail == "200 serial A1B2C3D4E5F60718293A4B5C6D7E8F901234567 is listed twice");
}

TEST_CASE("v3 certificates: expired certificates are dropped, future ones kept")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const char* expired_serial = "7E57000000000000000000000000000000000001";
    const char* future_serial = "7E57000000000000000000000000000000000002";
    std::string detail;
    auto certs = read(m,
                      listing({{keys().expired().cert_pem, expired_serial},
                               {keys().platform().cert_pem, kPlatformSerial},
                               {keys().future().cert_pem, future_serial}},
                              signer, now),
                      now, &detail);
    REQUIRE(certs);
    REQUIRE(certs->size() == 2);
    CHECK((*certs)[0].serial == kPlatformNormal);
    CHECK((*certs)[1].serial == future_serial);
    CHECK((*certs)[1].not_before == keys().created + 30 * 86400);
    CHECK((*certs)[1].not_after == keys().created + 400 * 86400);
    CHECK(detail ==
          "200 2 certificates, 1 expired dropped key=platform_certificate:A1B2C3D4E5F60718293A4B5C6D7E8F901234567");

    // Expired from the second after not_after on. (Signed with the public key: the platform
    // certificate was not valid yet then.)
    const auto both = v3_merchant(true, true);
    const auto expired_at = keys().created - 30 * 86400;
    certs = read(both, listing({{keys().expired().cert_pem, expired_serial}}, public_key_signer(), expired_at),
                 expired_at);
    REQUIRE(certs);
    CHECK(certs->size() == 1);
    certs = read(both, listing({{keys().expired().cert_pem, expired_serial}}, public_key_signer(), expired_at + 1),
                 expired_at + 1, &detail);
    REQUIRE(certs);
    CHECK(certs->empty());
    CHECK(detail == "200 0 certificates, 1 expired dropped key=public_key");

    // Neither an expired nor a not yet valid certificate verifies the answer.
    const auto by_expired =
        listing({{keys().expired().cert_pem, expired_serial}}, cert_signer(keys().expired(), expired_serial), now);
    CHECK(read(m, by_expired, now).error() == errc::bad_signature);
    const auto by_future =
        listing({{keys().future().cert_pem, future_serial}}, cert_signer(keys().future(), future_serial), now);
    CHECK(read(m, by_future, now).error() == errc::bad_signature);
}

TEST_CASE("v3 certificates: a certificate without an RSA key is refused")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const std::string ec = ec_certificate_pem("EC0000000000000000000000000000000000000A");
    std::string detail;
    const Listed ec_entry{ec, "EC0000000000000000000000000000000000000A"};
    CHECK(read(m, listing({platform_entry(), ec_entry}, platform_signer(), now), now, &detail).error() ==
          errc::malformed_request);
    CHECK(detail == "200 data[1] certificate EC0000000000000000000000000000000000000A does not hold an RSA key");
}

TEST_CASE("v3 certificates: malformed answers")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    const auto signer = cert_signer(keys().platform(), kPlatformSerial);
    const std::string good = listing({{next_certificate().cert_pem, kNextSerial}}, signer, now).body;
    REQUIRE(read(m, signed_listing(good, signer, now), now));

    const auto sealed = [](std::string_view plaintext, const std::string& aad = "certificate") {
        auto ciphertext = crypto::aes256gcm_encrypt(keys().apiv3_key, "0123456789ab", aad, plaintext);
        REQUIRE(ciphertext);
        return R"({"data":[{"serial_no":"5157F09EFDC096DE15EBE81A47057A7232F1B8E1","encrypt_certificate":)"
               R"({"algorithm":"AEAD_AES_256_GCM","nonce":"0123456789ab","associated_data":")" +
               aad + R"(","ciphertext":")" + crypto::base64_encode(*ciphertext) + "\"}}]}";
    };
    const struct {
        std::string body;
        const char* detail;
    } cases[] = {
        {"not json", "200 body is not a JSON object"},
        {"[]", "200 body is not a JSON object"},
        {"{}", "200 has no data array"},
        {R"({"data":{}})", "200 has no data array"},
        {R"({"data":["x"]})", "200 data[0] is not an object"},
        {replaced(good, "\"serial_no\"", "\"serial\""), "200 data[0] has no serial_no"},
        {replaced(good, "\"serial_no\":\"", "\"serial_no\":\"\",\"x\":\""), "200 data[0] has no serial_no"},
        {replaced(good, "\"encrypt_certificate\"", "\"certificate\""), "200 data[0] has no encrypt_certificate object"},
        {replaced(good, "\"algorithm\"", "\"algo\""), "200 data[0] encrypt_certificate has no algorithm"},
        {replaced(good, "AEAD_AES_256_GCM", "AEAD_AES_128_GCM"),
         "200 data[0] algorithm \"AEAD_AES_128_GCM\" is not AEAD_AES_256_GCM"},
        {replaced(good, "\"nonce\"", "\"iv\""), "200 data[0] encrypt_certificate has no nonce"},
        {replaced(good, "\"associated_data\"", "\"aad\""), "200 data[0] encrypt_certificate has no associated_data"},
        {replaced(good, "\"ciphertext\"", "\"cipher\""), "200 data[0] encrypt_certificate has no ciphertext"},
        {replaced(good, "\"ciphertext\":\"", "\"ciphertext\":\"!"), "200 data[0] decrypt failed: malformed_request"},
        {sealed("not a certificate"), "200 data[0] does not decrypt to one PEM certificate"},
        {sealed(next_certificate().cert_pem + keys().platform().cert_pem),
         "200 data[0] does not decrypt to one PEM certificate"},
        // Sealed under the APIv3 key for another purpose (a notification's resource is "transaction").
        {sealed(next_certificate().cert_pem, "transaction"), "200 data[0] associated_data is not \"certificate\""},
        {sealed(next_certificate().cert_pem), nullptr},  // the hand-built entry itself reads
    };
    for (const auto& c : cases) {
        CAPTURE(c.body);
        std::string detail;
        auto certs = read(m, signed_listing(c.body, signer, now), now, &detail);
        if (c.detail == nullptr) {
            REQUIRE(certs);
            CHECK(certs->size() == 1);
            continue;
        }
        CHECK(certs.error() == errc::malformed_request);
        CHECK(detail == c.detail);
    }
}

TEST_CASE("v3 certificates: error statuses")
{
    const auto m = certificate_merchant();
    const std::int64_t now = now_unix();
    std::string detail;
    // Public-key mode: there are no platform certificates to list.
    CHECK(read(m, sim::make_v3_error_response(404, "NOT_FOUND", "无可用的平台证书"), now, &detail).error() ==
          errc::not_found);
    CHECK(detail == "404 NOT_FOUND");
    CHECK(read(m, gw::QueryResponse{.status = 404, .headers = {}, .body = ""}, now, &detail).error() ==
          errc::not_found);
    CHECK(detail == "404");

    CHECK(read(m, sim::make_v3_error_response(429, "FREQUENCY_LIMITED", "频率超限"), now, &detail).error() ==
          errc::provider_unavailable);
    CHECK(detail == "429 FREQUENCY_LIMITED");
    CHECK(read(m, sim::make_v3_error_response(500, "SYSTEM_ERROR", "系统错误"), now, &detail).error() ==
          errc::provider_unavailable);
    CHECK(detail == "500 SYSTEM_ERROR");
    CHECK(read(m, gw::QueryResponse{.status = 502, .headers = {}, .body = "<html>bad gateway</html>"}, now, &detail)
              .error() == errc::provider_unavailable);
    CHECK(detail == "502");

    CHECK(read(m, sim::make_v3_error_response(401, "SIGN_ERROR", "签名错误"), now, &detail).error() ==
          errc::provider_rejected);
    CHECK(detail == "401 SIGN_ERROR");
    CHECK(read(m, sim::make_v3_error_response(400, "PARAM_ERROR", "参数错误 openid oUpF8uMuAJO"), now, &detail)
              .error() == errc::provider_rejected);
    CHECK(detail == "400 PARAM_ERROR");
    CHECK(read(m, sim::make_v3_error_response(403, "bad code\n", "x"), now, &detail).error() ==
          errc::provider_rejected);
    CHECK(detail == "403");
    CHECK(read(m, gw::QueryResponse{.status = 302, .headers = {}, .body = ""}, now, &detail).error() ==
          errc::provider_rejected);
    CHECK(detail == "302");
}
