#pragma once

// The download of WeChat Pay platform certificates, GET /v3/certificates (PROTOCOLS.md §2.12,
// §2.13), for merchants in platform certificate mode: WeChat Pay adds a new certificate to the
// list 24 h before it signs with it, so a merchant that polls keeps verifying through a rotation
// without a config change. build_certificates_request signs the request with the merchant's API
// key; read_certificates_response decrypts the certificates with the APIv3 key and authenticates
// the answer. No I/O: the caller sends the request.

#include "core/result.hpp"
#include "gateways/query.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways::wechatpay {

/// GET <base_path>/v3/certificates, no query string (WeChat Pay then lists its RSA certificates),
/// signed exactly as build_transaction_query signs: Authorization WECHATPAY2-SHA256-RSA2048 with
/// the signature over "GET\n<base_path>/v3/certificates\n<now_unix>\n<nonce>\n\n";
/// Accept: application/json; Wechatpay-Serial: <public_key_id> in public-key mode. base_path and
/// nonce as for build_transaction_query.
/// Errors: invalid_argument (a nonce that is not 1–64 letters or digits, a base_path that does
/// not start with '/' or holds '?', '#', '"', a space or a control character, no private key, an
/// empty or unquotable serial, now_unix <= 0); internal (signing failed).
Result<QueryRequest> build_certificates_request(const V3Merchant& merchant, const V3QuerySigner& signer,
                                                std::string_view base_path, std::int64_t now_unix,
                                                std::string_view nonce);

/// Reads WeChat Pay's answer to build_certificates_request(merchant, …).
///
/// 2xx: {"data":[{"serial_no","effective_time","expire_time","encrypt_certificate":{"algorithm",
/// "nonce","associated_data","ciphertext"}}, …]}. Without Wechatpay-Signature → bad_signature
/// ("200 unsigned"). Each entry:
///   - serial_no, encrypt_certificate and its algorithm, nonce, associated_data and ciphertext
///     present as strings (associated_data may be empty), algorithm AEAD_AES_256_GCM, else
///     malformed_request. effective_time and expire_time are not read: the validity is taken
///     from the certificate itself;
///   - decrypted with decrypt_resource under merchant.apiv3_key. A GCM tag that does not verify
///     means our APIv3 key is wrong or the data was damaged: decrypt_resource's error
///     (bad_signature; malformed_request for bad base64), detail "… decrypt failed: …";
///   - the plaintext must be exactly one PEM X.509 certificate holding an RSA public key, whose
///     serial equals serial_no (normalize_serial forms: case and leading zeros do not matter),
///     and no other entry may have the same serial; else malformed_request.
/// The certificate becomes a PlatformCertificate: serial in normalize_serial form, its public
/// key, not_before / not_after from the certificate (Unix seconds). Certificates already expired
/// at now_unix (not_after < now_unix) are dropped, not an error; certificates not valid yet are
/// kept (WeChat Pay lists a new one a day before it signs with it). An empty result is not an
/// error.
/// Then the answer is authenticated as read_transaction_query authenticates one
/// (verify_v3_signature: headers, ±300 s window, key by Wechatpay-Serial, signature over the raw
/// body), with the merchant's keys (configured, then those in merchant.downloaded) plus the
/// certificates returned, on a copy of `merchant` without its book (so an unknown serial here
/// does not call the book's hook): WeChat Pay may sign with a certificate the merchant learns
/// from this very answer. This is the official SDKs' trust model (§2.13: TLS plus the GCM tag
/// under the secret APIv3 key vouch for the certificates; the Go SDK verifies later answers with
/// the downloaded set), plus the signature that the SDKs skip. Any failure there →
/// bad_signature, except stale_timestamp. The note in `detail` says key=platform_certificate:…
/// whichever of these sets the key came from.
/// 404, whatever the code (NOT_FOUND: the merchant switched to public-key mode, §2.13) →
///   errc::not_found. It is not authenticated: a caller should keep the certificates it has and
///   only stop or slow its polling.
/// 429 and 5xx → errc::provider_unavailable (try again later).
/// Any other status (401 SIGN_ERROR, 403, 400 PARAM_ERROR, 1xx, 3xx) → errc::provider_rejected.
///
/// `detail` (when given) always receives one line for logs saying what was decided and why:
/// "200 2 certificates key=platform_certificate:5157F09E…", "200 1 certificate, 1 expired
/// dropped key=public_key", "404 NOT_FOUND", "401 SIGN_ERROR", "200 not verified: bad_signature",
/// "200 data[0] decrypt failed: bad_signature". It holds the status, WeChat's error code (only
/// when it is a plain [A-Z0-9_] code), serials (quoted and cut when not authenticated) and
/// paybridge's own words, never the error message or the body.
Result<std::vector<PlatformCertificate>> read_certificates_response(const V3Merchant& merchant,
                                                                    const QueryResponse& response,
                                                                    std::int64_t now_unix,
                                                                    std::string* detail = nullptr);

}  // namespace paybridge::gateways::wechatpay
