#pragma once

// One request to a provider's API (an active query, a certificate download) and what it came to:
// the answer, as the gateways read it, or why there is none. Shared by the query runner
// (daemon/provider_query.hpp) and the certificate refresher (daemon/certificate_refresh.hpp), which
// each decide what a missing answer means for them.

#include "gateways/query.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace paybridge::crm {
class HttpClient;
}

namespace paybridge::daemon {

struct ProviderCall {
    /// The answer, when one came back whole and no longer than the limit.
    std::optional<gateways::QueryResponse> response;
    /// Without an answer, why: "timeout" or "provider_unavailable" (no connection, a closed one, an
    /// answer cut short or too long: not the provider's word, and no forgery either; worth another
    /// try) or, when `ours`, the error of a request the client refused to send (a defect of ours).
    std::string_view error;
    bool ours{false};
    std::int64_t status{0};  ///< of an answer cut short; 0 when none came
    std::string detail;      ///< for the logs
};

/// Sends `request` on `client` (whose keep_body must exceed `max_body`) and collects the answer.
boost::asio::awaitable<ProviderCall> call_provider(crm::HttpClient& client, gateways::QueryRequest request,
                                                   std::size_t max_body);

}  // namespace paybridge::daemon
