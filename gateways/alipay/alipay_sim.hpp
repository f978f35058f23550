#pragma once

// The provider side of Alipay, byte for byte: the notifications Alipay's servers POST to
// notify_url, and the alipay.trade.query and alipay.open.app.alipaycert.download side of its
// gateway (checking a request, signing an answer) for fake gateways. Used by the tests,
// `paybridge trigger` and the benchmark. Never linked into the daemon.

#include "core/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

typedef struct evp_pkey_st EVP_PKEY;

namespace paybridge::gateways::alipay {

/// One notification before signing. `fields` hold UTF-8 values in wire order, without sign and
/// sign_type; `charset` is the encoding the values are sent (and signed) in ("utf-8", "gbk",
/// "gb2312", "gb18030"); the `charset` field itself is an ordinary field, set by the make_*
/// helpers to the same value. An empty `sign_type` sends none (the receiver assumes RSA2).
struct AlipayNotice {
    std::vector<std::pair<std::string, std::string>> fields;
    std::string charset{"utf-8"};
    std::string sign_type{"RSA2"};
};

/// What the make_* helpers need to know about the bill and the app.
struct NoticeSpec {
    std::string app_id;
    std::string seller_id;     ///< "2088..." (sent as seller_id)
    std::string out_trade_no;  ///< our bill id
    std::int64_t amount_fen{0};
    std::string trade_no;      ///< Alipay trade number; a fresh realistic one when empty
    std::string subject{"paybridge test order"};
    std::string charset{"utf-8"};
    std::string sign_type{"RSA2"};
    std::int64_t now_unix_ms{0};  ///< the notification time; 0: the system clock
};

/// A TRADE_SUCCESS (or `trade_status`, e.g. TRADE_FINISHED) payment notification with the
/// usual fields: amounts equal to amount_fen, refund_fee absent, fund_bill_list JSON,
/// gmt_create/gmt_payment/notify_time in Beijing time, a random notify_id.
AlipayNotice make_paid_notice(const NoticeSpec& spec, std::string_view trade_status = "TRADE_SUCCESS");

/// A refund notification: TRADE_SUCCESS with refund_fee = refunded_total_fen (cumulative),
/// gmt_refund (with milliseconds) and out_biz_no; TRADE_CLOSED when the refund is full
/// (refunded_total_fen == amount_fen). An empty out_biz_no is omitted.
AlipayNotice make_refund_notice(const NoticeSpec& spec, std::int64_t refunded_total_fen,
                                std::string_view out_biz_no);

/// A TRADE_CLOSED notification for an unpaid trade that timed out (gmt_close, no refund fields).
AlipayNotice make_closed_notice(const NoticeSpec& spec);

/// Sets a field (replacing an existing one in place, else appending). Returns the notice.
AlipayNotice& set_field(AlipayNotice& notice, std::string_view key, std::string_view value);
/// Removes a field if present.
AlipayNotice& remove_field(AlipayNotice& notice, std::string_view key);

/// The string Alipay signs: fields other than sign/sign_type sorted by key bytes, joined as
/// k=v with '&', values transcoded from UTF-8 to notice.charset first.
/// Throws std::invalid_argument when a value cannot be represented in that charset.
std::string alipay_sign_string(const AlipayNotice& notice);

/// The complete POST body: every field form-encoded (java.net.URLEncoder style) in the given
/// order with values in notice.charset, then sign_type (unless empty) and sign, the base64
/// RSA signature (SHA256withRSA for RSA2, SHA1withRSA for RSA) of alipay_sign_string() made with
/// Alipay's private key. Throws std::invalid_argument on an unencodable value or failed signing.
std::string build_alipay_body(const AlipayNotice& notice, EVP_PKEY* alipay_private_key);

/// "yyyy-MM-dd HH:mm:ss" (with ".SSS" when `millis`) in Beijing time (UTC+8).
std::string format_beijing_time(std::int64_t unix_ms, bool millis = false);

/// The Content-Type Alipay sends with a notice in `charset`.
std::string alipay_content_type(std::string_view charset);

// ---- alipay.trade.query (PROTOCOLS.md §1.10) ----
//
// A fake gateway: check_trade_query_request() on the request's target and body, then answer
// HTTP 200 with one of the bodies below (read_trade_query looks at the body only). Alipay answers
// a refused request with HTTP 200 too, e.g. make_trade_query_error("40002", "Invalid Arguments",
// "isv.invalid-signature", ...) for a bad signature.

/// What a request must carry besides a valid signature.
struct TradeQueryCheck {
    std::string app_id;               ///< the app_id it must name ("": any)
    std::string sign_type{"RSA2"};    ///< the app's sign_type, which the request must declare
    std::string app_cert_sn;          ///< certificate mode: the app_cert_sn it must carry; "": none
    std::string alipay_root_cert_sn;  ///< certificate mode: the alipay_root_cert_sn it must carry; "": none
};

/// Checks an alipay.trade.query request as Alipay's gateway does and returns the out_trade_no of
/// its biz_content. `target` is the request target ("/gateway.do?app_id=..."), `body` the form
/// body; their parameters are taken together (each form-decoded once) and none may appear twice.
/// The signature (sign_type RSA2: SHA256withRSA, RSA: SHA1withRSA) must verify with
/// `app_public_key` over every parameter but sign, empty values skipped, sorted by key bytes,
/// joined as k=v with '&'.
/// Errors (with a one-line `problem` when given):
/// - malformed_request: unparsable, a parameter missing (app_id, method, charset, sign_type,
///   timestamp, version, sign, biz_content), method not alipay.trade.query, format other than
///   JSON, charset not utf-8, version not 1.0, a timestamp that is not "yyyy-MM-dd HH:mm:ss",
///   biz_content not a JSON object with a non-empty string out_trade_no;
/// - unknown_account: app_id is not check.app_id;
/// - bad_signature: sign_type is not check.sign_type, the SNs differ from check's, sign is not
///   base64 or does not verify.
Result<std::string> check_trade_query_request(std::string_view target, std::string_view body,
                                              EVP_PKEY* app_public_key, const TradeQueryCheck& check = {},
                                              std::string* problem = nullptr);

/// How the fake gateway signs its answers.
struct AnswerSigner {
    EVP_PKEY* alipay_private_key{nullptr};  ///< Alipay's private key; null: the answer has no sign
    std::string sign_type{"RSA2"};          ///< "RSA2" (SHA256withRSA) or "RSA" (SHA1withRSA)
    std::string alipay_cert_sn;             ///< certificate mode: sent between the object and sign
};

/// An answer as Alipay lays it out: {"<node>":<object_json>,"alipay_cert_sn":"..." (certificate
/// mode only),"sign":"..."}, the signature over the exact bytes of `object_json`, which is used as
/// given (so tests can sign any text). Throws std::invalid_argument when signing fails.
std::string sign_alipay_answer(std::string_view node, std::string_view object_json, const AnswerSigner& signer);

/// One trade as Alipay's query sees it.
struct QueriedTrade {
    std::string out_trade_no;
    std::string trade_status{"TRADE_SUCCESS"};  ///< TRADE_SUCCESS, TRADE_FINISHED, WAIT_BUYER_PAY, TRADE_CLOSED
    std::int64_t amount_fen{0};
    std::string trade_no;                       ///< a fresh realistic one when empty
    std::int64_t paid_unix_ms{0};               ///< a paid trade's send_pay_date; 0: the clock
};

/// The alipay_trade_query_response object (JSON text) for a trade: code 10000 and msg Success, then
/// the other fields sorted by key, as Alipay's answers have them: a masked buyer_logon_id, a
/// buyer_user_id, the amounts (the received ones 0.00 unless paid), out_trade_no, total_amount,
/// trade_no, trade_status, and for a paid trade send_pay_date (Beijing time) and fund_bill_list.
std::string trade_query_object(const QueriedTrade& trade);

/// sign_alipay_answer("alipay_trade_query_response", trade_query_object(trade), signer).
std::string make_trade_query_answer(const QueriedTrade& trade, const AnswerSigner& signer);

/// An alipay_trade_query_response failure object {"code","msg","sub_code","sub_msg"} (sub_code
/// and sub_msg omitted when empty), signed as `signer` says.
std::string make_trade_query_error(std::string_view code, std::string_view msg, std::string_view sub_code,
                                   std::string_view sub_msg, const AnswerSigner& signer);

/// 40004 Business Failed, ACQ.TRADE_NOT_EXIST, with out_trade_no and zero amounts as Alipay sends it.
std::string make_trade_not_exist_answer(std::string_view out_trade_no, const AnswerSigner& signer);

/// 20000 Service Currently Unavailable, isp.unknow-error (sic, Alipay's spelling).
std::string make_service_unavailable_answer(const AnswerSigner& signer);

// ---- alipay.open.app.alipaycert.download (PROTOCOLS.md §1.6) ----
//
// The same fake gateway, asked for a re-issued Alipay certificate by its SN.

/// Checks an alipay.open.app.alipaycert.download request as Alipay's gateway does and returns the
/// alipay_cert_sn of its biz_content: as check_trade_query_request (the same parameters, `check`
/// and signature), with method alipay.open.app.alipaycert.download and biz_content a JSON object
/// with a non-empty string alipay_cert_sn (else malformed_request, "biz_content has no
/// alipay_cert_sn").
Result<std::string> check_cert_download_request(std::string_view target, std::string_view body,
                                                EVP_PKEY* app_public_key, const TradeQueryCheck& check = {},
                                                std::string* problem = nullptr);

/// The alipay_open_app_alipaycert_download_response object (JSON text):
/// {"code":"10000","msg":"Success","alipay_cert_content":"<base64 of cert_pem>"}; `cert_pem` is
/// used as given (Alipay's certificate, maybe followed by its intermediates).
std::string cert_download_object(std::string_view cert_pem);

/// sign_alipay_answer("alipay_open_app_alipaycert_download_response", cert_download_object(cert_pem),
/// signer): signed with whatever key `signer` holds (the new certificate's, as Alipay does once it
/// has re-issued, or another), naming signer.alipay_cert_sn.
std::string make_cert_download_answer(std::string_view cert_pem, const AnswerSigner& signer);

/// A failure object {"code","msg","sub_code","sub_msg"} (sub_code and sub_msg omitted when empty)
/// under alipay_open_app_alipaycert_download_response, signed as `signer` says.
std::string make_cert_download_error(std::string_view code, std::string_view msg, std::string_view sub_code,
                                     std::string_view sub_msg, const AnswerSigner& signer);

}  // namespace paybridge::gateways::alipay
