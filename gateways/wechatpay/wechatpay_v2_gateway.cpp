#include "gateways/wechatpay/wechatpay_v2_gateway.hpp"

#include "core/error.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/xml.hpp"

#include <algorithm>
#include <set>
#include <utility>

namespace paybridge::gateways::wechatpay {
namespace {

constexpr std::string_view kProvider = "wechatpay";
constexpr std::string_view kChannel = "wechatpay_v2";

boost::system::error_code error(errc e) { return make_error_code(e); }

std::string_view field(const XmlFields& fields, std::string_view name)
{
    const std::string* v = find_field(fields, name);
    return v == nullptr ? std::string_view{} : std::string_view(*v);
}

std::string upper(std::string_view s)
{
    std::string out(s);
    for (char& c : out) {
        if (c >= 'a' && c <= 'z') {
            c = static_cast<char>(c - 'a' + 'A');
        }
    }
    return out;
}

std::string beijing_to_utc(std::string_view text)
{
    if (text.empty()) {
        return {};
    }
    const auto ms = parse_beijing_time(text);
    return ms ? format_rfc3339(*ms) : std::string{};
}

PaymentEvent base_event(const V2Merchant& merchant)
{
    PaymentEvent ev;
    ev.provider = kProvider;
    ev.channel = kChannel;
    ev.kind = EventKind::none;
    ev.account = merchant.mchid;
    return ev;
}

/// Verifies `sign`; on success returns which algorithm matched (for the notes).
Result<std::string> verify_sign(const XmlFields& fields, std::string_view key)
{
    const std::string received = upper(field(fields, "sign"));
    if (received.empty()) {
        return error(errc::bad_signature);
    }
    auto matches = [&](V2SignType type) {
        return crypto::constant_time_equal(v2_sign(fields, key, type), received);
    };
    // The declared sign_type first; without one, the notify default is MD5, so guess from the
    // length. WeChat has been seen signing with MD5 where HMAC-SHA256 was ordered (PROTOCOLS.md
    // §3.2, pitfall 29), so on a mismatch the other algorithm is tried too: both are keyed with the
    // API v2 key. (A declared sign_type is a signed field, so it cannot be changed on the way.)
    V2SignType first = received.size() == 64 ? V2SignType::hmac_sha256 : V2SignType::md5;
    std::string_view how = " (no sign_type)";
    if (const std::string* declared = find_field(fields, "sign_type"); declared != nullptr && !declared->empty()) {
        const auto type = parse_sign_type(*declared);
        if (!type) {
            return error(errc::bad_signature);
        }
        first = *type;
        how = "";
    }
    const V2SignType second = first == V2SignType::md5 ? V2SignType::hmac_sha256 : V2SignType::md5;
    if (matches(first)) {
        return std::string("signed ") + std::string(sign_type_name(first)) + std::string(how);
    }
    if (matches(second)) {
        return std::string("signed ") + std::string(sign_type_name(second)) +
               (how.empty() ? std::string(" (sign_type ") + std::string(sign_type_name(first)) + ", fallback)"
                            : std::string(" (no sign_type, fallback)"));
    }
    return error(errc::bad_signature);
}

// The merchant's configured AppID or one of its other AppIDs.
bool pays_through(const V2Merchant& merchant, std::string_view appid)
{
    return appid == merchant.appid ||
           std::find(merchant.other_appids.begin(), merchant.other_appids.end(), appid) != merchant.other_appids.end();
}

Result<std::int64_t> required_fen(const XmlFields& fields, std::string_view name)
{
    const std::string* v = find_field(fields, name);
    if (v == nullptr) {
        return error(errc::malformed_request);
    }
    auto fen = parse_fen(*v);
    if (!fen || *fen > kMaxAmountFen) {
        return error(errc::malformed_request);
    }
    return *fen;
}

// Why an amount required_fen() refused does not read, for unusable().
std::string fen_problem(const XmlFields& fields, std::string_view name)
{
    const std::string* v = find_field(fields, name);
    if (v == nullptr) {
        return std::string(name) + " is missing";
    }
    return std::string(name) + " " + quoted_excerpt(*v) + " is not an amount in fen";
}

std::string fail_body(std::string_view message)
{
    std::vector<XmlField> fields{{"return_code", "FAIL"}, {"return_msg", std::string(message)}};
    return build_flat_xml("xml", fields);
}

}  // namespace

WechatV2Gateway::WechatV2Gateway(std::vector<V2Merchant> merchants)
{
    for (auto& m : merchants) {
        std::string id = m.mchid;
        merchants_.emplace(std::move(id), std::move(m));
    }
}

Result<Verified> WechatV2Gateway::verify_and_parse(const InboundRequest& req) const
{
    const auto found = merchants_.find(req.route_param);
    if (found == merchants_.end()) {
        return error(errc::unknown_account);
    }
    auto fields = parse_flat_xml(req.body, "xml");
    if (!fields) {
        return fields.error();
    }
    if (find_field(*fields, "req_info") != nullptr) {
        return refund(found->second, *fields);
    }
    return payment(found->second, *fields);
}

Result<Verified> WechatV2Gateway::payment(const V2Merchant& merchant, const XmlFields& fields) const
{
    auto signed_with = verify_sign(fields, merchant.apiv2_key);
    if (!signed_with) {
        return signed_with.error();
    }
    // Authenticated from here on.
    Verified verified;
    verified.notes = std::move(*signed_with);
    PaymentEvent& ev = verified.event;
    ev = base_event(merchant);
    const std::string_view mch_id = field(fields, "mch_id");
    if (!mch_id.empty() && mch_id != merchant.mchid) {
        return error(errc::unknown_account);
    }
    const std::string_view transaction_id = field(fields, "transaction_id");
    const std::string_view out_trade_no = field(fields, "out_trade_no");
    ev.notification_id = "v2:" + std::string(transaction_id) + ":" + std::string(out_trade_no);
    ev.bill_id = out_trade_no;
    ev.provider_txn_id = transaction_id;
    const std::string_view return_code = field(fields, "return_code");
    const std::string_view result_code = field(fields, "result_code");
    ev.provider_status = return_code != "SUCCESS" ? return_code : result_code;
    if (return_code != "SUCCESS" || result_code != "SUCCESS") {
        // Acknowledged, nothing moves. Its own id: a FAIL result often has no transaction_id, and
        // its marker must not make a later SUCCESS for the bill (unreadable too, say) a duplicate.
        ev.notification_id.append(":").append(ev.provider_status);
        return verified;
    }
    if (!pays_through(merchant, field(fields, "appid"))) {
        return error(errc::unknown_account);
    }
    // What does not read from here on is recorded as an anomaly when the bill is named.
    if (mch_id.empty()) {
        return unusable(std::move(verified), "a paid notification without mch_id");
    }
    if (transaction_id.empty()) {
        return unusable(std::move(verified), "a paid notification without transaction_id");
    }
    if (out_trade_no.empty()) {
        return error(errc::malformed_request);
    }
    auto total = required_fen(fields, "total_fee");
    if (!total) {
        return unusable(std::move(verified), fen_problem(fields, "total_fee"));
    }
    ev.total_fen = *total;
    if (const std::string_view fee_type = field(fields, "fee_type"); !fee_type.empty()) {
        ev.currency = fee_type;
    }
    ev.occurred_at = beijing_to_utc(field(fields, "time_end"));
    ev.kind = EventKind::payment;
    return verified;
}

Result<Verified> WechatV2Gateway::refund(const V2Merchant& merchant, const XmlFields& fields) const
{
    // The outer document is not authenticated: check it against the route before spending a
    // decryption on it, and trust nothing in it beyond that.
    const std::string_view mch_id = field(fields, "mch_id");
    if (mch_id.empty()) {
        return error(errc::malformed_request);
    }
    if (mch_id != merchant.mchid) {
        return error(errc::unknown_account);
    }
    if (const std::string* appid = find_field(fields, "appid"); appid != nullptr && !pays_through(merchant, *appid)) {
        return error(errc::unknown_account);
    }
    // ECB has no tag: a wrong key or tampered data shows up as bad padding or as garbage that is
    // not a <root> document. Either way we cannot attribute the content to WeChat Pay.
    const auto ciphertext = crypto::base64_decode(field(fields, "req_info"));
    if (!ciphertext) {
        return error(errc::bad_signature);
    }
    const auto plaintext = crypto::aes256ecb_decrypt(merchant.req_info_key, *ciphertext);
    if (!plaintext) {
        return error(errc::bad_signature);
    }
    const auto inner = parse_flat_xml(*plaintext, "root");
    if (!inner) {
        return error(errc::bad_signature);
    }

    Verified verified;
    verified.notes = "req_info decrypted";
    PaymentEvent& ev = verified.event;
    ev = base_event(merchant);
    const std::string_view status = field(*inner, "refund_status");
    const std::string_view out_refund_no = field(*inner, "out_refund_no");
    if (out_refund_no.empty() || status.empty()) {
        return error(errc::malformed_request);
    }
    ev.notification_id = "v2:refund:" + std::string(out_refund_no) + ":" + std::string(status);
    ev.provider_status = status;
    ev.bill_id = field(*inner, "out_trade_no");
    ev.provider_txn_id = field(*inner, "transaction_id");
    ev.refund_id = out_refund_no;
    ev.refund_cumulative = false;  // refund_fee is this refund's amount
    ev.occurred_at = beijing_to_utc(field(*inner, "success_time"));
    // What does not read from here on is recorded as an anomaly when the bill is named.
    if (const std::string* total = find_field(*inner, "total_fee"); total != nullptr) {
        auto fen = required_fen(*inner, "total_fee");
        if (!fen) {
            return unusable(std::move(verified), fen_problem(*inner, "total_fee"));
        }
        ev.total_fen = *fen;
    }
    if (const std::string* refund_fee = find_field(*inner, "refund_fee"); refund_fee != nullptr) {
        auto fen = required_fen(*inner, "refund_fee");
        if (!fen) {
            return unusable(std::move(verified), fen_problem(*inner, "refund_fee"));
        }
        ev.refund_fen = *fen;
    }
    // The outer return_code is not authenticated (anyone who saw this req_info could resend it
    // with FAIL, and an event without effect would still set the notification's marker, making
    // WeChat's genuine retry a duplicate): what happened is the decrypted refund_status alone.
    if (status == "SUCCESS") {
        // Money moves, and a refund seen before its payment pays the bill first: all required.
        if (ev.bill_id.empty()) {
            return error(errc::malformed_request);
        }
        if (ev.provider_txn_id.empty()) {
            return unusable(std::move(verified), "a SUCCESS refund without transaction_id");
        }
        if (ev.total_fen < 0) {
            return unusable(std::move(verified), "a SUCCESS refund without total_fee");
        }
        if (find_field(*inner, "refund_fee") == nullptr) {
            return unusable(std::move(verified), "a SUCCESS refund without refund_fee");
        }
        ev.kind = EventKind::refund;
    } else if (status == "CHANGE" || status == "REFUNDCLOSE") {
        // Recorded in the bill's history: the bill must be named (as API v3 requires for every
        // refund), or the store could only refuse it and WeChat would retry for a day.
        if (ev.bill_id.empty()) {
            return error(errc::malformed_request);
        }
        ev.kind = status == "CHANGE" ? EventKind::refund_abnormal : EventKind::refund_closed;
    }
    return verified;
}

Reply WechatV2Gateway::success() const
{
    return Reply{.status = 200, .content_type = "application/xml", .body = std::string(kV2SuccessBody)};
}

Reply WechatV2Gateway::failure(const boost::system::error_code& ec) const
{
    int status = 500;
    std::string_view message = "internal error";
    if (ec == errc::bad_signature) {
        status = 401;
        message = "signature verification failed";
    } else if (ec == errc::malformed_request || ec == errc::stale_timestamp) {
        status = 400;
        message = "malformed request";
    } else if (ec == errc::unknown_account) {
        status = 400;
        message = "unknown merchant or appid";
    } else if (ec == errc::unsupported_event) {
        status = 400;
        message = "unsupported notification";
    } else if (is_transient(ec)) {
        status = 503;
        message = "temporarily unavailable";
    }
    return Reply{.status = status, .content_type = "application/xml", .body = fail_body(message)};
}

Result<std::unique_ptr<Gateway>> make_wechat_v2_gateway(const std::vector<config::WechatMerchant>& merchants,
                                                        std::vector<std::string>& problems)
{
    const std::size_t problems_before = problems.size();
    std::vector<V2Merchant> loaded;
    std::set<std::string, std::less<>> seen_mchids;
    for (std::size_t i = 0; i < merchants.size(); ++i) {
        const config::WechatMerchant& cfg = merchants[i];
        if (cfg.apiv2_key.empty()) {
            continue;  // no v2 route for this merchant
        }
        const std::string where = account_pointer(cfg.pointer, "/wechatpay/merchants", i);
        auto problem = [&](const std::string& what) { problems.push_back(config_problem(where, what)); };
        if (cfg.mchid.empty()) {
            problem("mchid is empty");
        } else if (!seen_mchids.insert(cfg.mchid).second) {
            problem("mchid " + cfg.mchid + " is configured twice");
        }
        if (cfg.appid.empty()) {
            problem("appid is empty");
        }
        if (cfg.apiv2_key.size() != 32) {
            problem("apiv2_key must be 32 characters, got " + std::to_string(cfg.apiv2_key.size()));
        }
        loaded.push_back(V2Merchant{.mchid = cfg.mchid,
                                    .appid = cfg.appid,
                                    .other_appids = cfg.other_appids,
                                    .apiv2_key = cfg.apiv2_key,
                                    .req_info_key = v2_req_info_key(cfg.apiv2_key)});
    }
    if (problems.size() != problems_before) {
        return error(errc::invalid_argument);
    }
    return std::unique_ptr<Gateway>(std::make_unique<WechatV2Gateway>(std::move(loaded)));
}

}  // namespace paybridge::gateways::wechatpay
