#include "config/secrets.hpp"

#include "config/detail/files.hpp"

#include <cstdlib>

namespace paybridge::config {

namespace {

constexpr std::string_view kEnvPrefix = "env:";
constexpr std::string_view kFilePrefix = "file:";
constexpr std::string_view kCredPrefix = "cred:";

SecretLookup failure(std::string problem)
{
    SecretLookup out;
    out.problem = std::move(problem);
    return out;
}

bool valid_env_name(std::string_view name) noexcept
{
    if (name.empty() || (name.front() >= '0' && name.front() <= '9')) {
        return false;
    }
    for (char c : name) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        if (!ok) {
            return false;
        }
    }
    return true;
}

void strip_trailing_newlines(std::string& s)
{
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) {
        s.pop_back();
    }
}

// `shown` is the path as the operator wrote it, so the message matches the configuration.
SecretLookup read_secret_file(const std::filesystem::path& path, std::string_view shown)
{
    detail::FileContent file = detail::read_file(path, SecretSource::kMaxSecretBytes);
    if (!file.content) {
        return failure("cannot read " + std::string(shown) + ": " + file.error);
    }
    strip_trailing_newlines(*file.content);
    if (file.content->empty()) {
        return failure(std::string(shown) + " is empty");
    }
    SecretLookup out;
    for (std::string warning : {detail::world_readable_warning(file.mode, shown),
                                detail::foreign_writable_warning(file, shown)}) {
        if (!warning.empty()) {
            out.warnings.push_back(std::move(warning));
        }
    }
    out.value = std::move(file.content);
    return out;
}

}  // namespace

SecretSource::SecretSource(Environment environment) : environment_(std::move(environment)) {}

bool SecretSource::is_reference(std::string_view text) noexcept
{
    for (std::string_view prefix : {kEnvPrefix, kFilePrefix, kCredPrefix}) {
        if (text.size() > prefix.size() && text.substr(0, prefix.size()) == prefix) {
            return true;
        }
    }
    return false;
}

std::optional<std::string> SecretSource::env(std::string_view name) const
{
    if (environment_) {
        auto it = environment_->find(name);
        if (it == environment_->end()) {
            return std::nullopt;
        }
        return it->second;
    }
    const std::string key(name);
    const char* value = std::getenv(key.c_str());
    if (value == nullptr) {
        return std::nullopt;
    }
    return std::string(value);
}

SecretLookup SecretSource::resolve(std::string_view reference, const std::filesystem::path& base_dir) const
{
    if (!is_reference(reference)) {
        return failure("inline secret values are not allowed; use env:NAME, file:PATH or cred:NAME");
    }
    if (reference.starts_with(kEnvPrefix)) {
        const std::string_view name = reference.substr(kEnvPrefix.size());
        if (!valid_env_name(name)) {
            // Not repeated: what follows env: may be a secret pasted by mistake.
            return failure("the text after env: is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
        }
        std::optional<std::string> value = env(name);
        if (!value) {
            return failure("environment variable " + std::string(name) + " is not set");
        }
        if (value->empty()) {
            return failure("environment variable " + std::string(name) + " is empty");
        }
        SecretLookup out;
        out.value = std::move(value);
        return out;
    }
    if (reference.starts_with(kFilePrefix)) {
        const std::string_view shown = reference.substr(kFilePrefix.size());
        const std::filesystem::path path(shown);
        return read_secret_file(path.is_absolute() ? path : base_dir / path, shown);
    }
    const std::string_view name = reference.substr(kCredPrefix.size());
    // systemd credential names are plain file names; anything with a slash would escape the
    // credentials directory.
    if (name.find('/') != std::string_view::npos || name == "." || name == "..") {
        return failure("credential name \"" + std::string(name) + "\" must be a plain file name");
    }
    std::optional<std::string> dir = env("CREDENTIALS_DIRECTORY");
    if (!dir || dir->empty()) {
        return failure("cred:" + std::string(name) +
                       " needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=), which is not set");
    }
    const std::filesystem::path path = std::filesystem::path(*dir) / std::string(name);
    return read_secret_file(path, path.string());
}

}  // namespace paybridge::config
