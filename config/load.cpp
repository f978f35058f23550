#include "config/load.hpp"

#include "config/detail/addresses.hpp"
#include "config/detail/files.hpp"
#include "config/detail/problems.hpp"
#include "config/detail/schema_check.hpp"
#include "core/error.hpp"
#include "gateways/crypto/crypto.hpp"

#include <openssl/evp.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>

namespace paybridge::config {

namespace {

using detail::child;
using detail::Problems;
using rapidjson::Document;
using rapidjson::SizeType;
using rapidjson::Value;

constexpr std::size_t kMaxConfigBytes = 1024 * 1024;
constexpr std::size_t kMaxPemBytes = 1024 * 1024;  // a CA bundle can be a few hundred KiB
constexpr std::size_t kWechatKeyBytes = 32;
constexpr std::string_view kPublicKeyIdPrefix = "PUB_KEY_ID_";
constexpr std::string_view kWebhookSecretPrefix = "whsec_";

std::string_view str(const Value& v) { return {v.GetString(), v.GetStringLength()}; }

// Standard Webhooks: "whsec_" + base64 of the HMAC key.
std::string check_webhook_secret(std::string_view secret)
{
    if (!secret.starts_with(kWebhookSecretPrefix)) {
        return "must start with \"whsec_\" (a Standard Webhooks secret)";
    }
    const std::string_view encoded = secret.substr(kWebhookSecretPrefix.size());
    if (encoded.empty() || encoded.size() % 4 != 0 || encoded.size() > 4096) {
        return "the part after \"whsec_\" must be base64";
    }
    std::string decoded(encoded.size() / 4 * 3, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(decoded.data()),
                                  reinterpret_cast<const unsigned char*>(encoded.data()),
                                  static_cast<int>(encoded.size()));
    // EVP_DecodeBlock skips leading/trailing blanks, which base64 forbids inside a secret.
    const bool blanks = encoded.find_first_of(" \t\r\n") != std::string_view::npos;
    if (n <= 0 || blanks) {
        return "the part after \"whsec_\" must be base64";
    }
    return {};
}

// ---------------------------------------------------------------------------------------------
// Phase 4: conversion and semantic checks

class Parser {
public:
    Parser(const SecretSource& secrets, std::filesystem::path base_dir, Problems& problems)
        : secrets_(secrets), base_dir_(std::move(base_dir)), problems_(problems)
    {
    }

    void parse(const Value& root, Config& cfg)
    {
        if (!root.IsObject()) {
            return;
        }
        const std::string r;
        if (const Value* v = string_at(root, r, "listen")) {
            listen_ok_ = listen_endpoint(*v, child(r, "listen"), cfg.listen);
        } else {
            listen_ok_ = !present(root, "listen");
        }
        if (const Value* v = object_at(root, r, "tls")) {
            parse_tls(*v, child(r, "tls"), cfg);
        }
        integer(root, r, "workers", cfg.workers);
        if (const Value* v = object_at(root, r, "limits")) {
            parse_limits(*v, child(r, "limits"), cfg.limits);
        }
        if (const Value* v = object_at(root, r, "redis")) {
            parse_redis(*v, child(r, "redis"), cfg.redis);
        }
        feed_cursor_fits(cfg);
        if (const Value* v = array_at(root, r, "api_tokens")) {
            parse_api_tokens(*v, child(r, "api_tokens"), cfg.api_tokens);
        }
        if (const Value* v = object_at(root, r, "alipay")) {
            if (const Value* apps = array_at(*v, "/alipay", "apps")) {
                parse_alipay(*apps, "/alipay/apps", cfg.alipay_apps);
            }
        }
        if (const Value* v = object_at(root, r, "wechatpay")) {
            if (const Value* merchants = array_at(*v, "/wechatpay", "merchants")) {
                parse_wechat(*merchants, "/wechatpay/merchants", cfg.wechat_merchants);
            }
        }
        if (const Value* v = object_at(root, r, "crm")) {
            parse_crm(*v, child(r, "crm"), cfg.crm);
        }
        if (const Value* v = object_at(root, r, "provider_query")) {
            parse_provider_query(*v, child(r, "provider_query"), cfg, cfg.provider_query);
        }
        if (!cfg.provider_query.enabled) {
            for (const AlipayApp& app : cfg.alipay_apps) {
                if (app.download_certificates) {
                    // Only query answers name Alipay's certificate: without queries nothing is downloaded.
                    problems_.warn(child(app.pointer, "download_certificates"),
                                   "has no effect without provider_query (only query answers name a re-issued "
                                   "Alipay certificate)");
                }
            }
        }
        if (const Value* v = object_at(root, r, "log")) {
            if (const Value* level = string_at(*v, "/log", "level")) {
                if (!log::parse_level(str(*level), cfg.log_level)) {
                    problems_.note("/log/level", "must be one of \"debug\", \"info\", \"warning\", \"error\"");
                }
            }
        }
    }

private:
    // --- access to values that are present and passed the earlier phases

    static bool present(const Value& obj, const char* key) { return obj.IsObject() && obj.HasMember(key); }

    const Value* at(const Value& obj, const std::string& ptr, const char* key) const
    {
        if (!obj.IsObject()) {
            return nullptr;
        }
        auto it = obj.FindMember(key);
        if (it == obj.MemberEnd() || problems_.is_bad(child(ptr, key))) {
            return nullptr;
        }
        return &it->value;
    }
    const Value* string_at(const Value& obj, const std::string& ptr, const char* key) const
    {
        const Value* v = at(obj, ptr, key);
        return v != nullptr && v->IsString() ? v : nullptr;
    }
    const Value* object_at(const Value& obj, const std::string& ptr, const char* key) const
    {
        const Value* v = at(obj, ptr, key);
        return v != nullptr && v->IsObject() ? v : nullptr;
    }
    const Value* array_at(const Value& obj, const std::string& ptr, const char* key) const
    {
        const Value* v = at(obj, ptr, key);
        return v != nullptr && v->IsArray() ? v : nullptr;
    }

    void text(const Value& obj, const std::string& ptr, const char* key, std::string& out) const
    {
        if (const Value* v = string_at(obj, ptr, key)) {
            out = std::string(str(*v));
        }
    }

    template <class Int>
    void integer(const Value& obj, const std::string& ptr, const char* key, Int& out) const
    {
        const Value* v = at(obj, ptr, key);
        if (v == nullptr || !v->IsInt64()) {
            return;
        }
        const std::int64_t n = v->GetInt64();
        // The schema bounds every integer far inside these limits; this only guards the cast.
        if (std::in_range<Int>(n)) {
            out = static_cast<Int>(n);
        }
    }

    template <class Duration>
    void duration(const Value& obj, const std::string& ptr, const char* key, Duration& out) const
    {
        std::int64_t n = 0;
        integer(obj, ptr, key, n);
        if (n > 0) {
            out = Duration{n};
        }
    }

    bool endpoint(const Value& v, const std::string& ptr, Endpoint& out)
    {
        if (std::string why = detail::parse_endpoint(str(v), out); !why.empty()) {
            problems_.note(ptr, why);
            return false;
        }
        return true;
    }

    /// An address to listen on: an IP literal (a host name would have to be resolved, to one
    /// address of several, at every start).
    bool listen_endpoint(const Value& v, const std::string& ptr, Endpoint& out)
    {
        if (!endpoint(v, ptr, out)) {
            return false;
        }
        if (!detail::is_ip_literal(out.host)) {
            problems_.note(ptr, "the host \"" + out.host +
                                    "\" is not an IP address; listen on an address such as 127.0.0.1, 0.0.0.0 or [::1]");
            return false;
        }
        return true;
    }

    std::string shown_path(const Value& v) const { return std::string(str(v)); }

    std::filesystem::path resolve(const Value& v) const
    {
        const std::filesystem::path p(std::string(str(v)));
        return (p.is_absolute() ? p : base_dir_ / p).lexically_normal();
    }

    /// The content of the file named by the string `v`, or nullopt with a problem recorded.
    /// mode: set to the file's permission bits when it was read.
    std::optional<std::string> file_content(const Value& v, const std::string& ptr, unsigned* mode = nullptr)
    {
        detail::FileContent file = detail::read_file(resolve(v), kMaxPemBytes);
        if (mode != nullptr) {
            *mode = file.mode;
        }
        if (!file.content) {
            problems_.note(ptr, "cannot read " + shown_path(v) + ": " + file.error);
            return std::nullopt;
        }
        if (file.content->empty()) {
            problems_.note(ptr, shown_path(v) + " is empty");
            return std::nullopt;
        }
        if (std::string warning = detail::foreign_writable_warning(file, shown_path(v));
            !warning.empty()) {
            problems_.warn(ptr, warning);
        }
        return std::move(file.content);
    }

    void pem(const Value& obj, const std::string& ptr, const char* key, std::string& out)
    {
        if (const Value* v = string_at(obj, ptr, key)) {
            if (std::optional<std::string> content = file_content(*v, child(ptr, key))) {
                out = std::move(*content);
            }
        }
    }

    /// For files other code opens later: stored absolute, checked readable now.
    /// secret: the file holds a private key (warned about when every user may read it).
    void readable_path(const Value& obj, const std::string& ptr, const char* key, std::string& out,
                       bool secret = false)
    {
        const Value* v = string_at(obj, ptr, key);
        if (v == nullptr) {
            return;
        }
        unsigned mode = 0;
        if (file_content(*v, child(ptr, key), &mode)) {
            out = resolve(*v).string();
            if (const std::string warning = detail::world_readable_warning(mode, shown_path(*v));
                secret && !warning.empty()) {
                problems_.warn(child(ptr, key), warning);
            }
        }
    }

    /// A file of PEM certificates to trust (the CRM's CA): stored absolute, and checked now to
    /// hold at least one certificate OpenSSL can read, as the CRM client will need at its start.
    void ca_bundle(const Value& obj, const std::string& ptr, const char* key, std::string& out)
    {
        const Value* v = string_at(obj, ptr, key);
        if (v == nullptr) {
            return;
        }
        std::optional<std::string> content = file_content(*v, child(ptr, key));
        if (!content) {
            return;
        }
        if (const auto certificates = crypto::load_certificates(*content); !certificates) {
            problems_.note(child(ptr, key),
                           shown_path(*v) + (certificates.error() == errc::not_found
                                                 ? " holds no PEM certificate"
                                                 : " holds a PEM certificate block that does not read (damaged "
                                                   "base64 or DER), so OpenSSL would refuse the whole file"));
            return;
        }
        out = resolve(*v).string();
    }

    std::optional<std::string> secret(const Value& v, const std::string& ptr)
    {
        SecretLookup found = secrets_.resolve(str(v), base_dir_);
        if (!found) {
            problems_.note(ptr, found.problem);
            return std::nullopt;
        }
        for (const std::string& warning : found.warnings) {
            problems_.warn(ptr, warning);
        }
        return std::move(found.value);
    }

    std::optional<std::string> secret(const Value& obj, const std::string& ptr, const char* key)
    {
        if (const Value* v = string_at(obj, ptr, key)) {
            return secret(*v, child(ptr, key));
        }
        return std::nullopt;
    }

    /// Records a problem when `value` was already used at another index of the same list.
    void unique(std::map<std::string, std::string>& seen, const std::string& value, const std::string& ptr)
    {
        if (value.empty()) {
            return;
        }
        auto [it, inserted] = seen.emplace(value, ptr);
        if (!inserted) {
            problems_.note(ptr, "duplicates " + it->second);
        }
    }

    // --- sections

    void parse_tls(const Value& v, const std::string& ptr, Config& cfg)
    {
        TlsListenConfig tls;
        bool complete = true;
        if (const Value* listen = string_at(v, ptr, "listen")) {
            if (listen_endpoint(*listen, child(ptr, "listen"), tls.listen) && listen_ok_) {
                // A wildcard address takes the port on every interface.
                auto wildcard = [](const std::string& host) { return host == "0.0.0.0" || host == "::"; };
                const bool same = tls.listen.port == cfg.listen.port &&
                                  (tls.listen.host == cfg.listen.host || wildcard(tls.listen.host) ||
                                   wildcard(cfg.listen.host));
                if (same) {
                    problems_.note(child(ptr, "listen"), "must not be the same address and port as /listen");
                }
            } else {
                complete = false;
            }
        } else {
            complete = false;
        }
        readable_path(v, ptr, "cert_file", tls.cert_file);
        readable_path(v, ptr, "key_file", tls.key_file, true);
        if (const Value* routes = array_at(v, ptr, "routes")) {
            tls.routes = 0;
            for (const Value& r : routes->GetArray()) {
                const std::string_view name = r.IsString() ? std::string_view(r.GetString(), r.GetStringLength()) : "";
                tls.routes |= name == "notify" ? kRoutesNotify
                              : name == "api"  ? kRoutesApi
                              : name == "health" ? kRoutesHealth
                              : name == "metrics" ? kRoutesMetrics
                                                  : 0u;  // the schema allows no other
            }
        }
        if (complete && !tls.cert_file.empty() && !tls.key_file.empty()) {
            cfg.tls = std::move(tls);
        }
    }

    // The cursor of GET /v1/events and /v1/anomalies holds every shard's exact position (about 3
    // characters a shard in a busy system, up to 8 for one idle for months: store/redis_bill_store.cpp)
    // and comes back in the request line, so the header limit must leave it room. Not a problem
    // (a deployment cannot change its shard count, and this limits the feeds alone), but said.
    void feed_cursor_fits(const Config& cfg)
    {
        constexpr std::size_t kPerShard = 8;
        constexpr std::size_t kRestOfRequest = 1024;  // method, path, Host, Authorization...
        const std::size_t needed = static_cast<std::size_t>(std::max(cfg.redis.shards, 0)) * kPerShard + kRestOfRequest;
        if (needed > cfg.limits.max_header_bytes) {
            problems_.warn("/limits/max_header_bytes",
                           "with " + std::to_string(cfg.redis.shards) +
                               " redis.shards, a cursor of GET /v1/events or /v1/anomalies can take about " +
                               std::to_string(needed - kRestOfRequest) + " characters (8 a shard); set at least " +
                               std::to_string(needed) + ", and as much in any proxy in front, or such requests " +
                               "are refused (414/431)");
        }
    }

    void parse_limits(const Value& v, const std::string& ptr, HttpLimits& out)
    {
        integer(v, ptr, "max_header_bytes", out.max_header_bytes);
        integer(v, ptr, "max_body_bytes", out.max_body_bytes);
        duration(v, ptr, "read_timeout_ms", out.read_timeout);
        duration(v, ptr, "idle_timeout_ms", out.idle_timeout);
        duration(v, ptr, "write_timeout_ms", out.write_timeout);
        duration(v, ptr, "shutdown_grace_ms", out.shutdown_grace);
        integer(v, ptr, "max_connections", out.max_connections);
    }

    // An array of "host:port" strings, each a distinct address.
    void endpoints(const Value& v, const std::string& ptr, const char* key, std::vector<Endpoint>& out)
    {
        const Value* list = array_at(v, ptr, key);
        if (list == nullptr) {
            return;
        }
        std::map<std::string, std::string> seen;
        for (SizeType i = 0; i < list->Size(); ++i) {
            const std::string item = child(child(ptr, key), i);
            Endpoint node;
            if ((*list)[i].IsString() && endpoint((*list)[i], item, node)) {
                unique(seen, node.host + ":" + std::to_string(node.port), item);
                out.push_back(std::move(node));
            }
        }
    }

    void parse_redis(const Value& v, const std::string& ptr, RedisConfig& out)
    {
        if (const Value* url = string_at(v, ptr, "url")) {
            if (std::string why = detail::parse_redis_url(str(*url), out); !why.empty()) {
                problems_.note(child(ptr, "url"), why);
            }
        }
        if (std::optional<std::string> password = secret(v, ptr, "password")) {
            out.password = std::move(*password);
        }
        text(v, ptr, "key_prefix", out.key_prefix);
        integer(v, ptr, "shards", out.shards);
        duration(v, ptr, "request_timeout_ms", out.request_timeout);
        duration(v, ptr, "connect_timeout_ms", out.connect_timeout);
        integer(v, ptr, "wait_replicas", out.wait_replicas);
        duration(v, ptr, "wait_timeout_ms", out.wait_timeout);
        if (const Value* sentinel = object_at(v, ptr, "sentinel")) {
            const std::string sptr = child(ptr, "sentinel");
            text(*sentinel, sptr, "master", out.sentinel.master);
            text(*sentinel, sptr, "username", out.sentinel.username);
            if (std::optional<std::string> password = secret(*sentinel, sptr, "password")) {
                out.sentinel.password = std::move(*password);
            }
            if (!out.sentinel.username.empty() && !present(*sentinel, "password")) {
                problems_.note(child(sptr, "username"), "needs password (AUTH on the sentinels takes both)");
            }
            endpoints(*sentinel, sptr, "nodes", out.sentinel.nodes);
        }
        if (const Value* cluster = object_at(v, ptr, "cluster")) {
            const std::string cptr = child(ptr, "cluster");
            endpoints(*cluster, cptr, "nodes", out.cluster.nodes);
            if (present(v, "sentinel")) {
                problems_.note(cptr, "cannot be combined with sentinel (a cluster fails over by itself)");
            }
            if (out.db != 0) {
                problems_.note(child(ptr, "url"), "must name db 0 (or none) with cluster: Redis Cluster has only db 0");
            }
        }
        if (out.wait_replicas > 0 && out.wait_timeout * 2 > out.request_timeout) {
            // A replica confirmation (SET + WAIT on its own connection) must end well before that
            // connection's request deadline, or a replica outage reads as Redis being unreachable.
            problems_.note(child(ptr, "wait_timeout_ms"),
                           "must be at most half of request_timeout_ms (" +
                               std::to_string(out.request_timeout.count()) +
                               ") while wait_replicas > 0: a WAIT must end before its request deadline");
        }
    }

    /// The offset of the first byte that makes `t` not a b64token (RFC 6750 §2.1), or npos.
    static std::size_t token68_error(std::string_view t)
    {
        std::size_t i = 0;
        for (; i < t.size(); ++i) {
            const char c = t[i];
            const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                            c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
            if (!ok) {
                break;
            }
        }
        while (i < t.size() && t[i] == '=') {
            ++i;
        }
        return i == t.size() ? std::string_view::npos : i;
    }

    void parse_api_tokens(const Value& list, const std::string& ptr, std::vector<ApiToken>& out)
    {
        std::map<std::string, std::string> names;
        std::map<std::string, std::string> values;
        for (SizeType i = 0; i < list.Size(); ++i) {
            const std::string item = child(ptr, i);
            if (!list[i].IsObject() || problems_.is_bad(item)) {
                continue;
            }
            ApiToken token;
            text(list[i], item, "name", token.name);
            unique(names, token.name, child(item, "name"));
            if (std::optional<std::string> value = secret(list[i], item, "token")) {
                if (value->size() < kMinApiTokenBytes) {
                    problems_.note(child(item, "token"),
                                  "the token must be at least " + std::to_string(kMinApiTokenBytes) +
                                      " bytes long, got " + std::to_string(value->size()));
                } else if (const std::size_t bad = token68_error(*value); bad != std::string::npos) {
                    // HTTP trims a header value's surrounding whitespace, so such a token could
                    // never match: every request would get 401. The byte itself is not shown.
                    problems_.note(child(item, "token"),
                                  "byte " + std::to_string(bad) +
                                      " of the token is not allowed in a bearer token (RFC 6750: letters, "
                                      "digits and -._~+/, then = only at the end; no spaces)");
                } else {
                    // Two names for one token would make the audit name of a request ambiguous.
                    unique(values, *value, child(item, "token"));
                }
                token.token = std::move(*value);
            }
            out.push_back(std::move(token));
        }
    }

    void parse_alipay(const Value& list, const std::string& ptr, std::vector<AlipayApp>& out)
    {
        std::map<std::string, std::string> app_ids;
        for (SizeType i = 0; i < list.Size(); ++i) {
            const std::string item = child(ptr, i);
            const Value& v = list[i];
            if (!v.IsObject() || problems_.is_bad(item)) {
                continue;
            }
            AlipayApp app;
            app.pointer = item;
            text(v, item, "app_id", app.app_id);
            unique(app_ids, app.app_id, child(item, "app_id"));
            text(v, item, "seller_id", app.seller_id);
            text(v, item, "sign_type", app.sign_type);

            // Presence, not validity, decides the mode: a key file that failed the schema must not
            // also be reported as missing.
            const bool key_mode = present(v, "alipay_public_key_file");
            const bool has_cert = present(v, "alipay_public_cert_file");
            const bool has_root = present(v, "alipay_root_cert_file");
            if (key_mode && (has_cert || has_root)) {
                problems_.note(item,
                              "give either alipay_public_key_file (public-key mode) or alipay_public_cert_file and "
                              "alipay_root_cert_file (certificate mode), not both");
            } else if (!key_mode && !has_cert && !has_root) {
                problems_.note(child(item, "alipay_public_key_file"),
                              "required property missing (or alipay_public_cert_file and alipay_root_cert_file "
                              "for certificate mode)");
            } else if (has_cert && !has_root) {
                problems_.note(child(item, "alipay_root_cert_file"),
                              "required in certificate mode (alipay_public_cert_file is set)");
            } else if (has_root && !has_cert) {
                problems_.note(child(item, "alipay_public_cert_file"),
                              "required in certificate mode (alipay_root_cert_file is set)");
            }
            // The key being replaced during a rotation belongs to the same mode.
            if (present(v, "previous_alipay_public_key_file") && !key_mode) {
                problems_.note(child(item, "previous_alipay_public_key_file"),
                               "only in public-key mode (with alipay_public_key_file); in certificate mode give "
                               "previous_alipay_public_cert_file");
            }
            if (present(v, "previous_alipay_public_cert_file") && !has_cert) {
                problems_.note(child(item, "previous_alipay_public_cert_file"),
                               "only in certificate mode (with alipay_public_cert_file); in public-key mode give "
                               "previous_alipay_public_key_file");
            }
            pem(v, item, "alipay_public_key_file", app.public_key_pem);
            pem(v, item, "alipay_public_cert_file", app.public_cert_pem);
            pem(v, item, "alipay_root_cert_file", app.root_cert_pem);
            pem(v, item, "previous_alipay_public_key_file", app.previous_public_key_pem);
            pem(v, item, "previous_alipay_public_cert_file", app.previous_public_cert_pem);
            if (std::optional<std::string> key = secret(v, item, "app_private_key")) {
                app.app_private_key_pem = std::move(*key);
            }
            pem(v, item, "app_public_cert_file", app.app_public_cert_pem);
            if (present(v, "app_public_cert_file") && !has_cert) {
                problems_.note(child(item, "app_public_cert_file"),
                               "only in certificate mode (with alipay_public_cert_file)");
            }
            if (present(v, "app_private_key") && has_cert && !present(v, "app_public_cert_file")) {
                problems_.note(child(item, "app_public_cert_file"),
                               "required with app_private_key in certificate mode (its SN is sent as app_cert_sn)");
            }
            if (const Value* download = at(v, item, "download_certificates"); download != nullptr && download->IsBool()) {
                app.download_certificates = download->GetBool();
            }
            if (app.download_certificates) {
                // Alipay names its certificate by SN only in certificate mode, and the download is a
                // certificate-mode request (app_cert_sn, alipay_root_cert_sn) signed with the app's key.
                if (key_mode || !has_cert || !has_root) {
                    problems_.note(child(item, "download_certificates"),
                                   "only in certificate mode (alipay_public_cert_file and alipay_root_cert_file, "
                                   "which the downloaded certificate must chain to)");
                } else if (!present(v, "app_private_key") || !present(v, "app_public_cert_file")) {
                    problems_.note(child(item, "download_certificates"),
                                   "needs app_private_key and app_public_cert_file (the download is a signed request)");
                }
            }
            http_url(v, item, "gateway_url", app.gateway_url);
            out.push_back(std::move(app));
        }
    }

    void wechat_key(const Value& v, const std::string& item, const char* key, std::string& out)
    {
        if (std::optional<std::string> value = secret(v, item, key)) {
            if (value->size() != kWechatKeyBytes) {
                problems_.note(child(item, key), "must be exactly 32 bytes long, got " + std::to_string(value->size()));
            }
            out = std::move(*value);
        }
    }

    void parse_wechat(const Value& list, const std::string& ptr, std::vector<WechatMerchant>& out)
    {
        std::map<std::string, std::string> mchids;
        for (SizeType i = 0; i < list.Size(); ++i) {
            const std::string item = child(ptr, i);
            const Value& v = list[i];
            if (!v.IsObject() || problems_.is_bad(item)) {
                continue;
            }
            WechatMerchant m;
            m.pointer = item;
            text(v, item, "mchid", m.mchid);
            unique(mchids, m.mchid, child(item, "mchid"));
            text(v, item, "appid", m.appid);
            if (const Value* others = array_at(v, item, "other_appids")) {
                for (const Value& appid : others->GetArray()) {
                    if (appid.IsString()) {
                        m.other_appids.emplace_back(str(appid));
                    }
                }
            }
            wechat_key(v, item, "apiv3_key", m.apiv3_key);
            wechat_key(v, item, "apiv2_key", m.apiv2_key);

            const bool has_key_file = present(v, "public_key_file");
            const bool has_key_id = present(v, "public_key_id");
            const bool has_platform = present(v, "platform_certificates");
            if (const Value* download = at(v, item, "download_certificates"); download != nullptr && download->IsBool()) {
                m.download_certificates = download->GetBool();
            }
            // A download_certificates that is not a boolean is reported as such, not as a missing key too.
            if (!has_key_file && !has_platform && !m.download_certificates && !present(v, "download_certificates")) {
                problems_.note(item, "needs public_key_file (with public_key_id), platform_certificates, "
                                     "download_certificates, or more than one of them");
            }
            if (has_key_file && !has_key_id) {
                problems_.note(child(item, "public_key_id"), "required when public_key_file is set");
            }
            if (has_key_id && !has_key_file) {
                problems_.note(child(item, "public_key_file"), "required when public_key_id is set");
            }
            text(v, item, "public_key_id", m.public_key_id);
            if (!m.public_key_id.empty() && !m.public_key_id.starts_with(kPublicKeyIdPrefix)) {
                problems_.note(child(item, "public_key_id"), "must start with PUB_KEY_ID_");
            }
            pem(v, item, "public_key_file", m.public_key_pem);
            if (const Value* certs = array_at(v, item, "platform_certificates")) {
                const std::string list_ptr = child(item, "platform_certificates");
                for (SizeType c = 0; c < certs->Size(); ++c) {
                    const std::string cert_ptr = child(list_ptr, c);
                    if (!(*certs)[c].IsString() || problems_.is_bad(cert_ptr)) {
                        continue;
                    }
                    if (std::optional<std::string> content = file_content((*certs)[c], cert_ptr)) {
                        m.platform_certificates_pem.push_back(std::move(*content));
                    }
                }
            }
            if (std::optional<std::string> key = secret(v, item, "merchant_private_key")) {
                m.merchant_private_key_pem = std::move(*key);
            }
            text(v, item, "merchant_serial_no", m.merchant_serial_no);
            if (present(v, "merchant_private_key") != present(v, "merchant_serial_no")) {
                problems_.note(item, "give merchant_private_key and merchant_serial_no together (active queries "
                                     "are signed with the key and name its certificate's serial)");
            }
            if (m.download_certificates && !present(v, "merchant_private_key")) {
                problems_.note(child(item, "download_certificates"),
                               "needs merchant_private_key and merchant_serial_no (the download is a signed request)");
            }
            http_url(v, item, "api_url", m.api_url);
            out.push_back(std::move(m));
        }
    }

    /// An http(s) URL (the CRM's, a provider's), checked as the clients will need it.
    void http_url(const Value& v, const std::string& item, const char* key, std::string& out)
    {
        if (const Value* url = string_at(v, item, key)) {
            if (std::string why = detail::check_http_url(str(*url)); !why.empty()) {
                problems_.note(child(item, key), why);
            }
            out = std::string(str(*url));
        }
    }

    void parse_provider_query(const Value& v, const std::string& ptr, const Config& cfg, ProviderQueryConfig& out)
    {
        out.enabled = true;
        duration(v, ptr, "after_s", out.after);
        duration(v, ptr, "until_s", out.until);
        duration(v, ptr, "max_gap_s", out.max_gap);
        duration(v, ptr, "interval_s", out.interval);
        integer(v, ptr, "batch", out.batch);
        integer(v, ptr, "concurrency", out.concurrency);
        duration(v, ptr, "timeout_ms", out.timeout);
        ca_bundle(v, ptr, "ca_file", out.ca_file);
        if (out.until <= out.after) {
            problems_.note(child(ptr, "until_s"), "must be greater than after_s (" +
                                                      std::to_string(out.after.count()) + " s)");
        }
        const bool any_alipay = std::any_of(cfg.alipay_apps.begin(), cfg.alipay_apps.end(),
                                            [](const AlipayApp& a) { return !a.app_private_key_pem.empty(); });
        const bool any_wechat = std::any_of(cfg.wechat_merchants.begin(), cfg.wechat_merchants.end(),
                                            [](const WechatMerchant& m) { return !m.merchant_private_key_pem.empty(); });
        if (!any_alipay && !any_wechat) {
            problems_.note(ptr, "no account to query: give an Alipay app an app_private_key or a WeChat Pay "
                                "merchant a merchant_private_key and merchant_serial_no");
        }
    }

    void crm_secret(const Value& v, const std::string& ptr, std::vector<std::string>& out)
    {
        if (std::optional<std::string> value = secret(v, ptr)) {
            if (std::string why = check_webhook_secret(*value); !why.empty()) {
                problems_.note(ptr, why);
            }
            out.push_back(std::move(*value));
        }
    }

    void parse_crm(const Value& v, const std::string& ptr, CrmConfig& out)
    {
        http_url(v, ptr, "url", out.url);
        const bool has_one = present(v, "secret");
        const bool has_two = present(v, "secrets");
        if (has_one && has_two) {
            problems_.note(ptr, "give either secret or secrets (during a rotation), not both");
        } else if (!has_one && !has_two) {
            problems_.note(child(ptr, "secret"), "required property missing (or secrets, during a rotation)");
        }
        if (const Value* one = string_at(v, ptr, "secret")) {
            crm_secret(*one, child(ptr, "secret"), out.secrets);
        }
        if (const Value* two = array_at(v, ptr, "secrets")) {
            const std::string list_ptr = child(ptr, "secrets");
            std::map<std::string, std::string> seen;
            for (SizeType i = 0; i < two->Size(); ++i) {
                const std::string item = child(list_ptr, i);
                if ((*two)[i].IsString() && !problems_.is_bad(item)) {
                    const std::size_t before = out.secrets.size();
                    crm_secret((*two)[i], item, out.secrets);
                    if (out.secrets.size() > before) {
                        unique(seen, out.secrets.back(), item);
                    }
                }
            }
        }
        ca_bundle(v, ptr, "ca_file", out.ca_file);
        duration(v, ptr, "timeout_ms", out.timeout);
        integer(v, ptr, "concurrency", out.concurrency);
        if (const Value* schedule = array_at(v, ptr, "retry_schedule_s")) {
            std::vector<std::chrono::seconds> delays;
            for (const Value& d : schedule->GetArray()) {
                if (d.IsInt64() && d.GetInt64() > 0) {
                    delays.emplace_back(d.GetInt64());
                }
            }
            if (!delays.empty()) {
                out.retry_schedule = std::move(delays);
            }
        }
        duration(v, ptr, "lease_s", out.lease);
        duration(v, ptr, "outbox_retention_s", out.outbox_retention);
        if (out.lease <= out.timeout) {
            problems_.note(child(ptr, "lease_s"), "must be longer than timeout_ms (" +
                                                      std::to_string(out.timeout.count()) +
                                                      " ms): an attempt that outlives its lease is taken over "
                                                      "and sent again by another instance");
        }
    }

    const SecretSource& secrets_;
    std::filesystem::path base_dir_;
    Problems& problems_;
    bool listen_ok_{true};  ///< /listen is absent (default) or parsed
};

std::pair<std::size_t, std::size_t> line_and_column(std::string_view text, std::size_t offset)
{
    std::size_t line = 1;
    std::size_t column = 1;
    for (std::size_t i = 0; i < offset && i < text.size(); ++i) {
        if (text[i] == '\n') {
            ++line;
            column = 1;
        } else {
            ++column;
        }
    }
    return {line, column};
}

std::filesystem::path absolute_path(const std::filesystem::path& file)
{
    std::error_code ec;
    std::filesystem::path abs = std::filesystem::absolute(file, ec);
    return (ec ? file : abs).lexically_normal();
}

}  // namespace

LoadReport load_config_text(std::string_view json, const std::filesystem::path& file, const SecretSource& secrets)
{
    const std::filesystem::path path = absolute_path(file);
    Problems problems;
    LoadReport report;

    // Editors on Windows save UTF-8 with a byte-order mark; it carries no meaning in JSON.
    if (json.starts_with("\xEF\xBB\xBF")) {
        json.remove_prefix(3);
    }
    Document document;
    // Strict JSON (no comments, no trailing commas) so that jq and other tools read the same file.
    document.Parse<rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
    if (document.HasParseError()) {
        auto [line, column] = line_and_column(json, document.GetErrorOffset());
        report.problems.push_back(path.string() + ":" + std::to_string(line) + ":" + std::to_string(column) +
                                  ": invalid JSON: " + rapidjson::GetParseError_En(document.GetParseError()));
        return report;
    }

    detail::find_duplicate_keys(document, problems);
    detail::check_schema(document, problems);

    Config cfg;
    cfg.path = path.string();
    Parser(secrets, path.parent_path(), problems).parse(document, cfg);

    if (problems.empty()) {
        report.config = std::move(cfg);
    } else {
        report.partial = std::move(cfg);
    }
    report.problems = problems.take();
    report.warnings = problems.take_warnings();
    return report;
}

LoadReport load_config(const std::filesystem::path& file, const SecretSource& secrets)
{
    detail::FileContent content = detail::read_file(file, kMaxConfigBytes);
    if (!content.content) {
        LoadReport report;
        report.problems.push_back("cannot read " + file.string() + ": " + content.error);
        return report;
    }
    LoadReport report = load_config_text(*content.content, file, secrets);
    // The configuration names every key and secret: whoever may change it may name their own.
    if (std::string warning = detail::foreign_writable_warning(content, file.string());
        !warning.empty()) {
        report.warnings.insert(report.warnings.begin(), std::move(warning));
    }
    return report;
}

}  // namespace paybridge::config
