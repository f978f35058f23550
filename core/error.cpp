#include "core/error.hpp"

#include <string>

namespace paybridge {
namespace {

std::string_view name_of(errc e) noexcept
{
    switch (e) {
        case errc::malformed_request: return "malformed_request";
        case errc::bad_signature: return "bad_signature";
        case errc::stale_timestamp: return "stale_timestamp";
        case errc::unknown_account: return "unknown_account";
        case errc::unsupported_event: return "unsupported_event";
        case errc::invalid_argument: return "invalid_argument";
        case errc::not_found: return "not_found";
        case errc::conflict: return "conflict";
        case errc::unauthorized: return "unauthorized";
        case errc::store_unavailable: return "store_unavailable";
        case errc::timeout: return "timeout";
        case errc::crm_unavailable: return "crm_unavailable";
        case errc::crm_rejected: return "crm_rejected";
        case errc::provider_unavailable: return "provider_unavailable";
        case errc::provider_rejected: return "provider_rejected";
        case errc::shutting_down: return "shutting_down";
        case errc::internal: return "internal";
    }
    return "unknown_error";
}

class Category final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "paybridge"; }
    std::string message(int ev) const override { return std::string(name_of(static_cast<errc>(ev))); }
};

}  // namespace

const boost::system::error_category& paybridge_category() noexcept
{
    static const Category category;
    return category;
}

bool is_transient(const boost::system::error_code& ec) noexcept
{
    if (ec.category() != paybridge_category()) {
        return true;  // foreign codes only come from I/O
    }
    switch (static_cast<errc>(ec.value())) {
        case errc::store_unavailable:
        case errc::timeout:
        case errc::crm_unavailable:
        case errc::provider_unavailable:
        case errc::shutting_down:
            return true;
        default:
            return false;
    }
}

std::string_view error_name(const boost::system::error_code& ec) noexcept
{
    if (ec.category() != paybridge_category()) {
        return "io_error";
    }
    return name_of(static_cast<errc>(ec.value()));
}

}  // namespace paybridge
