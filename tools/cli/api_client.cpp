#include "tools/cli/api_client.hpp"

#include <rapidjson/document.h>

#include <cstdlib>

namespace paybridge::cli {

namespace {

std::string member(const rapidjson::Value& obj, const char* key)
{
    if (!obj.IsObject()) {
        return {};
    }
    const auto it = obj.FindMember(key);
    if (it == obj.MemberEnd() || !it->value.IsString()) {
        return {};
    }
    return std::string(it->value.GetString(), it->value.GetStringLength());
}

std::int64_t integer(const rapidjson::Value& obj, const char* key)
{
    const auto it = obj.FindMember(key);
    return it != obj.MemberEnd() && it->value.IsInt64() ? it->value.GetInt64() : 0;
}

}  // namespace

std::string url_encode(std::string_view value)
{
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : value) {
        const auto b = static_cast<unsigned char>(c);
        if ((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' ||
            b == '_' || b == '.' || b == '~') {
            out += c;
        } else {
            out += '%';
            out += kHex[b >> 4];
            out += kHex[b & 0xF];
        }
    }
    return out;
}

Expected<ApiEndpoint> resolve_api(const Args& args, bool need_token)
{
    ApiEndpoint api;
    std::optional<std::string> url = args.value("url");
    std::optional<std::string> token = args.value("token");
    if (!token) {
        if (const char* env = std::getenv("PAYBRIDGE_TOKEN"); env != nullptr && *env != '\0') {
            token = env;
        }
    }
    std::optional<CliConfig> cfg;
    std::optional<Failure> config_problem;
    if (!url || (need_token && !token)) {
        Expected<CliConfig> loaded = locate_config(args.value("config"));
        if (loaded) {
            cfg = std::move(*loaded);
        } else {
            config_problem = loaded.error();
        }
    }
    // An explicit --config that cannot be read is an error even when everything else is given.
    if (config_problem && args.value("config")) {
        return *config_problem;
    }
    const std::string base = url ? *url : cfg ? cfg->base_url() : std::string("http://127.0.0.1:8080");
    Expected<Url> parsed = parse_url(base);
    if (!parsed) {
        return usage_error("--url: " + parsed.error().message);
    }
    api.base = *parsed;
    if (need_token) {
        if (token) {
            api.token = *token;
        } else if (cfg && !cfg->api_token_refs.empty()) {
            Expected<std::string> t = cfg->secret(cfg->api_token_refs.front());
            if (!t) {
                return t.error();
            }
            api.token = *t;
        } else if (cfg) {
            return local_error(cfg->path.string() +
                               " has no api_tokens; pass --token TOKEN or set PAYBRIDGE_TOKEN");
        } else {
            return local_error(
                "no API token: pass --token TOKEN, set PAYBRIDGE_TOKEN, or point --config at a "
                "configuration with api_tokens (" +
                config_problem->message + ")");
        }
    }
    return api;
}

Expected<HttpResponse> api_call(const ApiEndpoint& api, std::string method, std::string target,
                                std::string body)
{
    HttpRequest req;
    req.method = std::move(method);
    req.target = with_target(api.base, target).target;
    req.headers.emplace_back("Accept", "application/json");
    req.headers.emplace_back("User-Agent", "paybridge-cli/" PAYBRIDGE_VERSION);
    if (!api.token.empty()) {
        req.headers.emplace_back("Authorization", "Bearer " + api.token);
    }
    if (!body.empty()) {
        req.headers.emplace_back("Content-Type", "application/json");
        req.body = std::move(body);
    }
    Expected<HttpResponse> res = send_blocking(api.base, req);
    if (!res) {
        return daemon_hint(res.error());
    }
    return res;
}

Failure api_failure(const HttpResponse& res, std::string_view what)
{
    std::string message = std::string(what) + ": " + std::to_string(res.status);
    rapidjson::Document doc;
    doc.Parse(res.body.data(), res.body.size());
    if (!doc.HasParseError() && doc.IsObject() && doc.HasMember("error") && doc["error"].IsObject()) {
        const auto& e = doc["error"];
        const std::string field = member(e, "field");
        message +=
            " " + member(e, "code") + ": " + (field.empty() ? "" : field + ": ") + member(e, "message");
    } else if (!res.body.empty() && res.body.size() < 300) {
        std::string body = res.body;
        while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) {
            body.pop_back();
        }
        message += " " + res.reason + ": " + body;
    } else {
        message += " " + res.reason;
    }
    if (res.status == 401) {
        message +=
            " (the token was refused: check --token, $PAYBRIDGE_TOKEN or api_tokens in the configuration)";
    } else if (res.status == 503) {
        message += " (is redis-server running and reachable from paybridged? see GET /readyz)";
    }
    return Failure{Exit::remote, std::move(message)};
}

std::optional<BillSummary> parse_bill(std::string_view json)
{
    rapidjson::Document doc;
    doc.Parse(json.data(), json.size());
    if (doc.HasParseError() || !doc.IsObject() || !doc.HasMember("id") || !doc.HasMember("amount_fen")) {
        return std::nullopt;
    }
    BillSummary bill;
    bill.id = member(doc, "id");
    bill.status = member(doc, "status");
    bill.amount_fen = integer(doc, "amount_fen");
    bill.paid_fen = integer(doc, "paid_fen");
    bill.refunded_fen = integer(doc, "refunded_fen");
    bill.provider = member(doc, "provider");
    bill.provider_txn_id = member(doc, "provider_txn_id");
    return bill;
}

Expected<std::optional<BillSummary>> fetch_bill(const ApiEndpoint& api, const std::string& id)
{
    Expected<HttpResponse> res = api_call(api, "GET", "/v1/bills/" + url_encode(id));
    if (!res) {
        return res.error();
    }
    if (res->status == 404) {
        return std::optional<BillSummary>{};
    }
    if (!res->ok()) {
        return api_failure(*res, "GET /v1/bills/" + id + " failed");
    }
    std::optional<BillSummary> bill = parse_bill(res->body);
    if (!bill) {
        return Failure{Exit::remote, "GET /v1/bills/" + id + " answered something that is not a bill"};
    }
    return bill;
}

}  // namespace paybridge::cli
