#include "gateways/gateway.hpp"

#include "core/error.hpp"

#include <algorithm>

namespace paybridge::gateways {

bool ascii_iequals(std::string_view a, std::string_view b) noexcept
{
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i];
        char y = b[i];
        if (x >= 'A' && x <= 'Z') {
            x = static_cast<char>(x - 'A' + 'a');
        }
        if (y >= 'A' && y <= 'Z') {
            y = static_cast<char>(y - 'A' + 'a');
        }
        if (x != y) {
            return false;
        }
    }
    return true;
}

bool InboundRequest::header(std::string_view name, std::string_view& value) const noexcept
{
    for (const auto& [k, v] : headers) {
        if (ascii_iequals(k, name)) {
            value = v;
            return true;
        }
    }
    return false;
}

std::string quoted_excerpt(std::string_view value)
{
    std::size_t n = std::min<std::size_t>(value.size(), 32);
    while (n < value.size() && n > 0 && (static_cast<unsigned char>(value[n]) & 0xC0) == 0x80) {
        --n;
    }
    std::string out = "\"";
    for (char c : value.substr(0, n)) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    out += n < value.size() ? "...\"" : "\"";
    return out;
}

Result<Verified> unusable(Verified verified, std::string problem)
{
    if (verified.event.bill_id.empty() || verified.event.notification_id.empty()) {
        return make_error_code(errc::malformed_request);
    }
    verified.event.kind = EventKind::unusable;
    verified.event.problem = std::move(problem);
    return verified;
}

std::string config_problem(std::string_view item, std::string_view text)
{
    // The first word names a key when it looks like one: lower-case letters, digits and '_' (with
    // one '_' at least, or mchid / appid), optionally an array index ("platform_certificates[1]").
    const std::string_view word = text.substr(0, text.find(' '));
    std::string_view name = word.substr(0, word.find('['));
    std::string_view index = word.size() > name.size() ? word.substr(name.size()) : std::string_view{};
    const auto key_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; };
    bool key = !name.empty() && word.size() < text.size() && std::all_of(name.begin(), name.end(), key_char) &&
               (name.find('_') != std::string_view::npos || name == "mchid" || name == "appid");
    if (!index.empty()) {
        key = key && index.size() > 2 && index.back() == ']' &&
              std::all_of(index.begin() + 1, index.end() - 1, [](char c) { return c >= '0' && c <= '9'; });
    }
    std::string out(item);
    if (!key) {
        out += ": ";
        out += text;
        return out;
    }
    out += '/';
    out += name;
    if (!index.empty()) {
        out += '/';
        out += index.substr(1, index.size() - 2);
    }
    out += ": ";
    out += text.substr(word.size() + 1);
    return out;
}

std::string account_pointer(const std::string& recorded, std::string_view list, std::size_t index)
{
    return recorded.empty() ? std::string(list) + "/" + std::to_string(index) : recorded;
}

}  // namespace paybridge::gateways
