#include "tools/keygen/keygen.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <memory>
#include <stdexcept>

namespace paybridge::keygen {
namespace {

template <auto Fn>
struct FreeWith {
    template <class T>
    void operator()(T* p) const noexcept { Fn(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, FreeWith<EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, FreeWith<X509_free>>;
using BioPtr = std::unique_ptr<BIO, FreeWith<BIO_free>>;
using BnPtr = std::unique_ptr<BIGNUM, FreeWith<BN_free>>;

void check(bool ok, const char* what)
{
    if (!ok) {
        throw std::runtime_error(std::string("keygen: ") + what + " failed");
    }
}

std::string bio_string(BIO* bio)
{
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    return std::string(data, static_cast<std::size_t>(n));
}

KeyPair pems(EVP_PKEY* key)
{
    BioPtr priv(BIO_new(BIO_s_mem()));
    BioPtr pub(BIO_new(BIO_s_mem()));
    check(PEM_write_bio_PrivateKey(priv.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1, "write key");
    check(PEM_write_bio_PUBKEY(pub.get(), key) == 1, "write public key");
    return {bio_string(priv.get()), bio_string(pub.get())};
}

PkeyPtr read_private(const std::string& pem)
{
    BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    check(key != nullptr, "read private key");
    return key;
}

X509Ptr read_cert(const std::string& pem)
{
    BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    check(cert != nullptr, "read certificate");
    return cert;
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    check(ext != nullptr, "extension");
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

Certificate build(const CertSpec& spec, EVP_PKEY* signer, X509* issuer_cert)
{
    PkeyPtr key(EVP_RSA_gen(2048));
    check(key != nullptr, "RSA key generation");
    X509Ptr cert(X509_new());
    X509_set_version(cert.get(), 2);
    BIGNUM* raw = nullptr;
    if (spec.serial_hex.empty()) {
        raw = BN_new();
        check(BN_rand(raw, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) == 1, "serial");
    } else {
        check(BN_hex2bn(&raw, spec.serial_hex.c_str()) != 0, "serial hex");
    }
    BnPtr serial(raw);
    BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get()));
    const std::time_t now = std::time(nullptr);
    ASN1_TIME_set(X509_getm_notBefore(cert.get()), spec.not_before_unix ? spec.not_before_unix : now - 86400);
    ASN1_TIME_set(X509_getm_notAfter(cert.get()), spec.not_after_unix ? spec.not_after_unix : now + 5L * 365 * 86400);
    X509_set_pubkey(cert.get(), key.get());
    X509_NAME* name = X509_get_subject_name(cert.get());
    auto add = [name](const char* field, const std::string& value) {
        if (!value.empty()) {
            X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()),
                                       -1, -1, 0);
        }
    };
    add("C", spec.country);
    add("O", spec.organization);
    add("OU", spec.organizational_unit);
    add("CN", spec.common_name);
    X509* issuer = issuer_cert ? issuer_cert : cert.get();
    X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer));
    if (spec.is_ca) {
        add_ext(cert.get(), issuer, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(cert.get(), issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(cert.get(), issuer, NID_basic_constraints, "CA:FALSE");
    }
    std::string san;
    for (const auto& d : spec.dns_names) {
        san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
    }
    for (const auto& ip : spec.ip_addresses) {
        san += (san.empty() ? "" : ",") + std::string("IP:") + ip;
    }
    if (!san.empty()) {
        add_ext(cert.get(), issuer, NID_subject_alt_name, san);
    }
    check(X509_sign(cert.get(), signer ? signer : key.get(), EVP_sha256()) > 0, "certificate signing");
    BioPtr out(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509(out.get(), cert.get());
    return {pems(key.get()), bio_string(out.get())};
}

}  // namespace

KeyPair generate_rsa(int bits)
{
    PkeyPtr key(EVP_RSA_gen(static_cast<unsigned>(bits)));
    check(key != nullptr, "RSA key generation");
    return pems(key.get());
}

Certificate make_ca(const CertSpec& spec)
{
    CertSpec ca = spec;
    ca.is_ca = true;
    return build(ca, nullptr, nullptr);
}

Certificate issue(const Certificate& issuer, const CertSpec& spec)
{
    PkeyPtr signer = read_private(issuer.key.private_pem);
    X509Ptr issuer_cert = read_cert(issuer.cert_pem);
    return build(spec, signer.get(), issuer_cert.get());
}

std::string random_token(std::size_t n)
{
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::string out;
    out.reserve(n);
    while (out.size() < n) {
        unsigned char b = 0;
        check(RAND_bytes(&b, 1) == 1, "random");
        if (b < 248) {  // 248 = 4 * 62: no modulo bias
            out += kAlphabet[b % 62];
        }
    }
    return out;
}

}  // namespace paybridge::keygen
