#pragma once

// Active queries: asking a provider what became of a bill whose notification never came
// (PROTOCOLS.md §1.10, §2.11, §2.12). Like the notification gateways, this code builds signed
// requests and verifies and reads responses, and does no I/O: daemon/provider_query.cpp sends them.

#include "core/payment_event.hpp"
#include "core/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::gateways {

/// What an authentic query answer says about a trade.
enum class QueryState {
    paid,       ///< paid (Alipay TRADE_SUCCESS / TRADE_FINISHED, WeChat SUCCESS): `payment` is set
    unpaid,     ///< the trade exists and is not paid yet (WAIT_BUYER_PAY, NOTPAY, USERPAYING, 10003)
    closed,     ///< closed or revoked without a payment paybridge can apply (TRADE_CLOSED, CLOSED,
                ///< REVOKED, PAYERROR, and WeChat REFUND: paid, then refunded, amounts unknown)
    not_found,  ///< the provider knows no such trade (ACQ.TRADE_NOT_EXIST, ORDER_NOT_EXIST)
};

std::string_view to_string(QueryState state) noexcept;

struct QueryAnswer {
    QueryState state{QueryState::not_found};
    std::string provider_status;  ///< trade_status / trade_state / sub_code as sent
    /// state paid: a payment event as a notification would give it, with provider "alipay" or
    /// "wechatpay", channel "alipay_query" / "wechatpay_query", account = app_id / mchid,
    /// notification_id "query:<provider_txn_id>" (so two queries of one payment are exact
    /// repeats, and a later notification of it is a repeat of the same transaction),
    /// occurred_at the payment time in RFC 3339 UTC. A paid answer whose amount or transaction id
    /// does not read is kind unusable with `problem` set, as for notifications.
    PaymentEvent payment;
};

/// An HTTP request to send: method, target (path + query, exactly as signed), headers and body.
/// The caller adds Host, Content-Length, User-Agent and Connection.
struct QueryRequest {
    std::string method;  ///< "POST" or "GET"
    std::string target;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
};

/// A response as received: status, headers (names as sent, compared case-insensitively), raw body.
struct QueryResponse {
    unsigned status{0};
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
};

}  // namespace paybridge::gateways
