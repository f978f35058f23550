#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace paybridge {

/// What a verified notification asks of a bill. The zero value is `none` on purpose: a
/// value-initialised event must never read as a payment.
enum class EventKind {
    none,             ///< verified but moves nothing (e.g. Alipay WAIT_BUYER_PAY): acknowledged only
    payment,          ///< the bill was paid: total_fen, provider_txn_id
    refund,           ///< money returned: refund_id, refund_fen (cumulative if refund_cumulative)
    close,            ///< an unpaid trade was closed by the provider
    refund_closed,    ///< a refund failed or was closed; history only, no money moves
    refund_abnormal,  ///< a refund is stuck (may later succeed); history only
    /// authentic, names its bill and notification, but a field paybridge needs is missing or does
    /// not read (an amount with three decimals): recorded as the anomaly unusable_notification,
    /// nothing applied, and the provider told to retry (a paybridge that reads it will apply it)
    unusable,
};

std::string_view to_string(EventKind kind) noexcept;

/// A verified, provider-neutral notification. Only a Gateway creates one, and only after the
/// signature verified; every field is then trusted as the provider's statement.
struct PaymentEvent {
    std::string provider;          ///< "alipay" or "wechatpay"
    std::string channel;           ///< "alipay", "wechatpay_v3", "wechatpay_v2"
    EventKind kind{};
    std::string notification_id;   ///< notify_id / notification id; exact repeats are duplicates
    std::string account;           ///< app_id or mchid the notification was verified for
    std::string bill_id;           ///< our bill id (out_trade_no)
    std::string provider_txn_id;   ///< trade_no / transaction_id
    std::string currency{"CNY"};
    std::int64_t total_fen{-1};    ///< the payment amount, when the notification carries it (-1: absent)
    std::string refund_id;         ///< out_biz_no / out_refund_no
    std::int64_t refund_fen{0};    ///< refund amount
    bool refund_cumulative{false}; ///< Alipay: refund_fen is the total refunded so far
    std::string provider_status;   ///< trade_status / event_type / refund_status as sent
    std::string occurred_at;       ///< RFC 3339 UTC, when the provider says it happened ("" if unknown)
    /// RFC 3339 UTC, when the payment was made, where the notification says so apart from
    /// occurred_at (an Alipay refund carries gmt_payment); "" otherwise. A payment's own
    /// occurred_at is its payment time.
    std::string paid_at;
    /// kind unusable: what could not be read, for people ("total_amount \"1.005\" is not ...").
    std::string problem;
};

}  // namespace paybridge
