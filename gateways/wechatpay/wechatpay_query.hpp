#pragma once

// The active query of a WeChat Pay v3 payment by out_trade_no (PROTOCOLS.md §2.11–§2.13), for bills
// whose notification never came. build_transaction_query signs the request with the merchant's API
// key; read_transaction_query authenticates the answer with WeChat Pay's key, exactly as the v3
// gateway authenticates notifications, and reads it. No I/O: daemon/provider_query.cpp sends the
// request.

#include "core/result.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace paybridge::gateways::wechatpay {

/// The channel of a payment learnt from a query (a notification's is "wechatpay_v3").
inline constexpr std::string_view kV3QueryChannel = "wechatpay_query";

/// What signs the merchant's requests: its API key pair, not WeChat Pay's (§2.12).
struct V3QuerySigner {
    crypto::SharedKey merchant_private_key;  ///< apiclient_key.pem
    std::string merchant_serial_no;           ///< the merchant API certificate's serial (goes in serial_no)
};

/// GET <base_path>/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={mchid}, with
///   Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",timestamp="…",
///                  serial_no="…",signature="…"   (one line)
/// where signature is base64 SHA256withRSA by the merchant's key over
/// "GET\n<target>\n<now_unix>\n<nonce>\n\n"; Accept: application/json; and, when the merchant is
/// in public-key mode (public_key_id set), Wechatpay-Serial: <public_key_id>, which asks WeChat
/// Pay to sign its answer with that key (§2.3). out_trade_no and mchid are percent-escaped: every
/// byte but A–Z a–z 0–9 - . _ ~ becomes %XX (upper-case hex), so the target is sent and signed as
/// built. base_path is the path of the configured API base URL ("" for
/// https://api.mch.weixin.qq.com), used as given apart from trailing '/'s. The nonce comes from
/// the caller (32 random upper-case hex characters in production) so that tests can fix it.
/// Errors: invalid_argument (empty out_trade_no, a nonce that is not 1–64 letters or digits,
/// a base_path that does not start with '/' or holds '?', '#', '"', a space or a control
/// character, no private key, an empty or unquotable serial, now_unix <= 0); internal (signing
/// failed).
Result<QueryRequest> build_transaction_query(const V3Merchant& merchant, const V3QuerySigner& signer,
                                             std::string_view base_path, std::string_view out_trade_no,
                                             std::int64_t now_unix, std::string_view nonce);

/// Reads WeChat Pay's answer to build_transaction_query(merchant, …, out_trade_no, …).
///
/// 2xx: authenticated as a notification is (verify_v3_signature: headers, ±300 s window, key by
/// Wechatpay-Serial, signature over the raw body); WeChat's rule is that a 2xx without a valid
/// signature is forged (§2.11), so any failure there is errc::bad_signature, except
/// stale_timestamp. Then the Transaction object (§2.8): not JSON → malformed_request; mchid or
/// appid absent → malformed_request, naming another merchant or an appid that is neither appid
/// nor one of other_appids → unknown_account; out_trade_no not the one asked → malformed_request;
/// no trade_state → malformed_request. trade_state:
///   SUCCESS → paid. `payment` is what the matching TRANSACTION.SUCCESS notification gives
///     (provider "wechatpay", kind payment, account mchid, bill_id, provider_txn_id, total_fen,
///     currency, occurred_at = success_time in RFC 3339 UTC) except channel "wechatpay_query",
///     notification_id "query:<transaction_id>" and provider_status "SUCCESS". When
///     transaction_id or amount.total is missing or does not read, kind unusable with `problem`
///     (notification_id "query:<transaction_id>", or "query:bill:<out_trade_no>" without one);
///   NOTPAY, USERPAYING, ACCEPT → unpaid; CLOSED, REVOKED, PAYERROR → closed;
///   REFUND → closed: it was paid and then (partly) refunded, and paybridge does not apply that
///     from a query because the answer does not say how much was refunded; the refund
///     notifications carry the amounts;
///   anything else → unpaid (an intermediate state WeChat added; not final, so asked again later).
///   provider_status is trade_state as sent.
/// 404 with code ORDER_NOT_EXIST (or the v2 spelling ORDERNOTEXIST) → not_found, but only when
///   the answer is signed and verifies (bad → bad_signature, stale_timestamp). Unsigned, it is
///   errc::provider_rejected: "no such order" decides that a bill may be given up, so it is never
///   taken from a body anyone on the path could have written. See the .cpp for why WeChat signs
///   it.
/// 429 and 5xx → errc::provider_unavailable (try again later).
/// Any other status (401 SIGN_ERROR, 403, 400 PARAM_ERROR, another 404, 1xx, 3xx) →
///   errc::provider_rejected.
///
/// `detail` (when given) always receives one line for logs saying what was decided and why:
/// "200 SUCCESS key=public_key", "401 SIGN_ERROR", "404 ORDER_NOT_EXIST unsigned", "200 not
/// verified: bad_signature" (an unknown serial is also logged by the gateway code as
/// wechatpay.v3.unknown_serial). It holds the status, WeChat's error code (only when
/// it is a plain [A-Z0-9_] code) and paybridge's own words, never the error message, the body or
/// any payer data.
Result<QueryAnswer> read_transaction_query(const V3Merchant& merchant, std::string_view out_trade_no,
                                           const QueryResponse& response, std::int64_t now_unix,
                                           std::string* detail = nullptr);

}  // namespace paybridge::gateways::wechatpay
