#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <string_view>

namespace paybridge {

/// The one spelling for awaiting an operation that reports failure as an error_code value.
inline constexpr auto kUseTuple = boost::asio::as_tuple(boost::asio::use_awaitable);

/// A co_spawn completion handler for a coroutine nobody awaits: an exception that ended it is
/// logged as `event` (error level, field "what") instead of being lost (asio::detached) or
/// thrown out of io_context::run(). `event` must outlive the coroutine (a string literal).
class LogFailure {
public:
    explicit constexpr LogFailure(std::string_view event) noexcept : event_(event) {}
    void operator()(std::exception_ptr e) const noexcept;

private:
    std::string_view event_;
};

}  // namespace paybridge
