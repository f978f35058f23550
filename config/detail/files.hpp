#pragma once

// Small-file reading shared by the secret resolver and the loader (config-internal).

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace paybridge::config::detail {

/// The whole content of a file, or why it could not be read.
struct FileContent {
    std::optional<std::string> content;  ///< set on success (may be empty)
    std::string error;                   ///< when !content: strerror(errno) text, or a size/type reason
    unsigned mode{0};                    ///< the file's permission bits (st_mode & 07777), when read
    unsigned uid{0};                     ///< the file's owner, when read
};

/// For a file that holds a secret (a key, a token): a warning when every user of the machine may
/// read it (its "other" permission bits), else empty. Group access is left alone: root-owned files
/// readable by the service's group (0640) are the usual arrangement.
std::string world_readable_warning(unsigned mode, std::string_view shown);

/// For every file whose content paybridge trusts (the configuration, keys, certificates, secrets):
/// a warning when someone other than root and the user paybridged runs as (its effective uid) may
/// change it, else empty. Its group or every user may write it, or it is owned by a third user. A public
/// key or certificate is no secret, but whoever can replace it can sign notifications paybridge
/// accepts.
std::string foreign_writable_warning(const FileContent& file, std::string_view shown);

/// Reads `path` completely. Fails (without reading further) when the file is larger than
/// `max_bytes`, is a directory, or cannot be opened or read. Blocking; for start-up only.
FileContent read_file(const std::filesystem::path& path, std::size_t max_bytes);

}  // namespace paybridge::config::detail
