#pragma once

// Secret references (API.md "Configuration"). The configuration never holds a secret value, only
// a reference to where it lives:
//   "env:NAME"   the environment variable NAME (must be set and non-empty);
//   "file:PATH"  the content of PATH, relative to the configuration file's folder;
//   "cred:NAME"  $CREDENTIALS_DIRECTORY/NAME, the systemd LoadCredential= mechanism (recommended in
//                production: the file is readable only by the service and never on disk in /etc).
// File and credential values lose their trailing line break(s) ("\n" or "\r\n"), since editors and
// `echo` add one; every other byte is kept. An empty value is an error.
// Anything else (an inline literal) is rejected: secrets must not live in a file that is copied
// into tickets, backups and version control.

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::config {

/// The value of a secret reference, or why it could not be resolved.
struct SecretLookup {
    std::optional<std::string> value;  ///< set on success; never empty
    std::string problem;  ///< when !value: a sentence naming the variable or file, never the secret
    /// when value: what is unsafe about where it lives (a file every user may read, or others may
    /// change), if anything
    std::vector<std::string> warnings;

    explicit operator bool() const noexcept { return value.has_value(); }
};

/// Resolves secret references. Immutable after construction; safe to share between threads.
class SecretSource {
public:
    /// Variables by name. std::less<> allows string_view look-ups.
    using Environment = std::map<std::string, std::string, std::less<>>;

    /// Size limit of a file: or cred: secret (keys and tokens are tiny; a large file is a mistake).
    static constexpr std::size_t kMaxSecretBytes = 64 * 1024;

    /// Reads the process environment (getenv) when resolving, including $CREDENTIALS_DIRECTORY.
    SecretSource() = default;

    /// Uses `environment` INSTEAD of the process environment (tests): getenv is never called, and
    /// CREDENTIALS_DIRECTORY is taken from the map as well.
    explicit SecretSource(Environment environment);

    /// True when `text` has the shape of a reference: "env:", "file:" or "cred:" and at least one
    /// more character. Says nothing about whether it resolves.
    static bool is_reference(std::string_view text) noexcept;

    /// Resolves `reference`; a relative file: path is taken relative to `base_dir` (the folder of
    /// the configuration file; the working directory when empty).
    /// Problems (SecretLookup::problem), e.g.:
    ///   "environment variable PAYBRIDGE_CRM_SECRET is not set"
    ///   "cannot read secrets/crm.txt: No such file or directory"
    ///   "cred:crm needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=), which is not set"
    ///   "inline secret values are not allowed; use env:NAME, file:PATH or cred:NAME"
    SecretLookup resolve(std::string_view reference, const std::filesystem::path& base_dir = {}) const;

    /// The variable `name` from the injected map, or from getenv when none was injected.
    std::optional<std::string> env(std::string_view name) const;

private:
    std::optional<Environment> environment_;
};

}  // namespace paybridge::config
