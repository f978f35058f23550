#include "config/load.hpp"

#include "config/detail/files.hpp"
#include "config/schema.hpp"

#include <openssl/evp.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/pointer.h>
#include <rapidjson/schema.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace paybridge::config {

namespace {

using rapidjson::Document;
using rapidjson::SizeType;
using rapidjson::Value;
using Allocator = Document::AllocatorType;

constexpr std::size_t kMaxConfigBytes = 1024 * 1024;
constexpr std::size_t kMaxPemBytes = 1024 * 1024;  // a CA bundle can be a few hundred KiB
constexpr std::size_t kWechatKeyBytes = 32;
constexpr std::string_view kPublicKeyIdPrefix = "PUB_KEY_ID_";
constexpr std::string_view kWebhookSecretPrefix = "whsec_";

// ---------------------------------------------------------------------------------------------
// JSON pointers and values as text

std::string escape_token(std::string_view key)
{
    std::string out;
    out.reserve(key.size());
    for (char c : key) {
        if (c == '~') {
            out += "~0";
        } else if (c == '/') {
            out += "~1";
        } else {
            out += c;
        }
    }
    return out;
}

std::string child(const std::string& ptr, std::string_view key) { return ptr + "/" + escape_token(key); }
std::string child(const std::string& ptr, SizeType index) { return ptr + "/" + std::to_string(index); }

std::string pointer_text(const rapidjson::Pointer& p)
{
    rapidjson::StringBuffer sb;
    p.Stringify(sb);
    return {sb.GetString(), sb.GetSize()};
}

std::string json_text(const Value& v)
{
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> writer(sb);
    v.Accept(writer);
    return {sb.GetString(), sb.GetSize()};
}

std::string_view str(const Value& v) { return {v.GetString(), v.GetStringLength()}; }

std::string type_phrase(const Value& v)
{
    if (v.IsNull()) {
        return "null";
    }
    if (v.IsBool()) {
        return "a boolean";
    }
    if (v.IsObject()) {
        return "an object";
    }
    if (v.IsArray()) {
        return "an array";
    }
    if (v.IsString()) {
        return "a string";
    }
    return v.IsDouble() ? "a number with a fraction" : "an integer";
}

std::string schema_type_phrase(std::string_view type)
{
    if (type == "integer" || type == "object" || type == "array") {
        return "an " + std::string(type);
    }
    if (type == "null") {
        return "null";
    }
    return "a " + std::string(type);
}

// ---------------------------------------------------------------------------------------------
// Collected problems

class Problems {
public:
    /// Records "<ptr>: <what>" once; `ptr` is also marked so that later phases skip the value.
    void add(const std::string& ptr, std::string_view what)
    {
        note(ptr, what);
        bad_.insert(ptr);
    }

    /// Records "<ptr>: <what>" once without marking `ptr`: for the semantic checks of phase 4, which
    /// visit each value once and must not hide the problems of its siblings and children.
    void note(const std::string& ptr, std::string_view what)
    {
        std::string line = (ptr.empty() ? std::string("(root)") : ptr) + ": " + std::string(what);
        if (seen_.insert(line).second) {
            lines_.push_back(std::move(line));
        }
    }

    /// A problem about the file itself (no pointer).
    void add_file(std::string line) { lines_.push_back(std::move(line)); }

    /// True when `ptr` or one of its ancestors already has a problem.
    bool is_bad(const std::string& ptr) const
    {
        for (const std::string& b : bad_) {
            if (ptr == b || (ptr.size() > b.size() && ptr.compare(0, b.size(), b) == 0 && ptr[b.size()] == '/')) {
                return true;
            }
        }
        return false;
    }

    bool empty() const noexcept { return lines_.empty(); }
    std::vector<std::string> take() { return std::move(lines_); }

private:
    std::vector<std::string> lines_;
    std::set<std::string> seen_;
    std::set<std::string> bad_;
};

// ---------------------------------------------------------------------------------------------
// Phase 2: duplicate keys

void find_duplicate_keys(const Value& v, const std::string& ptr, Problems& problems)
{
    if (v.IsObject()) {
        std::set<std::string_view> names;
        for (const auto& m : v.GetObject()) {
            const std::string p = child(ptr, str(m.name));
            if (!names.insert(str(m.name)).second) {
                problems.add(p, "duplicate key");
            }
            find_duplicate_keys(m.value, p, problems);
        }
    } else if (v.IsArray()) {
        for (SizeType i = 0; i < v.Size(); ++i) {
            find_duplicate_keys(v[i], child(ptr, i), problems);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 3: schema validation that reports every violation
//
// RapidJSON 1.1 (Debian 12's version) has no GetError() and no "continue on error" flag: its
// validator stops at the first violation and reports one (schema pointer, keyword, document
// pointer). To report them all we validate repeatedly. Before the first pass the schema is
// *specialised* to the document: local $refs are inlined and an "items" schema is repeated once
// per element of the instance array (the tuple form of "items"), so that every schema node governs
// exactly one place in the document. After each reported violation the offending keyword is
// removed from that one node ("relaxed") and validation runs again, until the document passes.
// Every pass removes a keyword, so this terminates; a configuration has a few hundred keywords at
// most and each pass takes microseconds.

class SchemaChecker {
public:
    explicit SchemaChecker(const Document& document) : document_(document)
    {
        schema_.Parse(kConfigSchema.data(), kConfigSchema.size());
        if (schema_.HasParseError()) {
            throw std::logic_error("config/schema.cpp: kConfigSchema is not valid JSON");
        }
    }

    void run(Problems& problems)
    {
        Document specialised;
        Value root = specialise(schema_, &document_, specialised.GetAllocator(), 0);
        static_cast<Value&>(specialised) = root;

        for (;;) {
            std::string keyword;
            std::string schema_ptr;
            std::string document_ptr;
            {
                rapidjson::SchemaDocument schema_document(specialised);
                rapidjson::SchemaValidator validator(schema_document);
                if (document_.Accept(validator)) {
                    return;
                }
                keyword = validator.GetInvalidSchemaKeyword();
                schema_ptr = pointer_text(validator.GetInvalidSchemaPointer());
                document_ptr = pointer_text(validator.GetInvalidDocumentPointer());
            }
            Value* node = rapidjson::Pointer(schema_ptr.c_str()).Get(specialised);
            if (node == nullptr || !node->IsObject()) {
                throw std::logic_error("schema validator reported an unknown schema node " + schema_ptr);
            }
            report(*node, keyword, document_ptr, problems);
            if (!relax(*node, keyword)) {
                throw std::logic_error("schema keyword " + keyword + " at " + schema_ptr + " cannot be relaxed");
            }
        }
    }

private:
    Value specialise(const Value& schema, const Value* instance, Allocator& a, int depth) const
    {
        if (depth > 64) {
            throw std::logic_error("config schema: $ref recursion");
        }
        if (!schema.IsObject()) {
            return Value(schema, a);
        }
        auto ref = schema.FindMember("$ref");
        if (ref != schema.MemberEnd() && ref->value.IsString()) {
            const std::string_view target = str(ref->value);
            if (!target.starts_with("#/")) {
                throw std::logic_error("config schema: only local $refs are supported");
            }
            const Value* resolved = rapidjson::Pointer(std::string(target.substr(1)).c_str()).Get(schema_);
            if (resolved == nullptr) {
                throw std::logic_error("config schema: dangling $ref " + std::string(target));
            }
            return specialise(*resolved, instance, a, depth + 1);
        }
        Value out(rapidjson::kObjectType);
        for (const auto& m : schema.GetObject()) {
            const std::string_view name = str(m.name);
            if (name == "definitions") {
                continue;
            }
            Value key(m.name, a);
            if (name == "properties" && m.value.IsObject()) {
                Value properties(rapidjson::kObjectType);
                for (const auto& p : m.value.GetObject()) {
                    const Value* sub = nullptr;
                    if (instance != nullptr && instance->IsObject()) {
                        auto it = instance->FindMember(p.name);
                        sub = it == instance->MemberEnd() ? nullptr : &it->value;
                    }
                    properties.AddMember(Value(p.name, a), specialise(p.value, sub, a, depth + 1), a);
                }
                out.AddMember(key, properties, a);
            } else if (name == "items" && m.value.IsObject() && instance != nullptr && instance->IsArray()) {
                Value items(rapidjson::kArrayType);
                for (const Value& element : instance->GetArray()) {
                    items.PushBack(specialise(m.value, &element, a, depth + 1), a);
                }
                out.AddMember(key, items, a);
            } else if (name == "items" && m.value.IsObject()) {
                out.AddMember(key, specialise(m.value, nullptr, a, depth + 1), a);
            } else {
                out.AddMember(key, Value(m.value, a), a);
            }
        }
        return out;
    }

    static std::string number(const Value& v)
    {
        if (v.IsInt64()) {
            return std::to_string(v.GetInt64());
        }
        if (v.IsUint64()) {
            return std::to_string(v.GetUint64());
        }
        std::ostringstream os;
        os << v.GetDouble();
        return os.str();
    }

    static bool flag(const Value& node, const char* name)
    {
        auto it = node.FindMember(name);
        return it != node.MemberEnd() && it->value.IsBool() && it->value.GetBool();
    }

    const Value* instance_at(const std::string& ptr) const
    {
        return rapidjson::Pointer(ptr.c_str()).Get(document_);
    }

    void report(const Value& node, const std::string& keyword, const std::string& ptr, Problems& problems) const
    {
        const Value* value = instance_at(ptr);
        auto kw = node.FindMember(keyword.c_str());
        const Value* arg = kw == node.MemberEnd() ? nullptr : &kw->value;

        if (keyword == "required" && arg != nullptr && arg->IsArray() && value != nullptr && value->IsObject()) {
            for (const Value& name : arg->GetArray()) {
                if (name.IsString() && !value->HasMember(name)) {
                    problems.add(child(ptr, str(name)), "required property missing");
                }
            }
            return;
        }
        if (keyword == "additionalProperties") {
            // Reported from the validator's Key handler: the pointer already names the key.
            const rapidjson::Pointer key_ptr(ptr.c_str());
            if (key_ptr.GetTokenCount() == 0) {
                problems.add(ptr, "unknown property");
                return;
            }
            const rapidjson::Pointer object_ptr(key_ptr.GetTokens(), key_ptr.GetTokenCount() - 1);
            const std::string object_text = pointer_text(object_ptr);
            const Value* object = object_ptr.Get(document_);
            auto properties = node.FindMember("properties");
            if (object != nullptr && object->IsObject()) {
                for (const auto& m : object->GetObject()) {
                    const bool known = properties != node.MemberEnd() && properties->value.IsObject() &&
                                       properties->value.HasMember(m.name);
                    if (!known) {
                        problems.add(child(object_text, str(m.name)), "unknown property");
                    }
                }
                return;
            }
            problems.add(ptr, "unknown property");
            return;
        }

        std::string what;
        if (keyword == "type" && arg != nullptr) {
            if (arg->IsString()) {
                what = "must be " + schema_type_phrase(str(*arg));
            } else if (arg->IsArray()) {
                what = "must be";
                const char* sep = " ";
                for (const Value& t : arg->GetArray()) {
                    if (t.IsString()) {
                        what += sep + schema_type_phrase(str(t));
                        sep = " or ";
                    }
                }
            }
            if (value != nullptr) {
                what += ", not " + type_phrase(*value);
            }
        } else if (keyword == "minimum" && arg != nullptr && arg->IsNumber()) {
            what = (flag(node, "exclusiveMinimum") ? "must be > " : "must be >= ") + number(*arg);
        } else if (keyword == "maximum" && arg != nullptr && arg->IsNumber()) {
            what = (flag(node, "exclusiveMaximum") ? "must be < " : "must be <= ") + number(*arg);
        } else if (keyword == "minLength" && arg != nullptr && arg->IsNumber()) {
            what = number(*arg) == "1" ? std::string("must not be empty")
                                       : "must be at least " + number(*arg) + " characters long";
        } else if (keyword == "maxLength" && arg != nullptr && arg->IsNumber()) {
            what = "must be at most " + number(*arg) + " characters long";
        } else if (keyword == "minItems" && arg != nullptr && arg->IsNumber()) {
            what = number(*arg) == "1" ? std::string("must not be empty")
                                       : "must have at least " + number(*arg) + " items";
        } else if (keyword == "maxItems" && arg != nullptr && arg->IsNumber()) {
            what = "must have at most " + number(*arg) + " items";
        } else if (keyword == "pattern" && arg != nullptr && arg->IsString()) {
            auto description = node.FindMember("description");
            what = description != node.MemberEnd() && description->value.IsString()
                       ? "must be " + std::string(str(description->value))
                       : "must match the pattern " + json_text(*arg);
        } else if (keyword == "enum" && arg != nullptr && arg->IsArray()) {
            what = "must be one of";
            const char* sep = " ";
            for (const Value& option : arg->GetArray()) {
                what += sep + json_text(option);
                sep = ", ";
            }
        }
        if (what.empty()) {
            what = "violates the schema keyword \"" + keyword + "\"";
        }
        problems.add(ptr, what);
    }

    static bool relax(Value& node, const std::string& keyword)
    {
        const bool removed = node.EraseMember(keyword.c_str());
        if (keyword == "minimum") {
            node.EraseMember("exclusiveMinimum");
        } else if (keyword == "maximum") {
            node.EraseMember("exclusiveMaximum");
        }
        return removed;
    }

    const Document& document_;
    Document schema_;
};

// ---------------------------------------------------------------------------------------------
// Phase 4 helpers: host:port and URLs

std::optional<std::uint16_t> parse_port(std::string_view text)
{
    if (text.empty() || text.size() > 5) {
        return std::nullopt;
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value < 1 || value > 65535) {
        return std::nullopt;
    }
    return static_cast<std::uint16_t>(value);
}

struct HostPort {
    std::string host;
    std::optional<std::uint16_t> port;
};

// "host", "host:port", "[v6]", "[v6]:port". Returns a reason on failure.
std::string split_host_port(std::string_view text, bool port_required, HostPort& out)
{
    std::string_view host;
    std::string_view rest;
    if (text.starts_with('[')) {
        const auto close = text.find(']');
        if (close == std::string_view::npos) {
            return "unterminated [IPv6 address]";
        }
        host = text.substr(1, close - 1);
        rest = text.substr(close + 1);
        if (!rest.empty() && !rest.starts_with(':')) {
            return "unexpected characters after the [IPv6 address]";
        }
    } else {
        const auto colon = text.rfind(':');
        host = colon == std::string_view::npos ? text : text.substr(0, colon);
        rest = colon == std::string_view::npos ? std::string_view{} : text.substr(colon);
        if (host.find(':') != std::string_view::npos) {
            return "an IPv6 address must be written in brackets, e.g. [::1]:8080";
        }
    }
    if (host.empty()) {
        return "the host is empty";
    }
    if (host.find_first_of(" \t/?#@") != std::string_view::npos) {
        return "the host \"" + std::string(host) + "\" contains invalid characters";
    }
    out.host = std::string(host);
    if (rest.empty()) {
        if (port_required) {
            return "the port is missing";
        }
        return {};
    }
    out.port = parse_port(rest.substr(1));
    if (!out.port) {
        return "the port must be a number from 1 to 65535";
    }
    return {};
}

std::string parse_endpoint(std::string_view text, Endpoint& out)
{
    HostPort hp;
    std::string why = split_host_port(text, true, hp);
    if (why.empty()) {
        out.host = hp.host;
        out.port = *hp.port;
    }
    return why;
}

// redis://[user@]host[:port][/db]. A password in the URL is refused: it would be a secret written
// inline in the configuration file.
std::string parse_redis_url(std::string_view url, RedisConfig& out)
{
    constexpr std::string_view scheme = "redis://";
    if (!url.starts_with(scheme)) {
        return "must start with redis://";
    }
    std::string_view rest = url.substr(scheme.size());
    if (rest.find_first_of("?#") != std::string_view::npos) {
        return "query strings and fragments are not supported";
    }
    const auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    const std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    const auto at = authority.rfind('@');
    if (at != std::string_view::npos) {
        const std::string_view userinfo = authority.substr(0, at);
        if (userinfo.find(':') != std::string_view::npos) {
            return "a password must not be written in the URL; set \"password\" to a secret reference "
                   "(env:NAME, file:PATH or cred:NAME)";
        }
        if (userinfo.empty()) {
            return "the user name before @ is empty";
        }
        out.username = std::string(userinfo);
        authority = authority.substr(at + 1);
    }
    HostPort hp;
    if (std::string why = split_host_port(authority, false, hp); !why.empty()) {
        return why;
    }
    out.host = hp.host;
    out.port = hp.port.value_or(6379);
    out.db = 0;
    if (!path.empty()) {
        int db = 0;
        auto [end, ec] = std::from_chars(path.data(), path.data() + path.size(), db);
        if (ec != std::errc{} || end != path.data() + path.size() || db < 0 || path.size() > 6) {
            return "the database after / must be a number from 0 to 999999";
        }
        out.db = db;
    }
    return {};
}

// http(s)://host[:port][/path][?query]
std::string check_http_url(std::string_view url)
{
    std::string_view rest;
    if (url.starts_with("https://")) {
        rest = url.substr(8);
    } else if (url.starts_with("http://")) {
        rest = url.substr(7);
    } else {
        return "must start with http:// or https://";
    }
    if (rest.find('#') != std::string_view::npos) {
        return "must not contain a #fragment";
    }
    const std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
    if (authority.find('@') != std::string_view::npos) {
        return "must not contain credentials (user:password@)";
    }
    HostPort hp;
    return split_host_port(authority, false, hp);
}

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
            listen_ok_ = endpoint(*v, child(r, "listen"), cfg.listen);
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
        if (std::string why = parse_endpoint(str(v), out); !why.empty()) {
            problems_.note(ptr, why);
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
    std::optional<std::string> file_content(const Value& v, const std::string& ptr)
    {
        detail::FileContent file = detail::read_file(resolve(v), kMaxPemBytes);
        if (!file.content) {
            problems_.note(ptr, "cannot read " + shown_path(v) + ": " + file.error);
            return std::nullopt;
        }
        if (file.content->empty()) {
            problems_.note(ptr, shown_path(v) + " is empty");
            return std::nullopt;
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
    void readable_path(const Value& obj, const std::string& ptr, const char* key, std::string& out)
    {
        if (const Value* v = string_at(obj, ptr, key)) {
            if (file_content(*v, child(ptr, key))) {
                out = resolve(*v).string();
            }
        }
    }

    std::optional<std::string> secret(const Value& v, const std::string& ptr)
    {
        SecretLookup found = secrets_.resolve(str(v), base_dir_);
        if (!found) {
            problems_.note(ptr, found.problem);
            return std::nullopt;
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
            if (endpoint(*listen, child(ptr, "listen"), tls.listen) && listen_ok_) {
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
        readable_path(v, ptr, "key_file", tls.key_file);
        if (complete && !tls.cert_file.empty() && !tls.key_file.empty()) {
            cfg.tls = std::move(tls);
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

    void parse_redis(const Value& v, const std::string& ptr, RedisConfig& out)
    {
        if (const Value* url = string_at(v, ptr, "url")) {
            if (std::string why = parse_redis_url(str(*url), out); !why.empty()) {
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
            pem(v, item, "alipay_public_key_file", app.public_key_pem);
            pem(v, item, "alipay_public_cert_file", app.public_cert_pem);
            pem(v, item, "alipay_root_cert_file", app.root_cert_pem);
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
            text(v, item, "mchid", m.mchid);
            unique(mchids, m.mchid, child(item, "mchid"));
            text(v, item, "appid", m.appid);
            wechat_key(v, item, "apiv3_key", m.apiv3_key);
            wechat_key(v, item, "apiv2_key", m.apiv2_key);

            const bool has_key_file = present(v, "public_key_file");
            const bool has_key_id = present(v, "public_key_id");
            const bool has_platform = present(v, "platform_certificates");
            if (!has_key_file && !has_platform) {
                problems_.note(item, "needs public_key_file (with public_key_id), platform_certificates, or both");
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
            out.push_back(std::move(m));
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
        if (const Value* url = string_at(v, ptr, "url")) {
            if (std::string why = check_http_url(str(*url)); !why.empty()) {
                problems_.note(child(ptr, "url"), why);
            }
            out.url = std::string(str(*url));
        }
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
        readable_path(v, ptr, "ca_file", out.ca_file);
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

    Document document;
    // Strict JSON (no comments, no trailing commas) so that jq and other tools read the same file.
    document.Parse<rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
    if (document.HasParseError()) {
        auto [line, column] = line_and_column(json, document.GetErrorOffset());
        report.problems.push_back(path.string() + ":" + std::to_string(line) + ":" + std::to_string(column) +
                                  ": invalid JSON: " + rapidjson::GetParseError_En(document.GetParseError()));
        return report;
    }

    find_duplicate_keys(document, "", problems);
    SchemaChecker(document).run(problems);

    Config cfg;
    cfg.path = path.string();
    Parser(secrets, path.parent_path(), problems).parse(document, cfg);

    if (problems.empty()) {
        report.config = std::move(cfg);
    }
    report.problems = problems.take();
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
    return load_config_text(*content.content, file, secrets);
}

}  // namespace paybridge::config
