// Certificate mode (PROTOCOLS.md §1.6): chain check at load, SN computation, verification with
// the key of the Alipay public certificate, and the problems reported for bad key material.

#include "gateways/alipay/alipay_gateway.hpp"

#include "alipay_test_support.hpp"
#include "core/error.hpp"
#include "fixture_certs.hpp"
#include "published_certs.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace paybridge;
using namespace paybridge::gateways::alipay;
using namespace alipay_test;

namespace {

config::AlipayApp cert_app(const std::string& public_cert_pem, const std::string& root_cert_pem)
{
    config::AlipayApp app;
    app.app_id = std::string(kAppId);
    app.seller_id = std::string(kSellerId);
    app.public_cert_pem = public_cert_pem;
    app.root_cert_pem = root_cert_pem;
    return app;
}

std::vector<std::string> load_problems(const config::AlipayApp& app)
{
    std::vector<std::string> problems;
    auto keys = load_alipay_app(app, "/alipay/apps/0", problems);
    CHECK_FALSE(keys.has_value());
    if (!keys) {
        CHECK(keys.error() == make_error_code(errc::invalid_argument));
    }
    return problems;
}

// Runs `openssl x509 -noout -issuer -nameopt RFC2253 -serial` on a PEM and returns its output.
std::string openssl_issuer_serial(const std::string& pem)
{
    char path[] = "/tmp/paybridge-alipay-cert-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    {
        std::ofstream out(path);
        out << pem;
    }
    const std::string command = std::string("openssl x509 -noout -issuer -nameopt RFC2253 -serial -in ") + path;
    std::string output;
    if (FILE* pipe = popen(command.c_str(), "r")) {
        char buf[512];
        while (std::fgets(buf, sizeof buf, pipe) != nullptr) {
            output += buf;
        }
        CHECK(pclose(pipe) == 0);
    }
    std::filesystem::remove(path);
    return output;
}

std::string line_value(const std::string& text, std::string_view prefix)
{
    const auto pos = text.find(prefix);
    REQUIRE(pos != std::string::npos);
    const auto end = text.find('\n', pos);
    return text.substr(pos + prefix.size(), end - pos - prefix.size());
}

// Hex → decimal by schoolbook long division, independent of OpenSSL's BIGNUM.
std::string hex_to_decimal(std::string hex)
{
    std::vector<int> digits;  // base-16 digits, most significant first
    for (char c : hex) {
        digits.push_back(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    std::string decimal;
    while (!digits.empty()) {
        std::vector<int> quotient;
        int remainder = 0;
        for (int d : digits) {
            const int value = remainder * 16 + d;
            if (!quotient.empty() || value / 10 != 0) {
                quotient.push_back(value / 10);
            }
            remainder = value % 10;
        }
        decimal.insert(decimal.begin(), static_cast<char>('0' + remainder));
        digits = std::move(quotient);
    }
    return decimal.empty() ? "0" : decimal;
}

}  // namespace

TEST_CASE("fixed certificates: alipay_cert_sn and root SN match hand-computed values")
{
    // Like Alipay's own root bundle: an SM2 root first, then ECDSA and RSA roots.
    const std::string roots = std::string(alipay_fixture::kFixtureRootSm2Pem) +
                              std::string(alipay_fixture::kFixtureRootEcdsaPem) +
                              std::string(alipay_fixture::kFixtureRootRsaSha256Pem) +
                              std::string(alipay_fixture::kFixtureRootRsaSha1Pem);
    std::vector<std::string> problems;
    auto keys = load_alipay_app(cert_app(std::string(alipay_fixture::kFixtureLeafPem), roots), "x", problems);
    REQUIRE_MESSAGE(keys.has_value(), (problems.empty() ? "" : problems.front()));
    CHECK(keys->alipay_cert_sn == alipay_fixture::kLeafSn);
    // The SM2 and ECDSA roots are skipped; the RSA roots keep file order.
    CHECK(keys->alipay_root_cert_sn ==
          std::string(alipay_fixture::kRootRsaSha256Sn) + "_" + std::string(alipay_fixture::kRootRsaSha1Sn));
    CHECK(keys->keys.size() == 1);
}

TEST_CASE("Alipay's published certificates: the SNs of PROTOCOLS.md 1.6's worked example")
{
    const auto sn_of = [](std::string_view pem) {
        auto certs = crypto::load_certificates(pem);
        REQUIRE(certs.has_value());
        REQUIRE(certs->size() == 1);
        return crypto::alipay_cert_sn(certs->front().get());
    };
    CHECK(sn_of(alipay_published::kAlipayPublicCertPem) == alipay_published::kAlipayPublicCertSn);
    CHECK(sn_of(alipay_published::kAppPublicCertPem) == alipay_published::kAppPublicCertSn);
    auto roots = crypto::load_certificates(alipay_published::kRootCertPem);
    REQUIRE(roots.has_value());
    CHECK(roots->size() == 4);
    CHECK(crypto::alipay_root_cert_sn(*roots) == alipay_published::kRootCertSn);
}

TEST_CASE("SN of a generated certificate equals md5(openssl RFC2253 issuer + decimal serial)")
{
    const auto ca = keygen::make_ca({.common_name = "Ant Financial Certification Authority Class 2 R1 test",
                                     .organization = "Ant Financial test",
                                     .organizational_unit = "Certification Authority test"});
    // The serial's top bit is set, so DER stores it with a leading 0x00 byte; it is still positive.
    const auto leaf =
        keygen::issue(ca, {.common_name = "alipay public", .serial_hex = "F2A3B4C5D6E7F8091A2B3C4D5E6F7081"});
    const std::string cli = openssl_issuer_serial(leaf.cert_pem);
    const std::string issuer = line_value(cli, "issuer=");
    const std::string serial = line_value(cli, "serial=");
    CHECK(issuer.starts_with("CN=Ant Financial Certification Authority Class 2 R1 test,"));
    const std::string expected = crypto::hex_lower(crypto::md5(issuer + hex_to_decimal(serial)));

    std::vector<std::string> problems;
    auto keys = load_alipay_app(cert_app(leaf.cert_pem, ca.cert_pem), "x", problems);
    REQUIRE(keys.has_value());
    CHECK(keys->alipay_cert_sn == expected);
    CHECK(hex_to_decimal("A0230609834AC2C96820A8BC5CC95483") == "212858332163779259821653383636610274435");
}

TEST_CASE("certificate mode: a notification signed with the certificate's key verifies")
{
    const auto ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    const auto leaf = keygen::issue(ca, {.common_name = "alipay public cert"});
    auto gw = make_gateway({cert_app(leaf.cert_pem, ca.cert_pem)});
    auto signer = crypto::load_private_key(leaf.key.private_pem);
    REQUIRE(signer.has_value());
    const auto notice = make_paid_notice(spec());
    auto verified = gw->verify(build_alipay_body(notice, signer->get()));
    REQUIRE(verified.has_value());
    CHECK(verified->app->alipay_cert_sn.size() == 32);
    CHECK(verified->app->alipay_root_cert_sn.size() == 32);

    auto wrong = gw->verify(body_of(notice));  // signed with a key that is not the certificate's
    REQUIRE_FALSE(wrong.has_value());
    CHECK(wrong.error() == make_error_code(errc::bad_signature));
}

TEST_CASE("certificate mode: the public certificate file may carry its intermediate, in either order")
{
    const auto root = keygen::make_ca({.common_name = "Test Root"});
    const auto intermediate = keygen::issue(root, {.common_name = "Test Intermediate", .is_ca = true});
    const auto leaf = keygen::issue(intermediate, {.common_name = "alipay public cert"});
    auto signer = crypto::load_private_key(leaf.key.private_pem);
    REQUIRE(signer.has_value());
    auto leaf_certs = crypto::load_certificates(leaf.cert_pem);
    REQUIRE(leaf_certs.has_value());
    const std::string leaf_sn = crypto::alipay_cert_sn(leaf_certs->front().get());

    for (const std::string& file : {leaf.cert_pem + intermediate.cert_pem, intermediate.cert_pem + leaf.cert_pem}) {
        std::vector<std::string> problems;
        auto keys = load_alipay_app(cert_app(file, root.cert_pem), "x", problems);
        REQUIRE_MESSAGE(keys.has_value(), (problems.empty() ? "" : problems.front()));
        CHECK(keys->alipay_cert_sn == leaf_sn);
        auto gw = make_gateway({cert_app(file, root.cert_pem)});
        CHECK(gw->verify(build_alipay_body(make_paid_notice(spec()), signer->get())).has_value());
    }
    // Without the intermediate the leaf does not reach the root; the intermediate is never trusted
    // as an anchor just because it sits in the public certificate file.
    CHECK(load_problems(cert_app(leaf.cert_pem, root.cert_pem)) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_public_cert_file: does not chain to alipay_root_cert_file"});
}

TEST_CASE("certificate mode load problems")
{
    const auto ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    const auto other_ca = keygen::make_ca({.common_name = "Some Other Root"});
    const auto leaf = keygen::issue(ca, {.common_name = "alipay public cert"});
    const std::vector<std::string> not_chained = {
        "/alipay/apps/0/alipay_public_cert_file: does not chain to alipay_root_cert_file"};

    CHECK(load_problems(cert_app(leaf.cert_pem, other_ca.cert_pem)) == not_chained);

    const std::int64_t now = std::time(nullptr);
    const auto expired = keygen::issue(ca, {.common_name = "expired", .not_before_unix = now - 20 * 86400,
                                            .not_after_unix = now - 10 * 86400});
    CHECK(load_problems(cert_app(expired.cert_pem, ca.cert_pem)) == not_chained);

    CHECK(load_problems(cert_app(leaf.cert_pem, "")) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_public_cert_file: is set but alipay_root_cert_file is not"});
    auto root_only = cert_app("", ca.cert_pem);
    root_only.public_key_pem = alipay_keys().public_pem;
    CHECK(load_problems(root_only) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_root_cert_file: is set but alipay_public_cert_file is not"});
    CHECK(load_problems(cert_app("not a certificate", ca.cert_pem)) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_public_cert_file: holds no PEM certificate, or one that does not read"});
    CHECK(load_problems(cert_app(leaf.cert_pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_root_cert_file: holds no PEM certificate, or one that does not read"});
    // A bundle is not cut short at a block that does not read (the root SN would silently lose
    // the roots after it): a damaged certificate between two good ones is a problem.
    const std::string damaged = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n";
    CHECK(load_problems(cert_app(leaf.cert_pem, ca.cert_pem + damaged + other_ca.cert_pem)) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_root_cert_file: holds no PEM certificate, or one that does not read"});
    // Other PEM blocks (a key someone left in the file) are skipped, as OpenSSL does.
    auto with_key = cert_app(leaf.cert_pem, ca.cert_pem + alipay_keys().public_pem);
    std::vector<std::string> problems;
    CHECK(load_alipay_app(with_key, "/alipay/apps/0", problems).has_value());
    CHECK(problems.empty());
}

namespace {
const std::string kNotAKey =
    "/alipay/apps/0/alipay_public_key_file: is not a PEM or base64 SubjectPublicKeyInfo public key";
}  // namespace

TEST_CASE("public-key mode load problems")
{
    auto app = app_config();
    app.public_key_pem = "bm90IGEga2V5";  // base64 of "not a key"
    CHECK(load_problems(app) == std::vector<std::string>{kNotAKey});

    app.public_key_pem = std::string(alipay_fixture::kFixtureEcPublicKeyPem);
    CHECK(load_problems(app) ==
          std::vector<std::string>{"/alipay/apps/0/alipay_public_key_file: is not an RSA public key"});

    app = app_config("MD5");
    CHECK(load_problems(app) == std::vector<std::string>{"/alipay/apps/0/sign_type: must be \"RSA2\" or \"RSA\""});

    app = app_config();
    app.public_key_pem.clear();
    app.app_id.clear();
    CHECK(load_problems(app) ==
          std::vector<std::string>{
              "/alipay/apps/0/app_id: is empty",
              "/alipay/apps/0: neither alipay_public_key_file nor alipay_public_cert_file is set"});
}

TEST_CASE("both modes configured: either key verifies")
{
    const auto ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    const auto leaf = keygen::issue(ca, {.common_name = "alipay public cert"});
    auto app = cert_app(leaf.cert_pem, ca.cert_pem);
    app.public_key_pem = alipay_keys().public_pem;
    auto gw = make_gateway({app});
    REQUIRE(gw->find_app(kAppId)->keys.size() == 2);
    auto signer = crypto::load_private_key(leaf.key.private_pem);
    REQUIRE(signer.has_value());
    const auto notice = make_paid_notice(spec());
    CHECK(gw->verify(body_of(notice)).has_value());
    CHECK(gw->verify(build_alipay_body(notice, signer->get())).has_value());
    CHECK_FALSE(gw->verify(build_alipay_body(notice, private_key(other_keys()).get())).has_value());
}

TEST_CASE("key rotation, public-key mode: the previous key verifies after the current one, with a note")
{
    auto app = app_config();
    app.previous_public_key_pem = other_keys().public_pem;
    auto gw = make_gateway({app});
    const auto& keys = gw->find_app(kAppId)->keys;
    REQUIRE(keys.size() == 2);
    CHECK_FALSE(keys[0].previous);
    CHECK(keys[1].previous);
    const auto notice = make_paid_notice(spec());

    auto current = gw->verify(body_of(notice));
    REQUIRE(current.has_value());
    CHECK(current->notes.find("previous") == std::string::npos);
    auto previous = gw->verify(build_alipay_body(notice, private_key(other_keys()).get()));
    REQUIRE(previous.has_value());
    CHECK(previous->notes.find("verified with the previous Alipay key") != std::string::npos);
    // A third key is neither.
    const auto stranger = keygen::generate_rsa();
    auto forged = gw->verify(build_alipay_body(notice, private_key(stranger).get()));
    REQUIRE_FALSE(forged.has_value());
    CHECK(forged.error() == make_error_code(errc::bad_signature));
    // Without the previous key configured, its signatures are refused.
    auto after = make_gateway({app_config()});
    CHECK_FALSE(after->verify(build_alipay_body(notice, private_key(other_keys()).get())).has_value());

    app.previous_public_key_pem = "garbage";
    CHECK(load_problems(app) ==
          std::vector<std::string>{"/alipay/apps/0/previous_alipay_public_key_file: is not a PEM or base64 "
                                   "SubjectPublicKeyInfo public key"});
}

TEST_CASE("key rotation, certificate mode: the previous certificate may have expired at load and verifies until its notAfter")
{
    const auto ca = keygen::make_ca({.common_name = "Test Alipay Root"});
    const auto current = keygen::issue(ca, {.common_name = "alipay public cert 2027"});
    const std::int64_t now = std::time(nullptr);
    const auto previous = keygen::issue(ca, {.common_name = "alipay public cert 2026",
                                             .not_before_unix = now - 300 * 86400, .not_after_unix = now + 3600});
    auto app = cert_app(current.cert_pem, ca.cert_pem);
    app.previous_public_cert_pem = previous.cert_pem;
    auto gw = make_gateway({app});
    const AlipayAppKeys& keys = *gw->find_app(kAppId);
    REQUIRE(keys.keys.size() == 2);
    CHECK(keys.keys[1].previous);
    CHECK(keys.keys[1].not_after == now + 3600);
    auto current_cert = crypto::load_certificates(current.cert_pem);
    REQUIRE(current_cert.has_value());
    CHECK(keys.alipay_cert_sn == crypto::alipay_cert_sn(current_cert->front().get()));  // the current one's

    const auto notice = make_paid_notice(spec());
    const std::string by_current = build_alipay_body(notice, private_key(current.key).get());
    const std::string by_previous = build_alipay_body(notice, private_key(previous.key).get());
    CHECK(gw->verify(by_current).has_value());
    auto verified = gw->verify(by_previous, {}, now);
    REQUIRE(verified.has_value());
    CHECK(verified->notes.find("verified with the previous Alipay key") != std::string::npos);
    CHECK(gw->verify(by_previous, {}, now + 3600).has_value());
    // Past its notAfter the previous certificate is not used; the current one still verifies.
    auto expired = gw->verify(by_previous, {}, now + 3601);
    REQUIRE_FALSE(expired.has_value());
    CHECK(expired.error() == make_error_code(errc::bad_signature));
    CHECK(gw->verify(by_current, {}, now + 3601).has_value());
    // A notification is judged at its receive time (InboundRequest::now_unix), not the wall clock's.
    gateways::InboundRequest req;
    req.body = by_previous;
    req.now_unix = now + 3601;
    CHECK_FALSE(gw->verify_and_parse(req).has_value());
    req.now_unix = now;
    CHECK(gw->verify_and_parse(req).has_value());

    // Already expired at load: loaded all the same (a restart late in the overlap must not fail),
    // and never used.
    const auto old = keygen::issue(ca, {.common_name = "alipay public cert 2025",
                                        .not_before_unix = now - 400 * 86400, .not_after_unix = now - 86400});
    app.previous_public_cert_pem = old.cert_pem;
    auto late = make_gateway({app});
    REQUIRE(late->find_app(kAppId)->keys.size() == 2);
    CHECK_FALSE(late->verify(build_alipay_body(notice, private_key(old.key).get())).has_value());

    // It must chain to the same roots, be a certificate, and come with certificate mode.
    const auto other_ca = keygen::make_ca({.common_name = "Some Other Root"});
    app.previous_public_cert_pem = keygen::issue(other_ca, {.common_name = "stranger"}).cert_pem;
    CHECK(load_problems(app) == std::vector<std::string>{"/alipay/apps/0/previous_alipay_public_cert_file: does not "
                                                         "chain to alipay_root_cert_file"});
    app.previous_public_cert_pem = "not a certificate";
    CHECK(load_problems(app) == std::vector<std::string>{"/alipay/apps/0/previous_alipay_public_cert_file: holds no "
                                                         "PEM certificate, or one that does not read"});
    auto key_mode = app_config();
    key_mode.previous_public_cert_pem = previous.cert_pem;
    CHECK(load_problems(key_mode) ==
          std::vector<std::string>{
              "/alipay/apps/0/previous_alipay_public_cert_file: is set but alipay_public_cert_file is not"});
}

TEST_CASE("make_alipay_gateway: every problem of every app, indexed, duplicates, success")
{
    auto good = app_config();
    auto bad_key = app_config();
    bad_key.app_id = "2021000000000002";
    bad_key.public_key_pem = "garbage";
    auto duplicate = app_config();
    const auto other_ca = keygen::make_ca({.common_name = "Other"});
    const auto ca = keygen::make_ca({.common_name = "Root"});
    const auto leaf = keygen::issue(ca, {.common_name = "alipay"});
    auto unchained = cert_app(leaf.cert_pem, other_ca.cert_pem);
    unchained.app_id = "2021000000000003";

    std::vector<std::string> problems;
    auto gw = make_alipay_gateway({good, bad_key, duplicate, unchained}, problems);
    REQUIRE_FALSE(gw.has_value());
    CHECK(gw.error() == make_error_code(errc::invalid_argument));
    CHECK(problems == std::vector<std::string>{
                          "/alipay/apps/1" + kNotAKey.substr(std::string_view("/alipay/apps/0").size()),
                          "/alipay/apps/2/app_id: 2021000000000001 is configured twice",
                          "/alipay/apps/3/alipay_public_cert_file: does not chain to alipay_root_cert_file"});

    problems.clear();
    auto chained = cert_app(leaf.cert_pem, ca.cert_pem);
    chained.app_id = "2021000000000004";
    chained.seller_id.clear();
    auto ok = make_alipay_gateway({good, chained}, problems);
    CHECK(problems.empty());
    REQUIRE(ok.has_value());
    CHECK((*ok)->name() == "alipay");
    gateways::InboundRequest req;
    const std::string body = body_of(make_paid_notice(spec()));
    req.body = body;
    CHECK((*ok)->verify_and_parse(req).has_value());
}
