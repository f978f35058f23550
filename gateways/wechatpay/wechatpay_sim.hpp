#pragma once

// The WeChat Pay side of the wire, for tests, the CLI `paybridge trigger` and the benchmark:
// builds notifications exactly as WeChat Pay sends them (PROTOCOLS.md §2 and §3), signed and
// encrypted with the keys it is given, and checks and answers v3 transaction queries and platform
// certificate downloads as the WeChat Pay API does (§2.11–§2.13), for fake API servers. Never used
// by the daemon's request path.

#include "core/result.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query.hpp"
#include "gateways/wechatpay/v2_sign.hpp"
#include "gateways/wechatpay/xml.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::gateways::wechatpay::sim {

// ---- API v3 ----

/// Inner object of a payment notification (§2.8). Zero times mean "now".
struct V3Transaction {
    std::string mchid;
    std::string appid;
    std::string out_trade_no;
    std::string transaction_id;  ///< empty: a random 28-digit id
    std::int64_t total_fen{0};
    std::string currency{"CNY"};
    std::string trade_state{"SUCCESS"};
    std::string trade_type{"JSAPI"};
    std::string bank_type{"OTHERS"};
    std::string attach;
    std::string openid{"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"};
    std::int64_t success_unix{0};
};

/// Inner object of a refund notification (§2.9). success_time is only written for SUCCESS.
struct V3Refund {
    std::string mchid;
    std::string out_trade_no;
    std::string transaction_id;
    std::string out_refund_no;
    std::string refund_id;               ///< empty: a random 29-digit id
    std::string refund_status{"SUCCESS"};  ///< SUCCESS, CLOSED or ABNORMAL
    std::int64_t total_fen{0};
    std::int64_t refund_fen{0};
    std::string user_received_account{"支付用户零钱"};
    std::int64_t success_unix{0};
};

/// Compact JSON in WeChat's field order.
std::string v3_transaction_json(const V3Transaction& tx);
std::string v3_refund_json(const V3Refund& refund);

/// The envelope around an encrypted resource (§2.6).
struct V3Envelope {
    std::string id;             ///< empty: a random UUID
    std::int64_t create_unix{0};  ///< 0: now
    std::string event_type{"TRANSACTION.SUCCESS"};
    std::string summary;        ///< empty: WeChat's text for event_type ("支付成功", "退款成功", …)
    std::string original_type{"transaction"};
    std::optional<std::string> associated_data;  ///< nullopt: same as original_type (as observed)
    std::string nonce;          ///< resource nonce; empty: 12 random characters
};

/// The JSON body: envelope with `plaintext` encrypted under the APIv3 key (AES-256-GCM, tag
/// appended, base64). Errors: malformed_request when the key is not 32 bytes.
Result<std::string> build_v3_body(const V3Envelope& envelope, std::string_view plaintext, std::string_view apiv3_key);

/// Who signs as WeChat Pay: the private key of a platform certificate (serial = its serial in
/// hex) or of the WeChat Pay public key (serial = "PUB_KEY_ID_…").
struct V3Signer {
    crypto::SharedKey private_key;
    std::string serial;
};

/// A complete v3 request as WeChat Pay sends it.
struct V3Notification {
    /// Wechatpay-Nonce, -Signature, -Timestamp, -Serial, -Signature-Type, Content-Type.
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    /// The headers as views (for InboundRequest); valid while this object is unchanged.
    std::vector<std::pair<std::string_view, std::string_view>> header_views() const;
    /// Replaces (or adds) one header; an empty value removes it.
    void set_header(std::string_view name, std::string value);
};

/// Signs `body`: SHA256withRSA over "timestamp\nnonce\nbody\n", base64. `timestamp_unix` 0 means
/// now (pass another value to make stale requests); an empty nonce is 32 random characters.
/// Errors: internal when signing fails.
Result<V3Notification> sign_v3(std::string body, const V3Signer& signer, std::int64_t timestamp_unix = 0,
                               std::string nonce = {});

/// A signed TRANSACTION.SUCCESS (or whatever `envelope.event_type` says) for `tx`.
Result<V3Notification> make_v3_payment(const V3Transaction& tx, std::string_view apiv3_key, const V3Signer& signer,
                                       std::int64_t timestamp_unix = 0, V3Envelope envelope = {});
/// A signed REFUND.<refund_status> for `refund` (original_type "refund").
Result<V3Notification> make_v3_refund(const V3Refund& refund, std::string_view apiv3_key, const V3Signer& signer,
                                      std::int64_t timestamp_unix = 0, V3Envelope envelope = {});

// ---- API v3: the transaction query (GET /v3/pay/transactions/out-trade-no/{out_trade_no}) ----

/// What WeChat Pay knows of a merchant to authenticate its API requests (§2.12).
struct V3ApiMerchant {
    std::string mchid;
    std::string serial_no;         ///< the merchant API certificate's serial, as sent in serial_no
    crypto::SharedKey public_key;  ///< that certificate's public key
};

/// What a query request asked for, once check_v3_query_request accepted it.
struct V3QueryAsked {
    std::string mchid;
    std::string out_trade_no;  ///< percent-decoded
    /// The request's Wechatpay-Serial header, "" when absent. "PUB_KEY_ID_…" asks for an answer
    /// signed with the WeChat Pay public key instead of a platform certificate (§2.3).
    std::string wechatpay_serial;
};

/// Checks a transaction query as WeChat Pay does before answering it:
/// - GET <base_path>/v3/pay/transactions/out-trade-no/<out_trade_no>?mchid=<mchid>, nothing else
///   in the query, out_trade_no and mchid percent-escaped (%XX in either case; a raw '/', '?' or
///   '%' not followed by two hex digits is refused); base_path's trailing '/'s are ignored;
/// - Authorization: "WECHATPAY2-SHA256-RSA2048 " then mchid, nonce_str, timestamp, serial_no and
///   signature as key="value", comma-separated, in any order, each exactly once;
/// - its mchid one of `merchants` and the same as the query's; serial_no that merchant's
///   (compared as normalize_serial() forms); timestamp digits within ±300 s of now_unix;
/// - signature: base64 SHA256withRSA over "GET\n<target>\n<timestamp>\n<nonce_str>\n\n"
///   (the target exactly as received) verifying with the merchant's key.
/// Errors (and what a fake server should answer, with make_v3_error_response):
/// malformed_request (not a GET, another path, a bad escape, no or unreadable Authorization) →
/// 400 PARAM_ERROR; unknown_account (the query's mchid is not the signer's) → 400 PARAM_ERROR;
/// bad_signature (unknown mchid or serial_no, a signature that does not verify) and
/// stale_timestamp → 401 SIGN_ERROR.
Result<V3QueryAsked> check_v3_query_request(const QueryRequest& request, const std::vector<V3ApiMerchant>& merchants,
                                            std::int64_t now_unix, std::string_view base_path = "");

/// The Transaction object a query answers with, by tx.trade_state: v3_transaction_json(tx) for
/// SUCCESS and REFUND (the order was paid: transaction_id, success_time, payer…); for the other
/// states what WeChat Pay sends for an order without a payment: mchid, appid, out_trade_no,
/// trade_state, trade_state_desc and amount (total, currency), no transaction_id, success_time
/// or payer.
std::string v3_query_transaction_json(const V3Transaction& tx);

/// A 200 answer to a query: body v3_query_transaction_json(tx), signed as sign_v3 signs
/// (Wechatpay-Nonce, -Signature, -Timestamp, -Serial, -Signature-Type, Content-Type).
/// `timestamp_unix` 0 means now; an empty nonce is random. Errors: internal when signing fails.
Result<QueryResponse> make_v3_query_response(const V3Transaction& tx, const V3Signer& signer,
                                             std::int64_t timestamp_unix = 0, std::string nonce = {});

/// The signed 404 {"code":"ORDER_NOT_EXIST","message":"订单不存在"} WeChat Pay answers a query
/// for an order it does not know (an authenticated request's answer is signed, errors too).
Result<QueryResponse> make_v3_order_not_exist(const V3Signer& signer, std::int64_t timestamp_unix = 0,
                                              std::string nonce = {});

/// An unsigned error answer {"code":"<code>","message":"<message>"} (Content-Type
/// application/json), as WeChat Pay answers a request it could not authenticate (401 SIGN_ERROR)
/// or serve (500 SYSTEM_ERROR, 429 FREQUENCY_LIMITED).
QueryResponse make_v3_error_response(unsigned status, std::string_view code, std::string_view message);

// ---- API v3: platform certificates (GET /v3/certificates) ----

/// Checks a certificate download as WeChat Pay does: GET <base_path>/v3/certificates exactly (no
/// query string; base_path's trailing '/'s are ignored), and the Authorization header as
/// check_v3_query_request checks it (the signed target is the path as received). The answer holds
/// the signer's mchid and the request's Wechatpay-Serial; out_trade_no is empty.
/// Errors: malformed_request (not a GET, another target, no or unreadable Authorization) → 400
/// PARAM_ERROR; bad_signature (unknown mchid or serial_no, a signature that does not verify) and
/// stale_timestamp → 401 SIGN_ERROR.
Result<V3QueryAsked> check_v3_certificates_request(const QueryRequest& request,
                                                   const std::vector<V3ApiMerchant>& merchants, std::int64_t now_unix,
                                                   std::string_view base_path = "");

/// The 200 answer to a certificate download (§2.13): {"data":[…]} with, for each (PEM, serial_no
/// as WeChat writes it) in order, serial_no, effective_time and expire_time (the certificate's
/// validity in RFC 3339 +08:00) and encrypt_certificate: the PEM sealed with AES-256-GCM under
/// the APIv3 key (algorithm AEAD_AES_256_GCM, associated_data "certificate", a random
/// 12-character nonce, ciphertext and tag in base64). Signed as make_v3_query_response signs.
/// serial_no is written as given, so tests can make it disagree with the certificate.
/// Errors: malformed_request (a PEM that holds no certificate, an APIv3 key that is not 32 bytes);
/// internal when signing fails.
Result<QueryResponse> make_v3_certificates_response(const std::vector<std::pair<std::string /*cert PEM*/,
                                                                              std::string /*serial_no*/>>& certs,
                                                    std::string_view apiv3_key, const V3Signer& signer,
                                                    std::int64_t timestamp_unix = 0, std::string nonce = {});

// ---- API v2 ----

/// A payment result notify (§3.1). Zero times mean "now"; empty nonce/transaction id are random.
struct V2Payment {
    std::string appid;
    std::string mch_id;
    std::string out_trade_no;
    std::string transaction_id;
    std::int64_t total_fen{0};
    std::string fee_type{"CNY"};
    std::string return_code{"SUCCESS"};
    std::string result_code{"SUCCESS"};
    std::string trade_type{"JSAPI"};
    std::string bank_type{"CFT"};
    std::string openid{"oUpF8uMEb4qRXf22hE3X68TekukE"};
    std::string is_subscribe{"N"};
    std::string nonce_str;
    std::int64_t time_end_unix{0};
    std::vector<XmlField> extra;  ///< more fields (attach, coupon_fee…), signed like the rest
};

/// The XML body, fields in name order, integers bare and text in CDATA as WeChat writes them,
/// signed with `type`. `send_sign_type` false omits <sign_type> (WeChat's MD5 default).
std::string build_v2_payment_xml(const V2Payment& payment, std::string_view apiv2_key, V2SignType type,
                                 bool send_sign_type = true);

/// A refund result notify (§3.3).
struct V2Refund {
    std::string appid;
    std::string mch_id;
    std::string out_trade_no;
    std::string transaction_id;
    std::string out_refund_no;
    std::string refund_id;                 ///< empty: random
    std::int64_t total_fen{0};
    std::int64_t refund_fen{0};
    std::string refund_status{"SUCCESS"};  ///< SUCCESS, CHANGE or REFUNDCLOSE
    std::string refund_recv_accout{"支付用户的零钱"};  ///< sic: WeChat's spelling
    std::string refund_account{"REFUND_SOURCE_RECHARGE_FUNDS"};
    std::string refund_request_source{"API"};
    std::string return_code{"SUCCESS"};
    std::string nonce_str;
    std::int64_t success_unix{0};  ///< success_time, only written for SUCCESS
};

/// The decrypted <root>…</root> document, fields in name order, all in CDATA.
std::string v2_refund_inner_xml(const V2Refund& refund);
/// base64(AES-256-ECB(md5hex(apiv2_key), PKCS#7(inner_xml))).
Result<std::string> encrypt_req_info(std::string_view inner_xml, std::string_view apiv2_key);
/// The outer XML: return_code, appid, mch_id, nonce_str, req_info.
Result<std::string> build_v2_refund_xml(const V2Refund& refund, std::string_view apiv2_key);

// ---- helpers ----

/// Unix seconds as Beijing time: "2018-06-08T10:34:56+08:00" (v3), "20180608103456" (v2 pay),
/// "2018-06-08 10:34:56" (v2 refund).
std::string beijing_rfc3339(std::int64_t unix_seconds);
std::string beijing_compact(std::int64_t unix_seconds);
std::string beijing_datetime(std::int64_t unix_seconds);

}  // namespace paybridge::gateways::wechatpay::sim
