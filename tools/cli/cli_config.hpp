#pragma once

// What the CLI needs from a paybridge configuration file: where the daemon listens, the API token,
// the configured provider accounts with the *paths* of their key files (the simulator finds the
// provider-side private keys next to them), and the CRM URL and secret. This reads the JSON
// leniently and validates nothing beyond the fields it uses: `paybridged --check` is the validator.

#include "tools/cli/common.hpp"

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::cli {

struct AlipayAccount {
    std::string app_id;
    std::string seller_id;
    std::string sign_type{"RSA2"};
    std::filesystem::path public_key_file;   ///< absolute, or empty (certificate mode)
    std::filesystem::path public_cert_file;  ///< absolute, or empty (public-key mode)

    /// The folder holding the Alipay-side private key (alipay_private.pem): the folder of the
    /// public key file, else of the public certificate.
    std::filesystem::path keys_dir() const;
};

struct WechatAccount {
    std::string mchid;
    std::string appid;
    std::string apiv3_key_ref;  ///< secret reference, unresolved
    std::string apiv2_key_ref;  ///< secret reference, or empty
    std::string public_key_id;
    std::filesystem::path public_key_file;                     ///< absolute, or empty
    std::vector<std::filesystem::path> platform_certificates;  ///< absolute

    /// The folder of the public key file, else of the first platform certificate.
    std::filesystem::path keys_dir() const;
};

struct CliConfig {
    std::filesystem::path path;  ///< absolute path of the file
    std::string listen;          ///< "host:port"
    std::vector<std::string> api_token_refs;
    std::vector<AlipayAccount> alipay;
    std::vector<WechatAccount> wechat;
    std::string crm_url;
    std::vector<std::string> crm_secret_refs;  ///< "secret" or "secrets", in order

    std::filesystem::path dir() const { return path.parent_path(); }

    /// The daemon's base URL derived from "listen": http://host:port, with a wildcard address
    /// (0.0.0.0, ::, empty) replaced by the matching loopback address.
    std::string base_url() const;

    /// Resolves a secret reference the way the daemon does (env:, file: relative to the
    /// configuration's folder, cred:). Errors (Exit::local) name the reference and the reason.
    Expected<std::string> secret(std::string_view reference) const;
};

/// Reads `file`. Errors (Exit::local): unreadable, not JSON, or a used field of the wrong type,
/// each naming the file and the field.
Expected<CliConfig> load_cli_config(const std::filesystem::path& file);

/// The configuration to use: `explicit_path` if given, else $PAYBRIDGE_CONFIG, else
/// ./paybridge.dev.json, else ./.dev/paybridge.dev.json. nullopt when none of those exists (an
/// explicit path is returned even if it does not exist, so that loading reports it).
std::optional<std::filesystem::path> find_config(const std::optional<std::string>& explicit_path);

/// find_config + load_cli_config; a missing configuration is a local error that says how to make
/// one ("run 'paybridge keys init .dev/keys' or pass --config FILE").
Expected<CliConfig> locate_config(const std::optional<std::string>& explicit_path);

}  // namespace paybridge::cli
