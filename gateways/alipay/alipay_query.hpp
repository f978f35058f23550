#pragma once

// alipay.trade.query (PROTOCOLS.md §1.10): the signed request for one bill, and the reading of
// its answer, signature first. No I/O: daemon/provider_query.cpp sends the request.

#include "core/result.hpp"
#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace paybridge::gateways::alipay {

/// The app's own signing material (the Alipay side is in AlipayAppKeys).
struct AlipayQuerySigner {
    crypto::SharedKey app_private_key;  ///< the app's RSA private key; signs with app.digest
    std::string app_cert_sn;            ///< certificate mode: SN of the app's public certificate; "": public-key mode
};

/// The signed alipay.trade.query request for one bill:
/// - POST `gateway_target` (the configured gateway URL's path and query, e.g. "/gateway.do"), the
///   system parameters app_id, method=alipay.trade.query, format=JSON, charset=utf-8,
///   sign_type=app.sign_type, timestamp (Beijing time of `now_unix`), version=1.0, in certificate
///   mode app_cert_sn and alipay_root_cert_sn (= app.alipay_root_cert_sn), and sign appended to
///   its query, as the official SDKs send them;
/// - body biz_content={"out_trade_no":"..."}, Content-Type
///   application/x-www-form-urlencoded;charset=utf-8.
/// Values are percent-encoded with only the RFC 3986 unreserved characters kept. The signature
/// (RSA with app.digest) is over every parameter but sign, empty values skipped, sorted by key
/// bytes, joined as k=v with '&', values raw (unencoded).
/// Certificate mode is signer.app_cert_sn set; it needs app.alipay_root_cert_sn, and the other way
/// round (Alipay refuses a request with one SN of the pair).
/// Errors: errc::invalid_argument for an empty out_trade_no, a gateway_target that is not an
/// origin-form path ("/...", no fragment, no space or control byte), no private key, or half a
/// certificate-mode pair; errc::internal when signing fails.
Result<QueryRequest> build_trade_query(const AlipayAppKeys& app, const AlipayQuerySigner& signer,
                                       std::string_view gateway_target, std::string_view out_trade_no,
                                       std::int64_t now_unix);

/// Reads the answer to build_trade_query(app, ..., out_trade_no, ...). Authenticates first, on the
/// raw bytes, and reads only what was signed:
/// - HTTP status other than 200: errc::provider_unavailable for 5xx and 429, provider_rejected
///   otherwise.
/// - The body must be a JSON object holding "alipay_trade_query_response" (else "error_response")
///   with an object value; the signed content is that value's exact bytes, found by scanning the
///   top-level members (strings and escapes respected), so key order does not matter. Anything
///   else is errc::malformed_request; a top-level key of interest sent twice is bad_signature.
/// - Signed answers (non-empty "sign"): in certificate mode an alipay_cert_sn, when present, must
///   be the SN of a configured certificate (the current one or the previous one of a rotation),
///   and selects its key. The signature is tried with each key of app.keys (app.digest; a
///   previous certificate only until its notAfter, judged at `now_unix`, 0: the clock), over the
///   content and, if that fails and the content holds "\/", over it with "\/" read as "/" (both
///   official SDKs do). Failing: bad_signature.
/// - Downloaded certificates (app.downloaded set: download_certificates): an alipay_cert_sn that
///   no configured certificate has is looked up in the book. Held and valid at `now_unix`
///   (not_before <= now <= not_after): its key verifies, with the note "verified with the
///   downloaded Alipay certificate <SN>"; held but not valid then: bad_signature; not held:
///   app.downloaded->unknown_serial(sn) is called (the daemon downloads it) and the result is
///   errc::provider_unavailable (transient: the bill is asked about again), detail "signed with
///   Alipay certificate "<sn>", not held yet: its download was asked for". An answer without
///   alipay_cert_sn is tried with the held certificates valid then, after the configured keys.
///   Without a book, or for an alipay_cert_sn that is not 32 lower-case hex digits (the form of
///   every Alipay SN), an unknown SN is bad_signature, detail "alipay_cert_sn "<sn>" is not a
///   configured Alipay certificate".
/// - Unsigned answers are not trusted with a state (the official Java SDK verifies an unsuccessful
///   answer only when it carries a sign, so an unsigned error is only classified): code 20000 →
///   provider_unavailable; 10000 and 10003 → bad_signature; anything else (including
///   40004 ACQ.TRADE_NOT_EXIST) → provider_rejected.
/// - Signed answers, read after verification:
///   - 10000: out_trade_no must equal the one asked and trade_status be present (else
///     malformed_request). TRADE_SUCCESS / TRADE_FINISHED → paid, with a payment event: provider
///     "alipay", channel "alipay_query", kind payment, account app.app_id, bill_id out_trade_no,
///     provider_txn_id trade_no, total_fen from total_amount (parse_yuan, as for notifications),
///     currency trans_currency (the currency total_amount is in, sent for cross-border trades)
///     or "CNY" when absent or empty, notification_id "query:" + trade_no, provider_status
///     trade_status, occurred_at and paid_at send_pay_date as RFC 3339 UTC ("" when absent or
///     unreadable). Without a readable trade_no, total_amount or trans_currency the event is kind
///     unusable with `problem` set. WAIT_BUYER_PAY → unpaid; TRADE_CLOSED → closed; any other
///     status → unpaid (a trade Alipay knows that is not known to be paid), provider_status set.
///   - 10003 (paying in progress) → unpaid.
///   - 40004 with sub_code ACQ.TRADE_NOT_EXIST → not_found (provider_status the sub_code).
///   - 20000 → provider_unavailable; any other code → provider_rejected. Missing code, or a
///     content that is not a JSON object: malformed_request.
/// `detail`, when given, receives a short text for logs: on an error what failed ("code 40004
/// sub_code ACQ.TRADE_HAS_CLOSE", "no key verifies the sign"), on success the fallbacks used
/// ("" when none). It never holds buyer data or key material; provider texts are excerpted.
Result<QueryAnswer> read_trade_query(const AlipayAppKeys& app, std::string_view out_trade_no,
                                     const QueryResponse& response, std::string* detail = nullptr,
                                     std::int64_t now_unix = 0);

}  // namespace paybridge::gateways::alipay
