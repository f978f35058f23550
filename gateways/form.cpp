#include "gateways/form.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <array>
#include <cstdint>

namespace paybridge::gateways {
namespace {

// The value of a hex digit, 0xFF for any other byte.
constexpr std::array<std::uint8_t, 256> kHexValue = [] {
    std::array<std::uint8_t, 256> t{};
    t.fill(0xFF);
    for (int i = 0; i < 10; ++i) {
        t[static_cast<std::size_t>('0' + i)] = static_cast<std::uint8_t>(i);
    }
    for (int i = 0; i < 6; ++i) {
        t[static_cast<std::size_t>('a' + i)] = static_cast<std::uint8_t>(10 + i);
        t[static_cast<std::size_t>('A' + i)] = static_cast<std::uint8_t>(10 + i);
    }
    return t;
}();

}  // namespace

// Decodes once. A second decode is the classic Alipay SDK bug (PROTOCOLS.md §4 pitfalls 1-2):
// "%2B" must stay a literal '+' and "%25" a literal '%' in the signed string.
bool percent_decode(std::string_view in, std::string& out)
{
    // The decoded text is never longer; written through a pointer (most of an Alipay notification
    // is %XX escapes: its times, its signature, any Chinese text).
    out.resize(in.size());
    char* o = out.data();
    const char* p = in.data();
    const char* const end = p + in.size();
    while (p < end) {
        const char c = *p;
        if (c == '%') {
            if (end - p < 3) {
                return false;
            }
            const std::uint8_t hi = kHexValue[static_cast<unsigned char>(p[1])];
            const std::uint8_t lo = kHexValue[static_cast<unsigned char>(p[2])];
            if (((hi | lo) & 0xF0) != 0) {
                return false;
            }
            *o++ = static_cast<char>((hi << 4) | lo);
            p += 3;
        } else {
            *o++ = c == '+' ? ' ' : c;
            ++p;
        }
    }
    out.resize(static_cast<std::size_t>(o - out.data()));
    return true;
}

Result<FormFields> parse_form(std::string_view raw)
{
    FormFields fields;
    std::size_t pos = 0;
    while (pos <= raw.size()) {
        std::size_t end = raw.find('&', pos);
        if (end == std::string_view::npos) {
            end = raw.size();
        }
        const std::string_view segment = raw.substr(pos, end - pos);
        pos = end + 1;
        if (segment.empty()) {
            continue;
        }
        const std::size_t eq = segment.find('=');
        if (eq == std::string_view::npos || eq == 0) {
            return make_error_code(errc::malformed_request);
        }
        std::string key;
        std::string value;
        if (!percent_decode(segment.substr(0, eq), key) || !percent_decode(segment.substr(eq + 1), value) ||
            key.empty()) {
            return make_error_code(errc::malformed_request);
        }
        fields.emplace_back(std::move(key), std::move(value));
    }

    // Duplicates are ambiguous for a signature (which value was signed?), so they are rejected
    // rather than resolved first-wins or last-wins.
    std::vector<std::string_view> keys;
    keys.reserve(fields.size());
    for (const auto& [k, v] : fields) {
        keys.emplace_back(k);
    }
    std::sort(keys.begin(), keys.end());
    if (std::adjacent_find(keys.begin(), keys.end()) != keys.end()) {
        return make_error_code(errc::malformed_request);
    }
    return fields;
}

std::string form_encode(std::string_view bytes)
{
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(bytes.size() * 3);
    for (const char c : bytes) {
        const auto u = static_cast<unsigned char>(c);
        const bool alnum = (u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9');
        if (alnum || u == '.' || u == '-' || u == '*' || u == '_') {
            out += c;
        } else if (u == ' ') {
            out += '+';
        } else {
            out += '%';
            out += kHex[u >> 4];
            out += kHex[u & 15];
        }
    }
    return out;
}

}  // namespace paybridge::gateways
