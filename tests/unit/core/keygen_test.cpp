#include "tools/keygen/keygen.hpp"

#include "gateways/crypto/crypto.hpp"

#include <doctest/doctest.h>

using namespace paybridge;

TEST_CASE("keygen: a test CA issues certificates that chain to it")
{
    const auto ca = keygen::make_ca({.common_name = "Test Root CA"});
    const auto leaf = keygen::issue(ca, {.common_name = "alipay-public", .serial_hex = "0A1B2C"});
    auto roots = crypto::load_certificates(ca.cert_pem);
    auto leaves = crypto::load_certificates(leaf.cert_pem);
    REQUIRE(roots.has_value());
    REQUIRE(leaves.has_value());
    CHECK(crypto::certificate_chains_to(leaves->front().get(), *roots));
    CHECK(crypto::certificate_serial_hex(leaves->front().get()) == "A1B2C");
    const auto other = keygen::make_ca({.common_name = "Other CA"});
    auto other_roots = crypto::load_certificates(other.cert_pem);
    CHECK_FALSE(crypto::certificate_chains_to(leaves->front().get(), *other_roots));
    CHECK(crypto::alipay_cert_sn(leaves->front().get()).size() == 32);
    CHECK(keygen::random_token(32).size() == 32);
}
