#include "gateways/alipay/alipay_sim.hpp"

#include "core/money.hpp"
#include "gateways/charset.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/form.hpp"

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

}  // namespace paybridge::gateways::alipay
