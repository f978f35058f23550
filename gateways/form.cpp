#include "gateways/form.hpp"

#include "core/error.hpp"

#include <algorithm>

namespace paybridge::gateways {
namespace {

int hex_value(char c) noexcept
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

}  // namespace

// Decodes once. A second decode is the classic Alipay SDK bug (PROTOCOLS.md §4 pitfalls 1-2):
// "%2B" must stay a literal '+' and "%25" a literal '%' in the signed string.
bool percent_decode(std::string_view in, std::string& out)
{
    out.clear();
    out.reserve(in.size());
    std::size_t i = 0;
    while (i < in.size()) {
        // Runs of plain bytes are copied whole (most of a notification is plain).
        std::size_t plain = i;
        while (plain < in.size() && in[plain] != '+' && in[plain] != '%') {
            ++plain;
        }
        out.append(in.data() + i, plain - i);
        i = plain;
        if (i == in.size()) {
            break;
        }
        if (in[i] == '+') {
            out += ' ';
            ++i;
            continue;
        }
        if (i + 2 >= in.size()) {
            return false;
        }
        const int hi = hex_value(in[i + 1]);
        const int lo = hex_value(in[i + 2]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out += static_cast<char>((hi << 4) | lo);
        i += 3;
    }
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
