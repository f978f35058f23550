#pragma once

// WeChat Pay API v2 (legacy XML) notifications (PROTOCOLS.md §3), route
// POST /notify/wechatpay/{mchid}/v2. One route carries two kinds of document:
//
//  * payment result (no req_info): authenticated by `sign` over the sorted fields with the
//    merchant's APIv2 key, MD5 or HMAC-SHA256 (§3.2);
//  * refund result (has req_info, no sign): authenticated by decryption: req_info is AES-256-ECB
//    under md5hex(APIv2 key) and holds an inner <root> document (§3.3). The outer fields are not
//    authenticated; only mch_id is checked against the route.
//
// Both documents go through parse_flat_xml (no DTD, no entities, flat, size-capped).

#include "config/config.hpp"
#include "gateways/gateway.hpp"
#include "gateways/wechatpay/v2_sign.hpp"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways::wechatpay {

/// The acknowledgement WeChat Pay v2 requires, byte for byte (§3.4).
inline constexpr std::string_view kV2SuccessBody =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// One merchant's v2 material, as loaded and validated by make_wechat_v2_gateway.
struct V2Merchant {
    std::string mchid;
    std::string appid;
    std::vector<std::string> other_appids;  ///< more AppIDs bound to this mchid
    std::string apiv2_key;     ///< 32 characters
    std::string req_info_key;  ///< v2_req_info_key(apiv2_key)
};

/// Gateway "wechatpay_v2". Immutable and thread-safe after construction.
///
/// Payment notify: unknown route mchid → unknown_account; missing/empty sign → bad_signature;
/// sign_type given → that algorithm first (unknown value → bad_signature); absent → by sign length
/// (32 → MD5, 64 → HMAC-SHA256); either way, on mismatch the other algorithm is tried
/// (PROTOCOLS.md §3.2; both are keyed with the APIv2 key, so the fallback admits nothing that key
/// did not sign, and the reason says "fallback"); compared in
/// constant time after upper-casing the received sign. Then return_code and result_code must both
/// be SUCCESS, else kind none (acknowledged, nothing moves). mch_id must equal the route mchid and
/// appid the configured appid (unknown_account); out_trade_no is required (malformed_request);
/// mch_id, transaction_id and total_fee (integer fen) missing or unreadable → kind unusable with the
/// problem (gateway.hpp). notification_id = "v2:" + transaction_id + ":" + out_trade_no (stable
/// across WeChat's retries, unlike a body hash), with ":" + the status appended when nothing moves
/// (so that a FAIL result cannot make a later SUCCESS for the bill a duplicate);
/// provider_status = result_code; occurred_at from time_end (Beijing time); currency = fee_type
/// (default CNY).
///
/// Refund notify: outer mch_id must equal the route mchid (unknown_account), appid (when sent)
/// the configured one; req_info that does not base64-decode, decrypt, unpad or parse as <root>
/// → bad_signature. refund_status SUCCESS → refund (refund_id = out_refund_no, refund_fen =
/// refund_fee, total_fen = total_fee, non-cumulative; out_trade_no required, transaction_id,
/// refund_fee and total_fee missing or unreadable → kind unusable), CHANGE → refund_abnormal, REFUNDCLOSE → refund_closed, anything else
/// → none. The outer return_code is not read: it is not authenticated, and the refund's result is
/// the decrypted refund_status alone (§3.3). notification_id =
/// "v2:refund:" + out_refund_no + ":" + refund_status; occurred_at from success_time.
class WechatV2Gateway final : public Gateway {
public:
    explicit WechatV2Gateway(std::vector<V2Merchant> merchants);

    std::string_view name() const noexcept override { return "wechatpay_v2"; }

    Result<Verified> verify_and_parse(const InboundRequest& req) const override;

    /// 200 application/xml kV2SuccessBody.
    Reply success() const override;

    /// application/xml, return_code FAIL and a short return_msg: bad_signature → 401;
    /// malformed_request, stale_timestamp, unknown_account, unsupported_event → 400;
    /// transient (core is_transient) → 503; anything else → 500.
    Reply failure(const boost::system::error_code& ec) const override;

    std::size_t size() const noexcept { return merchants_.size(); }

private:
    Result<Verified> payment(const V2Merchant& merchant, const XmlFields& fields) const;
    Result<Verified> refund(const V2Merchant& merchant, const XmlFields& fields) const;

    std::map<std::string, V2Merchant, std::less<>> merchants_;
};

/// Builds the v2 gateway from the merchants that have an apiv2_key (the others simply have no v2
/// route: their requests get unknown_account). Problems ("wechatpay.merchants[1]: apiv2_key must
/// be 32 characters, got 12"): empty mchid or appid, duplicate mchid, apiv2_key not 32 characters.
/// Errors: errc::invalid_argument when any problem was found.
Result<std::unique_ptr<Gateway>> make_wechat_v2_gateway(const std::vector<config::WechatMerchant>& merchants,
                                                        std::vector<std::string>& problems);

}  // namespace paybridge::gateways::wechatpay
