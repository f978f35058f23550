#include "gateways/wechatpay/wechatpay_sim.hpp"

#include "core/error.hpp"
#include "gateways/gateway.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <boost/algorithm/string/predicate.hpp>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>

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

/// Decodes one percent-escaped path segment or query value: %XX (either case) → the byte; '+'
/// stays '+' (only forms mean a space by it). False on a malformed escape or a raw '/', '?', '&',
/// '=' or '#', which would have split the component.
bool unescape_component(std::string_view in, std::string& out)
{
    const auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if (c >= 'A' && c <= 'F') {
            return c - 'A' + 10;
        }
        if (c >= 'a' && c <= 'f') {
            return c - 'a' + 10;
        }
        return -1;
    };
    out.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '/' || c == '?' || c == '&' || c == '=' || c == '#') {
            return false;
        }
        if (c != '%') {
            out += c;
            continue;
        }
        if (in.size() - i < 3) {
            return false;
        }
        const int hi = hex(in[i + 1]);
        const int lo = hex(in[i + 2]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return true;
}

/// The parameters of a v3 Authorization header after its scheme: key="value",… in any order.
/// nullopt when the syntax is off, a key is unknown or repeated, or one of the five is missing.
std::optional<std::map<std::string, std::string, std::less<>>> authorization_params(std::string_view text)
{
    static constexpr std::string_view kKeys[] = {"mchid", "nonce_str", "timestamp", "serial_no", "signature"};
    std::map<std::string, std::string, std::less<>> params;
    while (!text.empty()) {
        const auto eq = text.find('=');
        if (eq == std::string_view::npos || eq + 1 >= text.size() || text[eq + 1] != '"') {
            return std::nullopt;
        }
        const std::string_view key = text.substr(0, eq);
        const auto close = text.find('"', eq + 2);
        if (close == std::string_view::npos ||
            std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys) ||
            !params.emplace(std::string(key), std::string(text.substr(eq + 2, close - eq - 2))).second) {
            return std::nullopt;
        }
        text.remove_prefix(close + 1);
        if (!text.empty()) {
            if (text.front() != ',' || text.size() == 1) {
                return std::nullopt;
            }
            text.remove_prefix(1);
        }
    }
    if (params.size() != std::size(kKeys)) {
        return std::nullopt;
    }
    return params;
}

std::string_view trade_state_desc(std::string_view state)
{
    if (state == "NOTPAY") {
        return "订单未支付";
    }
    if (state == "CLOSED") {
        return "订单已关闭";
    }
    if (state == "USERPAYING") {
        return "用户支付中";
    }
    if (state == "REVOKED") {
        return "已撤销";
    }
    if (state == "PAYERROR") {
        return "支付失败";
    }
    return state;
}

QueryResponse to_response(unsigned status, V3Notification&& signed_body)
{
    return QueryResponse{
        .status = status, .headers = std::move(signed_body.headers), .body = std::move(signed_body.body)};
}

std::string error_body(std::string_view code, std::string_view message)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    put(w, "code", code);
    put(w, "message", message);
    w.EndObject();
    return text_of(buffer);
}

/// The Authorization of a v3 API request, checked as WeChat Pay checks it (see
/// check_v3_query_request), and the request's Wechatpay-Serial: sets asked.mchid (the signer) and
/// asked.wechatpay_serial. `query_mchid`, when the request names a merchant in its query, must be
/// the signer (else unknown_account).
Result<void> check_authorization(const QueryRequest& request, const std::vector<V3ApiMerchant>& merchants,
                                 std::int64_t now_unix, std::optional<std::string_view> query_mchid,
                                 V3QueryAsked& asked)
{
    const auto malformed = make_error_code(errc::malformed_request);
    const auto bad_signature = make_error_code(errc::bad_signature);
    std::string_view authorization;
    for (const auto& [name, value] : request.headers) {
        if (ascii_iequals(name, "Authorization")) {
            authorization = value;
        } else if (ascii_iequals(name, "Wechatpay-Serial")) {
            asked.wechatpay_serial = value;
        }
    }
    const std::string scheme = std::string(kV3SignatureType) + " ";
    if (authorization.substr(0, scheme.size()) != scheme) {
        return malformed;
    }
    const auto params = authorization_params(authorization.substr(scheme.size()));
    if (!params) {
        return malformed;
    }
    const std::string& mchid = params->at("mchid");
    const auto merchant =
        std::find_if(merchants.begin(), merchants.end(), [&](const V3ApiMerchant& m) { return m.mchid == mchid; });
    if (merchant == merchants.end()) {
        return bad_signature;
    }
    if (query_mchid && *query_mchid != mchid) {
        return make_error_code(errc::unknown_account);
    }
    if (normalize_serial(params->at("serial_no")) != normalize_serial(merchant->serial_no)) {
        return bad_signature;
    }
    const std::string& timestamp = params->at("timestamp");
    std::int64_t ts = 0;
    if (timestamp.empty() || timestamp.size() > 18 ||
        timestamp.find_first_not_of("0123456789") != std::string::npos) {
        return malformed;
    }
    std::from_chars(timestamp.data(), timestamp.data() + timestamp.size(), ts);
    if (ts - now_unix >= kV3TimestampWindowSeconds || now_unix - ts >= kV3TimestampWindowSeconds) {
        return make_error_code(errc::stale_timestamp);
    }
    const auto signature = crypto::base64_decode(params->at("signature"));
    const std::string message =
        "GET\n" + request.target + "\n" + timestamp + "\n" + params->at("nonce_str") + "\n\n";
    if (!signature || !crypto::rsa_verify(merchant->public_key.get(), crypto::Digest::sha256, message, *signature)) {
        return bad_signature;
    }
    asked.mchid = mchid;
    return {};
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

Result<V3QueryAsked> check_v3_query_request(const QueryRequest& request, const std::vector<V3ApiMerchant>& merchants,
                                            std::int64_t now_unix, std::string_view base_path)
{
    const auto malformed = make_error_code(errc::malformed_request);
    while (!base_path.empty() && base_path.back() == '/') {
        base_path.remove_suffix(1);
    }
    const std::string prefix = std::string(base_path) + "/v3/pay/transactions/out-trade-no/";
    std::string_view target = request.target;
    if (request.method != "GET" || target.substr(0, prefix.size()) != prefix) {
        return malformed;
    }
    target.remove_prefix(prefix.size());
    const auto question = target.find('?');
    constexpr std::string_view kMchidParam = "mchid=";
    if (question == std::string_view::npos || target.substr(question + 1, kMchidParam.size()) != kMchidParam) {
        return malformed;
    }
    V3QueryAsked asked;
    if (!unescape_component(target.substr(0, question), asked.out_trade_no) || asked.out_trade_no.empty() ||
        !unescape_component(target.substr(question + 1 + kMchidParam.size()), asked.mchid)) {
        return malformed;
    }
    const std::string query_mchid = asked.mchid;
    if (auto checked = check_authorization(request, merchants, now_unix, query_mchid, asked); !checked) {
        return checked.error();
    }
    return asked;
}

Result<V3QueryAsked> check_v3_certificates_request(const QueryRequest& request,
                                                   const std::vector<V3ApiMerchant>& merchants, std::int64_t now_unix,
                                                   std::string_view base_path)
{
    while (!base_path.empty() && base_path.back() == '/') {
        base_path.remove_suffix(1);
    }
    if (request.method != "GET" || request.target != std::string(base_path) + "/v3/certificates") {
        return make_error_code(errc::malformed_request);
    }
    V3QueryAsked asked;
    if (auto checked = check_authorization(request, merchants, now_unix, std::nullopt, asked); !checked) {
        return checked.error();
    }
    return asked;
}

Result<QueryResponse> make_v3_certificates_response(const std::vector<std::pair<std::string, std::string>>& certs,
                                                    std::string_view apiv3_key, const V3Signer& signer,
                                                    std::int64_t timestamp_unix, std::string nonce)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    w.Key("data");
    w.StartArray();
    for (const auto& [pem, serial_no] : certs) {
        auto parsed = crypto::load_certificates(pem);
        if (!parsed) {
            return make_error_code(errc::malformed_request);
        }
        X509* cert = parsed->front().get();
        const std::string resource_nonce = random_alnum(12);
        auto sealed = crypto::aes256gcm_encrypt(apiv3_key, resource_nonce, "certificate", pem);
        if (!sealed) {
            return sealed.error();
        }
        w.StartObject();
        put(w, "serial_no", serial_no);
        put(w, "effective_time", beijing_rfc3339(crypto::certificate_not_before(cert)));
        put(w, "expire_time", beijing_rfc3339(crypto::certificate_not_after(cert)));
        w.Key("encrypt_certificate");
        w.StartObject();
        put(w, "algorithm", kV3ResourceAlgorithm);
        put(w, "nonce", resource_nonce);
        put(w, "associated_data", "certificate");
        put(w, "ciphertext", crypto::base64_encode(*sealed));
        w.EndObject();
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    auto signed_body = sign_v3(text_of(buffer), signer, timestamp_unix, std::move(nonce));
    if (!signed_body) {
        return signed_body.error();
    }
    return to_response(200, std::move(*signed_body));
}

std::string v3_query_transaction_json(const V3Transaction& tx)
{
    if (tx.trade_state == "SUCCESS" || tx.trade_state == "REFUND") {
        return v3_transaction_json(tx);
    }
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    put(w, "mchid", tx.mchid);
    put(w, "appid", tx.appid);
    put(w, "out_trade_no", tx.out_trade_no);
    put(w, "trade_state", tx.trade_state);
    put(w, "trade_state_desc", trade_state_desc(tx.trade_state));
    w.Key("amount");
    w.StartObject();
    put(w, "total", tx.total_fen);
    put(w, "currency", tx.currency);
    w.EndObject();
    w.EndObject();
    return text_of(buffer);
}

Result<QueryResponse> make_v3_query_response(const V3Transaction& tx, const V3Signer& signer,
                                             std::int64_t timestamp_unix, std::string nonce)
{
    auto signed_body = sign_v3(v3_query_transaction_json(tx), signer, timestamp_unix, std::move(nonce));
    if (!signed_body) {
        return signed_body.error();
    }
    return to_response(200, std::move(*signed_body));
}

Result<QueryResponse> make_v3_order_not_exist(const V3Signer& signer, std::int64_t timestamp_unix, std::string nonce)
{
    auto signed_body = sign_v3(error_body("ORDER_NOT_EXIST", "订单不存在"), signer, timestamp_unix, std::move(nonce));
    if (!signed_body) {
        return signed_body.error();
    }
    return to_response(404, std::move(*signed_body));
}

QueryResponse make_v3_error_response(unsigned status, std::string_view code, std::string_view message)
{
    return QueryResponse{.status = status,
                         .headers = {{"Content-Type", "application/json"}},
                         .body = error_body(code, message)};
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
