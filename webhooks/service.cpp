#include "webhooks/service.hpp"

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/charset.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/form.hpp"

#include <boost/beast/http/field.hpp>
#include <rapidjson/document.h>
#include <rapidjson/encodedstream.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <exception>
#include <initializer_list>
#include <iterator>
#include <map>
#include <optional>
#include <utility>

namespace paybridge::webhooks {

namespace http = boost::beast::http;
using boost::asio::awaitable;

Response make_response(const Request& req, unsigned status, std::string_view content_type, std::string body)
{
    Response res{static_cast<http::status>(status), req.version()};
    if (!content_type.empty()) {
        res.set(http::field::content_type, content_type);
    }
    res.keep_alive(req.keep_alive());
    res.body() = std::move(body);
    // A 204 (WeChat Pay's "stop retrying") or 304 has no body and, RFC 9110 §8.6, no Content-Length:
    // prepare_payload would add "Content-Length: 0", which a strict client or proxy may refuse.
    if (status != 204 && status != 304) {
        res.prepare_payload();
    }
    return res;
}

namespace {

/// How deep a bill's metadata may nest (the object itself is level 1), and a request body.
constexpr int kMaxMetadataNesting = 16;
constexpr int kMaxBodyNesting = 32;
static_assert(kMaxMetadataNesting == 16 && kMaxBodyNesting == 32, "the error texts say 16 and 32");

/// Forwards SAX events to a Document, refusing (kParseErrorTermination) an object or array that
/// would open deeper than `max_depth`.
class DepthLimit {
public:
    DepthLimit(rapidjson::Document& doc, int max_depth) : doc_(doc), left_(max_depth) {}
    bool Null() { return doc_.Null(); }
    bool Bool(bool b) { return doc_.Bool(b); }
    bool Int(int i) { return doc_.Int(i); }
    bool Uint(unsigned u) { return doc_.Uint(u); }
    bool Int64(std::int64_t i) { return doc_.Int64(i); }
    bool Uint64(std::uint64_t u) { return doc_.Uint64(u); }
    bool Double(double d) { return doc_.Double(d); }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool copy) { return doc_.RawNumber(s, n, copy); }
    bool String(const char* s, rapidjson::SizeType n, bool copy) { return doc_.String(s, n, copy); }
    bool Key(const char* s, rapidjson::SizeType n, bool copy) { return doc_.Key(s, n, copy); }
    bool StartObject() { return --left_ >= 0 && doc_.StartObject(); }
    bool EndObject(rapidjson::SizeType n) { return ++left_, doc_.EndObject(n); }
    bool StartArray() { return --left_ >= 0 && doc_.StartArray(); }
    bool EndArray(rapidjson::SizeType n) { return ++left_, doc_.EndArray(n); }

private:
    rapidjson::Document& doc_;
    int left_;
};

/// doc.Parse with UTF-8 validation, iterative (no recursion per level) and refusing more than
/// `max_depth` levels as it reads them (kParseErrorTermination): a body of nested brackets costs
/// neither stack nor memory in proportion to its depth.
rapidjson::ParseResult parse_bounded(rapidjson::Document& doc, std::string_view text, int max_depth)
{
    rapidjson::ParseResult result;
    auto generate = [&](rapidjson::Document& d) {
        rapidjson::MemoryStream bytes(text.data(), text.size());
        rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> in(bytes);
        DepthLimit limited(d, max_depth);
        rapidjson::Reader reader;
        // Full precision: a number in the metadata keeps the value the CRM sent; the default fast
        // path reads some doubles a ULP or more off (8.0863067236109623e+24 one ULP low).
        result = reader.Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag |
                              rapidjson::kParseFullPrecisionFlag>(in, limited);
        return !result.IsError();
    };
    doc.Populate(generate);
    return result;
}

/// Nesting depth of `v` (a scalar is 0), counted no further than cap + 1, so the recursion is
/// bounded by `cap` however deep the value is.
int nesting(const rapidjson::Value& v, int cap)
{
    if (!v.IsObject() && !v.IsArray()) {
        return 0;
    }
    if (cap <= 0) {
        return 1;
    }
    int deepest = 0;
    if (v.IsObject()) {
        for (auto it = v.MemberBegin(); it != v.MemberEnd() && deepest < cap; ++it) {
            deepest = std::max(deepest, nesting(it->value, cap - 1));
        }
    } else {
        for (auto it = v.Begin(); it != v.End() && deepest < cap; ++it) {
            deepest = std::max(deepest, nesting(*it, cap - 1));
        }
    }
    return 1 + deepest;
}

// ---- metrics -----------------------------------------------------------------------------------

struct Instruments {
    metrics::Family<metrics::Counter>& notifications = metrics::registry().counter(
        "paybridge_notifications_total", "Provider notifications by channel and outcome.");
    metrics::Family<metrics::Counter>& anomalies =
        metrics::registry().counter("paybridge_anomalies_total", "Anomalies recorded, by kind.");

    /// Every series an alert watches exists from the start, at 0: Prometheus' increase() does not
    /// count a series' first sample, so a counter born at 1 would hide the first anomaly of a kind.
    Instruments()
    {
        for (std::string_view channel : {"alipay", "wechatpay_v3", "wechatpay_v2"}) {
            for (std::string_view outcome : {"applied", "duplicate", "anomaly", "ignored", "bad_signature", "stale",
                                             "malformed", "unusable", "unknown_account", "store_unavailable"}) {
                notifications.cached<2>({"channel", "outcome"}, {channel, outcome});
            }
        }
        for (const char* kind :
             {"amount_mismatch", "unknown_bill", "paid_after_close", "paid_after_refund", "duplicate_payment",
              "refund_exceeds_paid", "refund_unapplied", "refund_amount_mismatch", "refund_other_txn",
              "refund_total_not_increased", "close_after_paid", "refund_closed", "refund_abnormal",
              "unusable_notification"}) {
            anomalies.with({{"kind", kind}});
        }
    }
};

Instruments& instruments()
{
    static Instruments i;
    return i;
}

// ---- notification routes -----------------------------------------------------------------------

struct NotifyRoute {
    const gateways::Gateway* gateway{nullptr};  ///< null: that provider is not configured
    std::string_view name;                      ///< alipay, wechatpay_v3, wechatpay_v2 (metrics, logs)
    std::string_view param;                     ///< a WeChat Pay route's merchant id
};

// A WeChat Pay v2 XML document without API v3's signature headers: refunds started in the merchant
// portal are notified in v2 format at the refund notify URL, which is often the v3 one
// (PROTOCOLS.md §2.6: tell them apart by Content-Type). API v3 always sends signed JSON.
bool is_v2_xml(const Request& req)
{
    if (req.find("Wechatpay-Signature") != req.end()) {
        return false;
    }
    std::string_view type = req[http::field::content_type];
    type = type.substr(0, type.find(';'));
    while (!type.empty() && type.back() == ' ') {
        type.remove_suffix(1);
    }
    if (gateways::ascii_iequals(type, "text/xml") || gateways::ascii_iequals(type, "application/xml")) {
        return true;
    }
    const std::string& body = req.body();
    const auto first = body.find_first_not_of(" \t\r\n");
    return first != std::string::npos && body[first] == '<';
}

// /notify/alipay, /notify/wechatpay/{mchid} and /notify/wechatpay/{mchid}/v2; nullopt: no such route.
std::optional<NotifyRoute> notify_route(const Request& req, const Runtime& rt, std::string_view path)
{
    if (path == "/notify/alipay") {
        return NotifyRoute{rt.alipay.get(), "alipay", {}};
    }
    constexpr std::string_view kWx = "/notify/wechatpay/";
    if (!path.starts_with(kWx)) {
        return std::nullopt;
    }
    std::string_view mchid = path.substr(kWx.size());
    const bool v2_path = mchid.ends_with("/v2");
    if (v2_path) {
        mchid.remove_suffix(3);
    }
    if (mchid.empty() || mchid.find('/') != std::string_view::npos) {
        return std::nullopt;
    }
    if (v2_path || is_v2_xml(req)) {
        return NotifyRoute{rt.wechat_v2.get(), "wechatpay_v2", mchid};
    }
    return NotifyRoute{rt.wechat_v3.get(), "wechatpay_v3", mchid};
}

/// The gateway whose route `req` is on, so that a failure goes out in that provider's format;
/// null for any other route, or a provider that is not configured.
const gateways::Gateway* provider_of(const Request& req, const Runtime& rt)
{
    const std::string_view target = req.target();
    const std::optional<NotifyRoute> nr = notify_route(req, rt, target.substr(0, target.find('?')));
    return nr ? nr->gateway : nullptr;
}

std::string_view outcome_of_error(const boost::system::error_code& ec)
{
    if (ec == errc::bad_signature) {
        return "bad_signature";
    }
    if (ec == errc::stale_timestamp) {
        return "stale";
    }
    if (ec == errc::unknown_account) {
        return "unknown_account";
    }
    if (is_transient(ec)) {
        return "store_unavailable";
    }
    return "malformed";
}

// ---- small helpers -----------------------------------------------------------------------------

std::string json_error(std::string_view code, std::string_view message, std::string_view field = {})
{
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("error");
    w.StartObject();
    w.Key("code");
    w.String(code.data(), static_cast<rapidjson::SizeType>(code.size()));
    w.Key("message");
    w.String(message.data(), static_cast<rapidjson::SizeType>(message.size()));
    if (!field.empty()) {
        // A field may be a query parameter name as the client sent it, decoded: bytes that are not
        // UTF-8 would make the answer invalid JSON, so such a name is shown percent-encoded again.
        const std::string shown = gateways::to_utf8(field, gateways::Charset::utf8)
                                      ? std::string(field)
                                      : gateways::form_encode(field);
        w.Key("field");
        w.String(shown.data(), static_cast<rapidjson::SizeType>(shown.size()));
    }
    w.EndObject();
    w.EndObject();
    return std::string(buf.GetString(), buf.GetSize());
}

Response api_error(const Request& req, unsigned status, std::string_view code, std::string_view message,
                   std::string_view field = {})
{
    return make_response(req, status, "application/json", json_error(code, message, field));
}

/// 405 with the Allow header RFC 9110 requires; `allow` as "GET, HEAD" or "POST".
Response method_not_allowed(const Request& req, std::string_view allow)
{
    Response res = api_error(req, 405, "method_not_allowed", "use " + std::string(allow));
    res.set(http::field::allow, allow);
    return res;
}

Response store_error(const Request& req, const boost::system::error_code& ec)
{
    if (is_transient(ec)) {
        return api_error(req, 503, "store_unavailable", "the bill store is unavailable; retry later");
    }
    return api_error(req, 500, "internal", "internal error");
}

using gateways::percent_decode;
using Query = std::map<std::string, std::string>;

// Query parameters, decoded once by the same decoder as provider forms; a name without '=' has an
// empty value. A name given twice is refused by the caller (which value was meant?): `repeated`
// gets the first such name.
bool parse_query(std::string_view q, Query& out, std::string& repeated)
{
    while (!q.empty()) {
        const auto amp = q.find('&');
        const std::string_view pair = q.substr(0, amp);
        q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
        if (pair.empty()) {
            continue;
        }
        const auto eq = pair.find('=');
        std::string key, value;
        if (!percent_decode(pair.substr(0, eq), key) ||
            !percent_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1), value)) {
            return false;
        }
        auto [it, added] = out.emplace(std::move(key), std::move(value));
        if (!added && repeated.empty()) {
            repeated = it->first;
        }
    }
    return true;
}

// A 400 naming the first parameter the endpoint does not take (a misspelt filter would otherwise
// be ignored: `?cursor=` on a feed that pages with `after` would return its first page forever).
std::optional<Response> unknown_param(const Request& req, const Query& q, std::initializer_list<std::string_view> allowed)
{
    for (const auto& entry : q) {
        if (std::find(allowed.begin(), allowed.end(), entry.first) != allowed.end()) {
            continue;
        }
        std::string message = "unknown query parameter; ";
        if (allowed.size() == 0) {
            message += "this endpoint takes none";
        } else {
            message += "this endpoint takes ";
            for (auto it = allowed.begin(); it != allowed.end(); ++it) {
                message += it == allowed.begin() ? "" : ", ";
                message += *it;
            }
        }
        return api_error(req, 400, "invalid_argument", message, entry.first);
    }
    return std::nullopt;
}

std::optional<std::size_t> parse_limit(const Query& q, std::size_t def, std::size_t max)
{
    auto it = q.find("limit");
    if (it == q.end()) {
        return def;
    }
    std::size_t v = 0;
    const auto* end = it->second.data() + it->second.size();
    auto [p, ec] = std::from_chars(it->second.data(), end, v);
    if (ec != std::errc{} || p != end || v == 0 || v > max) {
        return std::nullopt;
    }
    return v;
}

// An RFC 3339 time after the Unix epoch (0 stands for "not given" below the API); 0 when absent.
// Given but empty is refused (nullopt), like an empty filter: `updated_from=$SINCE` with $SINCE
// unset must not quietly become "no bound".
std::optional<std::int64_t> parse_time_param(const Query& q, const char* name, bool& present)
{
    auto it = q.find(name);
    present = it != q.end();
    if (!present) {
        return 0;
    }
    if (it->second.empty()) {
        return std::nullopt;
    }
    std::optional<std::int64_t> ms = parse_rfc3339(it->second);
    if (ms && *ms <= 0) {
        return std::nullopt;
    }
    return ms;
}

// The 400 for a time parameter parse_time_param() refused. A '+' sent unencoded arrives as a space
// (form decoding), which is the usual way to get "+08:00" wrong: said so.
Response time_error(const Request& req, const Query& q, const char* name, std::string_view prefix = {})
{
    auto it = q.find(name);
    if (it != q.end() && it->second.empty()) {
        // A required time says what it must be; an optional one (prefix "must be ") how to say
        // "no bound".
        std::string message = "must not be empty; ";
        message += prefix.starts_with("required") ? "an RFC 3339 time after 1970-01-01T00:00:00Z"
                                                  : "leave it out for no bound";
        return api_error(req, 400, "invalid_argument", message, name);
    }
    std::string message(prefix);
    message += "an RFC 3339 time after 1970-01-01T00:00:00Z";
    if (it != q.end() && it->second.find(' ') != std::string::npos) {
        message += " (a '+' in a query string must be sent as %2B)";
    }
    return api_error(req, 400, "invalid_argument", message, name);
}

/// Calls f(code point) for each code point of `text`, which is valid UTF-8 (the body was checked
/// when it was parsed); stops and returns false as soon as f does.
template <class F>
bool each_code_point(std::string_view text, F&& f)
{
    while (!text.empty()) {
        const auto lead = static_cast<unsigned char>(text.front());
        const std::size_t n = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
        if (n > text.size()) {
            return false;
        }
        char32_t cp = n == 1 ? lead : n == 2 ? (lead & 0x1Fu) : n == 3 ? (lead & 0x0Fu) : (lead & 0x07u);
        for (std::size_t i = 1; i < n; ++i) {
            cp = (cp << 6) | (static_cast<unsigned char>(text[i]) & 0x3Fu);
        }
        text.remove_prefix(n);
        if (!f(cp)) {
            return false;
        }
    }
    return true;
}

/// C0 and C1 control characters and DEL (Unicode general category Cc).
bool is_control(char32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }

/// Unicode White_Space (ASCII blanks, NEL, NBSP, the ideographic space U+3000 that Chinese input
/// methods type, and the other spaces and separators).
bool is_space(char32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

bool valid_bill_id(std::string_view id)
{
    if (id.empty() || id.size() > 64) {
        return false;
    }
    for (char c : id) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                        c == '-' || c == '.' || c == '|' || c == '*';
        if (!ok) {
            return false;
        }
    }
    return true;
}

std::string page_json(const char* key, const Page& page)
{
    std::string out = "{\"";
    out += key;
    out += "\":[";
    for (std::size_t i = 0; i < page.items_json.size(); ++i) {
        if (i) {
            out += ',';
        }
        out += page.items_json[i];
    }
    out += "],\"next_cursor\":";
    if (page.next_cursor.empty()) {
        out += "null";
    } else {
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        w.String(page.next_cursor.data(), static_cast<rapidjson::SizeType>(page.next_cursor.size()));
        out.append(buf.GetString(), buf.GetSize());
    }
    out += '}';
    return out;
}

// The bill object with its history appended as "events".
std::string bill_with_events(const BillView& view)
{
    std::string out = view.bill_json;
    while (!out.empty() && out.back() != '}') {
        out.pop_back();
    }
    if (out.empty()) {
        return view.bill_json;
    }
    out.pop_back();
    out += out.size() > 1 ? ",\"events\":[" : "\"events\":[";
    for (std::size_t i = 0; i < view.events_json.size(); ++i) {
        if (i) {
            out += ',';
        }
        out += view.events_json[i];
    }
    out += "]}";
    return out;
}

/// Whether a bill's JSON has "metadata":{} (only bills registered before {} was taken as none).
bool has_empty_metadata(const std::string& bill_json)
{
    rapidjson::Document doc;
    doc.Parse(bill_json.data(), bill_json.size());
    if (doc.HasParseError() || !doc.IsObject()) {
        return false;
    }
    const auto it = doc.FindMember("metadata");
    return it != doc.MemberEnd() && it->value.IsObject() && it->value.ObjectEmpty();
}

/// Why a request is refused on /v1, or nullptr when its bearer token is one of the configured ones.
const char* unauthorized(const Request& req, const config::Config& cfg)
{
    const auto it = req.find(http::field::authorization);
    if (it == req.end()) {
        return "no_authorization_header";
    }
    std::string_view value = it->value();
    constexpr std::string_view kBearer = "Bearer ";
    if (value.size() <= kBearer.size() || !std::equal(kBearer.begin(), kBearer.end(), value.begin(), [](char a, char b) {
            return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
        return "not_a_bearer_token";
    }
    value.remove_prefix(kBearer.size());
    // Compare against every token, without an early exit, in constant time per token.
    bool ok = false;
    for (const auto& t : cfg.api_tokens) {
        ok |= crypto::constant_time_equal(value, t.token);
    }
    return ok ? nullptr : "unknown_token";
}

}  // namespace

Service::Service(Deps deps) : deps_(std::move(deps)) { instruments(); }

awaitable<Response> Service::handle(Request req, unsigned routes)
{
    if (req.method() == http::verb::head) {
        // Answered as GET; the server sends the header only.
        req.method(http::verb::get);
    }
    RuntimePtr rt = deps_.runtime();
    try {
        Response res = co_await route(req, rt, routes);
        co_return res;
    } catch (const std::exception& e) {
        log::error("http.handler_exception", {{"what", e.what()}});
    }
    // A provider gets its own failure format (with a 5xx: it retries), everyone else the API's.
    if (const gateways::Gateway* gw = provider_of(req, *rt); gw != nullptr) {
        const gateways::Reply reply = gw->failure(make_error_code(errc::internal));
        co_return make_response(req, static_cast<unsigned>(reply.status), reply.content_type, reply.body);
    }
    co_return api_error(req, 500, "internal", "internal error");
}

Response Service::reject(const Request& header, unsigned status, std::string_view text) const
{
    Response res;
    const RuntimePtr rt = deps_.runtime();
    if (const gateways::Gateway* gw = rt ? provider_of(header, *rt) : nullptr; gw != nullptr) {
        const gateways::Reply reply = gw->failure(make_error_code(errc::malformed_request));
        res = make_response(header, status, reply.content_type, reply.body);
    } else if (header.target().starts_with("/v1/")) {
        // The API's error shape, so that a CRM client reads every refusal the same way.
        std::string_view message = text;
        while (!message.empty() && message.back() == '\n') {
            message.remove_suffix(1);
        }
        const std::string_view code = status == 413   ? "payload_too_large"
                                      : status == 414 ? "uri_too_long"
                                      : status == 431 ? "request_header_fields_too_large"
                                      : status == 501 ? "not_implemented"
                                                      : "bad_request";
        res = api_error(header, status, code, message);
    } else {
        res = make_response(header, status, "text/plain", std::string(text));
    }
    res.keep_alive(false);
    return res;
}

awaitable<Response> Service::route(const Request& req, const RuntimePtr& rt, unsigned routes)
{
    std::string_view target = req.target();
    const auto qpos = target.find('?');
    const std::string_view path = target.substr(0, qpos);
    const std::string_view query = qpos == std::string_view::npos ? std::string_view{} : target.substr(qpos + 1);
    const auto method = req.method();

    const unsigned group = path.starts_with("/notify/")                  ? config::kRoutesNotify
                           : path.starts_with("/v1/")                    ? config::kRoutesApi
                           : path == "/healthz" || path == "/readyz"     ? config::kRoutesHealth
                           : path == "/metrics"                          ? config::kRoutesMetrics
                                                                         : 0u;
    if ((routes & group) == 0) {
        co_return make_response(req, 404, "text/plain", "not found");  // not served on this listener
    }

    if (path.starts_with("/notify/")) {
        if (method != http::verb::post) {
            Response res = make_response(req, 405, "text/plain", "method not allowed");
            res.set(http::field::allow, "POST");
            co_return res;
        }
        const std::optional<NotifyRoute> nr = notify_route(req, *rt, path);
        if (!nr) {
            co_return make_response(req, 404, "text/plain", "not found");
        }
        Response res = co_await notify(req, nr->gateway, nr->name, nr->param);
        co_return res;
    }
    if (path == "/healthz") {
        co_return make_response(req, 200, "text/plain", "ok\n");
    }
    if (path == "/readyz") {
        if (!deps_.ready()) {
            co_return make_response(req, 503, "text/plain", "not ready: redis unreachable, not a master, its key layout refused, or scripts not loaded\n");
        }
        Result<void> ping = co_await deps_.store.ping();
        if (!ping) {
            co_return make_response(req, 503, "text/plain", "not ready: redis did not answer\n");
        }
        co_return make_response(req, 200, "text/plain", "ready\n");
    }
    if (path == "/metrics") {
        co_return make_response(req, 200, "text/plain; version=0.0.4", metrics::registry().render());
    }
    if (path.starts_with("/v1/")) {
        if (const char* why = unauthorized(req, *rt->config)) {
            // Said once per refusal, without the token or the query (a customer id may be in it).
            log::warning("api.unauthorized", {{"request_id", std::string_view(req["X-Request-Id"])},
                                              {"method", std::string_view(req.method_string())},
                                              {"path", path},
                                              {"reason", why}});
            Response res = api_error(req, 401, "unauthorized", "a valid bearer token is required");
            res.set(http::field::www_authenticate, "Bearer");
            co_return res;
        }
        Response res = co_await api(req, rt, path, query);
        co_return res;
    }
    co_return make_response(req, 404, "text/plain", "not found");
}

awaitable<Response> Service::notify(const Request& req, const gateways::Gateway* gw, std::string_view route,
                                    std::string_view param)
{
    if (gw == nullptr) {
        co_return make_response(req, 404, "text/plain", "provider not configured");
    }
    gateways::InboundRequest inbound;
    inbound.headers.reserve(8);
    for (const auto& f : req) {
        inbound.headers.emplace_back(f.name_string(), f.value());
    }
    inbound.body = req.body();
    inbound.route_param = param;
    inbound.now_unix = std::chrono::duration_cast<std::chrono::seconds>(deps_.now().time_since_epoch()).count();

    // The server put the (sanitised or generated) request id on the request: logs carry it.
    const std::string request_id{req["X-Request-Id"]};
    const auto started = std::chrono::steady_clock::now();
    auto elapsed_ms = [started] {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    };
    auto& counters = instruments().notifications;
    Result<gateways::Verified> verified = gw->verify_and_parse(inbound);
    if (!verified) {
        const auto outcome = outcome_of_error(verified.error());
        counters.cached<2>({"channel", "outcome"}, {route, outcome}).inc();
        log::warning("notify.rejected", {{"request_id", request_id}, {"channel", route}, {"outcome", outcome},
                                         {"error", error_name(verified.error())}, {"latency_ms", elapsed_ms()}});
        const gateways::Reply reply = gw->failure(verified.error());
        co_return make_response(req, static_cast<unsigned>(reply.status), reply.content_type, reply.body);
    }
    PaymentEvent event = std::move(verified->event);
    const std::string bill_id = event.bill_id;
    const std::string kind{to_string(event.kind)};
    const bool unusable = event.kind == EventKind::unusable;
    const std::string problem = unusable ? event.problem : std::string();
    Result<ApplyResult> applied = co_await deps_.store.apply(std::move(event));
    if (!applied) {
        counters.cached<2>({"channel", "outcome"}, {route, "store_unavailable"}).inc();
        log::error("notify.store_failed", {{"request_id", request_id}, {"channel", route}, {"bill_id", bill_id},
                                           {"outcome", "store_unavailable"}, {"error", error_name(applied.error())},
                                           {"latency_ms", elapsed_ms()}});
        const gateways::Reply reply = gw->failure(applied.error());
        co_return make_response(req, static_cast<unsigned>(reply.status), reply.content_type, reply.body);
    }
    if (!applied->anomaly.empty()) {
        instruments().anomalies.with({{"kind", applied->anomaly}}).inc();
    }
    if (unusable && applied->outcome != ApplyOutcome::duplicate) {
        // Authentic but not readable by this paybridge: recorded (once) as an anomaly, and refused
        // like malformed input, so the provider retries and a fixed paybridge applies it. (A
        // duplicate is a notification some paybridge did read and apply: acknowledged below.)
        counters.cached<2>({"channel", "outcome"}, {route, "unusable"}).inc();
        log::warning("notify.unusable", {{"request_id", request_id}, {"channel", route}, {"bill_id", bill_id},
                                         {"problem", problem}, {"recorded", !applied->anomaly.empty()},
                                         {"latency_ms", elapsed_ms()}});
        const gateways::Reply reply = gw->failure(make_error_code(errc::malformed_request));
        co_return make_response(req, static_cast<unsigned>(reply.status), reply.content_type, reply.body);
    }
    std::string outcome{to_string(applied->outcome)};
    if (applied->outcome == ApplyOutcome::orphaned) {
        outcome = "anomaly";
    }
    counters.cached<2>({"channel", "outcome"}, {route, outcome}).inc();
    if (!applied->anomaly.empty()) {
        log::warning("notify.anomaly", {{"request_id", request_id}, {"channel", route}, {"bill_id", bill_id},
                                        {"kind", kind}, {"anomaly", applied->anomaly}});
    }
    const std::string_view provider = route.starts_with("alipay") ? "alipay" : "wechatpay";
    log::info("notify.accepted", {{"request_id", request_id}, {"provider", provider}, {"channel", route},
                                  {"bill_id", bill_id},
                                  {"kind", kind}, {"outcome", to_string(applied->outcome)},
                                  {"status", applied->status}, {"notes", verified->notes},
                                  {"latency_ms", elapsed_ms()}});
    const gateways::Reply reply = gw->success();
    co_return make_response(req, static_cast<unsigned>(reply.status), reply.content_type, reply.body);
}

awaitable<Response> Service::api(const Request& req, const RuntimePtr& rt, std::string_view path,
                                 std::string_view query_text)
{
    (void)rt;
    Query query;
    std::string repeated;
    if (!parse_query(query_text, query, repeated)) {
        co_return api_error(req, 400, "invalid_argument", "the query string is not valid percent-encoding");
    }
    if (!repeated.empty()) {
        co_return api_error(req, 400, "invalid_argument", "query parameter given more than once", repeated);
    }
    const auto method = req.method();

    if (path == "/v1/bills") {
        if (method == http::verb::post) {
            if (auto bad = unknown_param(req, query, {})) {
                co_return std::move(*bad);
            }
            Response res = co_await create_bill(req);
            co_return res;
        }
        if (method != http::verb::get) {
            co_return method_not_allowed(req, "GET, HEAD, POST");
        }
        if (auto bad = unknown_param(
                req, query, {"status", "provider", "customer_id", "updated_from", "updated_to", "limit", "cursor"})) {
            co_return std::move(*bad);
        }
        BillFilter filter;
        for (const char* key : {"status", "provider", "customer_id", "cursor"}) {
            auto it = query.find(key);
            if (it != query.end() && it->second.empty() && std::string_view(key) != "cursor") {
                // A filter built from an empty variable must not quietly become no filter.
                co_return api_error(req, 400, "invalid_argument", "must not be empty; leave it out to list all",
                                    key);
            }
            if (it != query.end()) {
                std::string& dst = std::string_view(key) == "status"     ? filter.status
                                   : std::string_view(key) == "provider" ? filter.provider
                                   : std::string_view(key) == "cursor"   ? filter.cursor
                                                                         : filter.customer_id;
                dst = it->second;
            }
        }
        if (!filter.status.empty() && filter.status != "PENDING" && filter.status != "PAID" &&
            filter.status != "PARTIALLY_REFUNDED" && filter.status != "REFUNDED" && filter.status != "CLOSED") {
            co_return api_error(req, 400, "invalid_argument",
                                "must be PENDING, PAID, PARTIALLY_REFUNDED, REFUNDED or CLOSED", "status");
        }
        if (!filter.provider.empty() && filter.provider != "alipay" && filter.provider != "wechatpay") {
            co_return api_error(req, 400, "invalid_argument", "must be alipay or wechatpay", "provider");
        }
        bool has_from = false;
        bool has_to = false;
        auto from = parse_time_param(query, "updated_from", has_from);
        if (!from) {
            co_return time_error(req, query, "updated_from", "must be ");
        }
        filter.updated_from_ms = *from;
        auto to = parse_time_param(query, "updated_to", has_to);
        if (!to) {
            co_return time_error(req, query, "updated_to", "must be ");
        }
        if (has_from && has_to && *to <= *from) {
            co_return api_error(req, 400, "invalid_argument", "must be later than updated_from", "updated_to");
        }
        filter.updated_to_ms = *to;
        auto limit = parse_limit(query, 50, 500);
        if (!limit) {
            co_return api_error(req, 400, "invalid_argument", "must be an integer from 1 to 500", "limit");
        }
        filter.limit = *limit;
        Result<Page> page = co_await deps_.store.list_bills(std::move(filter));
        if (!page) {
            if (page.error() == errc::invalid_argument) {  // the only argument left unchecked
                co_return api_error(req, 400, "invalid_argument", "not a cursor returned by this API", "cursor");
            }
            co_return store_error(req, page.error());
        }
        co_return make_response(req, 200, "application/json", page_json("bills", *page));
    }

    constexpr std::string_view kBill = "/v1/bills/";
    constexpr std::string_view kQuery = "/query";
    if (path.starts_with(kBill) && path.size() > kBill.size() + kQuery.size() && path.ends_with(kQuery)) {
        // Ask the providers about this bill at the next sweep (active queries).
        if (method != http::verb::post) {
            co_return method_not_allowed(req, "POST");
        }
        if (auto bad = unknown_param(req, query, {})) {
            co_return std::move(*bad);
        }
        std::string id;
        std::string_view raw = path.substr(kBill.size());
        raw.remove_suffix(kQuery.size());
        if (!percent_decode(raw, id) || !valid_bill_id(id)) {
            co_return api_error(req, 400, "invalid_argument", "not a valid bill id", "id");
        }
        if (deps_.queries == nullptr || !rt || !rt->config->provider_query.enabled) {
            co_return api_error(req, 409, "conflict",
                                "active queries are off: the configuration has no provider_query section");
        }
        Result<std::string> queued = co_await deps_.queries->query_now(id);
        if (!queued) {
            if (queued.error() == errc::not_found) {
                co_return api_error(req, 404, "not_found", "no bill with this id");
            }
            if (queued.error() == errc::conflict) {
                co_return api_error(req, 409, "conflict",
                                    "the bill is settled, or was created too long ago (provider_query until_s + "
                                    "max_gap_s): a provider query would change nothing");
            }
            co_return store_error(req, queued.error());
        }
        co_return make_response(req, 202, "application/json", std::move(*queued));
    }
    if (path.starts_with(kBill)) {
        if (method != http::verb::get) {
            co_return method_not_allowed(req, "GET, HEAD");
        }
        if (auto bad = unknown_param(req, query, {})) {
            co_return std::move(*bad);
        }
        std::string id;
        if (!percent_decode(path.substr(kBill.size()), id) || !valid_bill_id(id)) {
            co_return api_error(req, 400, "invalid_argument", "not a valid bill id", "id");
        }
        Result<std::optional<BillView>> view = co_await deps_.store.get_bill(id);
        if (!view) {
            co_return store_error(req, view.error());
        }
        if (!*view) {
            co_return api_error(req, 404, "not_found", "no bill with this id");
        }
        co_return make_response(req, 200, "application/json", bill_with_events(**view));
    }

    if (path == "/v1/events" || path == "/v1/anomalies") {
        if (method != http::verb::get) {
            co_return method_not_allowed(req, "GET, HEAD");
        }
        if (auto bad = unknown_param(req, query, {"after", "limit"})) {
            co_return std::move(*bad);
        }
        auto limit = parse_limit(query, 100, 1000);
        if (!limit) {
            co_return api_error(req, 400, "invalid_argument", "must be an integer from 1 to 1000", "limit");
        }
        const std::string after = query.count("after") ? query["after"] : std::string();
        const bool events = path == "/v1/events";
        // Two statements, not `events ? co_await a : co_await b`: g++ 12 destroys the result of that
        // conditional twice (free(): invalid pointer on GET /v1/events; STYLE.md §3).
        Result<Page> page = make_error_code(errc::internal);
        if (events) {
            page = co_await deps_.store.list_events(after, *limit);
        } else {
            page = co_await deps_.store.list_anomalies(after, *limit);
        }
        if (!page) {
            if (page.error() == errc::invalid_argument) {
                co_return api_error(req, 400, "invalid_argument", "not a cursor returned by this API", "after");
            }
            co_return store_error(req, page.error());
        }
        co_return make_response(req, 200, "application/json", page_json(events ? "events" : "anomalies", *page));
    }

    if (path == "/v1/reconciliation/summary") {
        if (method != http::verb::get) {
            co_return method_not_allowed(req, "GET, HEAD");
        }
        if (auto bad = unknown_param(req, query, {"from", "to"})) {
            co_return std::move(*bad);
        }
        bool has_from = false;
        bool has_to = false;
        auto from = parse_time_param(query, "from", has_from);
        auto to = parse_time_param(query, "to", has_to);
        if (!from || !has_from) {
            co_return time_error(req, query, "from", "required, ");
        }
        if (!to || !has_to) {
            co_return time_error(req, query, "to", "required, ");
        }
        if (*to <= *from) {
            co_return api_error(req, 400, "invalid_argument", "must be later than from", "to");
        }
        Result<std::string> summary = co_await deps_.store.summary(*from, *to);
        if (!summary) {
            co_return store_error(req, summary.error());
        }
        co_return make_response(req, 200, "application/json", std::move(*summary));
    }

    constexpr std::string_view kEvent = "/v1/events/";
    if (path.starts_with(kEvent) || path.starts_with("/v1/deliveries")) {
        if (deps_.deliveries == nullptr) {
            co_return api_error(req, 404, "not_found", "CRM delivery is not configured (crm.url)");
        }
        Result<std::string> doc = make_error_code(errc::not_found);
        if (path.starts_with(kEvent)) {
            std::string_view rest = path.substr(kEvent.size());
            const bool redeliver = rest.ends_with("/redeliver");
            if (redeliver) {
                rest.remove_suffix(std::string_view("/redeliver").size());
            }
            std::string id;
            if (!percent_decode(rest, id) || id.empty() || id.find('/') != std::string::npos) {
                co_return api_error(req, 400, "invalid_argument", "not a valid event id", "id");
            }
            if (redeliver != (method == http::verb::post) || (!redeliver && method != http::verb::get)) {
                co_return method_not_allowed(req, redeliver ? "POST" : "GET, HEAD");
            }
            if (auto bad = unknown_param(req, query, {})) {
                co_return std::move(*bad);
            }
            if (redeliver) {
                doc = co_await deps_.deliveries->redeliver(id);
            } else {
                Result<std::optional<std::string>> ev = co_await deps_.deliveries->event(id);
                if (!ev) {
                    doc = ev.error();
                } else if (!*ev) {
                    doc = make_error_code(errc::not_found);
                } else {
                    doc = std::move(**ev);
                }
            }
        } else if (path == "/v1/deliveries" && method == http::verb::get) {
            if (auto bad = unknown_param(req, query, {"state", "limit", "cursor"})) {
                co_return std::move(*bad);
            }
            const std::string state = query.count("state") ? query["state"] : std::string("pending");
            if (state != "pending" && state != "retrying" && state != "delivered" && state != "dead") {
                co_return api_error(req, 400, "invalid_argument", "must be pending, retrying, delivered or dead",
                                    "state");
            }
            auto limit = parse_limit(query, 100, DeliveryAdmin::kMaxLimit);
            if (!limit) {
                co_return api_error(req, 400, "invalid_argument",
                                    "must be an integer from 1 to " + std::to_string(DeliveryAdmin::kMaxLimit),
                                    "limit");
            }
            const std::string cursor = query.count("cursor") ? query["cursor"] : std::string();
            doc = co_await deps_.deliveries->deliveries(state, *limit, cursor);
        } else if (path == "/v1/deliveries/recover" && method == http::verb::post) {
            if (auto bad = unknown_param(req, query, {"since", "state"})) {
                co_return std::move(*bad);
            }
            bool has_since = false;
            auto since = parse_time_param(query, "since", has_since);
            if (!since || !has_since) {
                co_return time_error(req, query, "since", "required, ");
            }
            std::string state = query.count("state") ? query["state"] : std::string("dead");
            if (state != "dead" && state != "retrying") {
                co_return api_error(req, 400, "invalid_argument", "must be dead or retrying", "state");
            }
            doc = co_await deps_.deliveries->recover(*since, std::move(state));
        } else if (path == "/v1/deliveries") {
            co_return method_not_allowed(req, "GET, HEAD");
        } else if (path == "/v1/deliveries/recover") {
            co_return method_not_allowed(req, "POST");
        } else {
            co_return api_error(req, 404, "not_found", "no such endpoint");
        }
        if (!doc) {
            if (doc.error() == errc::not_found) {
                co_return api_error(req, 404, "not_found", "no event with this id");
            }
            if (doc.error() == errc::conflict) {  // only redeliver
                co_return api_error(req, 409, "conflict",
                                    "the event is being delivered right now; redeliver it after this attempt");
            }
            if (doc.error() == errc::invalid_argument) {  // state and limit were checked above
                co_return api_error(req, 400, "invalid_argument", "not a cursor returned by this API", "cursor");
            }
            co_return store_error(req, doc.error());
        }
        co_return make_response(req, 200, "application/json", std::move(*doc));
    }
    co_return api_error(req, 404, "not_found", "no such endpoint");
}

awaitable<Response> Service::create_bill(const Request& req)
{
    rapidjson::Document doc;
    // Every string is copied verbatim into the bill's JSON (events, GET, lists): invalid UTF-8
    // accepted here would make each of them invalid JSON for the CRM.
    const rapidjson::ParseResult parsed = parse_bounded(doc, req.body(), kMaxBodyNesting);
    if (parsed.Code() == rapidjson::kParseErrorStringInvalidEncoding) {
        co_return api_error(req, 400, "invalid_argument", "the body is not valid UTF-8");
    }
    if (parsed.Code() == rapidjson::kParseErrorTermination) {
        co_return api_error(req, 400, "invalid_argument", "the body nests deeper than 32 levels");
    }
    if (parsed.IsError() || !doc.IsObject()) {
        co_return api_error(req, 400, "invalid_argument", "the body must be a JSON object");
    }
    static constexpr std::string_view kKnown[] = {"id", "amount_fen", "currency", "customer_id",
                                                  "description", "expires_at", "metadata"};
    bool seen[std::size(kKnown)] = {};
    for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
        const std::string_view name(it->name.GetString(), it->name.GetStringLength());
        const auto known = std::find(std::begin(kKnown), std::end(kKnown), name);
        if (known == std::end(kKnown)) {
            co_return api_error(req, 400, "invalid_argument", "unknown field", name);
        }
        // JSON parsers disagree on which of two equal keys counts: the CRM's and ours must not.
        if (std::exchange(seen[known - std::begin(kKnown)], true)) {
            co_return api_error(req, 400, "invalid_argument", "given more than once", name);
        }
    }
    // An optional field may be null: the same as leaving it out (a bill's own JSON writes null).
    const auto given = [&doc](const char* name) { return doc.HasMember(name) && !doc[name].IsNull(); };
    NewBill bill;
    // Lengths in characters (code points; the body is valid UTF-8 by now), not bytes.
    auto string_field = [&doc, &given](const char* name, std::string& out, std::size_t min, std::size_t max) -> bool {
        if (!given(name)) {
            return min == 0;
        }
        const auto& v = doc[name];
        if (!v.IsString()) {
            return false;
        }
        const std::string_view text(v.GetString(), v.GetStringLength());
        const auto chars = static_cast<std::size_t>(
            std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
        if (chars < min || chars > max) {
            return false;
        }
        out.assign(text);
        return true;
    };
    if (!string_field("id", bill.id, 1, 64) || !valid_bill_id(bill.id)) {
        co_return api_error(req, 400, "invalid_argument",
                            "required; 1 to 64 characters from A-Z a-z 0-9 _ - . | *", "id");
    }
    if (!doc.HasMember("amount_fen") || !doc["amount_fen"].IsInt64() || doc["amount_fen"].GetInt64() <= 0 ||
        doc["amount_fen"].GetInt64() > kMaxAmountFen) {
        co_return api_error(req, 400, "invalid_argument",
                            "required; a positive integer number of fen (no decimals), at most 10^12", "amount_fen");
    }
    bill.amount_fen = doc["amount_fen"].GetInt64();
    if (given("currency")) {
        if (!string_field("currency", bill.currency, 3, 3) || bill.currency != "CNY") {
            co_return api_error(req, 400, "invalid_argument", "must be \"CNY\" (the only currency supported)",
                                "currency");
        }
    }
    if (!string_field("customer_id", bill.customer_id, 1, 128)) {
        co_return api_error(req, 400, "invalid_argument", "required; a string of 1 to 128 characters", "customer_id");
    }
    // A customer id is matched exactly by GET /v1/bills?customer_id=: one made of blanks (a
    // template variable left empty, padded), or holding control characters, names no customer.
    if (!each_code_point(bill.customer_id, [](char32_t cp) { return !is_control(cp); })) {
        co_return api_error(req, 400, "invalid_argument",
                            "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)", "customer_id");
    }
    if (each_code_point(bill.customer_id, [](char32_t cp) { return is_space(cp); })) {
        co_return api_error(req, 400, "invalid_argument", "must not be only whitespace", "customer_id");
    }
    if (!string_field("description", bill.description, 0, 256)) {
        co_return api_error(req, 400, "invalid_argument", "a string of at most 256 characters", "description");
    }
    if (!each_code_point(bill.description,
                         [](char32_t cp) { return !is_control(cp) || cp == '\t' || cp == '\n' || cp == '\r'; })) {
        co_return api_error(req, 400, "invalid_argument",
                            "must not contain control characters other than tab, line feed and carriage return",
                            "description");
    }
    if (given("expires_at")) {
        std::string text;
        std::optional<std::int64_t> ms;
        if (string_field("expires_at", text, 1, 64)) {
            ms = parse_rfc3339(text);
        }
        // Stored and sent as UTC: its year must still have four digits there.
        constexpr std::int64_t kYear0000 = -62'167'219'200'000;  // 0000-01-01T00:00:00Z
        constexpr std::int64_t kYear10000 = 253'402'300'800'000;  // 10000-01-01T00:00:00Z
        if (!ms || *ms < kYear0000 || *ms >= kYear10000) {
            co_return api_error(req, 400, "invalid_argument", "an RFC 3339 time (years 0000 to 9999 in UTC)",
                                "expires_at");
        }
        bill.expires_at = format_rfc3339(*ms);
    }
    // An empty object says what no metadata says: the two register the same bill (null and
    // absent already did), so a retry that spells it the other way is not a 409.
    if (given("metadata") && !(doc["metadata"].IsObject() && doc["metadata"].ObjectEmpty())) {
        if (!doc["metadata"].IsObject()) {
            co_return api_error(req, 400, "invalid_argument", "a JSON object", "metadata");
        }
        // Metadata is canonicalised and embedded in events by recursive code: bounded here.
        if (nesting(doc["metadata"], kMaxMetadataNesting) > kMaxMetadataNesting) {
            co_return api_error(req, 400, "invalid_argument", "nested at most 16 levels deep", "metadata");
        }
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        doc["metadata"].Accept(w);
        if (buf.GetSize() > 4096) {
            co_return api_error(req, 400, "invalid_argument", "at most 4096 bytes as compact JSON", "metadata");
        }
        bill.metadata_json.assign(buf.GetString(), buf.GetSize());
    }
    const std::string id = bill.id;
    const bool without_metadata = bill.metadata_json.empty();
    NewBill retry = bill;
    Result<RegisterResult> result = co_await deps_.store.register_bill(std::move(bill));
    if (!result) {
        co_return store_error(req, result.error());
    }
    if (result->outcome == RegisterOutcome::conflict && without_metadata && has_empty_metadata(result->bill_json)) {
        // A bill registered with "metadata":{} before {} meant none is stored with it: the same
        // request (or one without metadata) is the same bill, as it is for bills registered now.
        retry.metadata_json = "{}";
        result = co_await deps_.store.register_bill(std::move(retry));
        if (!result) {
            co_return store_error(req, result.error());
        }
    }
    switch (result->outcome) {
        case RegisterOutcome::created: {
            // Orphans replayed at registration are notifications applied now: their anomalies count
            // like those of notifications applied as they arrive.
            const std::string request_id{req["X-Request-Id"]};
            for (const std::string& kind : result->anomalies) {
                instruments().anomalies.with({{"kind", kind}}).inc();
                log::warning("bill.orphan_anomaly", {{"request_id", request_id}, {"bill_id", id}, {"anomaly", kind}});
            }
            log::info("bill.registered",
                      {{"request_id", request_id}, {"bill_id", id}, {"orphans_applied", result->orphans_applied}});
            co_return make_response(req, 201, "application/json", std::move(result->bill_json));
        }
        case RegisterOutcome::identical:
            co_return make_response(req, 200, "application/json", std::move(result->bill_json));
        case RegisterOutcome::conflict:
            break;
    }
    co_return make_response(req, 409, "application/json",
                            "{\"error\":{\"code\":\"conflict\",\"message\":\"a bill with this id exists with other "
                            "content\",\"field\":\"id\"},\"bill\":" +
                                result->bill_json + "}");
}

}  // namespace paybridge::webhooks
