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

}  // namespace paybridge::gateways
