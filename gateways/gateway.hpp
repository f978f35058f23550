#pragma once

#include "core/payment_event.hpp"
#include "core/result.hpp"

#include <boost/system/error_code.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::gateways {

/// ASCII case-insensitive equality (header names, charset labels). boost::algorithm::iequals
/// consults std::locale per character, which made header lookups cost a third of an RSA verify.
bool ascii_iequals(std::string_view a, std::string_view b) noexcept;

/// The part of an HTTP request a gateway may look at. Views are valid during the call only.
struct InboundRequest {
    /// Request headers as received; names compared case-insensitively by header().
    std::vector<std::pair<std::string_view, std::string_view>> headers;
    std::string_view body;         ///< the raw body bytes, exactly as received
    std::string_view route_param;  ///< e.g. the {mchid} of /notify/wechatpay/{mchid}
    std::int64_t now_unix{0};      ///< receive time, for timestamp windows (injected, testable)

    /// First header with this name (case-insensitive), or nullopt-like empty view with found=false.
    bool header(std::string_view name, std::string_view& value) const noexcept;
};

/// A reply in the exact format the provider expects.
struct Reply {
    int status{200};
    std::string content_type{"text/plain"};
    std::string body;
};

/// A verified notification plus what the gateway wants logged about it.
struct Verified {
    PaymentEvent event;
    std::string notes;  ///< e.g. "empty-value fallback used"; logged, never replied
};

/// A provider's value quoted for a problem text: at most 32 bytes of it (never cut inside a UTF-8
/// sequence, "..." marks a cut), a quote or backslash escaped.
std::string quoted_excerpt(std::string_view value);

/// A problem found while loading an account's keys, written as the configuration's problems are:
/// "<JSON pointer>: <what>". `item` is the account's pointer ("/alipay/apps/0"); a `text` that
/// starts with one of its keys ("apiv3_key must be 32 bytes", "platform_certificates[1] is not a
/// PEM certificate") points at that key ("/wechatpay/merchants/0/apiv3_key: must be 32 bytes").
std::string config_problem(std::string_view item, std::string_view text);

/// The pointer of the index-th account of `list` ("/alipay/apps"): the one the loader recorded,
/// or (an account built in code) list/index.
std::string account_pointer(const std::string& recorded, std::string_view list, std::size_t index);

/// An authentic notification with a field paybridge needs missing or unreadable: kind unusable
/// with `problem`, for the store to record as an anomaly (core/payment_event.hpp), when it names
/// its bill and has a notification id; otherwise errc::malformed_request (refused, and logged).
Result<Verified> unusable(Verified verified, std::string problem);

/// One provider protocol. Implementations are immutable after construction, thread-safe, and do
/// no I/O: keys and certificates are loaded (and validated) by their factories.
class Gateway {
public:
    virtual ~Gateway() = default;

    /// Stable lower-case channel id: "alipay", "wechatpay_v3", "wechatpay_v2".
    virtual std::string_view name() const noexcept = 0;

    /// Authenticates the request on its raw bytes and only then parses it into a PaymentEvent.
    /// Errors: errc::malformed_request, bad_signature, stale_timestamp, unknown_account,
    /// unsupported_event.
    virtual Result<Verified> verify_and_parse(const InboundRequest& req) const = 0;

    /// The acknowledgement once the event is durably applied (or recorded as duplicate/anomaly).
    virtual Reply success() const = 0;

    /// The provider-format failure for an error (status and body), so that the provider retries
    /// exactly when it should: 4xx for our permanent rejections, 5xx for transient failures.
    virtual Reply failure(const boost::system::error_code& ec) const = 0;
};

}  // namespace paybridge::gateways
