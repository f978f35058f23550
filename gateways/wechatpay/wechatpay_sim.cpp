#include "gateways/wechatpay/wechatpay_sim.hpp"

#include "core/error.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <boost/algorithm/string/predicate.hpp>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace paybridge::gateways::wechatpay::sim {
namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

std::int64_t now_or(std::int64_t unix_seconds)
{
    if (unix_seconds != 0) {
        return unix_seconds;
    }
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string random_from(std::string_view alphabet, std::size_t n)
{
    // Rejection sampling keeps every character equally likely.
    const std::size_t limit = 256 - 256 % alphabet.size();
    std::string out;
    out.reserve(n);
    while (out.size() < n) {
        for (unsigned char b : crypto::random_bytes(n)) {
            if (b < limit && out.size() < n) {
                out += alphabet[b % alphabet.size()];
            }
        }
    }
    return out;
}

std::string random_alnum(std::size_t n)
{
    return random_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", n);
}

std::string random_digits(std::size_t n) { return random_from("0123456789", n); }

std::string random_uuid()
{
    std::string b = crypto::random_bytes(16);
    b[6] = static_cast<char>((b[6] & 0x0F) | 0x40);  // version 4
    b[8] = static_cast<char>((b[8] & 0x3F) | 0x80);  // RFC 4122 variant
    const std::string h = crypto::hex_lower(b);
    return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

std::string beijing_format(std::int64_t unix_seconds, const char* format)
{
    const std::time_t shifted = static_cast<std::time_t>(unix_seconds + 8 * 3600);
    std::tm tm{};
    gmtime_r(&shifted, &tm);
    char out[40];
    const std::size_t n = std::strftime(out, sizeof out, format, &tm);
    return std::string(out, n);
}

void put(JsonWriter& w, const char* key, std::string_view value)
{
    w.Key(key);
    w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void put(JsonWriter& w, const char* key, std::int64_t value)
{
    w.Key(key);
    w.Int64(value);
}

std::string text_of(const rapidjson::StringBuffer& buffer) { return std::string(buffer.GetString(), buffer.GetSize()); }

std::string_view summary_for(std::string_view event_type)
{
    if (event_type == "TRANSACTION.SUCCESS") {
        return "支付成功";
    }
    if (event_type == "REFUND.SUCCESS") {
        return "退款成功";
    }
    if (event_type == "REFUND.CLOSED") {
        return "退款关闭";
    }
    if (event_type == "REFUND.ABNORMAL") {
        return "退款异常";
    }
    return "通知";
}

Result<V3Notification> make_v3(std::string_view plaintext, std::string_view apiv3_key, const V3Signer& signer,
                               std::int64_t timestamp_unix, const V3Envelope& envelope)
{
    auto body = build_v3_body(envelope, plaintext, apiv3_key);
    if (!body) {
        return body.error();
    }
    return sign_v3(std::move(*body), signer, timestamp_unix);
}

bool all_digits(std::string_view s)
{
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

/// Fields in name order as WeChat writes them; integers bare, everything else in CDATA.
std::vector<XmlField> ordered(const XmlFields& fields)
{
    std::vector<XmlField> out;
    out.reserve(fields.size());
    for (const auto& [name, value] : fields) {
        const bool bare = (name == "total_fee" || name == "cash_fee") && all_digits(value);
        out.push_back(XmlField{.name = name, .value = value, .cdata = !bare});
    }
    return out;
}

}  // namespace

std::string beijing_rfc3339(std::int64_t unix_seconds)
{
    return beijing_format(unix_seconds, "%Y-%m-%dT%H:%M:%S+08:00");
}
std::string beijing_compact(std::int64_t unix_seconds) { return beijing_format(unix_seconds, "%Y%m%d%H%M%S"); }
std::string beijing_datetime(std::int64_t unix_seconds) { return beijing_format(unix_seconds, "%Y-%m-%d %H:%M:%S"); }

std::string v3_transaction_json(const V3Transaction& tx)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    put(w, "mchid", tx.mchid);
    put(w, "appid", tx.appid);
    put(w, "out_trade_no", tx.out_trade_no);
    put(w, "transaction_id", tx.transaction_id.empty() ? "4200" + random_digits(24) : tx.transaction_id);
    put(w, "trade_type", tx.trade_type);
    put(w, "trade_state", tx.trade_state);
    put(w, "trade_state_desc", tx.trade_state == "SUCCESS" ? "支付成功" : tx.trade_state);
    put(w, "bank_type", tx.bank_type);
    put(w, "attach", tx.attach);
    put(w, "success_time", beijing_rfc3339(now_or(tx.success_unix)));
    w.Key("payer");
    w.StartObject();
    put(w, "openid", tx.openid);
    w.EndObject();
    w.Key("amount");
    w.StartObject();
    put(w, "total", tx.total_fen);
    put(w, "payer_total", tx.total_fen);
    put(w, "currency", tx.currency);
    put(w, "payer_currency", tx.currency);
    w.EndObject();
    w.EndObject();
    return text_of(buffer);
}

std::string v3_refund_json(const V3Refund& refund)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    put(w, "mchid", refund.mchid);
    put(w, "out_trade_no", refund.out_trade_no);
    put(w, "transaction_id", refund.transaction_id);
    put(w, "out_refund_no", refund.out_refund_no);
    put(w, "refund_id", refund.refund_id.empty() ? "5030" + random_digits(25) : refund.refund_id);
    put(w, "refund_status", refund.refund_status);
    if (refund.refund_status == "SUCCESS") {
        put(w, "success_time", beijing_rfc3339(now_or(refund.success_unix)));
    }
    put(w, "user_received_account", refund.user_received_account);
    w.Key("amount");
    w.StartObject();
    put(w, "total", refund.total_fen);
    put(w, "refund", refund.refund_fen);
    put(w, "payer_total", refund.total_fen);
    put(w, "payer_refund", refund.refund_fen);
    w.EndObject();
    w.EndObject();
    return text_of(buffer);
}

Result<std::string> build_v3_body(const V3Envelope& envelope, std::string_view plaintext, std::string_view apiv3_key)
{
    const std::string nonce = envelope.nonce.empty() ? random_alnum(12) : envelope.nonce;
    const std::string aad = envelope.associated_data.value_or(envelope.original_type);
    auto sealed = crypto::aes256gcm_encrypt(apiv3_key, nonce, aad, plaintext);
    if (!sealed) {
        return sealed.error();
    }
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    put(w, "id", envelope.id.empty() ? random_uuid() : envelope.id);
    put(w, "create_time", beijing_rfc3339(now_or(envelope.create_unix)));
    put(w, "resource_type", "encrypt-resource");
    put(w, "event_type", envelope.event_type);
    put(w, "summary", envelope.summary.empty() ? summary_for(envelope.event_type) : envelope.summary);
    w.Key("resource");
    w.StartObject();
    put(w, "original_type", envelope.original_type);
    put(w, "algorithm", kV3ResourceAlgorithm);
    put(w, "ciphertext", crypto::base64_encode(*sealed));
    put(w, "associated_data", aad);
    put(w, "nonce", nonce);
    w.EndObject();
    w.EndObject();
    return text_of(buffer);
}

std::vector<std::pair<std::string_view, std::string_view>> V3Notification::header_views() const
{
    std::vector<std::pair<std::string_view, std::string_view>> out;
    out.reserve(headers.size());
    for (const auto& [name, value] : headers) {
        out.emplace_back(name, value);
    }
    return out;
}

void V3Notification::set_header(std::string_view name, std::string value)
{
    auto it = std::find_if(headers.begin(), headers.end(),
                           [&](const auto& h) { return boost::algorithm::iequals(h.first, name); });
    if (value.empty()) {
        if (it != headers.end()) {
            headers.erase(it);
        }
    } else if (it != headers.end()) {
        it->second = std::move(value);
    } else {
        headers.emplace_back(std::string(name), std::move(value));
    }
}

Result<V3Notification> sign_v3(std::string body, const V3Signer& signer, std::int64_t timestamp_unix,
                               std::string nonce)
{
    const std::string timestamp = std::to_string(now_or(timestamp_unix));
    if (nonce.empty()) {
        nonce = random_alnum(32);
    }
    const std::string message = timestamp + "\n" + nonce + "\n" + body + "\n";
    auto signature = crypto::rsa_sign(signer.private_key.get(), crypto::Digest::sha256, message);
    if (!signature) {
        return signature.error();
    }
    V3Notification n;
    n.headers = {
        {"Wechatpay-Nonce", nonce},
        {"Wechatpay-Signature", crypto::base64_encode(*signature)},
        {"Wechatpay-Timestamp", timestamp},
        {"Wechatpay-Serial", signer.serial},
        {"Wechatpay-Signature-Type", std::string(kV3SignatureType)},
        {"Content-Type", "application/json"},
    };
    n.body = std::move(body);
    return n;
}

Result<V3Notification> make_v3_payment(const V3Transaction& tx, std::string_view apiv3_key, const V3Signer& signer,
                                       std::int64_t timestamp_unix, V3Envelope envelope)
{
    return make_v3(v3_transaction_json(tx), apiv3_key, signer, timestamp_unix, envelope);
}

Result<V3Notification> make_v3_refund(const V3Refund& refund, std::string_view apiv3_key, const V3Signer& signer,
                                      std::int64_t timestamp_unix, V3Envelope envelope)
{
    envelope.event_type = "REFUND." + refund.refund_status;
    envelope.original_type = "refund";
    return make_v3(v3_refund_json(refund), apiv3_key, signer, timestamp_unix, envelope);
}

std::string build_v2_payment_xml(const V2Payment& payment, std::string_view apiv2_key, V2SignType type,
                                 bool send_sign_type)
{
    XmlFields fields{
        {"appid", payment.appid},
        {"bank_type", payment.bank_type},
        {"cash_fee", std::to_string(payment.total_fen)},
        {"fee_type", payment.fee_type},
        {"is_subscribe", payment.is_subscribe},
        {"mch_id", payment.mch_id},
        {"nonce_str", payment.nonce_str.empty() ? random_alnum(32) : payment.nonce_str},
        {"openid", payment.openid},
        {"out_trade_no", payment.out_trade_no},
        {"result_code", payment.result_code},
        {"return_code", payment.return_code},
        {"time_end", beijing_compact(now_or(payment.time_end_unix))},
        {"total_fee", std::to_string(payment.total_fen)},
        {"trade_type", payment.trade_type},
        {"transaction_id", payment.transaction_id.empty() ? "4200" + random_digits(24) : payment.transaction_id},
    };
    if (send_sign_type) {
        fields.emplace("sign_type", std::string(sign_type_name(type)));
    }
    for (const auto& extra : payment.extra) {
        fields.insert_or_assign(extra.name, extra.value);
    }
    fields.emplace("sign", v2_sign(fields, apiv2_key, type));
    return build_flat_xml("xml", ordered(fields));
}

std::string v2_refund_inner_xml(const V2Refund& refund)
{
    XmlFields fields{
        {"out_refund_no", refund.out_refund_no},
        {"out_trade_no", refund.out_trade_no},
        {"refund_account", refund.refund_account},
        {"refund_fee", std::to_string(refund.refund_fen)},
        {"refund_id", refund.refund_id.empty() ? "5030" + random_digits(25) : refund.refund_id},
        {"refund_recv_accout", refund.refund_recv_accout},
        {"refund_request_source", refund.refund_request_source},
        {"refund_status", refund.refund_status},
        {"settlement_refund_fee", std::to_string(refund.refund_fen)},
        {"settlement_total_fee", std::to_string(refund.total_fen)},
        {"total_fee", std::to_string(refund.total_fen)},
        {"transaction_id", refund.transaction_id},
    };
    if (refund.refund_status == "SUCCESS") {
        fields.emplace("success_time", beijing_datetime(now_or(refund.success_unix)));
    }
    std::vector<XmlField> ordered_fields;
    for (const auto& [name, value] : fields) {
        ordered_fields.push_back(XmlField{.name = name, .value = value});
    }
    return build_flat_xml("root", ordered_fields);
}

Result<std::string> encrypt_req_info(std::string_view inner_xml, std::string_view apiv2_key)
{
    auto sealed = crypto::aes256ecb_encrypt(v2_req_info_key(apiv2_key), inner_xml);
    if (!sealed) {
        return sealed.error();
    }
    return crypto::base64_encode(*sealed);
}

Result<std::string> build_v2_refund_xml(const V2Refund& refund, std::string_view apiv2_key)
{
    auto req_info = encrypt_req_info(v2_refund_inner_xml(refund), apiv2_key);
    if (!req_info) {
        return req_info.error();
    }
    std::vector<XmlField> fields{
        {"return_code", refund.return_code},
        {"appid", refund.appid},
        {"mch_id", refund.mch_id},
        {"nonce_str", refund.nonce_str.empty() ? random_alnum(32) : refund.nonce_str},
        {"req_info", std::move(*req_info)},
    };
    return build_flat_xml("xml", fields);
}

}  // namespace paybridge::gateways::wechatpay::sim
