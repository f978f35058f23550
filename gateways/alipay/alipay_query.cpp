#include "gateways/alipay/alipay_query.hpp"

#include "core/error.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/alipay/alipay_detail.hpp"
#include "gateways/charset.hpp"
#include "gateways/gateway.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <optional>
#include <utility>
#include <vector>

namespace paybridge::gateways::alipay {
namespace {

using detail::set_detail;

using rapidjson::Value;
using detail::text_member;

constexpr std::string_view kQueryNode = "alipay_trade_query_response";
constexpr std::string_view kErrorNode = "error_response";
constexpr unsigned kParseFlags = detail::kAnswerParseFlags;

boost::system::error_code error(errc e) { return make_error_code(e); }

// "yyyy-MM-dd HH:mm:ss" in Beijing time: Alipay reads request timestamps as GMT+8 (§1.9).
std::string beijing_time(std::int64_t unix_s)
{
    const auto seconds = static_cast<std::time_t>(unix_s + 8 * 3600);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[64];  // sized for any int fields, which keeps -Wformat-truncation quiet
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

// RFC 3986 percent-encoding, unreserved characters kept: valid in a query and in a form body
// alike, and never ambiguous about '+' (the signature is over the decoded values).
std::string uri_encode(std::string_view bytes)
{
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(bytes.size());
    for (const char c : bytes) {
        const auto b = static_cast<unsigned char>(c);
        if ((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' || b == '.' ||
            b == '_' || b == '~') {
            out += c;
        } else {
            out += '%';
            out += kHex[b >> 4];
            out += kHex[b & 0x0F];
        }
    }
    return out;
}

bool origin_form(std::string_view target) noexcept
{
    if (target.empty() || target.front() != '/') {
        return false;
    }
    return std::none_of(target.begin(), target.end(), [](char c) {
        const auto b = static_cast<unsigned char>(c);
        return b <= 0x20 || b == 0x7F || c == '#';
    });
}

// ---- the top level of the answer, scanned on raw bytes ----

std::size_t skip_space(std::string_view t, std::size_t i) noexcept
{
    while (i < t.size() && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r')) {
        ++i;
    }
    return i;
}

// t[i] is the opening quote: the index after the closing one, npos when unterminated. A backslash
// always escapes the next byte, so "\\\"" and "\\" end where JSON says they do.
std::size_t string_end(std::string_view t, std::size_t i) noexcept
{
    for (++i; i < t.size(); ++i) {
        if (t[i] == '\\') {
            ++i;
        } else if (t[i] == '"') {
            return i + 1;
        }
    }
    return std::string_view::npos;
}

// The end of the JSON value starting at t[i], npos when it does not end. Objects and arrays are
// matched bracket by bracket, skipping strings, so braces and quotes inside values do not count.
std::size_t value_end(std::string_view t, std::size_t i)
{
    if (i >= t.size()) {
        return std::string_view::npos;
    }
    if (t[i] == '"') {
        return string_end(t, i);
    }
    if (t[i] != '{' && t[i] != '[') {
        // A number or literal: up to the next delimiter (its syntax is RapidJSON's to check).
        while (i < t.size() && t[i] != ',' && t[i] != '}' && t[i] != ']' && t[i] != ' ' && t[i] != '\t' &&
               t[i] != '\n' && t[i] != '\r') {
            ++i;
        }
        return i;
    }
    std::string open;
    while (i < t.size()) {
        const char c = t[i];
        if (c == '"') {
            i = string_end(t, i);
            if (i == std::string_view::npos) {
                return i;
            }
            continue;
        }
        if (c == '{' || c == '[') {
            open += c;
        } else if (c == '}' || c == ']') {
            if (open.empty() || open.back() != (c == '}' ? '{' : '[')) {
                return std::string_view::npos;
            }
            open.pop_back();
            if (open.empty()) {
                return i + 1;
            }
        }
        ++i;
    }
    return std::string_view::npos;
}

struct Member {
    std::string_view key;    ///< raw bytes between the quotes (escapes left as sent)
    std::string_view value;  ///< raw bytes of the value
};

// The members of the top-level object, in order; nullopt when the body is not one object.
std::optional<std::vector<Member>> top_level_members(std::string_view body)
{
    std::vector<Member> members;
    std::size_t i = skip_space(body, 0);
    if (i >= body.size() || body[i] != '{') {
        return std::nullopt;
    }
    i = skip_space(body, i + 1);
    if (i < body.size() && body[i] == '}') {
        if (skip_space(body, i + 1) != body.size()) {
            return std::nullopt;
        }
        return members;
    }
    while (true) {
        if (i >= body.size() || body[i] != '"') {
            return std::nullopt;
        }
        const std::size_t key_end = string_end(body, i);
        if (key_end == std::string_view::npos) {
            return std::nullopt;
        }
        const std::string_view key = body.substr(i + 1, key_end - i - 2);
        i = skip_space(body, key_end);
        if (i >= body.size() || body[i] != ':') {
            return std::nullopt;
        }
        i = skip_space(body, i + 1);
        const std::size_t end = value_end(body, i);
        if (end == std::string_view::npos || end == i) {
            return std::nullopt;
        }
        members.push_back(Member{key, body.substr(i, end - i)});
        i = skip_space(body, end);
        if (i < body.size() && body[i] == ',') {
            i = skip_space(body, i + 1);
            continue;
        }
        if (i < body.size() && body[i] == '}') {
            break;
        }
        return std::nullopt;
    }
    if (skip_space(body, i + 1) != body.size()) {
        return std::nullopt;
    }
    return members;
}

// The one member named `key`: null when absent; `duplicate` set when it appears more than once.
const Member* find_member(const std::vector<Member>& members, std::string_view key, bool& duplicate)
{
    const Member* found = nullptr;
    for (const Member& m : members) {
        if (m.key == key) {
            duplicate = duplicate || found != nullptr;
            found = found == nullptr ? &m : found;
        }
    }
    return found;
}

// A JSON string value, decoded (sign and alipay_cert_sn may carry "\/"); nullopt otherwise.
std::optional<std::string> json_string(std::string_view raw)
{
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseIterativeFlag>(raw.data(), raw.size());
    if (doc.HasParseError() || !doc.IsString()) {
        return std::nullopt;
    }
    return std::string(doc.GetString(), doc.GetStringLength());
}

std::string replace_escaped_slashes(std::string_view text)
{
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == '/') {
            out += '/';
            ++i;
        } else {
            out += text[i];
        }
    }
    return out;
}

// ---- the response object, read after verification ----

bool readable(std::string_view text) { return to_utf8(text, Charset::utf8).has_value(); }

using detail::code_detail;
using detail::excerpt;

constexpr char kNotYuan[] = " is not an amount in yuan (digits, at most two decimals)";

bool currency_code(std::string_view text) noexcept
{
    return text.size() == 3 && std::all_of(text.begin(), text.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

// A TRADE_SUCCESS / TRADE_FINISHED answer as a payment, or kind unusable with the problem.
PaymentEvent paid_event(const AlipayAppKeys& app, std::string_view out_trade_no, std::string_view trade_status,
                        const Value& object)
{
    PaymentEvent event;
    event.provider = "alipay";
    event.channel = "alipay_query";
    event.kind = EventKind::payment;
    event.account = app.app_id;
    event.bill_id = std::string(out_trade_no);
    event.provider_status = std::string(trade_status);
    event.currency = "CNY";
    if (const auto paid = text_member(object, "send_pay_date")) {
        if (const auto ms = parse_beijing_time(*paid)) {
            event.occurred_at = format_rfc3339(*ms);
            event.paid_at = event.occurred_at;
        }
    }
    const auto trade_no = text_member(object, "trade_no");
    const bool trade_no_reads = trade_no && !trade_no->empty() && readable(*trade_no);
    if (trade_no_reads) {
        event.provider_txn_id = std::string(*trade_no);
        event.notification_id = "query:" + event.provider_txn_id;
    } else {
        // Still one id per bill, so that repeated queries record one anomaly, not one each.
        event.notification_id = "query:no-trade_no:" + event.bill_id;
    }
    auto unusable_event = [&event](std::string problem) {
        event.kind = EventKind::unusable;
        event.problem = std::move(problem);
        return std::move(event);
    };

    const auto total = text_member(object, "total_amount");
    if (!total || total->empty()) {
        return unusable_event("a " + event.provider_status + " payment without total_amount");
    }
    const auto fen = parse_yuan(*total);
    if (!fen) {
        return unusable_event("total_amount " + excerpt(*total) + kNotYuan);
    }
    event.total_fen = *fen;
    if (!trade_no_reads) {
        return unusable_event("a " + event.provider_status + " payment without a readable trade_no");
    }
    // total_amount is in the trade's pricing currency, which cross-border trades name.
    if (const auto currency = text_member(object, "trans_currency"); currency && !currency->empty()) {
        if (!currency_code(*currency)) {
            return unusable_event("trans_currency " + excerpt(*currency) + " is not a currency code");
        }
        event.currency = std::string(*currency);
    }
    return event;
}

// What an answer without a sign may still say: errors only (see the header).
boost::system::error_code unsigned_error(std::string_view content, std::string* detail)
{
    rapidjson::Document doc;
    doc.Parse<kParseFlags>(content.data(), content.size());
    const auto code = !doc.HasParseError() && doc.IsObject() ? text_member(doc, "code") : std::nullopt;
    if (!code) {
        set_detail(detail, "unsigned answer without a code");
        return error(errc::malformed_request);
    }
    const std::string what = "unsigned answer, " + code_detail(*code, text_member(doc, "sub_code"));
    set_detail(detail, what);
    if (*code == "20000") {
        return error(errc::provider_unavailable);
    }
    if (*code == "10000" || *code == "10003") {
        return error(errc::bad_signature);  // it states a trade state, which only a signed answer may
    }
    return error(errc::provider_rejected);
}

}  // namespace

namespace detail {

std::string excerpt(std::string_view text)
{
    // Only UTF-8 is shown: an error answer's texts may be GBK.
    return readable(text) ? quoted_excerpt(text) : std::string("(not UTF-8)");
}

std::string code_detail(std::string_view code, std::optional<std::string_view> sub_code)
{
    std::string out = "code " + excerpt(code);
    if (sub_code && !sub_code->empty()) {
        out += " sub_code " + excerpt(*sub_code);
    }
    return out;
}

Result<QueryRequest> build_request(const AlipayAppKeys& app, const AlipayQuerySigner& signer,
                                   std::string_view gateway_target, std::string_view method,
                                   std::string_view biz_content, std::int64_t now_unix)
{
    const bool cert_mode = !signer.app_cert_sn.empty();
    if (!origin_form(gateway_target) || !signer.app_private_key || cert_mode != !app.alipay_root_cert_sn.empty()) {
        return error(errc::invalid_argument);
    }

    // The system parameters, in the URL as the official SDKs send them.
    std::vector<std::pair<std::string_view, std::string>> system = {
        {"app_id", app.app_id},
        {"method", std::string(method)},
        {"format", "JSON"},
        {"charset", "utf-8"},
        {"sign_type", app.sign_type},
        {"timestamp", beijing_time(now_unix)},
        {"version", "1.0"},
    };
    if (cert_mode) {
        system.emplace_back("app_cert_sn", signer.app_cert_sn);
        system.emplace_back("alipay_root_cert_sn", app.alipay_root_cert_sn);
    }

    std::vector<std::pair<std::string_view, std::string_view>> signed_params;
    for (const auto& [key, value] : system) {
        signed_params.emplace_back(key, value);
    }
    signed_params.emplace_back("biz_content", biz_content);
    std::sort(signed_params.begin(), signed_params.end());
    std::string content;
    for (const auto& [key, value] : signed_params) {
        if (value.empty()) {
            continue;  // the SDKs skip empty values when signing, and Alipay does when checking
        }
        if (!content.empty()) {
            content += '&';
        }
        content.append(key).append("=").append(value);
    }
    const auto signature = crypto::rsa_sign(signer.app_private_key.get(), app.digest, content);
    if (!signature) {
        return error(errc::internal);
    }

    QueryRequest request;
    request.method = "POST";
    request.target = std::string(gateway_target);
    const std::size_t query = request.target.find('?');
    if (query == std::string::npos) {
        request.target += '?';
    } else if (request.target.back() != '?' && request.target.back() != '&') {
        request.target += '&';
    }
    for (const auto& [key, value] : system) {
        request.target.append(key).append("=").append(uri_encode(value)).append("&");
    }
    request.target += "sign=" + uri_encode(crypto::base64_encode(*signature));
    request.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded;charset=utf-8");
    request.body = "biz_content=" + uri_encode(biz_content);
    return request;
}

std::optional<std::string_view> text_member(const Value& object, const char* name)
{
    const auto it = object.FindMember(name);
    if (it == object.MemberEnd() || !it->value.IsString()) {
        return std::nullopt;
    }
    return std::string_view(it->value.GetString(), it->value.GetStringLength());
}

std::string verification_notes(const AlipayKey& verified_by, bool by_downloaded, bool via_unescaped)
{
    std::string notes;
    if (verified_by.previous) {
        add_note(notes, "verified with the previous Alipay key (rotation not finished)");
    }
    if (by_downloaded) {
        add_note(notes, "verified with the downloaded Alipay certificate " + verified_by.cert_sn);
    }
    if (via_unescaped) {
        add_note(notes, "verified with \"\\/\" read as \"/\"");
    }
    return notes;
}

Result<std::string_view> parse_verified(rapidjson::Document& doc, std::string_view content, std::string* detail)
{
    // Only the verified bytes are parsed (JSON reads "\/" as "/" itself).
    doc.Parse<kAnswerParseFlags>(content.data(), content.size());
    if (doc.HasParseError() || !doc.IsObject()) {
        set_detail(detail, "the response object is not valid JSON");
        return error(errc::malformed_request);
    }
    const auto code = text_member(doc, "code");
    if (!code) {
        set_detail(detail, "no code");
        return error(errc::malformed_request);
    }
    return *code;
}

Result<SignedAnswer> locate_answer(const QueryResponse& response, std::string_view node, std::string* detail)
{
    if (response.status != 200) {
        set_detail(detail, "HTTP " + std::to_string(response.status));
        return error(response.status == 429 || (response.status >= 500 && response.status <= 599)
                         ? errc::provider_unavailable
                         : errc::provider_rejected);
    }

    // §1.10: the signed content is the response object's bytes as sent. They are located on the
    // raw body, member by member, so neither key order nor braces inside strings can move them.
    const std::string_view body = response.body;
    const auto members = top_level_members(body);
    if (!members) {
        set_detail(detail, "the body is not a JSON object");
        return error(errc::malformed_request);
    }
    bool duplicate = false;
    const Member* found = find_member(*members, node, duplicate);
    if (found == nullptr) {
        found = find_member(*members, kErrorNode, duplicate);
    }
    const Member* sign_member = find_member(*members, "sign", duplicate);
    const Member* cert_sn_member = find_member(*members, "alipay_cert_sn", duplicate);
    if (duplicate) {
        // Which copy was signed cannot be told; the Java SDK refuses a repeated response node too.
        set_detail(detail, "a top-level key appears twice");
        return error(errc::bad_signature);
    }
    if (found == nullptr || found->value.front() != '{') {
        set_detail(detail, "no " + std::string(node) + " or error_response object");
        return error(errc::malformed_request);
    }
    SignedAnswer answer;
    answer.content = found->value;

    std::optional<std::string> sign;
    if (sign_member != nullptr) {
        sign = json_string(sign_member->value);
        if (!sign) {
            set_detail(detail, "sign is not a string");
            return error(errc::bad_signature);
        }
    }
    if (!sign || sign->empty()) {
        return unsigned_error(answer.content, detail);
    }
    auto signature = crypto::base64_decode(*sign);
    if (!signature || signature->empty()) {
        set_detail(detail, "sign is not base64");
        return error(errc::bad_signature);
    }
    answer.signature = std::move(*signature);
    if (cert_sn_member != nullptr) {
        answer.cert_sn = json_string(cert_sn_member->value);
        if (!answer.cert_sn) {
            set_detail(detail, "alipay_cert_sn is not a string");
            return error(errc::bad_signature);
        }
    }
    return answer;
}

std::vector<const AlipayKey*> candidate_keys(const AlipayAppKeys& app, const std::optional<std::string>& cert_sn,
                                             std::int64_t now_unix, bool& sn_known)
{
    std::vector<const AlipayKey*> keys;
    const bool by_sn = !app.alipay_cert_sn.empty() && cert_sn && !cert_sn->empty();
    for (const AlipayKey& key : app.keys) {
        if (by_sn && key.cert_sn != *cert_sn) {
            continue;
        }
        if (key.not_after != 0) {
            now_unix = now_or_clock(now_unix);
            if (now_unix > key.not_after) {
                continue;
            }
        }
        keys.push_back(&key);
    }
    sn_known = !by_sn || configured_sn(app, *cert_sn);
    return keys;
}

const AlipayKey* verify_content(const AlipayAppKeys& app, std::string_view content, std::string_view signature,
                                const std::vector<const AlipayKey*>& keys, bool& via_unescaped)
{
    // One RSA operation per key: the digest is recovered once and compared with both texts.
    const bool has_escaped_slash = content.find("\\/") != std::string_view::npos;
    std::string unescaped;
    via_unescaped = false;
    for (const AlipayKey* key : keys) {
        const auto digest = crypto::rsa_recover_digest(key->key.get(), app.digest, signature);
        if (!digest) {
            continue;
        }
        if (crypto::digest_matches(*digest, app.digest, content)) {
            return key;
        }
        if (has_escaped_slash) {
            if (unescaped.empty()) {
                unescaped = replace_escaped_slashes(content);
            }
            if (crypto::digest_matches(*digest, app.digest, unescaped)) {
                via_unescaped = true;
                return key;
            }
        }
    }
    return nullptr;
}

}  // namespace detail

Result<QueryRequest> build_trade_query(const AlipayAppKeys& app, const AlipayQuerySigner& signer,
                                       std::string_view gateway_target, std::string_view out_trade_no,
                                       std::int64_t now_unix)
{
    if (out_trade_no.empty()) {
        return error(errc::invalid_argument);
    }
    // The Writer escapes what JSON needs escaped (quotes, backslashes, control characters).
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    writer.StartObject();
    writer.Key("out_trade_no");
    writer.String(out_trade_no.data(), static_cast<rapidjson::SizeType>(out_trade_no.size()));
    writer.EndObject();
    return detail::build_request(app, signer, gateway_target, "alipay.trade.query",
                                 std::string_view(buffer.GetString(), buffer.GetSize()), now_unix);
}

Result<QueryAnswer> read_trade_query(const AlipayAppKeys& app, std::string_view out_trade_no,
                                     const QueryResponse& response, std::string* detail, std::int64_t now_unix)
{
    set_detail(detail, {});
    auto located = detail::locate_answer(response, kQueryNode, detail);
    if (!located) {
        return located.error();
    }
    const std::string_view content = located->content;
    const std::optional<std::string>& cert_sn = located->cert_sn;

    bool sn_known = true;
    auto keys = detail::candidate_keys(app, cert_sn, now_unix, sn_known);
    // A certificate downloaded since the configuration was loaded (Alipay re-issued its own): the
    // one the answer names, or, when it names none, each held one after the configured keys.
    std::vector<AlipayKey> downloaded;
    if (!sn_known) {
        if (!app.downloaded || !detail::sn_form(*cert_sn)) {
            // Without downloads, the operator installs the new certificate (README, config).
            set_detail(detail, "alipay_cert_sn " + excerpt(*cert_sn) + " is not a configured Alipay certificate");
            return error(errc::bad_signature);
        }
        const std::optional<ProviderCertificate> held = detail::downloaded_certificate(app, *cert_sn);
        if (!held) {
            // Transient: the download is asked for (at most once a second per app, whoever asks),
            // and the bill is asked about again at the next sweep.
            app.downloaded->unknown_serial(*cert_sn);
            set_detail(detail, "signed with Alipay certificate " + excerpt(*cert_sn) +
                                   ", not held yet: its download was asked for");
            return error(errc::provider_unavailable);
        }
        const std::int64_t now = detail::now_or_clock(now_unix);
        if (now < held->not_before || now > held->not_after) {
            set_detail(detail,
                       "alipay_cert_sn " + excerpt(*cert_sn) + " is a downloaded Alipay certificate not valid now");
            return error(errc::bad_signature);
        }
        downloaded.push_back(AlipayKey{.key = held->key, .cert_sn = held->serial});
        keys.push_back(&downloaded.front());
    }

    bool via_unescaped = false;
    const AlipayKey* verified_by = detail::verify_content(app, content, located->signature, keys, via_unescaped);
    if (verified_by == nullptr && app.downloaded && (!cert_sn || cert_sn->empty())) {
        // Only once the configured keys failed, so that they cost the book nothing.
        downloaded = detail::downloaded_keys(app, now_unix);
        std::vector<const AlipayKey*> held;
        for (const AlipayKey& key : downloaded) {
            held.push_back(&key);
        }
        verified_by = detail::verify_content(app, content, located->signature, held, via_unescaped);
    }
    if (verified_by == nullptr) {
        set_detail(detail, "no key verifies the sign");
        return error(errc::bad_signature);
    }
    const bool by_downloaded = std::any_of(downloaded.begin(), downloaded.end(),
                                           [verified_by](const AlipayKey& key) { return &key == verified_by; });
    std::string notes = detail::verification_notes(*verified_by, by_downloaded, via_unescaped);

    // Authentic from here on.
    rapidjson::Document doc;
    const Result<std::string_view> code = detail::parse_verified(doc, content, detail);
    if (!code) {
        return code.error();
    }
    const auto sub_code = text_member(doc, "sub_code");
    const auto answered_bill = text_member(doc, "out_trade_no");
    const auto trade_status = text_member(doc, "trade_status");
    // An answer about another bill says nothing about this one.
    auto other_bill = [&]() -> Result<QueryAnswer> {
        set_detail(detail, "the answer is about another out_trade_no");
        return error(errc::malformed_request);
    };

    QueryAnswer answer;
    if (*code == "10000") {
        if (!answered_bill) {
            set_detail(detail, "no out_trade_no");
            return error(errc::malformed_request);
        }
        if (*answered_bill != out_trade_no) {
            return other_bill();
        }
        if (!trade_status || trade_status->empty() || !readable(*trade_status)) {
            set_detail(detail, "no readable trade_status");
            return error(errc::malformed_request);
        }
        answer.provider_status = std::string(*trade_status);
        if (*trade_status == "TRADE_SUCCESS" || *trade_status == "TRADE_FINISHED") {
            answer.state = QueryState::paid;
            answer.payment = paid_event(app, out_trade_no, *trade_status, doc);
        } else if (*trade_status == "TRADE_CLOSED") {
            answer.state = QueryState::closed;
        } else {
            // WAIT_BUYER_PAY, and statuses Alipay may add: the trade exists and is not known paid.
            answer.state = QueryState::unpaid;
        }
    } else if (*code == "10003") {
        if (answered_bill && *answered_bill != out_trade_no) {
            return other_bill();
        }
        answer.state = QueryState::unpaid;
        answer.provider_status = trade_status && readable(*trade_status) ? std::string(*trade_status) : "10003";
    } else if (*code == "40004" && sub_code && *sub_code == "ACQ.TRADE_NOT_EXIST") {
        if (answered_bill && *answered_bill != out_trade_no) {
            return other_bill();
        }
        answer.state = QueryState::not_found;
        answer.provider_status = std::string(*sub_code);
    } else {
        set_detail(detail, code_detail(*code, sub_code));
        return error(*code == "20000" ? errc::provider_unavailable : errc::provider_rejected);
    }
    set_detail(detail, std::move(notes));
    return answer;
}

}  // namespace paybridge::gateways::alipay
