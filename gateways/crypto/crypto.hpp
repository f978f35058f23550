#pragma once

// Thin, RAII wrappers over OpenSSL 3 for what the provider protocols need. Pure CPU, no I/O:
// key material arrives as bytes (the config loader reads files). Every function that can fail on
// untrusted input returns a value, never throws.

#include "core/result.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct evp_pkey_st EVP_PKEY;
typedef struct x509_st X509;

namespace paybridge::crypto {

struct PkeyFree { void operator()(EVP_PKEY* p) const noexcept; };
struct X509Free { void operator()(X509* p) const noexcept; };
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
/// Keys are immutable once loaded and shared between threads (OpenSSL 3 verify is thread-safe).
using SharedKey = std::shared_ptr<EVP_PKEY>;

enum class Digest { sha1, sha256 };

/// Standard base64 with padding. decode is strict: any character outside the alphabet, a bad
/// length or bad padding gives nullopt.
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

std::string hex_lower(std::string_view bytes);
std::string hex_upper(std::string_view bytes);

std::string md5(std::string_view data);
std::string sha256(std::string_view data);
std::string hmac_sha256(std::string_view key, std::string_view data);

/// Compares secrets (signatures, tokens, MACs) in time independent of where they differ.
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

/// Random bytes from the OpenSSL CSPRNG.
std::string random_bytes(std::size_t n);

/// PEM "PUBLIC KEY" (SPKI), or a bare base64 SPKI DER as Alipay's console
/// hands it out. Errors: errc::malformed_request.
Result<SharedKey> load_public_key(std::string_view pem_or_base64);
/// PEM private key (PKCS#8 or PKCS#1), for the simulator and tests.
Result<SharedKey> load_private_key(std::string_view pem);

/// Verifies an RSASSA-PKCS1-v1_5 signature (raw bytes) over data.
bool rsa_verify(EVP_PKEY* key, Digest digest, std::string_view data, std::string_view signature);
/// The digest an RSASSA-PKCS1-v1_5 signature (raw bytes) made with digest `d` carries, recovered
/// with the public key: one RSA operation, after which digest_matches() checks any number of
/// candidate texts (Alipay's sign-string variants) without another. nullopt when the signature
/// does not decode under `key` as a `d` signature. rsa_recover_digest + digest_matches(data) is
/// exactly rsa_verify(data).
std::optional<std::string> rsa_recover_digest(EVP_PKEY* key, Digest digest, std::string_view signature);
/// True when the `d` digest of `data` equals `digest` (compared in constant time).
bool digest_matches(std::string_view digest, Digest d, std::string_view data);
/// Signs with RSASSA-PKCS1-v1_5; for the simulator and tests.
Result<std::string> rsa_sign(EVP_PKEY* key, Digest digest, std::string_view data);

/// AES-256-GCM with the tag appended to the ciphertext (WeChat Pay's layout).
/// decrypt errors: errc::bad_signature when the tag does not verify, malformed_request on sizes.
Result<std::string> aes256gcm_decrypt(std::string_view key, std::string_view nonce, std::string_view aad,
                                      std::string_view ciphertext_and_tag);
Result<std::string> aes256gcm_encrypt(std::string_view key, std::string_view nonce, std::string_view aad,
                                      std::string_view plaintext);

/// AES-256-ECB with PKCS#7 padding (WeChat Pay v2 refund req_info).
Result<std::string> aes256ecb_decrypt(std::string_view key, std::string_view ciphertext);
Result<std::string> aes256ecb_encrypt(std::string_view key, std::string_view plaintext);

// ---- X.509 ----

/// Every certificate in a PEM bundle, in file order (other PEM blocks are skipped). Errors:
/// not_found when there is none; malformed_request when a certificate block does not read (damaged
/// base64 or DER): a bundle is never silently cut short at a block OpenSSL cannot read, and OpenSSL
/// refuses such a file whole when it loads it to verify peers with.
Result<std::vector<X509Ptr>> load_certificates(std::string_view pem);
/// The certificate's public key.
SharedKey certificate_key(X509* cert);
/// Serial number as upper-case hex without leading zeros ("5157F09E...").
std::string certificate_serial_hex(X509* cert);
/// Validity end as Unix seconds.
std::int64_t certificate_not_after(X509* cert);
std::int64_t certificate_not_before(X509* cert);
/// True when cert chains to one of the trust anchors (`roots`; no intermediates), checked at time
/// `at_unix` (0: now).
bool certificate_chains_to(X509* cert, const std::vector<X509Ptr>& roots, std::int64_t at_unix = 0);

/// Alipay certificate SN: md5(issuer in RFC 2253 + decimal serial), 32 lower-case hex digits.
std::string alipay_cert_sn(X509* cert);
/// Alipay root SN: the SNs of the RSA-signed certificates of a bundle, joined with '_'.
std::string alipay_root_cert_sn(const std::vector<X509Ptr>& bundle);

}  // namespace paybridge::crypto
