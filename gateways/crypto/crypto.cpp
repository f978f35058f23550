#include "gateways/crypto/crypto.hpp"

#include "core/error.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <array>
#include <stdexcept>
#include <vector>

namespace paybridge::crypto {

void PkeyFree::operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
void X509Free::operator()(X509* p) const noexcept { X509_free(p); }

namespace {

template <auto Fn>
struct FreeWith {
    template <class T>
    void operator()(T* p) const noexcept { Fn(p); }
};
using BioPtr = std::unique_ptr<BIO, FreeWith<BIO_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, FreeWith<EVP_MD_CTX_free>>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, FreeWith<EVP_CIPHER_CTX_free>>;
using StorePtr = std::unique_ptr<X509_STORE, FreeWith<X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, FreeWith<X509_STORE_CTX_free>>;
using BnPtr = std::unique_ptr<BIGNUM, FreeWith<BN_free>>;

const auto* u8(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

BioPtr mem_bio(std::string_view s) { return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size()))); }

const EVP_MD* md_of(Digest d) { return d == Digest::sha1 ? EVP_sha1() : EVP_sha256(); }

// OpenSSL 3 looks an algorithm up by name ("fetches" it, under a lock) in every EVP_*Init call.
// Verification is the hot path of every notification, so it fetches its digests once and keeps,
// per thread, one ready verification context per key: the RSA operation is then the only cost.
const EVP_MD* fetched_md(Digest d)
{
    static EVP_MD* const sha1 = EVP_MD_fetch(nullptr, "SHA1", nullptr);
    static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return d == Digest::sha1 ? sha1 : sha256;
}

// The same for the ciphers of WeChat Pay's notifications (v3 resource, v2 req_info).
const EVP_CIPHER* aes_256_gcm()
{
    static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    return cipher;
}

const EVP_CIPHER* aes_256_ecb()
{
    static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-ECB", nullptr);
    return cipher;
}

class VerifyContexts {
public:
    VerifyContexts() = default;
    VerifyContexts(const VerifyContexts&) = delete;
    VerifyContexts& operator=(const VerifyContexts&) = delete;
    ~VerifyContexts() { clear(); }

    // A context initialised for RSA PKCS#1 v1.5 verification (or, with `recover`, digest recovery)
    // with `key` and digest `d`. Each context holds a reference to its key, so a cached key pointer
    // can never be reused for another key; the cache is emptied when it fills (keys replaced by
    // reloads drop out then).
    EVP_PKEY_CTX* get(EVP_PKEY* key, Digest d, bool recover = false)
    {
        for (const Entry& e : entries_) {
            if (e.key == key && e.digest == d && e.recover == recover) {
                return e.ctx;
            }
        }
        if (entries_.size() >= kMaxEntries) {
            clear();
        }
        EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr);
        const EVP_MD* md = fetched_md(d);
        if (ctx == nullptr || md == nullptr ||
            (recover ? EVP_PKEY_verify_recover_init(ctx) : EVP_PKEY_verify_init(ctx)) != 1 ||
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1 || EVP_PKEY_CTX_set_signature_md(ctx, md) != 1) {
            EVP_PKEY_CTX_free(ctx);
            return nullptr;
        }
        entries_.push_back(Entry{key, d, recover, ctx});
        return ctx;
    }

private:
    static constexpr std::size_t kMaxEntries = 32;
    struct Entry {
        EVP_PKEY* key;
        Digest digest;
        bool recover;
        EVP_PKEY_CTX* ctx;
    };

    void clear() noexcept
    {
        for (const Entry& e : entries_) {
            EVP_PKEY_CTX_free(e.ctx);
        }
        entries_.clear();
    }

    std::vector<Entry> entries_;
};

// One cache per thread: OpenSSL contexts are not safe to share between threads.
VerifyContexts& verify_contexts()
{
    thread_local VerifyContexts contexts;
    return contexts;
}

// The `d` digest of `data` into `md`, its length into `len`; false when OpenSSL fails.
bool digest_into(Digest d, std::string_view data, unsigned char (&md)[EVP_MAX_MD_SIZE], unsigned int& len) noexcept
{
    return EVP_Digest(data.data(), data.size(), md, &len, fetched_md(d), nullptr) == 1;
}

std::string digest(const EVP_MD* md, std::string_view data)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), out, &len, md, nullptr) != 1) {
        throw std::runtime_error("EVP_Digest failed");
    }
    return std::string(reinterpret_cast<char*>(out), len);
}

std::string hex(std::string_view bytes, const char* alphabet)
{
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += alphabet[c >> 4];
        out += alphabet[c & 15];
    }
    return out;
}

SharedKey share(EVP_PKEY* key) { return SharedKey(key, PkeyFree{}); }

}  // namespace

std::string base64_encode(std::string_view bytes)
{
    std::string out(4 * ((bytes.size() + 2) / 3), '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), u8(bytes), static_cast<int>(bytes.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

std::optional<std::string> base64_decode(std::string_view text)
{
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    // The standard alphabet (RFC 4648 §4); '=' is handled apart.
    static constexpr std::array<bool, 256> kAlphabet = [] {
        std::array<bool, 256> t{};
        for (const char c : std::string_view("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")) {
            t[static_cast<unsigned char>(c)] = true;
        }
        return t;
    }();
    std::size_t pad = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        const bool alpha = kAlphabet[static_cast<unsigned char>(c)];
        if (c == '=') {
            if (i + 2 < text.size()) {
                return std::nullopt;  // '=' only in the last two places
            }
            ++pad;
        } else if (!alpha || pad > 0) {
            return std::nullopt;
        }
    }
    std::string out(text.size() / 4 * 3, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), u8(text), static_cast<int>(text.size()));
    if (n < 0) {
        return std::nullopt;
    }
    out.resize(static_cast<std::size_t>(n) - pad);
    return out;
}

std::string hex_lower(std::string_view bytes) { return hex(bytes, "0123456789abcdef"); }
std::string hex_upper(std::string_view bytes) { return hex(bytes, "0123456789ABCDEF"); }
std::string md5(std::string_view data) { return digest(EVP_md5(), data); }
std::string sha256(std::string_view data) { return digest(EVP_sha256(), data); }

std::string hmac_sha256(std::string_view key, std::string_view data)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), u8(data), data.size(), out, &len) == nullptr) {
        throw std::runtime_error("HMAC failed");
    }
    return std::string(reinterpret_cast<char*>(out), len);
}

bool constant_time_equal(std::string_view a, std::string_view b) noexcept
{
    // The length of a signature or token is not secret; its content is.
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string random_bytes(std::size_t n)
{
    std::string out(n, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
        throw std::runtime_error("RAND_bytes failed");
    }
    return out;
}

Result<SharedKey> load_public_key(std::string_view text)
{
    if (text.find("-----BEGIN") != std::string_view::npos) {
        auto bio = mem_bio(text);
        if (EVP_PKEY* key = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr)) {
            return share(key);
        }
        return make_error_code(errc::malformed_request);
    }
    // Bare base64 SPKI DER (Alipay's console format), whitespace tolerated.
    std::string compact;
    for (char c : text) {
        if (c != '\n' && c != '\r' && c != ' ' && c != '\t') {
            compact += c;
        }
    }
    auto der = base64_decode(compact);
    if (!der) {
        return make_error_code(errc::malformed_request);
    }
    const unsigned char* p = u8(*der);
    if (EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(der->size()))) {
        return share(key);
    }
    return make_error_code(errc::malformed_request);
}

Result<SharedKey> load_private_key(std::string_view pem)
{
    auto bio = mem_bio(pem);
    if (EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr)) {
        return share(key);
    }
    return make_error_code(errc::malformed_request);
}

bool rsa_verify(EVP_PKEY* key, Digest d, std::string_view data, std::string_view signature)
{
    if (key == nullptr || signature.empty()) {
        return false;
    }
    EVP_PKEY_CTX* ctx = verify_contexts().get(key, d);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (ctx == nullptr || !digest_into(d, data, md, md_len)) {
        return false;
    }
    return EVP_PKEY_verify(ctx, u8(signature), signature.size(), md, md_len) == 1;
}

std::optional<std::string> rsa_recover_digest(EVP_PKEY* key, Digest d, std::string_view signature)
{
    if (key == nullptr || signature.empty()) {
        return std::nullopt;
    }
    EVP_PKEY_CTX* ctx = verify_contexts().get(key, d, true);
    unsigned char md[EVP_MAX_MD_SIZE];
    std::size_t md_len = sizeof md;
    // With the signature digest set, OpenSSL checks the PKCS#1 v1.5 padding and that the DigestInfo
    // names `d`, and hands back the digest alone.
    if (ctx == nullptr || EVP_PKEY_verify_recover(ctx, md, &md_len, u8(signature), signature.size()) != 1 ||
        md_len != static_cast<std::size_t>(EVP_MD_get_size(fetched_md(d)))) {
        return std::nullopt;
    }
    return std::string(reinterpret_cast<const char*>(md), md_len);
}

bool digest_matches(std::string_view digest, Digest d, std::string_view data)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (!digest_into(d, data, md, md_len)) {
        return false;
    }
    return constant_time_equal(digest, std::string_view(reinterpret_cast<const char*>(md), md_len));
}

Result<std::string> rsa_sign(EVP_PKEY* key, Digest d, std::string_view data)
{
    MdCtxPtr ctx(EVP_MD_CTX_new());
    std::size_t len = 0;
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, md_of(d), nullptr, key) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &len, u8(data), data.size()) != 1) {
        return make_error_code(errc::internal);
    }
    std::string sig(len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, u8(data), data.size()) != 1) {
        return make_error_code(errc::internal);
    }
    sig.resize(len);
    return sig;
}

Result<std::string> aes256gcm_decrypt(std::string_view key, std::string_view nonce, std::string_view aad,
                                      std::string_view ct)
{
    constexpr std::size_t kTag = 16;
    if (key.size() != 32 || nonce.empty() || ct.size() < kTag) {
        return make_error_code(errc::malformed_request);
    }
    CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    int len = 0;
    std::string out(ct.size() - kTag, '\0');
    const std::string_view body = ct.substr(0, ct.size() - kTag);
    std::string tag(ct.substr(ct.size() - kTag));
    if (!ctx || EVP_DecryptInit_ex(ctx.get(), aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()), nullptr) != 1 ||
        EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, u8(key), u8(nonce)) != 1) {
        return make_error_code(errc::internal);
    }
    if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, u8(aad), static_cast<int>(aad.size())) != 1) {
        return make_error_code(errc::internal);
    }
    if (EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len, u8(body),
                          static_cast<int>(body.size())) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTag, tag.data()) != 1) {
        return make_error_code(errc::internal);
    }
    int fin = 0;
    if (EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()) + len, &fin) != 1) {
        return make_error_code(errc::bad_signature);  // the tag did not verify
    }
    out.resize(static_cast<std::size_t>(len + fin));
    return out;
}

Result<std::string> aes256gcm_encrypt(std::string_view key, std::string_view nonce, std::string_view aad,
                                      std::string_view plaintext)
{
    if (key.size() != 32 || nonce.empty()) {
        return make_error_code(errc::malformed_request);
    }
    CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    int len = 0;
    std::string out(plaintext.size() + 16, '\0');
    if (!ctx || EVP_EncryptInit_ex(ctx.get(), aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()), nullptr) != 1 ||
        EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, u8(key), u8(nonce)) != 1) {
        return make_error_code(errc::internal);
    }
    if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, u8(aad), static_cast<int>(aad.size())) != 1) {
        return make_error_code(errc::internal);
    }
    int fin = 0;
    if (EVP_EncryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len, u8(plaintext),
                          static_cast<int>(plaintext.size())) != 1 ||
        EVP_EncryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()) + len, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, out.data() + plaintext.size()) != 1) {
        return make_error_code(errc::internal);
    }
    return out;
}

namespace {

Result<std::string> aes256ecb(bool encrypt, std::string_view key, std::string_view in)
{
    if (key.size() != 32 || (!encrypt && (in.empty() || in.size() % 16 != 0))) {
        return make_error_code(errc::malformed_request);
    }
    CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    std::string out(in.size() + 16, '\0');
    int len = 0;
    int fin = 0;
    if (!ctx || EVP_CipherInit_ex(ctx.get(), aes_256_ecb(), nullptr, u8(key), nullptr, encrypt ? 1 : 0) != 1 ||
        EVP_CipherUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len, u8(in),
                         static_cast<int>(in.size())) != 1) {
        return make_error_code(errc::internal);
    }
    if (EVP_CipherFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()) + len, &fin) != 1) {
        return make_error_code(errc::bad_signature);  // bad padding: wrong key or tampered
    }
    out.resize(static_cast<std::size_t>(len + fin));
    return out;
}

}  // namespace

Result<std::string> aes256ecb_decrypt(std::string_view key, std::string_view ct) { return aes256ecb(false, key, ct); }
Result<std::string> aes256ecb_encrypt(std::string_view key, std::string_view pt) { return aes256ecb(true, key, pt); }

Result<std::vector<X509Ptr>> load_certificates(std::string_view pem)
{
    std::vector<X509Ptr> certs;
    auto bio = mem_bio(pem);
    ERR_clear_error();
    while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
        certs.emplace_back(cert);
    }
    // The loop ends at the end of the text ("no start line") or at a block that does not read.
    const unsigned long err = ERR_peek_last_error();
    ERR_clear_error();
    const bool at_end = ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
    if (!at_end) {
        return make_error_code(errc::malformed_request);
    }
    if (certs.empty()) {
        return make_error_code(errc::not_found);
    }
    return certs;
}

SharedKey certificate_key(X509* cert)
{
    EVP_PKEY* key = X509_get_pubkey(cert);
    return key ? share(key) : SharedKey{};
}

std::string certificate_serial_hex(X509* cert)
{
    BnPtr bn(ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr));
    char* text = BN_bn2hex(bn.get());
    std::string out(text);
    OPENSSL_free(text);
    const auto first = out.find_first_not_of('0');
    return first == std::string::npos ? std::string("0") : out.substr(first);
}

namespace {

std::int64_t asn1_time_unix(const ASN1_TIME* t)
{
    struct tm tm {};
    if (ASN1_TIME_to_tm(t, &tm) != 1) {
        return 0;
    }
    return static_cast<std::int64_t>(timegm(&tm));
}

}  // namespace

std::int64_t certificate_not_after(X509* cert) { return asn1_time_unix(X509_get0_notAfter(cert)); }
std::int64_t certificate_not_before(X509* cert) { return asn1_time_unix(X509_get0_notBefore(cert)); }

bool certificate_chains_to(X509* cert, const std::vector<X509Ptr>& roots, std::int64_t at_unix)
{
    StorePtr store(X509_STORE_new());
    for (const auto& root : roots) {
        X509_STORE_add_cert(store.get(), root.get());
    }
    StoreCtxPtr ctx(X509_STORE_CTX_new());
    if (!store || !ctx || X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr) != 1) {
        return false;
    }
    if (at_unix != 0) {
        X509_STORE_CTX_set_time(ctx.get(), 0, static_cast<time_t>(at_unix));
    }
    return X509_verify_cert(ctx.get()) == 1;
}

std::string alipay_cert_sn(X509* cert)
{
    BioPtr bio(BIO_new(BIO_s_mem()));
    X509_NAME_print_ex(bio.get(), X509_get_issuer_name(cert), 0, XN_FLAG_RFC2253);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    std::string text(data, static_cast<std::size_t>(n));
    BnPtr bn(ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr));
    char* dec = BN_bn2dec(bn.get());
    text += dec;
    OPENSSL_free(dec);
    return hex_lower(md5(text));  // 16 bytes always give 32 digits: the zero-padding of Java's fillMD5
}

std::string alipay_root_cert_sn(const std::vector<X509Ptr>& bundle)
{
    std::string out;
    for (const auto& cert : bundle) {
        char oid[80];
        OBJ_obj2txt(oid, sizeof oid, OBJ_nid2obj(X509_get_signature_nid(cert.get())), 1);
        if (std::string_view(oid).starts_with("1.2.840.113549.1.1")) {
            if (!out.empty()) {
                out += '_';
            }
            out += alipay_cert_sn(cert.get());
        }
    }
    return out;
}

}  // namespace paybridge::crypto
