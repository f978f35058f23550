#pragma once

// `paybridge keys init DIR`: development key material for both sides of every provider protocol,
// plus a development configuration that uses it. Never for production keys.

#include "tools/cli/common.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::cli {

/// File names inside the keys folder. The simulator (`paybridge trigger`) finds the provider-side
/// private keys by these names next to the public files the configuration names.
namespace keyfile {
// Alipay's signing key / what the daemon verifies with (public-key mode).
inline constexpr std::string_view kAlipayPrivate = "alipay_private.pem";
inline constexpr std::string_view kAlipayPublic = "alipay_public.pem";
// Certificate mode: the test CA as Alipay's root, and Alipay's certificate for the same key.
inline constexpr std::string_view kAlipayRootCert = "alipay_root.crt";
inline constexpr std::string_view kAlipayPublicCert = "alipay_public.crt";
// WeChat Pay public-key mode (signer and verifier), and the platform certificate with its key.
inline constexpr std::string_view kWechatPrivate = "wechatpay_private.pem";
inline constexpr std::string_view kWechatPublic = "wechatpay_public.pem";
inline constexpr std::string_view kWechatPlatformCert = "wechatpay_platform.pem";
inline constexpr std::string_view kWechatPlatformPrivate = "wechatpay_platform_private.pem";
// Secrets, one value per file.
inline constexpr std::string_view kWechatApiv3Key = "wechatpay_apiv3_key";
inline constexpr std::string_view kWechatApiv2Key = "wechatpay_apiv2_key";
inline constexpr std::string_view kApiToken = "api_token";
inline constexpr std::string_view kCrmSecret = "crm_secret";
inline constexpr std::string_view kReadme = "README.txt";
}  // namespace keyfile

/// The development accounts written into the configuration.
inline constexpr std::string_view kDevAlipayAppId = "2021000000000001";
inline constexpr std::string_view kDevAlipaySellerId = "2088000000000001";
inline constexpr std::string_view kDevWechatMchid = "1900000001";
inline constexpr std::string_view kDevWechatAppid = "wx0000000000000001";

struct KeysInitOptions {
    std::filesystem::path dir;          ///< the keys folder (created with mode 0700, or an existing private one)
    std::filesystem::path config_path;  ///< empty: dir/../paybridge.dev.json
    bool force{false};                  ///< replace existing keys and configuration
    std::string listen{"127.0.0.1:8080"};
    std::uint16_t redis_port{6379};
    std::string crm_url{"http://127.0.0.1:9000/paybridge/events"};
};

struct WrittenFile {
    std::filesystem::path path;
    unsigned mode{0644};
    std::string what;  ///< one line: what the file is and who uses it
};

struct KeysInitReport {
    std::filesystem::path dir;       ///< absolute
    unsigned dir_mode{0700};         ///< its permission bits after the run
    std::filesystem::path config;    ///< absolute
    std::vector<WrittenFile> files;  ///< key files, then the configuration
    std::string wechat_public_key_id;
    std::string wechat_platform_serial;  ///< upper-case hex, as Wechatpay-Serial carries it
    std::string alipay_cert_sn;          ///< certificate-mode SN of alipay_public.crt
};

/// Generates and writes everything. Without `force`, refuses (Exit::local) when any of the files
/// or the configuration exists, naming it. A DIR this run creates gets mode 0700; an existing DIR
/// keeps its mode, and is refused (Exit::usage, with the fix) when its group or others have any
/// access, since the private keys would sit in a folder others can list (e.g. `keys init .`).
/// Private keys and secrets are written 0600, public material 0644, each through a temporary file
/// renamed into place. The configuration refers to the keys by paths relative to its own folder and
/// to secrets with "file:" references. Nothing is written when a check refuses.
/// Errors: Exit::local for file-system problems (named, with the reason).
Expected<KeysInitReport> keys_init(const KeysInitOptions& options);

/// Why `text` is not a --listen value paybridged accepts (HOST:PORT with an IP-literal host, IPv6
/// in brackets, port 1..65535), as a message naming the option; "" when it is fine.
std::string listen_problem(const std::string& text);

/// Why `text` is not a --crm-url that both paybridged and `paybridge listen` accept (http(s)://,
/// a host, a port 1..65535, no user info, no #fragment, no spaces); "" when it is fine.
std::string crm_url_problem(const std::string& text);

/// `paybridge keys ...` (argv after "keys").
int cmd_keys(const std::vector<std::string>& argv, const Io& io);

}  // namespace paybridge::cli
