#pragma once

// Standard Webhooks signatures (https://www.standardwebhooks.com/, API.md "Events pushed to the CRM").
//
//   webhook-id:        the event id, stable across retries (the receiver deduplicates on it)
//   webhook-timestamp: Unix seconds of this attempt
//   webhook-signature: "v1,<base64(HMAC-SHA256(key, id + "." + timestamp + "." + body))>"
//
// key = base64-decode(secret without its "whsec_" prefix). During a secret rotation both configured
// secrets sign, and the header carries one space-separated "v1,..." entry per secret; a receiver
// accepts the message when any entry verifies with its secret. Pure CPU, no I/O.

#include "core/result.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::crm {

inline constexpr std::string_view kSecretPrefix = "whsec_";

/// Largest accepted difference between webhook-timestamp and the receiver's clock (both directions).
inline constexpr std::chrono::seconds kDefaultTolerance{300};

/// The HMAC key inside a secret: base64-decode of the text after "whsec_" (the prefix is optional, as
/// in the reference libraries). Errors: errc::invalid_argument (not base64, or an empty key).
Result<std::string> decode_secret(std::string_view secret);

/// The base64 HMAC-SHA256 of `id.timestamp.body` under a decoded key (no "v1," prefix).
std::string signature(std::string_view key, std::string_view id, std::int64_t timestamp, std::string_view body);

/// Signs with every configured secret. Secrets are decoded once, so a malformed secret is reported at
/// start-up rather than on the first event.
class WebhookSigner final {
public:
    /// Errors: errc::invalid_argument when `secrets` is empty or one of them does not decode.
    static Result<WebhookSigner> create(const std::vector<std::string>& secrets);

    /// The webhook-signature header value: "v1,<sig>" per secret, space-separated, in config order.
    std::string sign(std::string_view id, std::int64_t timestamp, std::string_view body) const;

    std::size_t secret_count() const noexcept { return keys_.size(); }

private:
    explicit WebhookSigner(std::vector<std::string> keys) : keys_(std::move(keys)) {}
    std::vector<std::string> keys_;
};

/// Convenience for callers holding already-validated secrets (the config loader checks them).
/// Throws std::invalid_argument on a malformed secret: that is a start-up/programming error.
std::string sign(const std::vector<std::string>& secrets, std::string_view id, std::int64_t timestamp,
                 std::string_view body);

/// Receiver-side check of one message against one secret.
///   errc::malformed_request: missing id, timestamp not a decimal integer, no "v1," entry in the header
///   errc::stale_timestamp:   |now - timestamp| > tolerance
///   errc::bad_signature:     no v1 entry matches (compared in constant time); also for a bad secret
/// Entries of other versions ("v1a,...") are ignored, as the spec requires.
Result<void> check(std::string_view secret, std::string_view id, std::string_view timestamp,
                   std::string_view signature_header, std::string_view body, std::int64_t now_unix,
                   std::chrono::seconds tolerance = kDefaultTolerance);

/// check(...) reduced to a yes/no.
bool verify(std::string_view secret, std::string_view id, std::string_view timestamp,
            std::string_view signature_header, std::string_view body, std::int64_t now_unix,
            std::chrono::seconds tolerance = kDefaultTolerance);

}  // namespace paybridge::crm
