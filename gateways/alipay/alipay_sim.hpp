#pragma once

// The provider side of Alipay notifications, byte for byte: what Alipay's servers would POST to
// notify_url. Used by the tests, `paybridge trigger` and the benchmark. Never linked into the daemon.

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

}  // namespace paybridge::gateways::alipay
