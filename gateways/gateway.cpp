#include "gateways/gateway.hpp"

#include <boost/algorithm/string/predicate.hpp>

namespace paybridge::gateways {

bool InboundRequest::header(std::string_view name, std::string_view& value) const noexcept
{
    for (const auto& [k, v] : headers) {
        if (boost::algorithm::iequals(k, name)) {
            value = v;
            return true;
        }
    }
    return false;
}

}  // namespace paybridge::gateways
