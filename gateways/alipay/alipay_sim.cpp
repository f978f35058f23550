#include "gateways/alipay/alipay_sim.hpp"

#include "core/error.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/charset.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/form.hpp"
#include "gateways/gateway.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <stdexcept>

namespace paybridge::gateways::alipay {
namespace {

std::int64_t now_ms(const NoticeSpec& spec)
{
    if (spec.now_unix_ms != 0) {
        return spec.now_unix_ms;
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string random_digits(std::size_t n)
{
    const std::string bytes = crypto::random_bytes(n);
    std::string out;
    out.reserve(n);
    for (const char b : bytes) {
        out += static_cast<char>('0' + static_cast<unsigned char>(b) % 10);
    }
    return out;
}

// Alipay trade numbers: yyyyMMdd + "22001" + 15 digits (28 characters), e.g.
// 2016071921001003030200089909.
std::string make_trade_no(std::int64_t unix_ms)
{
    std::string date = format_beijing_time(unix_ms).substr(0, 10);
    date.erase(std::remove(date.begin(), date.end(), '-'), date.end());
    return date + "22001" + random_digits(15);
}

AlipayNotice base_notice(const NoticeSpec& spec, std::int64_t unix_ms, std::string_view trade_status,
                         const std::string& trade_no)
{
    AlipayNotice notice;
    notice.charset = spec.charset;
    notice.sign_type = spec.sign_type;
    const std::string created = format_beijing_time(unix_ms - 60'000);
    const std::string amount = format_yuan(spec.amount_fen);
    notice.fields = {
        {"gmt_create", created},
        {"charset", spec.charset},
        {"seller_email", "merchant@example.com"},
        {"subject", spec.subject},
        {"buyer_id", "2088" + random_digits(12)},
        {"invoice_amount", amount},
        {"notify_id", "2024" + crypto::hex_lower(crypto::random_bytes(15))},
        {"notify_type", "trade_status_sync"},
        {"trade_status", std::string(trade_status)},
        {"receipt_amount", amount},
        {"app_id", spec.app_id},
        {"buyer_pay_amount", amount},
        {"seller_id", spec.seller_id},
        {"notify_time", format_beijing_time(unix_ms)},
        {"version", "1.0"},
        {"out_trade_no", spec.out_trade_no},
        {"total_amount", amount},
        {"trade_no", trade_no},
        {"auth_app_id", spec.app_id},
        {"buyer_logon_id", "158****1234"},
        {"point_amount", "0.00"},
    };
    return notice;
}

// The bytes Alipay puts on the wire for a UTF-8 value in the notice's charset.
std::string in_charset(const AlipayNotice& notice, const std::string& key, std::string_view utf8)
{
    auto bytes = from_utf8(utf8, notice.charset);
    if (!bytes) {
        throw std::invalid_argument("alipay_sim: field " + key + " is not representable in " + notice.charset);
    }
    return std::move(*bytes);
}

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

void write_string(JsonWriter& w, std::string_view value)
{
    w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void write_member(JsonWriter& w, std::string_view key, std::string_view value)
{
    w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
    write_string(w, value);
}

std::string text_of(const rapidjson::StringBuffer& buffer)
{
    return std::string(buffer.GetString(), buffer.GetSize());
}

Result<std::string> refuse(errc e, std::string* problem, std::string text)
{
    if (problem != nullptr) {
        *problem = std::move(text);
    }
    return make_error_code(e);
}

const std::string* find_param(const FormFields& params, std::string_view key)
{
    for (const auto& [k, v] : params) {
        if (k == key) {
            return &v;
        }
    }
    return nullptr;
}

}  // namespace

std::string format_beijing_time(std::int64_t unix_ms, bool millis)
{
    const std::int64_t beijing_ms = unix_ms + 8LL * 3600 * 1000;
    // Floor division, so that times before 1970 still get the right second and millisecond.
    const std::int64_t floor_seconds = beijing_ms >= 0 ? beijing_ms / 1000 : (beijing_ms - 999) / 1000;
    const auto seconds = static_cast<std::time_t>(floor_seconds);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    std::string out(buf);
    if (millis) {
        std::snprintf(buf, sizeof buf, ".%03d", static_cast<int>(beijing_ms - floor_seconds * 1000));
        out += buf;
    }
    return out;
}

std::string alipay_content_type(std::string_view charset)
{
    return "application/x-www-form-urlencoded; charset=" + std::string(charset);
}

AlipayNotice make_paid_notice(const NoticeSpec& spec, std::string_view trade_status)
{
    const std::int64_t unix_ms = now_ms(spec);
    const std::string trade_no = spec.trade_no.empty() ? make_trade_no(unix_ms) : spec.trade_no;
    AlipayNotice notice = base_notice(spec, unix_ms, trade_status, trade_no);
    const std::string amount = format_yuan(spec.amount_fen);
    set_field(notice, "gmt_payment", format_beijing_time(unix_ms - 30'000));
    set_field(notice, "fund_bill_list", R"([{"amount":")" + amount + R"(","fundChannel":"ALIPAYACCOUNT"}])");
    return notice;
}

AlipayNotice make_refund_notice(const NoticeSpec& spec, std::int64_t refunded_total_fen,
                                std::string_view out_biz_no)
{
    const std::int64_t unix_ms = now_ms(spec);
    const std::string trade_no = spec.trade_no.empty() ? make_trade_no(unix_ms) : spec.trade_no;
    const bool full = refunded_total_fen >= spec.amount_fen;
    AlipayNotice notice = base_notice(spec, unix_ms, full ? "TRADE_CLOSED" : "TRADE_SUCCESS", trade_no);
    set_field(notice, "gmt_payment", format_beijing_time(unix_ms - 3'600'000));
    set_field(notice, "refund_fee", format_yuan(refunded_total_fen));
    set_field(notice, "gmt_refund", format_beijing_time(unix_ms - 1'000, true));
    if (full) {
        set_field(notice, "gmt_close", format_beijing_time(unix_ms - 1'000));
    }
    if (!out_biz_no.empty()) {
        set_field(notice, "out_biz_no", out_biz_no);
    }
    return notice;
}

AlipayNotice make_closed_notice(const NoticeSpec& spec)
{
    const std::int64_t unix_ms = now_ms(spec);
    const std::string trade_no = spec.trade_no.empty() ? make_trade_no(unix_ms) : spec.trade_no;
    AlipayNotice notice = base_notice(spec, unix_ms, "TRADE_CLOSED", trade_no);
    // An unpaid trade: nothing was received, so the received/paid amounts are absent.
    for (std::string_view key : {"invoice_amount", "receipt_amount", "buyer_pay_amount", "point_amount"}) {
        remove_field(notice, key);
    }
    set_field(notice, "gmt_close", format_beijing_time(unix_ms - 1'000));
    return notice;
}

AlipayNotice& set_field(AlipayNotice& notice, std::string_view key, std::string_view value)
{
    for (auto& [k, v] : notice.fields) {
        if (k == key) {
            v = value;
            return notice;
        }
    }
    notice.fields.emplace_back(std::string(key), std::string(value));
    return notice;
}

AlipayNotice& remove_field(AlipayNotice& notice, std::string_view key)
{
    std::erase_if(notice.fields, [&](const auto& field) { return field.first == key; });
    return notice;
}

std::string alipay_sign_string(const AlipayNotice& notice)
{
    std::vector<std::pair<std::string, std::string>> encoded;
    encoded.reserve(notice.fields.size());
    for (const auto& [key, value] : notice.fields) {
        if (key == "sign" || key == "sign_type") {
            continue;
        }
        encoded.emplace_back(key, in_charset(notice, key, value));
    }
    std::sort(encoded.begin(), encoded.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out;
    for (const auto& [key, value] : encoded) {
        if (!out.empty()) {
            out += '&';
        }
        out += key;
        out += '=';
        out += value;
    }
    return out;
}

std::string build_alipay_body(const AlipayNotice& notice, EVP_PKEY* alipay_private_key)
{
    const crypto::Digest digest = notice.sign_type == "RSA" ? crypto::Digest::sha1 : crypto::Digest::sha256;
    auto signature = crypto::rsa_sign(alipay_private_key, digest, alipay_sign_string(notice));
    if (!signature) {
        throw std::invalid_argument("alipay_sim: signing failed");
    }
    std::string body;
    auto append = [&body](std::string_view key, std::string_view value) {
        if (!body.empty()) {
            body += '&';
        }
        body += form_encode(key);
        body += '=';
        body += form_encode(value);
    };
    for (const auto& [key, value] : notice.fields) {
        if (key == "sign" || key == "sign_type") {
            continue;
        }
        append(key, in_charset(notice, key, value));
    }
    if (!notice.sign_type.empty()) {
        append("sign_type", notice.sign_type);
    }
    append("sign", crypto::base64_encode(*signature));
    return body;
}

namespace {

// What check_trade_query_request and check_cert_download_request have in common: the parameters of
// a `method` request whose signature verifies, with biz_content parsed into `biz` (a JSON object).
Result<std::string> check_api_request(std::string_view target, std::string_view body, EVP_PKEY* app_public_key,
                                      const TradeQueryCheck& check, std::string_view method, std::string* problem,
                                      rapidjson::Document& biz)
{
    // Alipay's gateway reads the URL's parameters and the form body's as one set.
    const std::size_t mark = target.find('?');
    auto params = parse_form(mark == std::string_view::npos ? std::string_view() : target.substr(mark + 1));
    auto body_params = parse_form(body);
    if (!params || !body_params) {
        return refuse(errc::malformed_request, problem, "the query or the body is not a valid form");
    }
    for (auto& param : *body_params) {
        if (find_param(*params, param.first) != nullptr) {
            return refuse(errc::malformed_request, problem, "parameter " + param.first + " is sent twice");
        }
        params->push_back(std::move(param));
    }
    for (std::string_view required :
         {"app_id", "method", "charset", "sign_type", "timestamp", "version", "sign", "biz_content"}) {
        const std::string* value = find_param(*params, required);
        if (value == nullptr || value->empty()) {
            return refuse(errc::malformed_request, problem, "missing parameter " + std::string(required));
        }
    }
    auto param = [&params](std::string_view key) -> std::string_view {
        const std::string* value = find_param(*params, key);
        return value == nullptr ? std::string_view() : std::string_view(*value);
    };
    if (param("method") != method) {
        return refuse(errc::malformed_request, problem, "method is not " + std::string(method));
    }
    if (find_param(*params, "format") != nullptr && param("format") != "JSON") {
        return refuse(errc::malformed_request, problem, "format is not JSON");
    }
    if (!ascii_iequals(param("charset"), "utf-8")) {
        return refuse(errc::malformed_request, problem, "charset is not utf-8");
    }
    if (param("version") != "1.0") {
        return refuse(errc::malformed_request, problem, "version is not 1.0");
    }
    const std::string_view timestamp = param("timestamp");
    if (timestamp.size() != 19 || !parse_beijing_time(timestamp)) {
        return refuse(errc::malformed_request, problem, "timestamp is not yyyy-MM-dd HH:mm:ss");
    }
    if (!check.app_id.empty() && param("app_id") != check.app_id) {
        return refuse(errc::unknown_account, problem, "app_id is not " + check.app_id);
    }
    if (param("sign_type") != check.sign_type) {
        return refuse(errc::bad_signature, problem, "sign_type is not " + check.sign_type);
    }
    if (param("app_cert_sn") != check.app_cert_sn || param("alipay_root_cert_sn") != check.alipay_root_cert_sn) {
        return refuse(errc::bad_signature, problem, "app_cert_sn or alipay_root_cert_sn is not the expected one");
    }

    std::vector<const std::pair<std::string, std::string>*> sorted;
    for (const auto& p : *params) {
        if (p.first != "sign" && !p.second.empty()) {
            sorted.push_back(&p);
        }
    }
    std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
    std::string content;
    for (const auto* p : sorted) {
        if (!content.empty()) {
            content += '&';
        }
        content += p->first + "=" + p->second;
    }
    const crypto::Digest digest = check.sign_type == "RSA" ? crypto::Digest::sha1 : crypto::Digest::sha256;
    const auto signature = crypto::base64_decode(param("sign"));
    if (!signature) {
        return refuse(errc::bad_signature, problem, "sign is not base64");
    }
    if (!crypto::rsa_verify(app_public_key, digest, content, *signature)) {
        return refuse(errc::bad_signature, problem, "sign does not verify");
    }

    const std::string_view biz_content = param("biz_content");
    constexpr unsigned kFlags = rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;
    biz.Parse<kFlags>(biz_content.data(), biz_content.size());
    if (biz.HasParseError() || !biz.IsObject()) {
        return refuse(errc::malformed_request, problem, "biz_content is not a JSON object");
    }
    return std::string();
}

// The non-empty string member `key` of biz_content, or malformed_request.
Result<std::string> biz_string(const rapidjson::Document& biz, const char* key, std::string* problem)
{
    const auto it = biz.FindMember(key);
    if (it == biz.MemberEnd() || !it->value.IsString() || it->value.GetStringLength() == 0) {
        return refuse(errc::malformed_request, problem, "biz_content has no " + std::string(key));
    }
    return std::string(it->value.GetString(), it->value.GetStringLength());
}

std::string error_object(std::string_view code, std::string_view msg, std::string_view sub_code,
                         std::string_view sub_msg)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    write_member(w, "code", code);
    write_member(w, "msg", msg);
    if (!sub_code.empty()) {
        write_member(w, "sub_code", sub_code);
    }
    if (!sub_msg.empty()) {
        write_member(w, "sub_msg", sub_msg);
    }
    w.EndObject();
    return text_of(buffer);
}

constexpr std::string_view kCertDownloadNode = "alipay_open_app_alipaycert_download_response";

}  // namespace

Result<std::string> check_trade_query_request(std::string_view target, std::string_view body,
                                              EVP_PKEY* app_public_key, const TradeQueryCheck& check,
                                              std::string* problem)
{
    rapidjson::Document biz;
    auto checked = check_api_request(target, body, app_public_key, check, "alipay.trade.query", problem, biz);
    if (!checked) {
        return checked.error();
    }
    return biz_string(biz, "out_trade_no", problem);
}

Result<std::string> check_cert_download_request(std::string_view target, std::string_view body,
                                                EVP_PKEY* app_public_key, const TradeQueryCheck& check,
                                                std::string* problem)
{
    rapidjson::Document biz;
    auto checked = check_api_request(target, body, app_public_key, check, "alipay.open.app.alipaycert.download",
                                     problem, biz);
    if (!checked) {
        return checked.error();
    }
    return biz_string(biz, "alipay_cert_sn", problem);
}

std::string sign_alipay_answer(std::string_view node, std::string_view object_json, const AnswerSigner& signer)
{
    std::string out = "{\"";
    out.append(node).append("\":").append(object_json);
    if (!signer.alipay_cert_sn.empty()) {
        out.append(",\"alipay_cert_sn\":\"").append(signer.alipay_cert_sn).append("\"");
    }
    if (signer.alipay_private_key != nullptr) {
        const crypto::Digest digest = signer.sign_type == "RSA" ? crypto::Digest::sha1 : crypto::Digest::sha256;
        auto signature = crypto::rsa_sign(signer.alipay_private_key, digest, object_json);
        if (!signature) {
            throw std::invalid_argument("alipay_sim: signing failed");
        }
        // Base64 needs no JSON escaping; Alipay writes '/' unescaped.
        out.append(",\"sign\":\"").append(crypto::base64_encode(*signature)).append("\"");
    }
    out += '}';
    return out;
}

std::string trade_query_object(const QueriedTrade& trade)
{
    const bool paid = trade.trade_status == "TRADE_SUCCESS" || trade.trade_status == "TRADE_FINISHED";
    std::int64_t paid_ms = trade.paid_unix_ms;
    if (paid_ms == 0) {
        paid_ms = unix_ms(std::chrono::system_clock::now());
    }
    const std::string amount = format_yuan(trade.amount_fen);
    const std::string received = paid ? amount : std::string("0.00");
    const std::string trade_no = trade.trade_no.empty() ? make_trade_no(paid_ms) : trade.trade_no;

    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    write_member(w, "code", "10000");
    write_member(w, "msg", "Success");
    write_member(w, "buyer_logon_id", "158****1234");
    write_member(w, "buyer_pay_amount", received);
    write_member(w, "buyer_user_id", "2088" + random_digits(12));
    if (paid) {
        w.Key("fund_bill_list");
        w.StartArray();
        w.StartObject();
        write_member(w, "amount", amount);
        write_member(w, "fund_channel", "ALIPAYACCOUNT");
        w.EndObject();
        w.EndArray();
    }
    write_member(w, "invoice_amount", received);
    write_member(w, "out_trade_no", trade.out_trade_no);
    write_member(w, "point_amount", "0.00");
    write_member(w, "receipt_amount", received);
    if (paid) {
        write_member(w, "send_pay_date", format_beijing_time(paid_ms));
    }
    write_member(w, "total_amount", amount);
    write_member(w, "trade_no", trade_no);
    write_member(w, "trade_status", trade.trade_status);
    w.EndObject();
    return text_of(buffer);
}

std::string make_trade_query_answer(const QueriedTrade& trade, const AnswerSigner& signer)
{
    return sign_alipay_answer("alipay_trade_query_response", trade_query_object(trade), signer);
}

std::string make_trade_query_error(std::string_view code, std::string_view msg, std::string_view sub_code,
                                   std::string_view sub_msg, const AnswerSigner& signer)
{
    return sign_alipay_answer("alipay_trade_query_response", error_object(code, msg, sub_code, sub_msg), signer);
}

std::string make_trade_not_exist_answer(std::string_view out_trade_no, const AnswerSigner& signer)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    write_member(w, "code", "40004");
    write_member(w, "msg", "Business Failed");
    write_member(w, "sub_code", "ACQ.TRADE_NOT_EXIST");
    write_member(w, "sub_msg", "\xE4\xBA\xA4\xE6\x98\x93\xE4\xB8\x8D\xE5\xAD\x98\xE5\x9C\xA8");  // 交易不存在
    write_member(w, "buyer_pay_amount", "0.00");
    write_member(w, "invoice_amount", "0.00");
    write_member(w, "out_trade_no", out_trade_no);
    write_member(w, "point_amount", "0.00");
    write_member(w, "receipt_amount", "0.00");
    w.EndObject();
    return sign_alipay_answer("alipay_trade_query_response", text_of(buffer), signer);
}

std::string make_service_unavailable_answer(const AnswerSigner& signer)
{
    return make_trade_query_error("20000", "Service Currently Unavailable", "isp.unknow-error",
                                  "\xE7\xB3\xBB\xE7\xBB\x9F\xE7\xB9\x81\xE5\xBF\x99", signer);  // 系统繁忙
}

std::string cert_download_object(std::string_view cert_pem)
{
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    write_member(w, "code", "10000");
    write_member(w, "msg", "Success");
    write_member(w, "alipay_cert_content", crypto::base64_encode(cert_pem));
    w.EndObject();
    return text_of(buffer);
}

std::string make_cert_download_answer(std::string_view cert_pem, const AnswerSigner& signer)
{
    return sign_alipay_answer(kCertDownloadNode, cert_download_object(cert_pem), signer);
}

std::string make_cert_download_error(std::string_view code, std::string_view msg, std::string_view sub_code,
                                     std::string_view sub_msg, const AnswerSigner& signer)
{
    return sign_alipay_answer(kCertDownloadNode, error_object(code, msg, sub_code, sub_msg), signer);
}

}  // namespace paybridge::gateways::alipay
