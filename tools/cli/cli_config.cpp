#include "tools/cli/cli_config.hpp"

#include "config/secrets.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace paybridge::cli {

namespace fs = std::filesystem;
using rapidjson::Value;

namespace {

struct Reader {
    const fs::path& file;
    std::string problem;

    // A string member, or "" when absent. Sets `problem` when present with another type.
    std::string string(const Value& obj, const char* key, std::string_view where)
    {
        if (!obj.IsObject()) {
            return {};
        }
        const auto it = obj.FindMember(key);
        if (it == obj.MemberEnd()) {
            return {};
        }
        if (!it->value.IsString()) {
            fail(std::string(where) + "/" + key + " must be a string");
            return {};
        }
        return std::string(it->value.GetString(), it->value.GetStringLength());
    }

    const Value* array(const Value& obj, const char* key, std::string_view where)
    {
        if (!obj.IsObject()) {
            return nullptr;
        }
        const auto it = obj.FindMember(key);
        if (it == obj.MemberEnd()) {
            return nullptr;
        }
        if (!it->value.IsArray()) {
            fail(std::string(where) + "/" + key + " must be an array");
            return nullptr;
        }
        return &it->value;
    }

    const Value* object(const Value& obj, const char* key, std::string_view where)
    {
        if (!obj.IsObject()) {
            return nullptr;
        }
        const auto it = obj.FindMember(key);
        if (it == obj.MemberEnd()) {
            return nullptr;
        }
        if (!it->value.IsObject()) {
            fail(std::string(where) + "/" + key + " must be an object");
            return nullptr;
        }
        return &it->value;
    }

    fs::path path(const Value& obj, const char* key, std::string_view where)
    {
        const std::string text = string(obj, key, where);
        if (text.empty()) {
            return {};
        }
        const fs::path p(text);
        return p.is_absolute() ? p : (file.parent_path() / p).lexically_normal();
    }

    void fail(std::string what)
    {
        if (problem.empty()) {
            problem = file.string() + ": " + std::move(what);
        }
    }
};

}  // namespace

fs::path AlipayAccount::keys_dir() const
{
    return (public_key_file.empty() ? public_cert_file : public_key_file).parent_path();
}

fs::path WechatAccount::keys_dir() const
{
    if (!public_key_file.empty()) {
        return public_key_file.parent_path();
    }
    return platform_certificates.empty() ? fs::path{} : platform_certificates.front().parent_path();
}

std::string CliConfig::base_url() const
{
    std::string host = listen;
    std::string port = "8080";
    if (const auto colon = listen.rfind(':'); colon != std::string::npos) {
        host = listen.substr(0, colon);
        port = listen.substr(colon + 1);
    }
    if (host.empty() || host == "0.0.0.0" || host == "*") {
        host = "127.0.0.1";
    } else if (host == "[::]" || host == "::") {
        host = "[::1]";
    }
    return "http://" + host + ":" + port;
}

Expected<std::string> CliConfig::secret(std::string_view reference) const
{
    const config::SecretSource source;
    config::SecretLookup lookup = source.resolve(reference, dir());
    if (!lookup) {
        return local_error(path.string() + ": cannot resolve secret '" + std::string(reference) +
                           "': " + lookup.problem);
    }
    return *lookup.value;
}

Expected<CliConfig> load_cli_config(const fs::path& file)
{
    CliConfig cfg;
    cfg.path = fs::absolute(file).lexically_normal();
    std::ifstream in(cfg.path, std::ios::binary);
    if (!in) {
        return local_error(
            "cannot read the configuration " + cfg.path.string() +
            " (run 'paybridge keys init DIR' to create a development one, or pass --config FILE)");
    }
    std::ostringstream text;
    text << in.rdbuf();
    const std::string json = text.str();

    rapidjson::Document doc;
    doc.Parse(json.data(), json.size());
    if (doc.HasParseError() || !doc.IsObject()) {
        return local_error(cfg.path.string() + ": not a JSON object (" +
                           rapidjson::GetParseError_En(doc.GetParseError()) + " at byte " +
                           std::to_string(doc.GetErrorOffset()) + "); check it with 'paybridged --config " +
                           cfg.path.string() + " --check'");
    }
    Reader r{cfg.path, {}};
    cfg.listen = r.string(doc, "listen", "");
    if (cfg.listen.empty()) {
        cfg.listen = "127.0.0.1:8080";
    }
    if (const Value* tokens = r.array(doc, "api_tokens", "")) {
        for (const auto& t : tokens->GetArray()) {
            std::string ref = r.string(t, "token", "/api_tokens/*");
            if (!ref.empty()) {
                cfg.api_token_refs.push_back(std::move(ref));
            }
        }
    }
    if (const Value* alipay = r.object(doc, "alipay", "")) {
        if (const Value* apps = r.array(*alipay, "apps", "/alipay")) {
            for (const auto& a : apps->GetArray()) {
                AlipayAccount app;
                app.app_id = r.string(a, "app_id", "/alipay/apps/*");
                app.seller_id = r.string(a, "seller_id", "/alipay/apps/*");
                if (std::string st = r.string(a, "sign_type", "/alipay/apps/*"); !st.empty()) {
                    app.sign_type = st;
                }
                app.public_key_file = r.path(a, "alipay_public_key_file", "/alipay/apps/*");
                app.public_cert_file = r.path(a, "alipay_public_cert_file", "/alipay/apps/*");
                cfg.alipay.push_back(std::move(app));
            }
        }
    }
    if (const Value* wechat = r.object(doc, "wechatpay", "")) {
        if (const Value* merchants = r.array(*wechat, "merchants", "/wechatpay")) {
            for (const auto& m : merchants->GetArray()) {
                constexpr std::string_view where = "/wechatpay/merchants/*";
                WechatAccount acct;
                acct.mchid = r.string(m, "mchid", where);
                acct.appid = r.string(m, "appid", where);
                acct.apiv3_key_ref = r.string(m, "apiv3_key", where);
                acct.apiv2_key_ref = r.string(m, "apiv2_key", where);
                acct.public_key_id = r.string(m, "public_key_id", where);
                acct.public_key_file = r.path(m, "public_key_file", where);
                if (const Value* certs = r.array(m, "platform_certificates", where)) {
                    for (const auto& c : certs->GetArray()) {
                        if (c.IsString()) {
                            const fs::path p(c.GetString());
                            acct.platform_certificates.push_back(
                                p.is_absolute() ? p : (cfg.dir() / p).lexically_normal());
                        }
                    }
                }
                cfg.wechat.push_back(std::move(acct));
            }
        }
    }
    if (const Value* crm = r.object(doc, "crm", "")) {
        cfg.crm_url = r.string(*crm, "url", "/crm");
        if (std::string s = r.string(*crm, "secret", "/crm"); !s.empty()) {
            cfg.crm_secret_refs.push_back(std::move(s));
        }
        if (const Value* secrets = r.array(*crm, "secrets", "/crm")) {
            for (const auto& s : secrets->GetArray()) {
                if (s.IsString()) {
                    cfg.crm_secret_refs.emplace_back(s.GetString(), s.GetStringLength());
                }
            }
        }
    }
    if (!r.problem.empty()) {
        return local_error(r.problem);
    }
    return cfg;
}

std::optional<fs::path> find_config(const std::optional<std::string>& explicit_path)
{
    if (explicit_path) {
        return fs::path(*explicit_path);
    }
    if (const char* env = std::getenv("PAYBRIDGE_CONFIG"); env != nullptr && *env != '\0') {
        return fs::path(env);
    }
    for (const char* candidate : {"paybridge.dev.json", ".dev/paybridge.dev.json"}) {
        std::error_code ec;
        if (fs::is_regular_file(candidate, ec)) {
            return fs::path(candidate);
        }
    }
    return std::nullopt;
}

Expected<CliConfig> locate_config(const std::optional<std::string>& explicit_path)
{
    const auto path = find_config(explicit_path);
    if (!path) {
        return local_error(
            "no configuration found (looked for $PAYBRIDGE_CONFIG, ./paybridge.dev.json and "
            "./.dev/paybridge.dev.json); run 'paybridge keys init .dev/keys' to create a development one, "
            "or pass --config FILE");
    }
    return load_cli_config(*path);
}

}  // namespace paybridge::cli
