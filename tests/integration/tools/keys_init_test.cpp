// `paybridge keys init`: the files, their modes and contents, refusal to overwrite, and the
// configuration passing `paybridged --check` (the real binaries from the build root), in both
// Alipay key modes.

#include "crm/webhook_signer.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/integration/tools/cli_stack.hpp"
#include "tools/cli/keys_init.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

using namespace paybridge;
using namespace paybridge::test;
using namespace paybridge::test::cli;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), p.string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

unsigned mode_of(const fs::path& p)
{
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

std::string trimmed(std::string s)
{
    while (!s.empty() && s.back() == '\n') {
        s.pop_back();
    }
    return s;
}

Run check(const fs::path& config)
{
    Run r;
    r.code = run_command({binary("paybridged"), "--config", config.string(), "--check"}, r.output);
    return r;
}

bool contains(const std::string& text, std::string_view what) { return text.find(what) != std::string::npos; }

}  // namespace

TEST_SUITE("tools/keys")
{
    TEST_CASE(
        "keys init writes every key with the right mode and the configuration passes paybridged --check")
    {
        TempDir tmp;
        const fs::path keys = tmp / ".dev" / "keys";
        Run r = paybridge_cli({"keys", "init", keys.string()});
        REQUIRE_MESSAGE(r.code == 0, r.output);
        const fs::path config = tmp / ".dev" / "paybridge.dev.json";  // DIR/../paybridge.dev.json
        CHECK(contains(r.output, config.string()));
        CHECK(mode_of(keys) == 0700);

        struct Expect {
            const char* name;
            unsigned mode;
        };
        for (const Expect& e : {Expect{"alipay_private.pem", 0600},
                                {"alipay_public.pem", 0644},
                                {"alipay_root.crt", 0644},
                                {"alipay_public.crt", 0644},
                                {"wechatpay_private.pem", 0600},
                                {"wechatpay_public.pem", 0644},
                                {"wechatpay_platform.pem", 0644},
                                {"wechatpay_platform_private.pem", 0600},
                                {"wechatpay_apiv3_key", 0600},
                                {"wechatpay_apiv2_key", 0600},
                                {"api_token", 0600},
                                {"crm_secret", 0600}}) {
            CAPTURE(e.name);
            CHECK(mode_of(keys / e.name) == e.mode);
            CHECK(contains(r.output, e.name));
        }

        const Run checked = check(config);
        CHECK_MESSAGE(checked.code == 0, checked.output);
        CHECK(contains(checked.output, "configuration and keys OK"));

        rapidjson::Document doc;
        doc.Parse(slurp(config).c_str());
        REQUIRE(!doc.HasParseError());
        CHECK(std::string(doc["listen"].GetString()) == "127.0.0.1:8080");
        CHECK(std::string(doc["redis"]["url"].GetString()) == "redis://127.0.0.1:6379/0");
        CHECK(std::string(doc["api_tokens"][0]["token"].GetString()) == "file:keys/api_token");
        CHECK(std::string(doc["crm"]["secret"].GetString()) == "file:keys/crm_secret");
        CHECK(std::string(doc["crm"]["url"].GetString()) == "http://127.0.0.1:9000/paybridge/events");
        const auto& app = doc["alipay"]["apps"][0];
        CHECK(std::string(app["app_id"].GetString()) == "2021000000000001");
        CHECK(std::string(app["seller_id"].GetString()) == "2088000000000001");
        const auto& m = doc["wechatpay"]["merchants"][0];
        CHECK(std::string(m["mchid"].GetString()) == "1900000001");
        CHECK(std::string(m["appid"].GetString()) == "wx0000000000000001");
        CHECK(m.HasMember("public_key_file"));
        CHECK(m["platform_certificates"].Size() == 1);
        const std::string key_id = m["public_key_id"].GetString();
        CHECK(std::regex_match(key_id, std::regex("PUB_KEY_ID_[0-9]{32}")));
        CHECK(contains(r.output, key_id));

        // Secrets: sizes and shapes the protocols require.
        CHECK(trimmed(slurp(keys / "wechatpay_apiv3_key")).size() == 32);
        CHECK(trimmed(slurp(keys / "wechatpay_apiv2_key")).size() == 32);
        CHECK(trimmed(slurp(keys / "api_token")).size() >= 16);
        const std::string secret = trimmed(slurp(keys / "crm_secret"));
        CHECK(secret.starts_with("whsec_"));
        auto decoded = crm::decode_secret(secret);
        REQUIRE(decoded.has_value());
        CHECK(decoded->size() == 24);

        // Certificate mode: alipay_public.crt carries the same key as alipay_public.pem and chains to
        // alipay_root.crt; the platform certificate's serial is the one printed.
        auto priv = crypto::load_private_key(slurp(keys / "alipay_private.pem"));
        auto pub = crypto::load_public_key(slurp(keys / "alipay_public.pem"));
        auto cert = crypto::load_certificates(slurp(keys / "alipay_public.crt"));
        auto root = crypto::load_certificates(slurp(keys / "alipay_root.crt"));
        REQUIRE((priv && pub && cert && root));
        auto sig = crypto::rsa_sign(priv->get(), crypto::Digest::sha256, "app_id=1&charset=utf-8");
        REQUIRE(sig.has_value());
        CHECK(crypto::rsa_verify(pub->get(), crypto::Digest::sha256, "app_id=1&charset=utf-8", *sig));
        CHECK(crypto::rsa_verify(crypto::certificate_key(cert->front().get()).get(), crypto::Digest::sha256,
                                 "app_id=1&charset=utf-8", *sig));
        CHECK(crypto::certificate_chains_to(cert->front().get(), *root));
        auto platform = crypto::load_certificates(slurp(keys / "wechatpay_platform.pem"));
        REQUIRE(platform.has_value());
        const std::string serial = crypto::certificate_serial_hex(platform->front().get());
        CHECK(serial.size() == 40);
        CHECK(contains(r.output, "platform certificate serial " + serial));
        CHECK(crypto::certificate_chains_to(platform->front().get(), *root));
        auto platform_priv = crypto::load_private_key(slurp(keys / "wechatpay_platform_private.pem"));
        REQUIRE(platform_priv.has_value());
        auto psig = crypto::rsa_sign(platform_priv->get(), crypto::Digest::sha256, "x");
        REQUIRE(psig.has_value());
        CHECK(crypto::rsa_verify(crypto::certificate_key(platform->front().get()).get(),
                                 crypto::Digest::sha256, "x", *psig));
    }

    TEST_CASE("keys init: the Alipay certificate-mode files pass paybridged --check too")
    {
        TempDir tmp;
        REQUIRE(paybridge_cli({"keys", "init", (tmp / "keys").string()}).code == 0);
        const fs::path config = tmp / "paybridge.dev.json";
        rapidjson::Document doc;
        doc.Parse(slurp(config).c_str());
        auto& app = doc["alipay"]["apps"][0];
        app.RemoveMember("alipay_public_key_file");
        app.AddMember("alipay_public_cert_file", "keys/alipay_public.crt", doc.GetAllocator());
        app.AddMember("alipay_root_cert_file", "keys/alipay_root.crt", doc.GetAllocator());
        auto& merchant = doc["wechatpay"]["merchants"][0];  // platform certificate only
        merchant.RemoveMember("public_key_file");
        merchant.RemoveMember("public_key_id");
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        doc.Accept(w);
        const fs::path cert_config = tmp / "cert-mode.json";
        tmp.write("cert-mode.json", buf.GetString());
        const Run checked = check(cert_config);
        CHECK_MESSAGE(checked.code == 0, checked.output);

        // And trigger signs for it: the same key, the platform signer.
        Run printed = paybridge_cli({"trigger", "wechatpay", "paid", "--bill", "B1", "--amount", "100",
                                     "--print", "--signer", "platform", "--config", cert_config.string()});
        CHECK_MESSAGE(printed.code == 0, printed.output);
        Run refused = paybridge_cli({"trigger", "wechatpay", "paid", "--bill", "B1", "--amount", "100",
                                     "--print", "--config", cert_config.string()});
        CHECK(refused.code == 2);
        CHECK(contains(refused.output, "use --signer platform"));
    }

    TEST_CASE("keys init refuses to overwrite without --force and --force replaces")
    {
        TempDir tmp;
        const fs::path keys = tmp / "keys";
        REQUIRE(paybridge_cli({"keys", "init", keys.string()}).code == 0);
        const std::string before = slurp(keys / "alipay_private.pem");
        const std::string config_before = slurp(tmp / "paybridge.dev.json");

        Run again = paybridge_cli({"keys", "init", keys.string()});
        CHECK(again.code == 4);
        CHECK(contains(again.output, "already exist"));
        CHECK(contains(again.output, "--force"));
        CHECK(slurp(keys / "alipay_private.pem") == before);
        CHECK(slurp(tmp / "paybridge.dev.json") == config_before);

        // Only the configuration exists: still refused (it names it).
        TempDir other;
        other.write("paybridge.dev.json", "{}");
        Run cfg_only = paybridge_cli({"keys", "init", (other / "keys").string()});
        CHECK(cfg_only.code == 4);
        CHECK(contains(cfg_only.output, "paybridge.dev.json already exists"));
        CHECK(!fs::exists(other / "keys" / "alipay_private.pem"));

        Run forced = paybridge_cli({"keys", "init", keys.string(), "--force"});
        CHECK_MESSAGE(forced.code == 0, forced.output);
        CHECK(slurp(keys / "alipay_private.pem") != before);
        CHECK(mode_of(keys / "alipay_private.pem") == 0600);
        CHECK(check(tmp / "paybridge.dev.json").code == 0);
    }

    TEST_CASE("keys init with --config elsewhere and --listen --redis-port --crm-url")
    {
        TempDir tmp;
        const fs::path config = tmp / "etc" / "dev.json";
        Run r = paybridge_cli({"keys", "init", (tmp / "secrets" / "keys").string(), "--config",
                               config.string(), "--listen", "127.0.0.1:18080", "--redis-port", "6390",
                               "--crm-url", "http://127.0.0.1:19000/hook"});
        REQUIRE_MESSAGE(r.code == 0, r.output);
        rapidjson::Document doc;
        doc.Parse(slurp(config).c_str());
        CHECK(std::string(doc["listen"].GetString()) == "127.0.0.1:18080");
        CHECK(std::string(doc["redis"]["url"].GetString()) == "redis://127.0.0.1:6390/0");
        CHECK(std::string(doc["crm"]["url"].GetString()) == "http://127.0.0.1:19000/hook");
        CHECK(std::string(doc["alipay"]["apps"][0]["alipay_public_key_file"].GetString()) ==
              "../secrets/keys/alipay_public.pem");
        CHECK_MESSAGE(check(config).code == 0, check(config).output);
        CHECK(!fs::exists(tmp / "secrets" / "paybridge.dev.json"));
    }

    TEST_CASE("keys init refuses --listen and --crm-url values that paybridged --check would refuse")
    {
        TempDir tmp;
        struct Case {
            std::vector<std::string> args;
            std::string_view says;
        };
        for (const Case& tc : std::vector<Case>{
                 {{"--listen", "localhost:8080"}, "is not an IP address"},
                 {{"--listen", "127.0.0.1:99999"}, "port must be a number from 1 to 65535"},
                 {{"--listen", "127.0.0.1:0"}, "port must be a number from 1 to 65535"},
                 {{"--listen", "1.2.3.4:abc"}, "port must be a number from 1 to 65535"},
                 {{"--listen", "8080"}, "--listen must be HOST:PORT"},
                 {{"--listen", "::1:8080"}, "in brackets"},
                 {{"--listen", "[::1]"}, "--listen must be HOST:PORT"},
                 {{"--crm-url", "http://"}, "--crm-url"},
                 {{"--crm-url", "ftp://127.0.0.1/x"}, "--crm-url"},
                 {{"--crm-url", "http://127.0.0.1:0/x"}, "--crm-url"},
                 {{"--crm-url", "http://127.0.0.1:9000/x#frag"}, "--crm-url"},
             }) {
            CAPTURE(tc.args[0] + " " + tc.args[1]);
            std::vector<std::string> args{"keys", "init", (tmp / "keys").string()};
            args.insert(args.end(), tc.args.begin(), tc.args.end());
            const Run r = paybridge_cli(args);
            CHECK(r.code == 2);
            CHECK(contains(r.output, tc.says));
            CHECK(contains(r.output, tc.args[0]));  // names the option
            CHECK(!fs::exists(tmp / "keys"));
        }

        // An IPv6 literal in brackets is what the daemon accepts, so keys init does too.
        const Run v6 = paybridge_cli({"keys", "init", (tmp / "keys").string(), "--listen", "[::1]:18080"});
        REQUIRE_MESSAGE(v6.code == 0, v6.output);
        const Run checked = check(tmp / "paybridge.dev.json");
        CHECK_MESSAGE(checked.code == 0, checked.output);
    }

    TEST_CASE("keys init sets 0700 only on a DIR it creates and refuses an existing DIR others can read")
    {
        TempDir tmp;
        // An existing, group/world-accessible folder (e.g. `keys init .`): refused, left as it was.
        const fs::path shared = tmp / "shared";
        fs::create_directory(shared);
        fs::permissions(shared, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                    fs::perms::others_read | fs::perms::others_exec);
        Run r = paybridge_cli({"keys", "init", shared.string()});
        CHECK(r.code == 2);
        CHECK(contains(r.output, shared.string()));
        CHECK(contains(r.output, "chmod 700"));
        CHECK(mode_of(shared) == 0755);
        CHECK(fs::is_empty(shared));
        CHECK(!fs::exists(tmp / "paybridge.dev.json"));

        // An existing private folder is used as it is.
        const fs::path mine = tmp / "mine";
        fs::create_directory(mine);
        fs::permissions(mine, fs::perms::owner_all, fs::perm_options::replace);
        r = paybridge_cli({"keys", "init", mine.string(), "--config", (tmp / "mine.json").string()});
        CHECK_MESSAGE(r.code == 0, r.output);
        CHECK(mode_of(mine) == 0700);

        // A new folder is created 0700, whatever the umask.
        r = paybridge_cli({"keys", "init", (tmp / "new" / "keys").string()});
        CHECK_MESSAGE(r.code == 0, r.output);
        CHECK(mode_of(tmp / "new" / "keys") == 0700);
    }
}
