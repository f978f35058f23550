#pragma once

#include "core/result.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace paybridge {

/// CRM delivery records and operator actions (API: /v1/events/{id}, /v1/deliveries...).
/// Results are JSON documents ready to serve. Errors: errc::not_found, errc::invalid_argument,
/// store_unavailable, timeout.
class DeliveryAdmin {
public:
    /// The largest page deliveries() serves.
    static constexpr std::size_t kMaxLimit = 500;

    virtual ~DeliveryAdmin() = default;

    /// The event with its delivery state and every attempt, or nullopt.
    virtual boost::asio::awaitable<Result<std::optional<std::string>>> event(std::string event_id) = 0;

    /// Deliveries in a state ("pending", "retrying", "delivered", "dead"), most recently changed
    /// first, cursor paging; limit 1..kMaxLimit.
    virtual boost::asio::awaitable<Result<std::string>> deliveries(std::string state, std::size_t limit,
                                                                   std::string cursor) = 0;

    /// Re-queues one event for immediate delivery, whatever its state; errc::conflict while an
    /// attempt is in flight (or leased by a dispatcher about to make it).
    virtual boost::asio::awaitable<Result<std::string>> redeliver(std::string event_id) = 0;

    /// Makes due now every event in `state` ("dead" or "retrying") since a time.
    virtual boost::asio::awaitable<Result<std::string>> recover(std::int64_t since_ms, std::string state) = 0;
};

}  // namespace paybridge
