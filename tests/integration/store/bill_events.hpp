#pragma once

// Notifications as the gateways make them (core/payment_event.hpp), for tests of the bill state
// machine: Alipay and WeChat Pay payments, refunds and closes, and the bill they are for.

#include "core/bill_store.hpp"
#include "core/payment_event.hpp"

#include <cstdint>
#include <string>

namespace paybridge::test::bill_events {

inline NewBill new_bill(const std::string& id, std::int64_t amount = 1000)
{
    NewBill b;
    b.id = id;
    b.amount_fen = amount;
    b.currency = "CNY";
    b.customer_id = "cust-1";
    b.description = "Order " + id;
    return b;
}

inline PaymentEvent alipay_payment(const std::string& bill, const std::string& txn, std::int64_t total,
                            const std::string& notify_id, const std::string& status = "TRADE_SUCCESS")
{
    PaymentEvent ev;
    ev.provider = "alipay";
    ev.channel = "alipay";
    ev.kind = EventKind::payment;
    ev.notification_id = notify_id;
    ev.account = "2021000000000001";
    ev.bill_id = bill;
    ev.provider_txn_id = txn;
    ev.currency = "CNY";
    ev.total_fen = total;
    ev.provider_status = status;
    ev.occurred_at = "2024-05-01T10:00:00.000Z";
    return ev;
}

inline PaymentEvent wechat_refund(const std::string& bill, const std::string& txn, const std::string& refund_id,
                           std::int64_t refund_fen, const std::string& notify_id, std::int64_t total = 1000)
{
    PaymentEvent ev;
    ev.provider = "wechatpay";
    ev.channel = "wechatpay_v3";
    ev.kind = EventKind::refund;
    ev.notification_id = notify_id;
    ev.account = "1900000001";
    ev.bill_id = bill;
    ev.provider_txn_id = txn;
    ev.currency = "CNY";
    ev.total_fen = total;
    ev.refund_id = refund_id;
    ev.refund_fen = refund_fen;
    ev.refund_cumulative = false;
    ev.provider_status = "REFUND.SUCCESS";
    ev.occurred_at = "2024-05-02T10:00:00.000Z";
    return ev;
}

inline PaymentEvent wechat_payment(const std::string& bill, const std::string& txn, std::int64_t total,
                            const std::string& notify_id)
{
    PaymentEvent ev = alipay_payment(bill, txn, total, notify_id, "TRANSACTION.SUCCESS");
    ev.provider = "wechatpay";
    ev.channel = "wechatpay_v3";
    ev.account = "1900000001";
    return ev;
}

inline PaymentEvent alipay_refund(const std::string& bill, const std::string& txn, const std::string& refund_id,
                           std::int64_t cumulative_fen, const std::string& notify_id)
{
    PaymentEvent ev = alipay_payment(bill, txn, 1000, notify_id);
    ev.kind = EventKind::refund;
    ev.refund_id = refund_id;
    ev.refund_fen = cumulative_fen;
    ev.refund_cumulative = true;
    return ev;
}

inline PaymentEvent close_event(const std::string& bill, const std::string& notify_id)
{
    PaymentEvent ev = alipay_payment(bill, "", -1, notify_id, "TRADE_CLOSED");
    ev.kind = EventKind::close;
    return ev;
}

}  // namespace paybridge::test::bill_events
