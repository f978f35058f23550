#pragma once

#include <boost/system/error_code.hpp>

#include <string_view>
#include <type_traits>

namespace paybridge {

/// Errors raised by paybridge itself. Asio/OpenSSL/hiredis errors are translated into these at
/// module edges (store/, crm/), so nothing above those modules sees a foreign code.
enum class errc {
    // Untrusted input: answered with 4xx, never retried by us.
    malformed_request = 1,  ///< unparsable body, missing or duplicate field, bad encoding
    bad_signature,          ///< signature absent, undecodable or not verifying
    stale_timestamp,        ///< WeChat Pay timestamp outside the ±300 s window
    unknown_account,        ///< app_id / mchid / seller_id not configured
    unsupported_event,      ///< a well-formed, verified notification we do not handle
    invalid_argument,       ///< API request field invalid (message names the field)
    not_found,              ///< API object does not exist
    conflict,               ///< API object exists with other content
    unauthorized,           ///< API bearer token missing or wrong
    // Dependencies: answered with 5xx so the provider retries; the dispatcher retries CRM pushes.
    store_unavailable,  ///< Redis unreachable, disconnected or answered with an error
    timeout,            ///< a dependency did not answer in time
    crm_unavailable,    ///< CRM connection failed or answered 5xx/429
    crm_rejected,       ///< CRM answered another non-2xx
    provider_unavailable,  ///< a provider's query API could not be reached or answered 5xx / "busy"
    provider_rejected,     ///< a provider's query API refused our request (4xx, an error code)
    shutting_down,      ///< the process is stopping
    internal,           ///< a bug; logged with detail, answered generically
};

const boost::system::error_category& paybridge_category() noexcept;

inline boost::system::error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), paybridge_category()};
}

/// True when retrying the same operation later can succeed (dependency failures).
bool is_transient(const boost::system::error_code& ec) noexcept;

/// Stable snake_case name of a paybridge error ("bad_signature"), for logs, metrics and replies.
std::string_view error_name(const boost::system::error_code& ec) noexcept;

}  // namespace paybridge

template <>
struct boost::system::is_error_code_enum<paybridge::errc> : std::true_type {};
