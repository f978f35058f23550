#pragma once

// alipay.open.app.alipaycert.download (PROTOCOLS.md §1.6): fetching the Alipay public certificate
// an API answer names in alipay_cert_sn when it is not one paybridge holds (Alipay re-issued its
// certificate). The request is signed as alipay.trade.query is (alipay_query.hpp); the answer is
// authenticated as a query answer is, and the certificate is trusted only when it chains to the
// app's configured Alipay roots. No I/O: the daemon sends the request when a book's hook says so.

#include "core/result.hpp"
#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/alipay/alipay_query.hpp"
#include "gateways/certificate_book.hpp"
#include "gateways/query.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace paybridge::gateways::alipay {

/// The signed request for the Alipay certificate of SN `alipay_cert_sn`: exactly as
/// build_trade_query (POST `gateway_target`, system parameters and sign in the URL query,
/// app_cert_sn and alipay_root_cert_sn, the same signature) with
/// method=alipay.open.app.alipaycert.download and body biz_content={"alipay_cert_sn":"<sn>"}.
/// Errors: errc::invalid_argument for an empty alipay_cert_sn, public-key mode (no
/// signer.app_cert_sn: the download is a certificate-mode request) and whatever build_trade_query
/// refuses (target, key, half a certificate-mode pair); errc::internal when signing fails.
Result<QueryRequest> build_cert_download(const AlipayAppKeys& app, const AlipayQuerySigner& signer,
                                         std::string_view gateway_target, std::string_view alipay_cert_sn,
                                         std::int64_t now_unix);

/// Reads the answer to build_cert_download(app, ..., alipay_cert_sn, ...).
/// - HTTP status, the answer's layout ("alipay_open_app_alipaycert_download_response", else
///   "error_response"), sign and alipay_cert_sn are read as read_trade_query reads them, on the
///   raw bytes; an unsigned answer is never trusted (code 20000 → provider_unavailable, 10000 →
///   bad_signature, anything else → provider_rejected).
/// - The certificate (code 10000): alipay_cert_content is the base64 (whitespace ignored) of a PEM
///   file holding Alipay's certificate, maybe with intermediates. Its leaf (the certificate that
///   issued none of the others, as at load) must chain to app.roots at `now_unix` (0: the clock),
///   the others offered as intermediates only, be valid then, hold an RSA key, carry the issuer
///   and the subject of the configured Alipay certificate (the root also issues merchants' app
///   certificates), be no CA, and have the SN `alipay_cert_sn` (crypto::alipay_cert_sn). Else
///   bad_signature, with the reason in `detail`.
///   These checks are made before the signature's, so that the answer may be signed with the new
///   certificate itself: it is trusted through its chain, not through the answer.
/// - The signature, over the response object's exact bytes (and, as a fallback, with "\/" read
///   as "/"), with app.digest: when alipay_cert_sn names the certificate being downloaded (and it
///   passed the checks), its key; when it names a configured certificate, that one's key (a
///   previous certificate until its notAfter); when it names one in app.downloaded, that one's
///   key (valid at now_unix); when it names none, each of these in turn. An SN that is none of
///   these, or no key that verifies: bad_signature. Unknown SNs are never reported to the book's
///   hook from here.
/// - Then the code: 10000 → the certificate (without alipay_cert_content: malformed_request);
///   20000 → provider_unavailable; anything else → provider_rejected ("code 40004 sub_code ...").
/// - app.roots must be set (certificate mode): else errc::invalid_argument.
/// Result: ProviderCertificate{serial = alipay_cert_sn, key = the leaf's public key, not_before,
/// not_after (Unix s)}. `detail`, when given, receives one line for logs: on success the
/// fallbacks used, as read_trade_query's ("" when none), on an error what failed. It never holds
/// key material; provider texts are excerpted. `content`, when given, receives on success
/// alipay_cert_content without its whitespace: what check_kept_certificate checks again later.
Result<gateways::ProviderCertificate> read_cert_download(const AlipayAppKeys& app, std::string_view alipay_cert_sn,
                                                         const QueryResponse& response, std::int64_t now_unix,
                                                         std::string* detail = nullptr, std::string* content = nullptr);

/// A certificate downloaded before and kept (store/certificate_shelf.hpp: every instance, and this
/// one after a restart, uses what one instance downloaded), checked again as the download's
/// certificate was: `content` as read_cert_download gave it; a leaf chaining to app.roots at
/// `now_unix` (0: the clock), valid then, an RSA key, the issuer and subject of the configured
/// Alipay certificate, no CA, SN `alipay_cert_sn`. One more check stands in for what only a
/// download has, Alipay naming the certificate in an answer: it must be newer (a later notBefore)
/// than the configured alipay_public_cert_file. So whoever can write where it is kept can bring
/// back nothing but a successor Alipay issued, never a retired certificate. Errors:
/// errc::invalid_argument (public-key mode, empty SN); errc::bad_signature, with the reason in
/// `detail`.
/// Whether `cert` is newer (a later notBefore) than the app's configured Alipay certificate: what a
/// kept copy must be (check_kept_certificate), and what keeps a download in use once another
/// certificate is installed.
bool newer_than_configured(const AlipayAppKeys& app, const gateways::ProviderCertificate& cert) noexcept;

Result<gateways::ProviderCertificate> check_kept_certificate(const AlipayAppKeys& app, std::string_view alipay_cert_sn,
                                                             std::string_view content, std::int64_t now_unix,
                                                             std::string* detail = nullptr);

}  // namespace paybridge::gateways::alipay
