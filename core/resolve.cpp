#include "core/resolve.hpp"

#include "core/async.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>

namespace paybridge {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

/// What the look-up and its waiter share; kept alive by both.
struct LookupState {
    explicit LookupState(const asio::any_io_executor& executor) : signal(executor), resolver(executor) {}
    asio::steady_timer signal;  ///< the waiter's timer; the completion cancels it
    tcp::resolver resolver;
    error_code error;
    tcp::resolver::results_type results;
    bool done{false};
};

}  // namespace

asio::awaitable<Resolved> resolve_until(asio::any_io_executor executor, std::string host, std::uint16_t port,
                                        std::chrono::steady_clock::time_point deadline, asio::cancellation_slot abort)
{
    Resolved out;
    error_code not_literal;
    const asio::ip::address literal = asio::ip::make_address(host, not_literal);
    if (!not_literal) {
        out.endpoints.emplace_back(literal, port);
        co_return out;
    }
    auto state = std::make_shared<LookupState>(executor);
    state->signal.expires_at(deadline);
    auto on_resolved = [state](const error_code& error, tcp::resolver::results_type results) {
        state->done = true;
        state->error = error;
        state->results = std::move(results);
        state->signal.cancel();
    };
    state->resolver.async_resolve(host, std::to_string(port), std::move(on_resolved));
    if (abort.is_connected()) {
        abort.assign([state](asio::cancellation_type) { state->signal.cancel(); });
    }
    co_await state->signal.async_wait(kUseTuple);
    if (abort.is_connected()) {
        abort.clear();
    }
    if (!state->done) {
        state->resolver.cancel();
        out.error = asio::error::timed_out;
        co_return out;
    }
    if (state->error) {
        out.error = state->error;
        co_return out;
    }
    for (const auto& entry : state->results) {
        out.endpoints.push_back(entry.endpoint());
    }
    if (out.endpoints.empty()) {
        out.error = asio::error::host_not_found;
    }
    co_return out;
}

}  // namespace paybridge
