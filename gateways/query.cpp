#include "gateways/query.hpp"

namespace paybridge::gateways {

std::string_view to_string(QueryState state) noexcept
{
    switch (state) {
        case QueryState::paid: return "paid";
        case QueryState::unpaid: return "unpaid";
        case QueryState::closed: return "closed";
        case QueryState::not_found: return "not_found";
    }
    return "unknown";
}

}  // namespace paybridge::gateways
