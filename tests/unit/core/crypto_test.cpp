#include "gateways/crypto/crypto.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

using namespace paybridge::crypto;

namespace {

std::string generate_rsa_pem(std::string& public_pem)
{
    EVP_PKEY* key = EVP_RSA_gen(2048);
    REQUIRE(key != nullptr);
    BIO* priv = BIO_new(BIO_s_mem());
    BIO* pub = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(priv, key, nullptr, nullptr, 0, nullptr, nullptr);
    PEM_write_bio_PUBKEY(pub, key);
    char* data = nullptr;
    long n = BIO_get_mem_data(priv, &data);
    std::string private_pem(data, static_cast<std::size_t>(n));
    n = BIO_get_mem_data(pub, &data);
    public_pem.assign(data, static_cast<std::size_t>(n));
    BIO_free(priv);
    BIO_free(pub);
    EVP_PKEY_free(key);
    return private_pem;
}

}  // namespace

TEST_CASE("base64 is strict")
{
    CHECK(base64_encode("ab") == "YWI=");
    CHECK(*base64_decode("YWI=") == "ab");
    CHECK(*base64_decode("YWJj") == "abc");
    CHECK(*base64_decode("") == "");
    CHECK_FALSE(base64_decode("YWI"));
    CHECK_FALSE(base64_decode("YW I="));
    CHECK_FALSE(base64_decode("Y=WI"));
    CHECK_FALSE(base64_decode("WECHATPAY/SIGNTEST/abc"));
    CHECK_FALSE(base64_decode("YW-_"));          // the URL-safe alphabet is another alphabet
    CHECK_FALSE(base64_decode("YWI\xC3"));       // a byte above 0x7F
    CHECK_FALSE(base64_decode(std::string_view("YW\0=", 4)));
    CHECK(*base64_decode("+/+/") == "\xFB\xFF\xBF");
}

TEST_CASE("AES-256-GCM: PROTOCOLS.md 2.7 vector, tamper and wrong key")
{
    const std::string key = "0123456789abcdef0123456789abcdef";
    const auto ct = base64_decode(
        "3o+HCNs3jCx1rxUzdmAZxsbr4jGt2omLqvZ+gQ5Vls99tP634Mk6aM2PPuB9PQplwi67/kYW4i21IZWNfSsOsdVSw356CbZiXTcRwX56A+0u5fWgZD79Q2duOgUMQovgBC5ro14QDA==");
    REQUIRE(ct.has_value());
    auto pt = aes256gcm_decrypt(key, "Kj7QIyUiYx1q", "transaction", *ct);
    REQUIRE(pt.has_value());
    CHECK(*pt == R"({"mchid":"1900000109","out_trade_no":"T1","trade_state":"SUCCESS","amount":{"total":1}})");
    std::string flipped = *ct;
    flipped[3] ^= 1;
    CHECK_FALSE(aes256gcm_decrypt(key, "Kj7QIyUiYx1q", "transaction", flipped));
    CHECK_FALSE(aes256gcm_decrypt("0123456789abcdef0123456789abcdeX", "Kj7QIyUiYx1q", "transaction", *ct));
    CHECK_FALSE(aes256gcm_decrypt(key, "Kj7QIyUiYx1q", "", *ct));
    auto again = aes256gcm_encrypt(key, "Kj7QIyUiYx1q", "transaction", *pt);
    REQUIRE(again.has_value());
    CHECK(*again == *ct);
}

TEST_CASE("WeChat v2: MD5/HMAC vector and req_info AES-256-ECB vector")
{
    const std::string s =
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&key="
        "192006250b4c09247ec02edce69f6a2d";
    CHECK(hex_upper(md5(s)) == "9A0A8659F005D6984697E2CA0A9CF3B7");
    CHECK(hex_upper(hmac_sha256("192006250b4c09247ec02edce69f6a2d", s)) ==
          "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6");
    const std::string key = hex_lower(md5("192006250b4c09247ec02edce69f6a2d"));
    CHECK(key == "d96eb16afdd491fa1e705096edbc2205");
    const auto ct = base64_decode(
        "WBzGpzQuNpcFxIlFjUUD9BZv+lpBMzd2SHiKCkwfALWid5G8ZvfOussfMIHLbKJmcnxPKdb1ZJEqTAp8ysQv+xa1fj+Eorgndx3fNxf3KAYa3LPgsjvZgxaeYyrhV05Kbjkj6ywg27cEyTTaPZFYNg==");
    REQUIRE(ct.has_value());
    auto pt = aes256ecb_decrypt(key, *ct);
    REQUIRE(pt.has_value());
    CHECK(*pt ==
          "<root><out_refund_no><![CDATA[R1]]></out_refund_no><refund_status><![CDATA[SUCCESS]]></refund_status></root>");
    CHECK(*aes256ecb_encrypt(key, *pt) == *ct);
}

TEST_CASE("RSA sign/verify with generated keys, SHA256 and SHA1")
{
    std::string pub_pem;
    const std::string priv_pem = generate_rsa_pem(pub_pem);
    auto priv = load_private_key(priv_pem);
    auto pub = load_public_key(pub_pem);
    REQUIRE(priv.has_value());
    REQUIRE(pub.has_value());
    for (Digest d : {Digest::sha256, Digest::sha1}) {
        auto sig = rsa_sign(priv->get(), d, "hello");
        REQUIRE(sig.has_value());
        CHECK(rsa_verify(pub->get(), d, "hello", *sig));
        CHECK_FALSE(rsa_verify(pub->get(), d, "hellO", *sig));
        std::string bad = *sig;
        bad[10] ^= 0x40;
        CHECK_FALSE(rsa_verify(pub->get(), d, "hello", bad));
    }
    // Alipay console format: bare base64 SPKI.
    std::string bare;
    for (std::size_t start = pub_pem.find('\n') + 1; start < pub_pem.size();) {
        const auto end = pub_pem.find('\n', start);
        const std::string line = pub_pem.substr(start, end - start);
        if (line.rfind("-----", 0) != 0) {
            bare += line;
        }
        start = end + 1;
    }
    auto pub2 = load_public_key(bare);
    REQUIRE(pub2.has_value());
    auto sig = rsa_sign(priv->get(), Digest::sha256, "x");
    CHECK(rsa_verify(pub2->get(), Digest::sha256, "x", *sig));
    CHECK_FALSE(load_public_key("not a key"));
}

TEST_CASE("RSA digest recovery: one public-key operation, then any number of texts checked by their digest")
{
    std::string pub_pem;
    const std::string priv_pem = generate_rsa_pem(pub_pem);
    std::string other_pem;
    (void)generate_rsa_pem(other_pem);
    auto priv = load_private_key(priv_pem);
    auto pub = load_public_key(pub_pem);
    auto other = load_public_key(other_pem);
    REQUIRE(priv.has_value());
    REQUIRE(pub.has_value());
    REQUIRE(other.has_value());
    for (Digest d : {Digest::sha256, Digest::sha1}) {
        CAPTURE(static_cast<int>(d));
        auto sig = rsa_sign(priv->get(), d, "a=1&b=2");
        REQUIRE(sig.has_value());
        auto recovered = rsa_recover_digest(pub->get(), d, *sig);
        REQUIRE(recovered.has_value());
        CHECK(recovered->size() == (d == Digest::sha256 ? 32u : 20u));
        if (d == Digest::sha256) {
            CHECK(*recovered == sha256("a=1&b=2"));  // the raw digest, nothing around it
        }
        CHECK(digest_matches(*recovered, d, "a=1&b=2"));
        CHECK_FALSE(digest_matches(*recovered, d, "a=1&b=3"));
        CHECK_FALSE(digest_matches(*recovered, d, ""));
        // Another key, a flipped byte, a signature made with the other digest: nothing recovered.
        CHECK_FALSE(rsa_recover_digest(other->get(), d, *sig).has_value());
        std::string bad = *sig;
        bad[10] ^= 0x40;
        CHECK_FALSE(rsa_recover_digest(pub->get(), d, bad).has_value());
        const Digest wrong = d == Digest::sha256 ? Digest::sha1 : Digest::sha256;
        CHECK_FALSE(rsa_recover_digest(pub->get(), wrong, *sig).has_value());
        CHECK_FALSE(rsa_recover_digest(pub->get(), d, "").has_value());
        CHECK_FALSE(rsa_recover_digest(pub->get(), d, sig->substr(1)).has_value());
    }
}

TEST_CASE("constant_time_equal")
{
    CHECK(constant_time_equal("abc", "abc"));
    CHECK_FALSE(constant_time_equal("abc", "abd"));
    CHECK_FALSE(constant_time_equal("abc", "ab"));
}
