#pragma once

#include "core/result.hpp"

#include <boost/asio/awaitable.hpp>

#include <string>

namespace paybridge {

/// The CRM's handle on active provider queries (API: POST /v1/bills/{id}/query).
class QueryAdmin {
public:
    virtual ~QueryAdmin() = default;

    /// Makes a bill due for a provider query now: the next sweep of any instance asks every query
    /// account about it. Returns the JSON answer. Errors: errc::not_found (no such bill),
    /// errc::conflict (its status is settled, or it is past querying: created more than until +
    /// max_gap ago), store_unavailable, timeout.
    virtual boost::asio::awaitable<Result<std::string>> query_now(std::string bill_id) = 0;
};

}  // namespace paybridge
