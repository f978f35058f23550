#pragma once

#include "core/payment_event.hpp"
#include "core/result.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace paybridge {

/// A bill as the CRM registers it (POST /v1/bills), already validated.
struct NewBill {
    std::string id;
    std::int64_t amount_fen{0};
    std::string currency{"CNY"};
    std::string customer_id;
    std::string description;
    std::string expires_at;     ///< RFC 3339, or empty
    std::string metadata_json;  ///< a JSON object as compact text, or empty
};

enum class RegisterOutcome {
    created,    ///< new bill (201); orphaned notifications for it were applied
    identical,  ///< a bill with the same id and content exists (200)
    conflict,   ///< the id exists with other content (409)
};

struct RegisterResult {
    RegisterOutcome outcome{};
    std::string bill_json;       ///< the stored bill after registration (and any orphans applied)
    int orphans_applied{0};
    std::vector<std::string> anomalies;  ///< the kind of each anomaly the orphans' replay recorded
};

enum class ApplyOutcome {
    applied,    ///< the bill changed; one event was appended to its history and the outbox
    duplicate,  ///< already applied: nothing changed, nothing appended
    anomaly,    ///< verified but not applicable as it stands; recorded as an anomaly (and evented)
    orphaned,   ///< no such bill yet; kept and applied when the bill is registered
    ignored,    ///< verified, nothing to do (e.g. WAIT_BUYER_PAY)
};

std::string_view to_string(ApplyOutcome outcome) noexcept;

struct ApplyResult {
    ApplyOutcome outcome{};
    std::string anomaly;  ///< anomaly kind when one was recorded ("amount_mismatch", ...), else empty
    std::string status;   ///< the bill status after the call, empty for orphans
};

struct BillView {
    std::string bill_json;                 ///< the bill object (API.md "Bills")
    std::vector<std::string> events_json;  ///< its history, oldest first (the CRM event objects)
};

/// A page of JSON objects from a time-ordered feed and the cursor to continue after it.
struct Page {
    std::vector<std::string> items_json;
    /// Bills: empty on the last page. Event feeds: where to poll next; at the tail (an empty page)
    /// the cursor the call was given, so empty only for an empty feed read from its start.
    std::string next_cursor;
};

struct BillFilter {
    std::string status;
    std::string provider;
    std::string customer_id;
    std::int64_t updated_from_ms{0};
    std::int64_t updated_to_ms{0};  ///< 0: no upper bound
    std::size_t limit{50};
    std::string cursor;
};

/// Durable bill state. Every state change is one atomic script: dedupe + transition + history +
/// outbox entry, so a change is applied exactly once however often a provider repeats itself.
/// Errors of every call: errc::store_unavailable, errc::timeout (transient: answer 5xx).
class BillStore {
public:
    virtual ~BillStore() = default;

    /// Applies a verified notification to its bill. See ApplyOutcome for the results.
    virtual boost::asio::awaitable<Result<ApplyResult>> apply(PaymentEvent event) = 0;

    /// Registers a bill idempotently, then applies orphaned notifications for its id (with every
    /// check, as if they arrived now).
    virtual boost::asio::awaitable<Result<RegisterResult>> register_bill(NewBill bill) = 0;

    /// The bill and its history, or nullopt when it does not exist.
    virtual boost::asio::awaitable<Result<std::optional<BillView>>> get_bill(std::string id) = 0;

    /// Bills matching the filter, newest change first.
    virtual boost::asio::awaitable<Result<Page>> list_bills(BillFilter filter) = 0;

    /// All bill events in order (the objects pushed to the CRM), after an opaque cursor.
    virtual boost::asio::awaitable<Result<Page>> list_events(std::string after, std::size_t limit) = 0;

    /// Recorded anomalies in order, after an opaque cursor.
    virtual boost::asio::awaitable<Result<Page>> list_anomalies(std::string after, std::size_t limit) = 0;

    /// Reconciliation over bills created in [from_ms, to_ms): counts and sums per provider and
    /// status, plus anomalies in that range by kind. A JSON document.
    virtual boost::asio::awaitable<Result<std::string>> summary(std::int64_t from_ms, std::int64_t to_ms) = 0;

    /// One round trip to the backend, for /readyz. Fails while scripts are not loaded.
    virtual boost::asio::awaitable<Result<void>> ping() = 0;
};

}  // namespace paybridge
