#pragma once

// Loading and checking the configuration file (API.md "Configuration", config/README.md).
//
// The loader never stops at the first mistake: an operator running `paybridged --check-config`
// gets every problem in one pass. Each problem is one line "<JSON pointer>: <what is wrong>":
//   /alipay/apps/0/app_id: required property missing
//   /redis/shards: must be >= 1
//   /limits/max_body: unknown property
//   /crm/secret: environment variable PAYBRIDGE_CRM_SECRET is not set
//   /alipay/apps/0/alipay_public_key_file: cannot read keys/x.pem: No such file or directory
// Problems about the file as a whole (unreadable, not JSON) name the file instead, with the line and
// column of a syntax error.
//
// Phases, all of which run and add to the same list:
//   1. read the file (at most 1 MiB) and parse it as strict JSON (UTF-8 checked, no comments);
//   2. duplicate keys in any object (RapidJSON would silently keep the first);
//   3. JSON Schema validation against config/schema.hpp's kConfigSchema with RapidJSON's
//      SchemaValidator, repeated until every violation has been reported (see load.cpp);
//   4. conversion into config::Config (defaults from config/config.hpp for absent keys) and the
//      semantic checks the schema cannot express: URL and host:port syntax and port range, an
//      inline Redis password, exactly one Alipay key mode, WeChat Pay keys of exactly 32 bytes,
//      public key or platform certificates (or both) per merchant, public_key_id "PUB_KEY_ID_...",
//      unique app_ids / mchids / token names, API tokens of at least 16 bytes, CRM secrets of the
//      form "whsec_" + base64, secrets resolvable, files readable and non-empty.
//      Values that already failed phase 2 or 3 are skipped here, so a mistake is reported once.
//
// Paths are relative to the configuration file's folder. Key and certificate files (PEM) are read
// into the Config; the TLS certificate/key are only checked readable and the CRM CA bundle to hold
// a certificate, and stored as absolute paths (the TLS code re-reads them). The content of key files is not parsed
// here: the gateway factories do that (and `--check-config` calls them after load_config).

#include "config/config.hpp"
#include "config/secrets.hpp"

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::config {

struct LoadReport {
    std::optional<Config> config;       ///< set if and only if `problems` is empty
    /// With problems: what could be read anyway (an account or listener with a problem may be
    /// there in part), so that --check can also load the keys of the rest and report every
    /// problem in one run. Never used to serve.
    std::optional<Config> partial;
    std::vector<std::string> problems;  ///< one line each, never containing a secret value
    /// Loaded anyway, but worth fixing, in the same form: a secret or private key file that every
    /// user of the machine may read.
    std::vector<std::string> warnings;
};

/// Minimum length of an API bearer token, in bytes.
inline constexpr std::size_t kMinApiTokenBytes = 16;

/// Reads, validates and converts `file`, resolving secrets with `secrets`. Blocking (file reads);
/// for start-up and `--check-config`. Never throws for anything the file or environment causes.
LoadReport load_config(const std::filesystem::path& file, const SecretSource& secrets);

/// The same for a configuration already in memory; `file` is the path it stands for: relative
/// paths resolve against its folder and Config::path is its absolute form. Nothing reads `file`.
LoadReport load_config_text(std::string_view json, const std::filesystem::path& file, const SecretSource& secrets);

}  // namespace paybridge::config
