#include "gateways/gateway.hpp"

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

}  // namespace paybridge::gateways
