#pragma once

// Character-set conversion for provider payloads (Alipay notifications may be GBK), on glibc iconv.
// Verification always runs on the raw bytes; these functions are for afterwards (storage, display)
// and for the simulator, which must produce the bytes a GBK merchant would receive.

#include "core/result.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways {

enum class Charset {
    utf8,     ///< "utf-8"
    gbk,      ///< "gbk" (Microsoft CP936 family)
    gb2312,   ///< "gb2312": decoded as GBK, its superset; encoded strictly as GB2312 (EUC-CN)
    gb18030,  ///< "gb18030"
};

/// Maps a charset label ("UTF-8", "gbk", "GB2312", "gb18030"; ASCII case-insensitive, no
/// surrounding spaces) to a Charset; nullopt for anything else.
std::optional<Charset> parse_charset(std::string_view label) noexcept;

/// The canonical lower-case label ("utf-8", "gbk", "gb2312", "gb18030").
std::string_view to_string(Charset charset) noexcept;

/// Converts bytes in `charset` to UTF-8. For UTF-8 input the bytes are validated (no overlongs,
/// surrogates or code points above U+10FFFF) and returned unchanged.
/// Errors: errc::malformed_request for an unknown charset label or bytes invalid in it.
Result<std::string> to_utf8(std::string_view bytes, std::string_view charset);
Result<std::string> to_utf8(std::string_view bytes, Charset charset);

/// Converts UTF-8 text to `charset` (the simulator's GBK notifications).
/// Errors: errc::malformed_request for an unknown label, invalid UTF-8, or a character the target
/// charset cannot represent.
Result<std::string> from_utf8(std::string_view utf8, std::string_view charset);
Result<std::string> from_utf8(std::string_view utf8, Charset charset);

/// The decoders to_utf8 needs (GBK and GB18030 to UTF-8, from glibc's gconv modules) that this
/// system cannot open, one problem string each; empty on a sound installation. Checked where a
/// gateway that may receive such bytes is loaded, so a host without them fails `--check` and the
/// start instead of every GBK notification.
std::vector<std::string> missing_decoders();

}  // namespace paybridge::gateways
