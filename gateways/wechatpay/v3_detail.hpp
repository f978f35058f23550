#pragma once

// Internals of the v3 gateway shared with the v3 query (wechatpay_query.cpp), so that a
// Transaction object (PROTOCOLS.md §2.8) reads the same whether a notification or a query answer
// carries it. Includes RapidJSON: for the wechatpay library's own .cpp files only.

#include "core/payment_event.hpp"
#include "core/result.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <rapidjson/document.h>

#include <optional>
#include <string>
#include <string_view>

namespace paybridge::gateways::wechatpay::detail {

/// The member `name` of an object, or nullptr (also when `object` is not an object).
const rapidjson::Value* member(const rapidjson::Value& object, const char* name);
/// A string member as a view into the document, or nullopt when absent or not a string.
std::optional<std::string_view> string_member(const rapidjson::Value& object, const char* name);
/// A required non-empty string, or nullopt.
std::optional<std::string> required_string(const rapidjson::Value& object, const char* name);
/// RFC 3339 with any offset → RFC 3339 UTC; "" when absent or unreadable (noted by the caller).
std::string utc_time(std::optional<std::string_view> text);

/// Whether a Transaction object is the merchant's: mchid equal, appid the merchant's appid or one
/// of its other_appids. Errors: malformed_request when mchid or appid is absent (partner-mode
/// objects carry sp_mchid / sub_mchid, which paybridge does not support); unknown_account when
/// either names someone else.
Result<void> check_transaction_owner(const rapidjson::Value& tx, const V3Merchant& merchant);

/// The payment of a paid Transaction object into `out`: bill_id (out_trade_no), provider_txn_id
/// (transaction_id), total_fen (amount.total), currency (amount.currency when present and not
/// empty) and occurred_at (success_time in RFC 3339 UTC, when it reads). trade_state is not looked
/// at. Errors: malformed_request with `problem` set ("the resource has no transaction_id") when a
/// field is missing or unreadable; `out` is then unchanged.
Result<void> read_transaction_payment(const rapidjson::Value& tx, PaymentEvent& out, std::string& problem);

}  // namespace paybridge::gateways::wechatpay::detail
