#pragma once

// The CRM-facing /v1 API as the CLI uses it: where the daemon is (--url, else the configuration's
// listen address), the bearer token (--token, else $PAYBRIDGE_TOKEN, else the configuration's first
// api_tokens entry), and the failure messages for each kind of refusal.

#include "tools/cli/args.hpp"
#include "tools/cli/cli_config.hpp"
#include "tools/cli/http_client.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace paybridge::cli {

/// The options every API command accepts (add them to the command's OptionSpec list).
inline const std::vector<OptionSpec> kApiOptions = {{"url"}, {"token"}, {"config"}, {"json", false}};

struct ApiEndpoint {
    Url base;           ///< e.g. http://127.0.0.1:8080
    std::string token;  ///< empty when not needed and not found
};

/// Resolves the daemon URL and (when `need_token`) the token from --url/--token/--config, the
/// environment and the configuration. The configuration is read only when something is missing;
/// without one, the URL defaults to http://127.0.0.1:8080.
/// Errors: Exit::usage (bad --url), Exit::local (no token anywhere, unresolvable token secret).
Expected<ApiEndpoint> resolve_api(const Args& args, bool need_token);

/// One API request with the bearer token. Any HTTP answer is a value; transport failures carry the
/// daemon hint ("— is paybridged running?").
Expected<HttpResponse> api_call(const ApiEndpoint& api, std::string method, std::string target,
                                std::string body = {});

/// Exit::remote failure for a non-2xx answer: "<what>: <status> <code>: <message> [field]" plus a
/// hint for 401 (token) and 503 (Redis).
Failure api_failure(const HttpResponse& res, std::string_view what);

/// Percent-encodes a query or path value.
std::string url_encode(std::string_view value);

/// The subset of a bill the CLI reads (API.md "Bills").
struct BillSummary {
    std::string id;
    std::string status;
    std::int64_t amount_fen{0};
    std::int64_t paid_fen{0};
    std::int64_t refunded_fen{0};
    std::string provider;
    std::string provider_txn_id;
};

/// GET /v1/bills/{id}: the bill, nullopt on 404. Errors: transport (Exit::connect), other non-2xx
/// (Exit::remote), an unparsable body (Exit::remote).
Expected<std::optional<BillSummary>> fetch_bill(const ApiEndpoint& api, const std::string& id);

/// Parses a bill object. nullopt when `json` is not a bill object.
std::optional<BillSummary> parse_bill(std::string_view json);

}  // namespace paybridge::cli
