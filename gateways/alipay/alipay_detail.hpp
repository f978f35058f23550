#pragma once

// Internals shared by the Alipay notification gateway (alipay_gateway.cpp), alipay.trade.query
// (alipay_query.cpp) and the certificate download (alipay_cert_download.cpp). Not an interface:
// nothing outside gateways/alipay includes it.

#include "core/result.hpp"
#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/alipay/alipay_query.hpp"
#include "gateways/certificate_book.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query.hpp"

#include <openssl/x509.h>
#include <rapidjson/document.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways::alipay::detail {

// ---- certificates (alipay_gateway.cpp) ----

/// `now_unix`, or the clock's Unix seconds when it is 0.
std::int64_t now_or_clock(std::int64_t now_unix);

/// Appends `note` to the "; "-separated `notes`.
void add_note(std::string& notes, std::string_view note);
/// *detail = text, when detail is given.
void set_detail(std::string* detail, std::string text);

// ---- reading an answer (alipay_query.cpp) ----

/// How answers are parsed: numbers kept as their text (an amount sent as a number still reads
/// exactly); iterative, so no nesting depth can exhaust the stack (unsigned answers are parsed
/// too, to classify them).
inline constexpr unsigned kAnswerParseFlags = rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseIterativeFlag;

/// A string member (numbers are kept as their text by the parse flags), nullopt when absent or of
/// another type.
std::optional<std::string_view> text_member(const rapidjson::Value& object, const char* name);

/// The notes of a verified answer, for the log line: a previous key, a downloaded certificate
/// (`by_downloaded`), "\/" read as "/" (`via_unescaped`); "" when none.
std::string verification_notes(const AlipayKey& verified_by, bool by_downloaded, bool via_unescaped);

/// Parses the verified response object into `doc` and returns its code. Errors:
/// malformed_request (not a JSON object, no code), with the reason in `detail`.
Result<std::string_view> parse_verified(rapidjson::Document& doc, std::string_view content, std::string* detail);

/// Alipay's certificate file may carry intermediates after (or before) its own certificate; the
/// leaf is the one certificate that issued none of the others.
std::size_t leaf_index(const std::vector<crypto::X509Ptr>& certs);

/// True when file[leaf] chains to one of `roots`, the other certificates of `file` offered as
/// untrusted chain members (never as trust anchors); checked at `at_unix` (0: now), or without
/// looking at validity periods when `check_time` is false.
bool chains_to_roots(const std::vector<crypto::X509Ptr>& file, std::size_t leaf,
                     const std::vector<crypto::X509Ptr>& roots, bool check_time = true, std::int64_t at_unix = 0);

/// The DER encoding of a certificate name ("" when it cannot be encoded), to compare names
/// exactly.
std::string name_der(const X509_NAME* name);


/// The certificates of app.downloaded valid at `now_unix` (not_before <= now <= not_after), as
/// keys (cert_sn = the SN), except those of a configured SN (configured_sn); empty without a book.
/// Takes the book's lock once.
std::vector<AlipayKey> downloaded_keys(const AlipayAppKeys& app, std::int64_t now_unix);

/// The certificate of app.downloaded whose SN is `sn`, whatever its validity; nullopt when there
/// is no book or it holds none.
std::optional<ProviderCertificate> downloaded_certificate(const AlipayAppKeys& app, std::string_view sn);

// ---- API requests and answers (alipay_query.cpp) ----

/// The signed request of `method` with `biz_content` (JSON text) as build_trade_query describes
/// it (system parameters in the URL query, biz_content in the form body). Errors as
/// build_trade_query's, but for the bill id (the caller checks its own biz_content).
Result<QueryRequest> build_request(const AlipayAppKeys& app, const AlipayQuerySigner& signer,
                                   std::string_view gateway_target, std::string_view method,
                                   std::string_view biz_content, std::int64_t now_unix);

/// An answer located on the raw body, its signature not verified yet.
struct SignedAnswer {
    std::string_view content;            ///< the response object's bytes exactly as sent (in the body)
    std::string signature;               ///< sign, base64-decoded (never empty)
    std::optional<std::string> cert_sn;  ///< alipay_cert_sn, JSON-decoded, when sent
};

/// Reads what read_trade_query reads before verifying, with `node` ("<method>_response") in place
/// of alipay_trade_query_response: the HTTP status, the top-level members (error_response when
/// `node` is absent; a key of interest twice: bad_signature), sign and alipay_cert_sn. An unsigned
/// answer is classified (20000: provider_unavailable; 10000, 10003: bad_signature; else
/// provider_rejected) and returned as that error. `detail` (may be null) is set on errors.
Result<SignedAnswer> locate_answer(const QueryResponse& response, std::string_view node, std::string* detail);

/// The configured keys an answer naming certificate `cert_sn` may be signed with (all of them when
/// it names none or the app is in public-key mode; a previous certificate only until its notAfter,
/// judged at `now_unix`, 0: the clock); `sn_known` false when the app is in certificate mode and
/// configures no certificate of that SN.
std::vector<const AlipayKey*> candidate_keys(const AlipayAppKeys& app, const std::optional<std::string>& cert_sn,
                                             std::int64_t now_unix, bool& sn_known);

/// The first of `keys` whose signature over `content` verifies (one RSA operation per key), also
/// trying the content with "\/" read as "/" when it holds some (`via_unescaped` then set); null
/// when none does.
const AlipayKey* verify_content(const AlipayAppKeys& app, std::string_view content, std::string_view signature,
                                const std::vector<const AlipayKey*>& keys, bool& via_unescaped);

/// A provider value for a detail or problem text: quoted and excerpted, "(not UTF-8)" otherwise.
std::string excerpt(std::string_view text);

/// "code <code>" plus " sub_code <sub_code>" when there is one, both excerpted.
std::string code_detail(std::string_view code, std::optional<std::string_view> sub_code);

/// True for an SN as Alipay computes them (§1.6): 32 lower-case hex digits.
bool sn_form(std::string_view sn) noexcept;

}  // namespace paybridge::gateways::alipay::detail
