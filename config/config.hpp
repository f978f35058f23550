#pragma once

// The typed configuration (API.md "Configuration"). Parsed once from JSON after JSON-Schema
// validation; every member has a default; secrets are already resolved to their values;
// every path is already resolved relative to the config file's folder and its content read.

#include "core/log.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace paybridge::config {

struct Endpoint {
    std::string host{"127.0.0.1"};
    std::uint16_t port{8080};

    bool operator==(const Endpoint&) const = default;
};

/// Groups of routes a listener serves (bits): /notify/*, /v1/*, /healthz and /readyz, /metrics.
enum RouteGroup : unsigned {
    kRoutesNotify = 1,
    kRoutesApi = 2,
    kRoutesHealth = 4,
    kRoutesMetrics = 8,
    kRoutesAll = 15,
};

struct TlsListenConfig {
    Endpoint listen;
    std::string cert_file;  ///< absolute path (re-read on reload)
    std::string key_file;   ///< absolute path
    /// What the TLS listener (often public: WeChat Pay calls HTTPS only) serves. /metrics is left
    /// out unless named: it tells anyone who asks the business's volume and anomaly counts.
    unsigned routes{kRoutesNotify | kRoutesApi | kRoutesHealth};
};

struct HttpLimits {
    std::size_t max_header_bytes{8 * 1024};
    std::size_t max_body_bytes{64 * 1024};
    std::chrono::milliseconds read_timeout{10'000};   ///< whole request, from its first byte
    std::chrono::milliseconds idle_timeout{60'000};   ///< keep-alive wait for the next request
    std::chrono::milliseconds write_timeout{10'000};
    std::chrono::milliseconds shutdown_grace{10'000};
    std::size_t max_connections{20'000};              ///< per process

    bool operator==(const HttpLimits&) const = default;
};

/// Redis Sentinel: the sentinels to ask, in order, for the address of the master `master`.
struct SentinelConfig {
    std::string master;             ///< the name the sentinels monitor it under
    std::vector<Endpoint> nodes;    ///< empty: no Sentinel (host/port of RedisConfig are used)
    std::string username;           ///< optional ACL user on the sentinels
    std::string password;           ///< optional (secret)

    bool operator==(const SentinelConfig&) const = default;
};

/// Redis Cluster: nodes to ask for the slot map at start (any of them; the rest are discovered).
struct ClusterConfig {
    std::vector<Endpoint> nodes;  ///< empty: no Cluster

    bool operator==(const ClusterConfig&) const = default;
};

struct RedisConfig {
    std::string host{"127.0.0.1"};
    std::uint16_t port{6379};
    int db{0};
    std::string username;  ///< optional ACL user
    std::string password;  ///< optional (secret)
    std::string key_prefix{"pb:"};
    int shards{16};        ///< hash-tag shards; fixed for the life of a deployment
    std::chrono::milliseconds request_timeout{2'000};
    std::chrono::milliseconds connect_timeout{2'000};
    int wait_replicas{0};  ///< WAIT for this many replicas before acknowledging a provider
    std::chrono::milliseconds wait_timeout{1'000};
    /// With sentinel.nodes set, every (re)connection asks the sentinels where the master is, and
    /// host/port are not used.
    SentinelConfig sentinel;
    /// With cluster.nodes set, commands go to the master owning their keys' hash slot (the slot
    /// map is read from the nodes), and host/port are not used.
    ClusterConfig cluster;

    bool operator==(const RedisConfig&) const = default;
};

struct ApiToken {
    std::string name;
    std::string token;  ///< secret
};

struct AlipayApp {
    std::string pointer;               ///< where it stands in the file ("/alipay/apps/0"), for problems
    std::string app_id;
    std::string seller_id;             ///< optional; checked when set
    std::string sign_type{"RSA2"};     ///< "RSA2" or "RSA"
    std::string public_key_pem;        ///< public-key mode: content of alipay_public_key_file
    std::string public_cert_pem;       ///< certificate mode: alipay_public_cert_file content
    std::string root_cert_pem;         ///< certificate mode: alipay_root_cert_file content
    /// During a key rotation, the key or certificate being replaced, tried after the current one
    /// (previous_alipay_public_key_file / previous_alipay_public_cert_file; empty: none).
    std::string previous_public_key_pem;
    std::string previous_public_cert_pem;
    /// Active queries (provider_query): the app's private key (PEM, a secret), and in certificate
    /// mode the app's public certificate (app_public_cert_file) for app_cert_sn. Empty: this app
    /// is not queried.
    std::string app_private_key_pem;
    std::string app_public_cert_pem;
    std::string gateway_url{"https://openapi.alipay.com/gateway.do"};
    /// Certificate mode: download Alipay's re-issued public certificate
    /// (alipay.open.app.alipaycert.download, signed with app_private_key) when an API answer names
    /// an alipay_cert_sn not held. Needs certificate mode, app_private_key and app_public_cert_file.
    bool download_certificates{false};
};

struct WechatMerchant {
    std::string pointer;  ///< where it stands in the file ("/wechatpay/merchants/0"), for problems
    std::string mchid;
    std::string appid;
    /// More AppIDs bound to the same mchid (an Official Account and a Mini Program, say): a
    /// payment through any of them is this merchant's.
    std::vector<std::string> other_appids;
    std::string apiv3_key;                          ///< secret, 32 bytes
    std::string public_key_id;                      ///< "PUB_KEY_ID_..." (optional)
    std::string public_key_pem;                     ///< content of public_key_file (optional)
    std::vector<std::string> platform_certificates_pem;  ///< contents (optional)
    std::string apiv2_key;                          ///< secret, optional (v2 endpoint)
    /// Active queries (provider_query): the merchant API private key (apiclient_key.pem, a secret)
    /// and its certificate's serial number. Empty: this merchant is not queried.
    std::string merchant_private_key_pem;
    std::string merchant_serial_no;
    std::string api_url{"https://api.mch.weixin.qq.com"};
    /// Download the platform certificates from WeChat Pay (GET /v3/certificates, signed with the
    /// merchant_private_key) at start, every few hours and when a notification names a serial
    /// not known yet. Needs merchant_private_key.
    bool download_certificates{false};
};

/// Asking the providers about bills still PENDING (provider_query): a bill is first asked about
/// `after` its creation, then again each time its age has doubled (at most `max_gap` apart), until
/// it is `until` old; providers stop retrying notifications after about 25 h (Alipay) and 24 h 4 min
/// (WeChat Pay).
struct ProviderQueryConfig {
    bool enabled{false};  ///< the provider_query section is present
    std::chrono::seconds after{300};
    std::chrono::seconds until{93'600};
    std::chrono::seconds max_gap{21'600};
    std::chrono::seconds interval{30};      ///< how often each instance looks for due bills
    std::size_t batch{200};                 ///< due bills taken per shard per round
    int concurrency{4};                     ///< queries in flight per provider account
    std::chrono::milliseconds timeout{10'000};
    std::string ca_file;                    ///< optional custom CA bundle (absolute path)

    friend bool operator==(const ProviderQueryConfig&, const ProviderQueryConfig&) = default;
};

struct CrmConfig {
    std::string url;                          ///< http(s)://host[:port]/path; empty: no push
    std::vector<std::string> secrets;         ///< "whsec_..." (first is current; two during rotation)
    std::string ca_file;                      ///< optional custom CA bundle (absolute path)
    std::chrono::milliseconds timeout{10'000};
    int concurrency{32};
    std::vector<std::chrono::seconds> retry_schedule{
        std::chrono::seconds{5},     std::chrono::seconds{300},   std::chrono::seconds{1800},
        std::chrono::seconds{7200},  std::chrono::seconds{18000}, std::chrono::seconds{36000},
        std::chrono::seconds{36000}};
    std::chrono::seconds lease{60};           ///< pending entries idle longer are reclaimed
    /// Outbox entries older than this are trimmed once nothing needs them any more (delivered, and
    /// not waiting for a retry or in the dead letters); 0 keeps every entry.
    std::chrono::seconds outbox_retention{0};

    friend bool operator==(const CrmConfig&, const CrmConfig&) = default;
};

struct Config {
    std::string path;            ///< the file it was loaded from (absolute)
    Endpoint listen;
    std::optional<TlsListenConfig> tls;
    int workers{0};              ///< event-loop threads; 0 = one per core
    HttpLimits limits;
    RedisConfig redis;
    std::vector<ApiToken> api_tokens;
    std::vector<AlipayApp> alipay_apps;
    std::vector<WechatMerchant> wechat_merchants;
    CrmConfig crm;
    ProviderQueryConfig provider_query;
    log::Level log_level{log::Level::info};
};

}  // namespace paybridge::config
