#pragma once

// Host name look-up with a deadline, for every outgoing connection (Redis, the CRM).

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace paybridge {

/// The addresses of a host, or why there are none.
struct Resolved {
    /// boost::asio::error::timed_out when the deadline came first (or the wait was cancelled);
    /// otherwise what getaddrinfo said.
    boost::system::error_code error;
    std::vector<boost::asio::ip::tcp::endpoint> endpoints;  ///< when !error: at least one
};

/// The addresses of `host` (a DNS name or an IP literal, which is not looked up) for `port`,
/// by `deadline`. getaddrinfo runs on Asio's resolver thread and cannot be interrupted, and Asio's
/// resolver does not honour per-operation cancellation: so the caller waits on a timer that the
/// look-up's completion cancels, and on timeout (or cancellation of this coroutine) the look-up is
/// abandoned: it finishes in the background, touching only state it shares. A signal emitted on
/// `abort` (when connected) ends the wait the same way at once: a shutdown need not wait for DNS.
boost::asio::awaitable<Resolved> resolve_until(boost::asio::any_io_executor executor, std::string host,
                                               std::uint16_t port, std::chrono::steady_clock::time_point deadline,
                                               boost::asio::cancellation_slot abort = {});

}  // namespace paybridge
