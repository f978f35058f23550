#include "config/load.hpp"

#include "tests/unit/config/sandbox.hpp"
#include "tools/keygen/keygen.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace paybridge;
using config::LoadReport;
using config::SecretSource;
using config::test::Sandbox;
using namespace std::chrono_literals;

namespace {

std::string base64(std::string_view bytes)
{
    std::string out(4 * ((bytes.size() + 2) / 3), '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

std::string webhook_secret() { return "whsec_" + base64(keygen::random_token(24)); }

std::string dump(const std::vector<std::string>& lines)
{
    std::string out;
    for (const std::string& line : lines) {
        out += "  " + line + "\n";
    }
    return out;
}

std::string read_text(const std::filesystem::path& path)
{
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    std::ostringstream os;
    os << in.rdbuf();
    return os.str();
}

/// The problems, as a set (the order across phases is not part of the contract).
void check_problems(const LoadReport& report, std::vector<std::string> expected)
{
    std::vector<std::string> got = report.problems;
    std::sort(got.begin(), got.end());
    std::sort(expected.begin(), expected.end());
    INFO("got:\n" << dump(got) << "expected:\n" << dump(expected));
    CHECK(got == expected);
    CHECK_FALSE(report.config);
}

/// Writes `json` as paybridge.json in the sandbox and loads it.
LoadReport load(const Sandbox& box, std::string_view json, SecretSource::Environment env = {})
{
    const auto path = box.write("paybridge.json", json);
    return config::load_config(path, SecretSource(std::move(env)));
}

// One WeChat Pay merchant with platform certificates: the smallest configuration with a gateway.
constexpr std::string_view kMinimal = R"({
  "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                  "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] } ] }
})";

struct MinimalFixture {
    Sandbox box;
    std::string apiv3 = keygen::random_token(32);
    std::string platform_pem;

    MinimalFixture()
    {
        const auto ca = keygen::make_ca({.common_name = "Test WeChat Pay CA"});
        platform_pem = keygen::issue(ca, {.common_name = "1900000001"}).cert_pem;
        box.write("platform.pem", platform_pem);
    }
    SecretSource::Environment env() const { return {{"V3", apiv3}}; }
};

}  // namespace

TEST_CASE("config: the example configuration loads with its secrets in the environment")
{
    Sandbox box;
    box.write("paybridge.json", read_text(PAYBRIDGE_EXAMPLE_CONFIG));
    const auto alipay_key = keygen::generate_rsa();
    const auto wechat_key = keygen::generate_rsa();
    const auto ca = keygen::make_ca({.common_name = "Alipay Test Root"});
    const auto alipay_cert = keygen::issue(ca, {.common_name = "2021000000000002"});
    const auto platform = keygen::issue(ca, {.common_name = "1900000001"});
    box.write("keys/alipay_public.pem", alipay_key.public_pem);
    box.write("keys/alipayCertPublicKey_RSA2.crt", alipay_cert.cert_pem);
    box.write("keys/alipayRootCert.crt", ca.cert_pem);
    box.write("keys/wechatpay_public.pem", wechat_key.public_pem);
    box.write("keys/wechatpay_platform.pem", platform.cert_pem);
    const SecretSource::Environment env = {
        {"PAYBRIDGE_CRM_TOKEN", keygen::random_token(40)},
        {"PAYBRIDGE_WX_APIV3_KEY", keygen::random_token(32)},
        {"PAYBRIDGE_WX_APIV2_KEY", keygen::random_token(32)},
        {"PAYBRIDGE_CRM_SECRET", webhook_secret()},
    };

    const LoadReport report = config::load_config(box.dir() / "paybridge.json", SecretSource(env));
    INFO(dump(report.problems));
    REQUIRE(report.problems.empty());
    REQUIRE(report.config);
    const config::Config& cfg = *report.config;

    CHECK(cfg.path == (box.dir() / "paybridge.json").string());
    CHECK(cfg.listen.host == "127.0.0.1");
    CHECK(cfg.listen.port == 8080);
    CHECK_FALSE(cfg.tls);
    CHECK(cfg.redis.host == "127.0.0.1");
    CHECK(cfg.redis.port == 6379);
    CHECK(cfg.redis.db == 0);
    CHECK(cfg.redis.key_prefix == "pb:");
    CHECK(cfg.redis.password.empty());

    REQUIRE(cfg.api_tokens.size() == 1);
    CHECK(cfg.api_tokens[0].name == "crm");
    CHECK(cfg.api_tokens[0].token == env.at("PAYBRIDGE_CRM_TOKEN"));

    REQUIRE(cfg.alipay_apps.size() == 2);
    CHECK(cfg.alipay_apps[0].app_id == "2021000000000001");
    CHECK(cfg.alipay_apps[0].seller_id == "2088000000000001");
    CHECK(cfg.alipay_apps[0].sign_type == "RSA2");
    CHECK(cfg.alipay_apps[0].public_key_pem == alipay_key.public_pem);
    CHECK(cfg.alipay_apps[0].public_cert_pem.empty());
    CHECK(cfg.alipay_apps[1].public_key_pem.empty());
    CHECK(cfg.alipay_apps[1].public_cert_pem == alipay_cert.cert_pem);
    CHECK(cfg.alipay_apps[1].root_cert_pem == ca.cert_pem);

    REQUIRE(cfg.wechat_merchants.size() == 1);
    const config::WechatMerchant& m = cfg.wechat_merchants[0];
    CHECK(m.mchid == "1900000001");
    CHECK(m.appid == "wx0000000000000001");
    CHECK(m.other_appids == std::vector<std::string>{"wx0000000000000002"});
    CHECK(m.apiv3_key == env.at("PAYBRIDGE_WX_APIV3_KEY"));
    CHECK(m.apiv2_key == env.at("PAYBRIDGE_WX_APIV2_KEY"));
    CHECK(m.public_key_id == "PUB_KEY_ID_0000000000000000000000000000000001");
    CHECK(m.public_key_pem == wechat_key.public_pem);
    REQUIRE(m.platform_certificates_pem.size() == 1);
    CHECK(m.platform_certificates_pem[0] == platform.cert_pem);

    CHECK(cfg.crm.url == "http://127.0.0.1:9000/paybridge/events");
    REQUIRE(cfg.crm.secrets.size() == 1);
    CHECK(cfg.crm.secrets[0] == env.at("PAYBRIDGE_CRM_SECRET"));
    CHECK(cfg.crm.retry_schedule.size() == 7);
    CHECK(cfg.log_level == log::Level::info);
}

TEST_CASE("config: the example sets every tunable to its documented default")
{
    // paybridge.example.json doubles as the list of defaults (config/README.md): keep them equal.
    Sandbox box;
    const std::string example = read_text(PAYBRIDGE_EXAMPLE_CONFIG);
    // Reduce the example to its tunables: without gateways, tokens and CRM it needs no key files.
    const std::string tunables = R"({
      "listen": "127.0.0.1:8080", "workers": 0,
      "limits": { "max_header_bytes": 8192, "max_body_bytes": 65536, "read_timeout_ms": 10000,
                  "idle_timeout_ms": 60000, "write_timeout_ms": 10000, "shutdown_grace_ms": 10000,
                  "max_connections": 20000 },
      "redis": { "url": "redis://127.0.0.1:6379/0", "key_prefix": "pb:", "shards": 16,
                 "request_timeout_ms": 2000, "connect_timeout_ms": 2000, "wait_replicas": 0,
                 "wait_timeout_ms": 1000 },
      "log": { "level": "info" }
    })";
    for (std::string_view fragment : {"\"max_header_bytes\": 8192", "\"max_body_bytes\": 65536",
                                      "\"read_timeout_ms\": 10000", "\"idle_timeout_ms\": 60000",
                                      "\"shutdown_grace_ms\": 10000", "\"max_connections\": 20000",
                                      "\"shards\": 16", "\"request_timeout_ms\": 2000", "\"wait_timeout_ms\": 1000",
                                      "\"retry_schedule_s\": [5, 300, 1800, 7200, 18000, 36000, 36000]",
                                      "\"lease_s\": 60", "\"concurrency\": 32", "\"timeout_ms\": 10000",
                                      "\"outbox_retention_s\": 0"}) {
        CAPTURE(fragment);
        CHECK(example.find(fragment) != std::string::npos);
    }
    const LoadReport report = load(box, tunables);
    INFO(dump(report.problems));
    REQUIRE(report.config);
    const config::Config defaults;
    const config::Config& cfg = *report.config;
    CHECK(cfg.limits.max_header_bytes == defaults.limits.max_header_bytes);
    CHECK(cfg.limits.max_body_bytes == defaults.limits.max_body_bytes);
    CHECK(cfg.limits.read_timeout == defaults.limits.read_timeout);
    CHECK(cfg.limits.idle_timeout == defaults.limits.idle_timeout);
    CHECK(cfg.limits.write_timeout == defaults.limits.write_timeout);
    CHECK(cfg.limits.shutdown_grace == defaults.limits.shutdown_grace);
    CHECK(cfg.limits.max_connections == defaults.limits.max_connections);
    CHECK(cfg.redis.shards == defaults.redis.shards);
    CHECK(cfg.redis.request_timeout == defaults.redis.request_timeout);
    CHECK(cfg.redis.connect_timeout == defaults.redis.connect_timeout);
    CHECK(cfg.redis.wait_timeout == defaults.redis.wait_timeout);
    CHECK(cfg.crm.retry_schedule == std::vector<std::chrono::seconds>{5s, 300s, 1800s, 7200s, 18000s, 36000s, 36000s});
    CHECK(defaults.crm.lease == 60s);
    CHECK(defaults.crm.outbox_retention == 0s);
    CHECK(defaults.crm.concurrency == 32);
    CHECK(defaults.crm.timeout == 10s);
}

TEST_CASE("config: absent keys take the defaults of config.hpp")
{
    MinimalFixture f;
    const LoadReport report = load(f.box, kMinimal, f.env());
    INFO(dump(report.problems));
    REQUIRE(report.config);
    const config::Config& cfg = *report.config;
    const config::Config defaults;

    CHECK(cfg.listen.host == defaults.listen.host);
    CHECK(cfg.listen.port == defaults.listen.port);
    CHECK_FALSE(cfg.tls);
    CHECK(cfg.workers == defaults.workers);
    CHECK(cfg.limits.max_header_bytes == defaults.limits.max_header_bytes);
    CHECK(cfg.limits.max_body_bytes == defaults.limits.max_body_bytes);
    CHECK(cfg.limits.read_timeout == defaults.limits.read_timeout);
    CHECK(cfg.limits.idle_timeout == defaults.limits.idle_timeout);
    CHECK(cfg.limits.write_timeout == defaults.limits.write_timeout);
    CHECK(cfg.limits.shutdown_grace == defaults.limits.shutdown_grace);
    CHECK(cfg.limits.max_connections == defaults.limits.max_connections);
    CHECK(cfg.redis.host == defaults.redis.host);
    CHECK(cfg.redis.port == defaults.redis.port);
    CHECK(cfg.redis.db == defaults.redis.db);
    CHECK(cfg.redis.username.empty());
    CHECK(cfg.redis.password.empty());
    CHECK(cfg.redis.key_prefix == defaults.redis.key_prefix);
    CHECK(cfg.redis.shards == defaults.redis.shards);
    CHECK(cfg.redis.request_timeout == defaults.redis.request_timeout);
    CHECK(cfg.redis.connect_timeout == defaults.redis.connect_timeout);
    CHECK(cfg.redis.wait_replicas == defaults.redis.wait_replicas);
    CHECK(cfg.redis.wait_timeout == defaults.redis.wait_timeout);
    CHECK(cfg.api_tokens.empty());
    CHECK(cfg.alipay_apps.empty());
    CHECK(cfg.crm.url.empty());
    CHECK(cfg.crm.secrets.empty());
    CHECK(cfg.crm.ca_file.empty());
    CHECK(cfg.crm.timeout == defaults.crm.timeout);
    CHECK(cfg.crm.concurrency == defaults.crm.concurrency);
    CHECK(cfg.crm.retry_schedule == defaults.crm.retry_schedule);
    CHECK(cfg.crm.lease == defaults.crm.lease);
    CHECK(cfg.crm.outbox_retention == defaults.crm.outbox_retention);
    CHECK(cfg.log_level == defaults.log_level);

    REQUIRE(cfg.wechat_merchants.size() == 1);
    CHECK(cfg.wechat_merchants[0].apiv3_key == f.apiv3);
    CHECK(cfg.wechat_merchants[0].apiv2_key.empty());
    CHECK(cfg.wechat_merchants[0].other_appids.empty());
    CHECK(cfg.wechat_merchants[0].public_key_pem.empty());
    CHECK(cfg.wechat_merchants[0].platform_certificates_pem == std::vector<std::string>{f.platform_pem});
}

TEST_CASE("config: given values override the defaults")
{
    MinimalFixture f;
    f.box.write("tls/server.crt", "cert");
    f.box.write("tls/server.key", "key");
    // A bundle as operators write them: a comment, then the certificate.
    f.box.write("ca/bundle.pem", "# the CRM's private CA\n" + keygen::make_ca({.common_name = "CRM CA"}).cert_pem);
    const std::string secret = webhook_secret();
    const LoadReport report = load(f.box, R"({
      "listen": "[::1]:9443", "workers": 3,
      "tls": { "listen": "0.0.0.0:8443", "cert_file": "tls/server.crt", "key_file": "tls/../tls/server.key",
               "routes": ["notify", "metrics"] },
      "limits": { "max_header_bytes": 4096, "max_body_bytes": 1000, "read_timeout_ms": 1, "idle_timeout_ms": 2,
                  "write_timeout_ms": 3, "shutdown_grace_ms": 4, "max_connections": 5 },
      "redis": { "url": "redis://paybridge@redis.internal:6380/3", "key_prefix": "x:", "shards": 4,
                 "request_timeout_ms": 16, "connect_timeout_ms": 7, "wait_replicas": 1, "wait_timeout_ms": 8 },
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                      "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": "env:CRM", "ca_file": "ca/bundle.pem",
               "timeout_ms": 9, "concurrency": 10, "retry_schedule_s": [1, 2], "lease_s": 11,
               "outbox_retention_s": 604800 },
      "log": { "level": "debug" }
    })",
                                     {{"V3", f.apiv3}, {"CRM", secret}});
    INFO(dump(report.problems));
    REQUIRE(report.config);
    const config::Config& cfg = *report.config;
    CHECK(cfg.listen.host == "::1");
    CHECK(cfg.listen.port == 9443);
    CHECK(cfg.workers == 3);
    REQUIRE(cfg.tls);
    CHECK(cfg.tls->listen.host == "0.0.0.0");
    CHECK(cfg.tls->listen.port == 8443);
    CHECK(cfg.tls->cert_file == (f.box.dir() / "tls/server.crt").string());
    CHECK(cfg.tls->key_file == (f.box.dir() / "tls/server.key").string());
    CHECK(cfg.tls->routes == (config::kRoutesNotify | config::kRoutesMetrics));
    CHECK(cfg.limits.max_header_bytes == 4096);
    CHECK(cfg.limits.max_body_bytes == 1000);
    CHECK(cfg.limits.read_timeout == 1ms);
    CHECK(cfg.limits.idle_timeout == 2ms);
    CHECK(cfg.limits.write_timeout == 3ms);
    CHECK(cfg.limits.shutdown_grace == 4ms);
    CHECK(cfg.limits.max_connections == 5);
    CHECK(cfg.redis.username == "paybridge");
    CHECK(cfg.redis.host == "redis.internal");
    CHECK(cfg.redis.port == 6380);
    CHECK(cfg.redis.db == 3);
    CHECK(cfg.redis.key_prefix == "x:");
    CHECK(cfg.redis.shards == 4);
    CHECK(cfg.redis.request_timeout == 16ms);
    CHECK(cfg.redis.connect_timeout == 7ms);
    CHECK(cfg.redis.wait_replicas == 1);
    CHECK(cfg.redis.wait_timeout == 8ms);
    CHECK(cfg.crm.url == "https://crm.example.com/hook");
    CHECK(cfg.crm.secrets == std::vector<std::string>{secret});
    CHECK(cfg.crm.ca_file == (f.box.dir() / "ca/bundle.pem").string());
    CHECK(cfg.crm.timeout == 9ms);
    CHECK(cfg.crm.concurrency == 10);
    CHECK(cfg.crm.retry_schedule == std::vector<std::chrono::seconds>{1s, 2s});
    CHECK(cfg.crm.lease == 11s);
    CHECK(cfg.crm.outbox_retention == 604800s);
    CHECK(cfg.log_level == log::Level::debug);
}

TEST_CASE("config: an unknown key anywhere is an error naming its pointer")
{
    MinimalFixture f;
    f.box.write("alipay.pem", "key");
    const LoadReport report = load(f.box, R"({
      "bogus": 1,
      "limits": { "max_body": 1000 },
      "redis": { "hots": "localhost", "prt": 1, "key_prefix": "pb:" },
      "alipay": { "apps": [ { "app_id": "1", "alipay_public_key_file": "alipay.pem", "app_secret": "x" } ] },
      "wechatpay": { "merchants": [
          { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] },
          { "mchid": "1900000002", "appid": "wx1", "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"],
            "extra": true } ] },
      "log": { "level": "info", "format": "json" },
      "a/b~c": null
    })",
                                     f.env());
    check_problems(report, {
                               "/bogus: unknown property",
                               "/limits/max_body: unknown property",
                               "/redis/hots: unknown property",
                               "/redis/prt: unknown property",
                               "/alipay/apps/0/app_secret: unknown property",
                               "/wechatpay/merchants/1/extra: unknown property",
                               "/log/format: unknown property",
                               "/a~1b~0c: unknown property",
                           });
}

TEST_CASE("config: wait_timeout_ms is at most half of request_timeout_ms when wait_replicas is set")
{
    MinimalFixture f;
    const LoadReport report = load(f.box, R"({
      "redis": { "request_timeout_ms": 2000, "wait_replicas": 1, "wait_timeout_ms": 1001 }
    })");
    check_problems(report, {"/redis/wait_timeout_ms: must be at most half of request_timeout_ms (2000) while "
                            "wait_replicas > 0: a WAIT must end before its request deadline"});
    // Without replicas to wait for, the timeout is not used.
    const LoadReport unused = load(f.box, R"({
      "redis": { "request_timeout_ms": 2000, "wait_replicas": 0, "wait_timeout_ms": 5000 }
    })");
    INFO(dump(unused.problems));
    CHECK(unused.problems.empty());
}

TEST_CASE("config: every problem is reported in one pass")
{
    Sandbox box;
    const LoadReport report = load(box, R"({
      "listen": "0.0.0.0:70000",
      "workers": "4",
      "redis": { "shards": 0, "key_prefix": "{pb}:" },
      "alipay": { "apps": [ { "alipay_public_key_file": "keys/x.pem", "sign_type": "RSA256" } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": "env:PAYBRIDGE_CRM_SECRET",
               "retry_schedule_s": [5, 0, "60", -1], "outbox_retention_s": -1 },
      "limits": { "read_timeout_ms": 1.5, "write_timeout_ms": 0 },
      "log": { "level": "verbose" },
      "tls": { "listen": "0.0.0.0:8443", "cert_file": "c.pem", "key_file": "k.pem", "routes": ["notify", "admin"] }
    })");
    check_problems(
        report,
        {
            "/listen: the port must be a number from 1 to 65535",
            "/workers: must be an integer, not a string",
            "/redis/shards: must be >= 1",
            "/redis/key_prefix: must be a prefix without { or } (they would break the hash tags of the keys)",
            "/alipay/apps/0/app_id: required property missing",
            "/alipay/apps/0/sign_type: must be one of \"RSA2\", \"RSA\"",
            "/alipay/apps/0/alipay_public_key_file: cannot read keys/x.pem: No such file or directory",
            "/crm/secret: environment variable PAYBRIDGE_CRM_SECRET is not set",
            "/crm/retry_schedule_s/1: must be >= 1",
            "/crm/retry_schedule_s/2: must be an integer, not a string",
            "/crm/retry_schedule_s/3: must be >= 1",
            "/crm/outbox_retention_s: must be >= 0",
            "/limits/read_timeout_ms: must be an integer, not a number with a fraction",
            "/limits/write_timeout_ms: must be >= 1",
            "/log/level: must be one of \"debug\", \"info\", \"warning\", \"error\"",
            "/tls/cert_file: cannot read c.pem: No such file or directory",
            "/tls/key_file: cannot read k.pem: No such file or directory",
            "/tls/routes/1: must be one of \"notify\", \"api\", \"health\", \"metrics\"",
        });
}

TEST_CASE("config: wrong shapes are reported once, at the outermost wrong value")
{
    Sandbox box;
    const LoadReport report = load(box, R"({
      "alipay": [ { "app_id": "1" } ],
      "wechatpay": { "merchants": [] },
      "api_tokens": [ { "name": "crm" }, "env:TOKEN", { "name": "ops" } ],
      "crm": { "secret": "env:X" }
    })");
    check_problems(report, {
                               "/alipay: must be an object, not an array",
                               "/wechatpay/merchants: must not be empty",
                               "/api_tokens/0/token: required property missing",
                               "/api_tokens/1: must be an object, not a string",
                               "/api_tokens/2/token: required property missing",
                               "/crm/url: required property missing",
                               "/crm/secret: environment variable X is not set",
                           });

    const LoadReport not_object = load(box, "[1, 2]");
    check_problems(not_object, {"(root): must be an object, not an array"});
}

TEST_CASE("config: each secret form resolves into the Config")
{
    MinimalFixture f;
    f.box.write("secrets/redis.txt", "redis-password\n");
    f.box.write("creds/api", "api-token-0123456789\n");
    const std::string crm = webhook_secret();
    const LoadReport report = load(f.box, R"({
      "redis": { "password": "file:secrets/redis.txt" },
      "api_tokens": [ { "name": "crm", "token": "cred:api" } ],
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                      "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": "env:CRM" }
    })",
                                     {{"V3", f.apiv3},
                                      {"CRM", crm},
                                      {"CREDENTIALS_DIRECTORY", (f.box.dir() / "creds").string()}});
    INFO(dump(report.problems));
    REQUIRE(report.config);
    CHECK(report.config->redis.password == "redis-password");
    REQUIRE(report.config->api_tokens.size() == 1);
    CHECK(report.config->api_tokens[0].token == "api-token-0123456789");
    CHECK(report.config->crm.secrets == std::vector<std::string>{crm});
}

TEST_CASE("config: a secret or private key file every user may read loads, with a warning naming it")
{
    MinimalFixture f;
    f.box.write("secrets/redis.txt", "redis-password\n");
    f.box.write("secrets/crm.txt", webhook_secret() + "\n");
    f.box.write("tls/server.crt", "cert");
    f.box.write("tls/server.key", "key");
    const auto mode = [&](const char* name, std::filesystem::perms perms) {
        std::filesystem::permissions(f.box.dir() / name, perms);
    };
    using P = std::filesystem::perms;
    mode("secrets/redis.txt", P::owner_read | P::owner_write | P::group_read | P::others_read);  // 0644
    mode("secrets/crm.txt", P::owner_read | P::group_read);                                        // 0440: fine
    mode("tls/server.key", P::owner_read | P::others_read);                                        // 0404
    mode("tls/server.crt", P::owner_read | P::owner_write | P::group_read | P::others_read);       // public
    const LoadReport report = load(f.box, R"({
      "tls": { "listen": "127.0.0.1:8443", "cert_file": "tls/server.crt", "key_file": "tls/server.key" },
      "redis": { "password": "file:secrets/redis.txt" },
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                      "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": "file:secrets/crm.txt" }
    })",
                                   f.env());
    INFO(dump(report.problems));
    REQUIRE(report.config);
    CHECK(report.config->redis.password == "redis-password");
    CHECK(report.warnings ==
          std::vector<std::string>{
              "/tls/key_file: tls/server.key holds a secret but every user may read it (mode 0404): chmod o-rwx it",
              "/redis/password: secrets/redis.txt holds a secret but every user may read it (mode 0644): chmod o-rwx it",
          });
}

TEST_CASE("config: more shards than the header limit leaves feed cursors room for load with a warning saying how much")
{
    MinimalFixture f;
    const auto with = [&f](const std::string& members) {
        return load(f.box, R"({ )" + members + R"(
          "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                          "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] } ] } })",
                    f.env());
    };
    // 16 shards (the default), 896 with 8 KiB: room. 1024 with 8 KiB: a cursor can outgrow it.
    for (const char* members : {"", R"("redis": { "shards": 896 },)",
                                R"("redis": { "shards": 1024 }, "limits": { "max_header_bytes": 9216 },)"}) {
        CAPTURE(members);
        const LoadReport report = with(members);
        INFO(dump(report.problems));
        REQUIRE(report.config);
        CHECK(report.warnings.empty());
    }
    const LoadReport report = with(R"("redis": { "shards": 1024 },)");
    INFO(dump(report.problems));
    REQUIRE(report.config);  // a warning: the shard count of a deployment cannot change
    CHECK(report.warnings ==
          std::vector<std::string>{"/limits/max_header_bytes: with 1024 redis.shards, a cursor of GET /v1/events or "
                                   "/v1/anomalies can take about 8192 characters (8 a shard); set at least 9216, and "
                                   "as much in any proxy in front, or such requests are refused (414/431)"});
}

TEST_CASE("config: a file others may change loads, with a warning naming it: the configuration, a key, a secret")
{
    MinimalFixture f;
    f.box.write("secrets/redis.txt", "redis-password\n");
    f.box.write("secrets/crm.txt", webhook_secret() + "\n");
    const auto config_path = f.box.write("paybridge.json", R"({
      "redis": { "password": "file:secrets/redis.txt" },
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                      "apiv3_key": "env:V3", "platform_certificates": ["platform.pem"] } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": "file:secrets/crm.txt" }
    })");
    const auto mode = [&](const std::filesystem::path& path, std::filesystem::perms perms) {
        std::filesystem::permissions(path, perms);
    };
    using P = std::filesystem::perms;
    mode(config_path, P::owner_read | P::owner_write | P::group_read | P::group_write);      // 0660
    mode(f.box.dir() / "platform.pem", P::owner_read | P::group_read | P::others_read | P::others_write);  // 0446
    mode(f.box.dir() / "secrets/redis.txt", P::owner_read | P::group_read | P::group_write);              // 0460
    mode(f.box.dir() / "secrets/crm.txt", P::owner_read | P::owner_write);                                 // 0600
    std::vector<std::string> expected{
        config_path.string() +
            " may be changed by users other than its owner (mode 0660), and paybridged trusts what it holds: chmod "
            "go-w it",
        "/redis/password: secrets/redis.txt may be changed by users other than its owner (mode 0460), and "
        "paybridged trusts what it holds: chmod go-w it",
        "/wechatpay/merchants/0/platform_certificates/0: platform.pem may be changed by users other than its owner "
        "(mode 0446), and paybridged trusts what it holds: chmod go-w it"};
    // A third user's file, with safe permission bits. Only root can give a file away.
    const unsigned self = static_cast<unsigned>(::geteuid());
    if (self == 0) {
        REQUIRE(::chown((f.box.dir() / "secrets/crm.txt").c_str(), 65534, 65534) == 0);
        expected.push_back("/crm/secret: secrets/crm.txt is owned by uid 65534, neither root nor the user paybridged "
                           "runs as (uid 0), who may change it, and paybridged trusts what it holds: chown it");
    } else {
        MESSAGE("not root: the third-owner case is not exercised");
    }
    const LoadReport report = config::load_config(config_path, SecretSource(f.env()));
    INFO(dump(report.problems));
    REQUIRE(report.config);
    CHECK(report.config->redis.password == "redis-password");
    std::vector<std::string> got = report.warnings;
    REQUIRE_FALSE(got.empty());
    CHECK(got.front() == expected.front());  // the configuration itself comes first
    std::sort(got.begin(), got.end());
    std::sort(expected.begin(), expected.end());
    INFO("got:\n" << dump(got) << "expected:\n" << dump(expected));
    CHECK(got == expected);
}

TEST_CASE("config: an API token that no request could present is refused")
{
    // HTTP trims the Authorization value, so a token ending in a space (a token file written by
    // hand) would make every request a 401 while --check said the configuration is fine.
    MinimalFixture f;
    f.box.write("creds/spaced", "api-token-0123456789 \n");
    f.box.write("creds/inner", "api-token 0123456789\n");
    f.box.write("creds/padded", "api-token-0123456789==\n");
    const std::string json = R"({
      "api_tokens": [ { "name": "a", "token": "cred:spaced" }, { "name": "b", "token": "cred:inner" },
                      { "name": "c", "token": "cred:padded" } ]
    })";
    const LoadReport report = load(f.box, json, {{"CREDENTIALS_DIRECTORY", (f.box.dir() / "creds").string()}});
    const std::string rule = " of the token is not allowed in a bearer token (RFC 6750: letters, digits and -._~+/, "
                             "then = only at the end; no spaces)";
    check_problems(report, {
                               "/api_tokens/0/token: byte 20" + rule,
                               "/api_tokens/1/token: byte 9" + rule,
                           });
}

TEST_CASE("config: inline secrets are rejected, naming the key and not the value")
{
    MinimalFixture f;
    const std::string inline_secret = webhook_secret();
    const LoadReport report = load(f.box, R"({
      "redis": { "password": "hunter2hunter2" },
      "api_tokens": [ { "name": "crm", "token": "0123456789abcdef0123" } ],
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1",
                                      "apiv3_key": "0123456789abcdef0123456789abcdef",
                                      "platform_certificates": ["platform.pem"] } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": ")" + inline_secret + R"(" }
    })",
                                     f.env());
    const std::string rule =
        ": must be a secret reference (env:NAME, file:PATH or cred:NAME); inline secret values are not allowed";
    check_problems(report, {
                               "/redis/password" + rule,
                               "/api_tokens/0/token" + rule,
                               "/wechatpay/merchants/0/apiv3_key" + rule,
                               "/crm/secret" + rule,
                           });
    for (const std::string& line : report.problems) {
        CHECK(line.find(inline_secret) == std::string::npos);
        CHECK(line.find("hunter2") == std::string::npos);
        CHECK(line.find("0123456789abcdef") == std::string::npos);
    }
}

TEST_CASE("config: missing and unreadable files")
{
    const LoadReport absent = config::load_config("/nonexistent/paybridge.json", SecretSource(SecretSource::Environment{}));
    REQUIRE(absent.problems.size() == 1);
    CHECK(absent.problems[0] == "cannot read /nonexistent/paybridge.json: No such file or directory");
    CHECK_FALSE(absent.config);

    MinimalFixture f;
    f.box.write("empty.pem", "");
    f.box.write("tls/server.crt", "cert");
    f.box.write("not-a-ca.pem", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    const LoadReport report = load(f.box, R"({
      "tls": { "listen": "127.0.0.1:8443", "cert_file": "tls/server.crt", "key_file": "tls/missing.key" },
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3",
                                      "public_key_id": "PUB_KEY_ID_01", "public_key_file": "empty.pem",
                                      "platform_certificates": ["platform.pem", "gone.pem", "tls"] } ] },
      "crm": { "url": "https://crm.example.com/hook", "secret": "file:secrets/crm", "ca_file": "/nonexistent/ca.pem" }
    })",
                                     f.env());
    // A CA file that exists but holds no certificate, and a lease no longer than one attempt: both
    // would be refused by the CRM dispatcher at its start, after --check and a reload had said yes.
    const LoadReport crm = load(f.box, R"({
      "crm": { "url": "https://crm.example.com/hook", "secret": "env:CRM", "ca_file": "not-a-ca.pem",
               "timeout_ms": 60000, "lease_s": 60 }
    })",
                                {{"V3", f.apiv3}, {"CRM", webhook_secret()}});
    check_problems(crm, {
                            "/crm/ca_file: not-a-ca.pem holds a PEM certificate block that does not read (damaged "
                            "base64 or DER), so OpenSSL would refuse the whole file",
                            "/crm/lease_s: must be longer than timeout_ms (60000 ms): an attempt that outlives "
                            "its lease is taken over and sent again by another instance",
                        });
    // A bundle whose first certificate reads and whose second is damaged: OpenSSL refuses the whole
    // file when the dispatcher loads it. A file of comments holds no certificate at all.
    const std::string good = keygen::make_ca({.common_name = "CRM CA"}).cert_pem;
    std::string damaged = keygen::make_ca({.common_name = "Old CRM CA"}).cert_pem;
    damaged[damaged.find('\n') + 10] = '*';
    f.box.write("damaged.pem", good + damaged);
    f.box.write("comments.pem", "# the CRM's CA goes here\n");
    for (const auto& [file, why] : std::vector<std::pair<std::string, std::string>>{
             {"damaged.pem", "holds a PEM certificate block that does not read (damaged base64 or DER), so OpenSSL "
                             "would refuse the whole file"},
             {"comments.pem", "holds no PEM certificate"}}) {
        CAPTURE(file);
        const LoadReport bundle = load(f.box, R"({"crm": { "url": "https://crm.example.com/hook", "secret": "env:CRM",
                                                           "ca_file": ")" + file + R"(" }})",
                                       {{"V3", f.apiv3}, {"CRM", webhook_secret()}});
        check_problems(bundle, {"/crm/ca_file: " + file + " " + why});
    }
    check_problems(report, {
                               "/tls/key_file: cannot read tls/missing.key: No such file or directory",
                               "/wechatpay/merchants/0/public_key_file: empty.pem is empty",
                               "/wechatpay/merchants/0/platform_certificates/1: cannot read gone.pem: No such file or "
                               "directory",
                               "/wechatpay/merchants/0/platform_certificates/2: cannot read tls: Is a directory",
                               "/crm/secret: cannot read secrets/crm: No such file or directory",
                               "/crm/ca_file: cannot read /nonexistent/ca.pem: No such file or directory",
                           });
}

TEST_CASE("config: invalid JSON and duplicate keys")
{
    Sandbox box;
    const LoadReport syntax = load(box, "{\n  \"listen\": \"127.0.0.1:8080\",\n  }\n");
    REQUIRE(syntax.problems.size() == 1);
    CHECK(syntax.problems[0] == (box.dir() / "paybridge.json").string() +
                                    ":3:3: invalid JSON: Missing a name for object member.");
    CHECK_FALSE(syntax.config);

    const LoadReport bom = load(box, "\xEF\xBB\xBF{ \"log\": { \"level\": \"error\" } }");
    INFO(dump(bom.problems));
    REQUIRE(bom.config);
    CHECK(bom.config->log_level == log::Level::error);

    const LoadReport latin1 = load(box, "{ \"api_tokens\": [ { \"name\": \"caf\xE9\", \"token\": \"env:T\" } ] }");
    REQUIRE(latin1.problems.size() == 1);
    CAPTURE(latin1.problems[0]);
    CHECK(latin1.problems[0].find(":1:33: invalid JSON: Invalid encoding in string.") != std::string::npos);

    const LoadReport trailing = load(box, "{} {}");
    REQUIRE(trailing.problems.size() == 1);
    CHECK(trailing.problems[0].find(":1:4: invalid JSON:") != std::string::npos);

    const LoadReport duplicate = load(box, R"({ "listen": "127.0.0.1:1", "redis": { "shards": 1, "shards": 2 },
                                               "listen": "127.0.0.1:2" })");
    check_problems(duplicate, {"/listen: duplicate key", "/redis/shards: duplicate key"});
}

TEST_CASE("config: URLs and listen addresses")
{
    struct Case {
        const char* name;
        std::string json;
        std::string problem;  ///< empty: loads
    };
    const std::string tail = R"(, "wechatpay": { "merchants": [ { "mchid": "1", "appid": "wx1", "apiv3_key": "env:V3",
                                                  "platform_certificates": ["platform.pem"] } ] } })";
    auto redis = [&](const char* url) { return std::string(R"({ "redis": { "url": ")") + url + "\" }" + tail; };
    auto crm = [&](const char* url) {
        return std::string(R"({ "crm": { "url": ")") + url + R"(", "secret": "env:CRM" })" + tail;
    };
    auto listen = [&](const char* at) { return std::string(R"({ "listen": ")") + at + "\"" + tail; };
    const std::vector<Case> cases = {
        {"redis ok", redis("redis://127.0.0.1"), ""},
        {"redis user", redis("redis://pb@[::1]:6380/2"), ""},
        {"redis inline password", redis("redis://pb:hunter2@127.0.0.1:6379/0"),
         "/redis/url: a password must not be written in the URL; set \"password\" to a secret reference (env:NAME, "
         "file:PATH or cred:NAME)"},
        {"redis port", redis("redis://127.0.0.1:0/0"), "/redis/url: the port must be a number from 1 to 65535"},
        {"redis db", redis("redis://127.0.0.1:6379/zero"),
         "/redis/url: the database after / must be a number from 0 to 999999"},
        {"redis query", redis("redis://127.0.0.1:6379/0?timeout=1"),
         "/redis/url: query strings and fragments are not supported"},
        {"redis scheme", redis("rediss://127.0.0.1:6379/0"),
         "/redis/url: must be a redis://[user@]host[:port][/db] URL"},
        {"redis host", redis("redis://:6379"), "/redis/url: the host is empty"},
        {"crm ok", crm("https://crm.example.com:8443/paybridge/events?x=1"), ""},
        {"crm scheme", crm("ftp://crm.example.com/hook"), "/crm/url: must be an http:// or https:// URL"},
        {"crm port", crm("https://crm.example.com:99999/hook"), "/crm/url: the port must be a number from 1 to 65535"},
        {"crm credentials", crm("https://user:pw@crm.example.com/hook"),
         "/crm/url: must not contain credentials (user:password@)"},
        {"crm fragment", crm("https://crm.example.com/hook#x"), "/crm/url: must not contain a #fragment"},
        {"listen no port", listen("localhost"),
         "/listen: must be host:port (an IPv6 address in brackets: [::1]:8080)"},
        {"listen v6 unbracketed", listen("::1:8080"),
         "/listen: an IPv6 address must be written in brackets, e.g. [::1]:8080"},
        {"listen port 0", listen("127.0.0.1:0"), "/listen: the port must be a number from 1 to 65535"},
        {"listen v6", listen("[::]:8080"), ""},
        {"listen host name", listen("localhost:8080"),
         "/listen: the host \"localhost\" is not an IP address; listen on an address such as 127.0.0.1, 0.0.0.0 or "
         "[::1]"},
        {"listen scoped v6", listen("[fe80::1%eth0]:8080"), ""},
        {"listen bad v4", listen("127.0.0.256:8080"),
         "/listen: the host \"127.0.0.256\" is not an IP address; listen on an address such as 127.0.0.1, 0.0.0.0 or "
         "[::1]"},
    };
    MinimalFixture f;
    for (const Case& c : cases) {
        CAPTURE(c.name);
        const LoadReport report = load(f.box, c.json, {{"V3", f.apiv3}, {"CRM", webhook_secret()}});
        INFO(dump(report.problems));
        if (c.problem.empty()) {
            CHECK(report.config);
        } else {
            check_problems(report, {c.problem});
        }
    }
}

TEST_CASE("config: semantic checks of the gateways")
{
    MinimalFixture f;
    f.box.write("alipay.pem", "key");
    f.box.write("alipay.crt", "cert");
    f.box.write("root.crt", "root");
    f.box.write("wx.pem", "key");
    const LoadReport report = load(f.box, R"({
      "alipay": { "apps": [
          { "app_id": "1", "alipay_public_key_file": "alipay.pem", "alipay_root_cert_file": "missing-root.crt" },
          { "app_id": "2", "alipay_public_cert_file": "alipay.crt" },
          { "app_id": "3" },
          { "app_id": "1", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt" } ] },
      "wechatpay": { "merchants": [
          { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:SHORT", "apiv2_key": "env:LONG" },
          { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3", "public_key_file": "wx.pem" },
          { "mchid": "1900000003", "appid": "wx1", "apiv3_key": "env:V3", "public_key_id": "PUB_0001",
            "public_key_file": "wx.pem" },
          { "mchid": "1900000004", "appid": "wx1", "apiv3_key": "env:V3", "public_key_id": "PUB_KEY_ID_01",
            "platform_certificates": ["platform.pem"] } ] }
    })",
                                     {{"V3", f.apiv3},
                                      {"SHORT", keygen::random_token(31)},
                                      {"LONG", keygen::random_token(33)}});
    check_problems(
        report,
        {
            "/alipay/apps/0: give either alipay_public_key_file (public-key mode) or alipay_public_cert_file and "
            "alipay_root_cert_file (certificate mode), not both",
            "/alipay/apps/0/alipay_root_cert_file: cannot read missing-root.crt: No such file or directory",
            "/alipay/apps/1/alipay_root_cert_file: required in certificate mode (alipay_public_cert_file is set)",
            "/alipay/apps/2/alipay_public_key_file: required property missing (or alipay_public_cert_file and "
            "alipay_root_cert_file for certificate mode)",
            "/alipay/apps/3/app_id: duplicates /alipay/apps/0/app_id",
            "/wechatpay/merchants/0/apiv3_key: must be exactly 32 bytes long, got 31",
            "/wechatpay/merchants/0/apiv2_key: must be exactly 32 bytes long, got 33",
            "/wechatpay/merchants/0: needs public_key_file (with public_key_id), platform_certificates, "
            "download_certificates, or more than one of them",
            "/wechatpay/merchants/1/mchid: duplicates /wechatpay/merchants/0/mchid",
            "/wechatpay/merchants/1/public_key_id: required when public_key_file is set",
            "/wechatpay/merchants/2/public_key_id: must start with PUB_KEY_ID_",
            "/wechatpay/merchants/3/public_key_file: required when public_key_id is set",
        });
}

TEST_CASE("config: redis.sentinel names the master and the sentinels to ask")
{
    MinimalFixture f;
    const LoadReport good = load(f.box, R"({ "redis": { "url": "redis://paybridge@ignored:1/2",
        "sentinel": { "master": "pb-main", "nodes": ["10.0.0.1:26379", "[::1]:26380", "sentinel.internal:26381"],
                      "username": "watcher", "password": "env:SPW" } } })",
                                 {{"SPW", "sentinel secret"}});
    INFO(dump(good.problems));
    REQUIRE(good.config);
    const config::SentinelConfig& s = good.config->redis.sentinel;
    CHECK(s.master == "pb-main");
    REQUIRE(s.nodes.size() == 3);
    CHECK(s.nodes[0] == config::Endpoint{"10.0.0.1", 26379});
    CHECK(s.nodes[1] == config::Endpoint{"::1", 26380});
    CHECK(s.nodes[2] == config::Endpoint{"sentinel.internal", 26381});
    CHECK(s.username == "watcher");
    CHECK(s.password == "sentinel secret");
    CHECK(good.config->redis.db == 2);  // the URL still gives the database and the user
    CHECK(good.config->redis.username == "paybridge");
    CHECK(config::Config{}.redis.sentinel.nodes.empty());  // off by default

    const LoadReport bad = load(f.box, R"({ "redis": { "sentinel": { "nodes": ["10.0.0.1:26379", "10.0.0.1:26379",
        "10.0.0.2"], "password": "inline" } } })");
    check_problems(bad, {
                            "/redis/sentinel/master: required property missing",
                            "/redis/sentinel/nodes/1: duplicates /redis/sentinel/nodes/0",
                            "/redis/sentinel/nodes/2: the port is missing",
                            "/redis/sentinel/password: must be a secret reference (env:NAME, file:PATH or cred:NAME); "
                            "inline secret values are not allowed",
                        });
    const LoadReport empty = load(f.box, R"({ "redis": { "sentinel": { "master": "m", "nodes": [] } } })");
    check_problems(empty, {"/redis/sentinel/nodes: must not be empty"});
    const LoadReport user_only =
        load(f.box, R"({ "redis": { "sentinel": { "master": "m", "nodes": ["10.0.0.1:26379"], "username": "u" } } })");
    check_problems(user_only, {"/redis/sentinel/username: needs password (AUTH on the sentinels takes both)"});
}

TEST_CASE("config: redis.cluster names the nodes to ask for the slot map")
{
    MinimalFixture f;
    const LoadReport good = load(f.box, R"({ "redis": { "url": "redis://paybridge@ignored:1",
        "cluster": { "nodes": ["10.0.0.1:7000", "[::1]:7001", "redis-2.internal:7002"] } } })");
    INFO(dump(good.problems));
    REQUIRE(good.config);
    const config::ClusterConfig& c = good.config->redis.cluster;
    REQUIRE(c.nodes.size() == 3);
    CHECK(c.nodes[0] == config::Endpoint{"10.0.0.1", 7000});
    CHECK(c.nodes[1] == config::Endpoint{"::1", 7001});
    CHECK(c.nodes[2] == config::Endpoint{"redis-2.internal", 7002});
    CHECK(good.config->redis.username == "paybridge");  // the URL still gives the user
    CHECK(config::Config{}.redis.cluster.nodes.empty());  // off by default

    const LoadReport bad = load(f.box, R"({ "redis": { "url": "redis://h:1/3",
        "cluster": { "nodes": ["10.0.0.1:7000", "10.0.0.1:7000", "10.0.0.2"], "master": "m" },
        "sentinel": { "master": "m", "nodes": ["10.0.0.9:26379"] } } })");
    check_problems(bad, {
                            "/redis/cluster: cannot be combined with sentinel (a cluster fails over by itself)",
                            "/redis/cluster/master: unknown property",
                            "/redis/cluster/nodes/1: duplicates /redis/cluster/nodes/0",
                            "/redis/cluster/nodes/2: the port is missing",
                            "/redis/url: must name db 0 (or none) with cluster: Redis Cluster has only db 0",
                        });
    const LoadReport empty = load(f.box, R"({ "redis": { "cluster": { "nodes": [] } } })");
    check_problems(empty, {"/redis/cluster/nodes: must not be empty"});
}

TEST_CASE("config: an Alipay key rotation names the previous key in the app's own mode")
{
    MinimalFixture f;
    f.box.write("alipay.pem", "new key");
    f.box.write("alipay-old.pem", "old key");
    f.box.write("alipay.crt", "new cert");
    f.box.write("alipay-old.crt", "old cert");
    f.box.write("root.crt", "root");
    const LoadReport good = load(f.box, R"({ "alipay": { "apps": [
        { "app_id": "1", "alipay_public_key_file": "alipay.pem", "previous_alipay_public_key_file": "alipay-old.pem" },
        { "app_id": "2", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
          "previous_alipay_public_cert_file": "alipay-old.crt" } ] } })");
    INFO(dump(good.problems));
    REQUIRE(good.config);
    REQUIRE(good.config->alipay_apps.size() == 2);
    CHECK(good.config->alipay_apps[0].public_key_pem == "new key");
    CHECK(good.config->alipay_apps[0].previous_public_key_pem == "old key");
    CHECK(good.config->alipay_apps[0].previous_public_cert_pem.empty());
    CHECK(good.config->alipay_apps[1].public_cert_pem == "new cert");
    CHECK(good.config->alipay_apps[1].previous_public_cert_pem == "old cert");
    CHECK(good.config->alipay_apps[1].previous_public_key_pem.empty());

    const LoadReport bad = load(f.box, R"({ "alipay": { "apps": [
        { "app_id": "1", "alipay_public_key_file": "alipay.pem", "previous_alipay_public_cert_file": "alipay-old.crt" },
        { "app_id": "2", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
          "previous_alipay_public_key_file": "alipay-old.pem" },
        { "app_id": "3", "alipay_public_key_file": "alipay.pem", "previous_alipay_public_key_file": "gone.pem" } ] } })");
    check_problems(bad, {
                            "/alipay/apps/0/previous_alipay_public_cert_file: only in certificate mode (with "
                            "alipay_public_cert_file); in public-key mode give previous_alipay_public_key_file",
                            "/alipay/apps/1/previous_alipay_public_key_file: only in public-key mode (with "
                            "alipay_public_key_file); in certificate mode give previous_alipay_public_cert_file",
                            "/alipay/apps/2/previous_alipay_public_key_file: cannot read gone.pem: No such file or "
                            "directory",
                        });
}

TEST_CASE("config: API tokens and CRM secrets")
{
    MinimalFixture f;
    const std::string token = keygen::random_token(20);
    const std::string old_secret = webhook_secret();
    const std::string new_secret = webhook_secret();
    const std::string wechat = R"(, "wechatpay": { "merchants": [ { "mchid": "1", "appid": "wx1", "apiv3_key": "env:V3",
                                                    "platform_certificates": ["platform.pem"] } ] } })";
    SecretSource::Environment env = {{"V3", f.apiv3},   {"TOKEN", token},           {"SHORT", "short-token"},
                                     {"OLD", old_secret}, {"NEW", new_secret},       {"PLAIN", "not-a-webhook-secret"},
                                     {"NOT_B64", "whsec_!!!!"}, {"UNPADDED", "whsec_abc"},
                                     {"OTHER", keygen::random_token(20)}};

    const LoadReport tokens = load(f.box, R"({ "api_tokens": [
        { "name": "crm", "token": "env:TOKEN" }, { "name": "crm", "token": "env:SHORT" },
        { "name": "ops", "token": "env:TOKEN" }, { "name": "bad name", "token": "env:OTHER" } ])" + wechat,
                                   env);
    check_problems(tokens, {
                               "/api_tokens/1/name: duplicates /api_tokens/0/name",
                               "/api_tokens/1/token: the token must be at least 16 bytes long, got 11",
                               "/api_tokens/2/token: duplicates /api_tokens/0/token",
                               "/api_tokens/3/name: must be a name of letters, digits, '-', '_' or '.'",
                           });
    for (const std::string& line : tokens.problems) {
        CHECK(line.find(token) == std::string::npos);
        CHECK(line.find("short-token") == std::string::npos);
    }

    const LoadReport rotation = load(f.box, R"({ "crm": { "url": "http://127.0.0.1:9000/e",
                                                         "secrets": ["env:NEW", "env:OLD"] })" + wechat,
                                     env);
    INFO(dump(rotation.problems));
    REQUIRE(rotation.config);
    CHECK(rotation.config->crm.secrets == std::vector<std::string>{new_secret, old_secret});

    const LoadReport bad = load(f.box, R"({ "crm": { "url": "http://127.0.0.1:9000/e",
                                                    "secrets": ["env:PLAIN", "env:NOT_B64"] })" + wechat,
                                env);
    check_problems(bad, {
                            "/crm/secrets/0: must start with \"whsec_\" (a Standard Webhooks secret)",
                            "/crm/secrets/1: the part after \"whsec_\" must be base64",
                        });

    const LoadReport unpadded = load(f.box, R"({ "crm": { "url": "http://h/e", "secret": "env:UNPADDED" })" + wechat,
                                     env);
    check_problems(unpadded, {"/crm/secret: the part after \"whsec_\" must be base64"});

    const LoadReport both = load(f.box, R"({ "crm": { "url": "http://h/e", "secret": "env:NEW",
                                                     "secrets": ["env:OLD"] })" + wechat,
                                 env);
    check_problems(both, {"/crm: give either secret or secrets (during a rotation), not both"});

    const LoadReport neither = load(f.box, R"({ "crm": { "url": "http://h/e" })" + wechat, env);
    check_problems(neither, {"/crm/secret: required property missing (or secrets, during a rotation)"});

    const LoadReport three = load(f.box, R"({ "crm": { "url": "http://h/e",
                                                      "secrets": ["env:NEW", "env:OLD", "env:OLD"] })" + wechat,
                                  env);
    check_problems(three, {"/crm/secrets: must have at most 2 items"});

    const LoadReport same = load(f.box, R"({ "crm": { "url": "http://h/e", "secrets": ["env:NEW", "env:NEW"] })" +
                                            wechat,
                                 env);
    check_problems(same, {"/crm/secrets/1: duplicates /crm/secrets/0"});
}

TEST_CASE("config: the TLS listener must not take the plain listener's address")
{
    MinimalFixture f;
    f.box.write("tls.crt", "cert");
    f.box.write("tls.key", "key");
    const LoadReport report = load(f.box, R"({ "listen": "127.0.0.1:8080",
      "tls": { "listen": "0.0.0.0:8080", "cert_file": "tls.crt", "key_file": "tls.key" },
      "wechatpay": { "merchants": [ { "mchid": "1", "appid": "wx1", "apiv3_key": "env:V3",
                                      "platform_certificates": ["platform.pem"] } ] } })",
                                   f.env());
    check_problems(report, {"/tls/listen: must not be the same address and port as /listen"});

    // A broken /listen is reported alone, not compared with its default.
    const LoadReport broken = load(f.box, R"({ "listen": "127.0.0.1:0",
      "tls": { "listen": "127.0.0.1:8080", "cert_file": "tls.crt", "key_file": "tls.key" },
      "wechatpay": { "merchants": [ { "mchid": "1", "appid": "wx1", "apiv3_key": "env:V3",
                                      "platform_certificates": ["platform.pem"] } ] } })",
                                   f.env());
    check_problems(broken, {"/listen: the port must be a number from 1 to 65535"});
}

TEST_CASE("config: load_config_text resolves paths against the folder of the path it is given")
{
    MinimalFixture f;
    const LoadReport report =
        config::load_config_text(kMinimal, f.box.dir() / "sub" / ".." / "virtual.json", SecretSource(f.env()));
    INFO(dump(report.problems));
    REQUIRE(report.config);
    CHECK(report.config->path == (f.box.dir() / "virtual.json").string());
    CHECK(report.config->wechat_merchants[0].platform_certificates_pem == std::vector<std::string>{f.platform_pem});
}

TEST_CASE("config: provider_query is off without its section and takes its keys and defaults with it")
{
    MinimalFixture f;
    {
        const LoadReport report = load(f.box, kMinimal, f.env());
        REQUIRE(report.config);
        CHECK_FALSE(report.config->provider_query.enabled);
        CHECK(report.config->wechat_merchants[0].merchant_private_key_pem.empty());
        CHECK(report.config->wechat_merchants[0].api_url == "https://api.mch.weixin.qq.com");
    }
    const auto app_key = keygen::generate_rsa();
    const auto merchant_key = keygen::generate_rsa();
    f.box.write("alipay_public.pem", keygen::generate_rsa().public_pem);
    f.box.write("app_private.pem", app_key.private_pem);
    {
        const LoadReport report = load(f.box, R"({
          "alipay": { "apps": [ { "app_id": "2021000000000001", "alipay_public_key_file": "alipay_public.pem",
                                  "app_private_key": "file:app_private.pem" } ] },
          "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3",
                                          "platform_certificates": ["platform.pem"],
                                          "merchant_private_key": "env:MCH_KEY", "merchant_serial_no": "5157F09EFDC096DE15EBE81A47057A72" } ] },
          "provider_query": {}
        })",
                                         {{"V3", f.apiv3}, {"MCH_KEY", merchant_key.private_pem}});
        INFO(dump(report.problems));
        REQUIRE(report.config);
        const config::Config& cfg = *report.config;
        const config::ProviderQueryConfig defaults;
        CHECK(cfg.provider_query.enabled);
        CHECK(cfg.provider_query.after == defaults.after);
        CHECK(cfg.provider_query.until == defaults.until);
        CHECK(cfg.provider_query.max_gap == defaults.max_gap);
        CHECK(cfg.provider_query.interval == defaults.interval);
        CHECK(cfg.provider_query.batch == defaults.batch);
        CHECK(cfg.provider_query.concurrency == defaults.concurrency);
        CHECK(cfg.provider_query.timeout == defaults.timeout);
        CHECK(cfg.provider_query.ca_file.empty());
        CHECK(defaults.after == 300s);
        CHECK(defaults.until == 93600s);
        // A secret file's final newline is not part of the secret.
        CHECK(cfg.alipay_apps[0].app_private_key_pem + "\n" == app_key.private_pem);
        CHECK(cfg.alipay_apps[0].gateway_url == "https://openapi.alipay.com/gateway.do");
        CHECK(cfg.wechat_merchants[0].merchant_private_key_pem == merchant_key.private_pem);
        CHECK(cfg.wechat_merchants[0].merchant_serial_no == "5157F09EFDC096DE15EBE81A47057A72");
    }
    {
        f.box.write("ca.pem", keygen::make_ca({.common_name = "Provider CA"}).cert_pem);
        const LoadReport report = load(f.box, R"({
          "alipay": { "apps": [ { "app_id": "2021000000000001", "alipay_public_key_file": "alipay_public.pem",
                                  "app_private_key": "file:app_private.pem",
                                  "gateway_url": "http://127.0.0.1:9001/gateway.do" } ] },
          "provider_query": { "after_s": 60, "until_s": 7200, "max_gap_s": 600, "interval_s": 5, "batch": 7,
                              "concurrency": 2, "timeout_ms": 1500, "ca_file": "ca.pem" }
        })");
        INFO(dump(report.problems));
        REQUIRE(report.config);
        const config::ProviderQueryConfig& q = report.config->provider_query;
        CHECK(q.after == 60s);
        CHECK(q.until == 7200s);
        CHECK(q.max_gap == 600s);
        CHECK(q.interval == 5s);
        CHECK(q.batch == 7);
        CHECK(q.concurrency == 2);
        CHECK(q.timeout == 1500ms);
        CHECK(q.ca_file == (f.box.dir() / "ca.pem").string());
        CHECK(report.config->alipay_apps[0].gateway_url == "http://127.0.0.1:9001/gateway.do");
    }
}

TEST_CASE("config: provider_query problems name their keys")
{
    MinimalFixture f;
    f.box.write("alipay_public.pem", "key");
    f.box.write("alipay.crt", "cert");
    f.box.write("root.crt", "root");
    f.box.write("app.crt", "cert");
    const LoadReport report = load(f.box, R"({
      "alipay": { "apps": [
          { "app_id": "1", "alipay_public_key_file": "alipay_public.pem", "app_public_cert_file": "app.crt",
            "gateway_url": "ftp://openapi.alipay.com/gateway.do" },
          { "app_id": "2", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
            "app_private_key": "env:APP_KEY" } ] },
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3",
                                      "platform_certificates": ["platform.pem"], "merchant_serial_no": "ABC" } ] },
      "provider_query": { "after_s": 600, "until_s": 600 }
    })",
                                     {{"V3", f.apiv3}, {"APP_KEY", "-----BEGIN PRIVATE KEY-----"}});
    check_problems(report,
                   {
                       "/alipay/apps/0/app_public_cert_file: only in certificate mode (with alipay_public_cert_file)",
                       "/alipay/apps/0/gateway_url: must be an http:// or https:// URL",
                       "/alipay/apps/1/app_public_cert_file: required with app_private_key in certificate mode (its "
                       "SN is sent as app_cert_sn)",
                       "/wechatpay/merchants/0: give merchant_private_key and merchant_serial_no together (active "
                       "queries are signed with the key and name its certificate's serial)",
                       "/provider_query/until_s: must be greater than after_s (600 s)",
                   });

    // A section with no account that can sign a query is a mistake, not a silent no-op.
    const LoadReport none = load(f.box, std::string(kMinimal.substr(0, kMinimal.size() - 2)) + R"(, "provider_query": {} })",
                                 f.env());
    check_problems(none, {"/provider_query: no account to query: give an Alipay app an app_private_key or a WeChat "
                          "Pay merchant a merchant_private_key and merchant_serial_no"});
}

TEST_CASE("config: download_certificates needs the merchant's signing key and stands in for configured WeChat Pay keys")
{
    MinimalFixture f;
    const LoadReport bad = load(f.box, R"({
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3",
                                      "download_certificates": true },
                                    { "mchid": "1900000002", "appid": "wx2", "apiv3_key": "env:V3",
                                      "download_certificates": "yes" } ] }
    })",
                                {{"V3", f.apiv3}});
    check_problems(bad, {
                            "/wechatpay/merchants/0/download_certificates: needs merchant_private_key and "
                            "merchant_serial_no (the download is a signed request)",
                            "/wechatpay/merchants/1/download_certificates: must be a boolean, not a string",
                        });

    const LoadReport good = load(f.box, R"({
      "wechatpay": { "merchants": [ { "mchid": "1900000001", "appid": "wx1", "apiv3_key": "env:V3",
                                      "download_certificates": true, "merchant_private_key": "env:MCH_KEY",
                                      "merchant_serial_no": "5157F09EFDC096DE15EBE81A47057A72" } ] }
    })",
                                 {{"V3", f.apiv3}, {"MCH_KEY", "-----BEGIN PRIVATE KEY-----"}});
    REQUIRE(good.config);
    CHECK(good.problems.empty());
    CHECK(good.config->wechat_merchants[0].download_certificates);
    CHECK(good.config->wechat_merchants[0].platform_certificates_pem.empty());
    CHECK(good.config->wechat_merchants[0].public_key_pem.empty());
}

TEST_CASE("config: an Alipay app's download_certificates needs certificate mode and the app's signing key")
{
    MinimalFixture f;
    f.box.write("alipay_public.pem", "key");
    f.box.write("alipay.crt", "cert");
    f.box.write("root.crt", "root");
    f.box.write("app.crt", "app cert");
    const LoadReport bad = load(f.box, R"({
      "alipay": { "apps": [
          { "app_id": "1", "alipay_public_key_file": "alipay_public.pem", "app_private_key": "env:APP_KEY",
            "download_certificates": true },
          { "app_id": "2", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
            "download_certificates": true },
          { "app_id": "3", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
            "app_private_key": "env:APP_KEY", "download_certificates": true },
          { "app_id": "4", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
            "app_private_key": "env:APP_KEY", "app_public_cert_file": "app.crt", "download_certificates": "yes" },
          { "app_id": "5", "alipay_public_key_file": "alipay_public.pem", "download_certificates": false } ] }
    })",
                                {{"APP_KEY", "-----BEGIN PRIVATE KEY-----"}});
    check_problems(bad, {
                            "/alipay/apps/0/download_certificates: only in certificate mode (alipay_public_cert_file "
                            "and alipay_root_cert_file, which the downloaded certificate must chain to)",
                            "/alipay/apps/1/download_certificates: needs app_private_key and app_public_cert_file "
                            "(the download is a signed request)",
                            "/alipay/apps/2/app_public_cert_file: required with app_private_key in certificate mode "
                            "(its SN is sent as app_cert_sn)",
                            "/alipay/apps/2/download_certificates: needs app_private_key and app_public_cert_file "
                            "(the download is a signed request)",
                            "/alipay/apps/3/download_certificates: must be a boolean, not a string",
                        });

    const LoadReport good = load(f.box, R"({
      "alipay": { "apps": [
          { "app_id": "1", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt",
            "app_private_key": "env:APP_KEY", "app_public_cert_file": "app.crt", "download_certificates": true },
          { "app_id": "2", "alipay_public_cert_file": "alipay.crt", "alipay_root_cert_file": "root.crt" } ] }
    })",
                                 {{"APP_KEY", "-----BEGIN PRIVATE KEY-----"}});
    INFO(dump(good.problems));
    REQUIRE(good.config);
    CHECK(good.problems.empty());
    REQUIRE(good.config->alipay_apps.size() == 2);
    CHECK(good.config->alipay_apps[0].download_certificates);
    CHECK(good.config->alipay_apps[0].public_cert_pem == "cert");
    CHECK(good.config->alipay_apps[0].app_public_cert_pem == "app cert");
    CHECK_FALSE(good.config->alipay_apps[1].download_certificates);  // off by default
    CHECK_FALSE(config::AlipayApp{}.download_certificates);
}
