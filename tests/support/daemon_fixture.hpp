#pragma once

// The real system for end-to-end tests: a real redis-server on a free loopback port, key
// material generated for this run (Alipay key pair, test CA + Alipay certificate chain, WeChat
// Pay public key and platform certificate, APIv3/APIv2 keys), a configuration written to a
// temporary folder, and the real `paybridged` binary started on a free port.

#include "tests/support/http_client.hpp"
#include "tests/support/process.hpp"
#include "tools/keygen/keygen.hpp"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace paybridge::test {

class RedisTestServer;

struct DaemonOptions {
    int workers{2};
    std::string log_level{"info"};
    std::string extra_config;            ///< extra top-level JSON members, e.g. "\"crm\": {...}" (no comma)
    std::string limits_json;             ///< replaces the "limits" object when set
    std::string redis_extra;             ///< extra members of "redis" (", \"wait_replicas\": 1")
    bool start{true};                    ///< start paybridged in the constructor
    std::map<std::string, std::string> env;  ///< extra environment (NOTIFY_SOCKET, WATCHDOG_USEC...)
    std::string tls_json;                ///< a "tls" object, when set
    std::string alipay_app_extra;        ///< extra members of the public-key-mode Alipay app (", \"k\": v")
    std::string alipay_cert_app_extra;   ///< extra members of the certificate-mode Alipay app
    std::string wechat_merchant_extra;   ///< extra members of the WeChat Pay merchant (", \"k\": v")
};

class DaemonFixture {
public:
    explicit DaemonFixture(DaemonOptions options = {});
    ~DaemonFixture();

    // Identities configured in the daemon.
    static constexpr const char* kAlipayAppId = "2021000000000001";
    static constexpr const char* kAlipayCertAppId = "2021000000000002";
    static constexpr const char* kSellerId = "2088000000000001";
    static constexpr const char* kMchId = "1900000001";
    static constexpr const char* kAppId = "wx0000000000000001";
    static constexpr const char* kPublicKeyId = "PUB_KEY_ID_0114232024110100000000000000000001";
    static constexpr const char* kApiToken = "test-token-0123456789abcdef0123456789";

    // Key material ("the provider side" private keys are what the simulators sign with).
    keygen::KeyPair alipay_keys;             ///< public-key mode app
    keygen::Certificate alipay_root;         ///< test CA (certificate-mode app)
    keygen::Certificate alipay_cert;         ///< Alipay public key certificate issued by alipay_root
    keygen::KeyPair wechat_public_keys;      ///< WeChat Pay public key (PUB_KEY_ID_...)
    keygen::Certificate wechat_platform;     ///< platform certificate issued by alipay_root (any CA will do)
    std::string apiv3_key;
    std::string apiv2_key;

    const std::filesystem::path& dir() const noexcept { return dir_.path(); }
    std::filesystem::path config_path() const { return dir_ / "paybridge.json"; }
    std::uint16_t port() const noexcept { return port_; }
    RedisTestServer& redis() noexcept { return *redis_; }

    /// Starts paybridged and waits for /readyz (or /healthz when Redis is down on purpose).
    void start(bool wait_ready = true);
    /// SIGTERM and wait; returns the exit code.
    int stop();
    Process& process() { return *process_; }
    std::string log() const { return process_ ? process_->log() : std::string(); }

    /// Rewrites the configuration file (keeping ports and keys) with new extra members.
    void write_config(const DaemonOptions& options);

    // API helpers (bearer token set).
    HttpResult api(const std::string& method, const std::string& target, const std::string& body = {});
    HttpResult create_bill(const std::string& id, std::int64_t amount_fen, const std::string& customer = "cust-1");
    /// GET /v1/bills/{id}; the body is the bill JSON with "events".
    HttpResult get_bill(const std::string& id) { return api("GET", "/v1/bills/" + id); }

    /// POSTs an Alipay notification body (Content-Type as Alipay sends it).
    HttpResult post_alipay(const std::string& body, const std::string& charset = "utf-8");

    /// The integer answer of one command on the test Redis (e.g. {"XLEN", key}); throws on any
    /// other answer.
    long long redis_integer(const std::vector<std::string>& argv);
    /// Runs one command on the test Redis; throws when it answers with an error.
    void redis_run(const std::vector<std::string>& argv);
    /// Sum of XLEN over every outbox stream (found by SCAN, whatever the prefix and shards).
    long long outbox_length();

    static std::string binary(const char* name);  ///< path of a built binary (paybridged, paybridge)

private:
    DaemonOptions options_;
    TempDir dir_;
    std::unique_ptr<RedisTestServer> redis_;
    std::uint16_t port_{0};
    std::unique_ptr<Process> process_;
};

}  // namespace paybridge::test
