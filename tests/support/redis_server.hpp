#pragma once

// A real redis-server for integration tests, plus a helper to run coroutines to completion.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace paybridge::test {

/// Starts `redis-server` (from PATH, else /usr/bin) on 127.0.0.1 and a free port, without
/// persistence (--save "" --appendonly no) in a fresh temporary directory, and waits until it
/// answers PING. The destructor kills it and removes the directory. Throws std::runtime_error when
/// the server cannot be started.
class RedisTestServer {
public:
    /// extra_args are appended to the command line, e.g. {"--requirepass", "secret"}.
    explicit RedisTestServer(std::vector<std::string> extra_args = {});

    /// A redis-server in Sentinel mode that monitors the master at 127.0.0.1:master_port under
    /// `name` with quorum 1 (one sentinel decides), down after 1 s, failover timeout 5 s.
    static std::unique_ptr<RedisTestServer> sentinel(std::uint16_t master_port, const std::string& name,
                                                     std::vector<std::string> extra_args = {});
    ~RedisTestServer();
    RedisTestServer(const RedisTestServer&) = delete;
    RedisTestServer& operator=(const RedisTestServer&) = delete;

    std::uint16_t port() const noexcept { return port_; }
    std::string host() const { return "127.0.0.1"; }
    bool running() const noexcept { return pid_ > 0; }

    /// Kills the server (SIGKILL: an abrupt outage) and waits for it to exit.
    void stop();
    /// Starts it again on the same port (empty: no persistence) and waits for PING.
    void restart();
    /// SIGSTOPs the server and returns once it is stopped: it answers nothing and closes nothing
    /// (as a blackholed host looks) while the kernel still accepts connections and data for it.
    void freeze();
    /// SIGCONTs a frozen server: it reads and answers what queued up meanwhile.
    void thaw();

private:
    struct SentinelTag {};
    RedisTestServer(SentinelTag, std::string sentinel_conf, std::vector<std::string> extra_args);
    void start_in_fresh_dir();
    void launch();
    void wait_ready();

    std::string binary_;
    std::string dir_;
    std::vector<std::string> extra_args_;
    std::string sentinel_conf_;  ///< Sentinel mode: the config file's text (Sentinel rewrites it)
    std::uint16_t port_{0};
    pid_t pid_{-1};
};

/// Runs ctx until pred() is true or `limit` passes; returns pred(). Restarts ctx if it ran out of
/// work.
bool run_until(boost::asio::io_context& ctx, const std::function<bool()>& pred, std::chrono::milliseconds limit);

/// Runs ctx for `duration` (to let timers and I/O happen).
void run_for(boost::asio::io_context& ctx, std::chrono::milliseconds duration);

/// Spawns the coroutine on ctx and runs ctx until it finishes. Throws std::runtime_error if it
/// does not finish within `limit`, and rethrows what the coroutine threw.
template <class T>
T run_awaitable(boost::asio::io_context& ctx,
                boost::asio::awaitable<T> coro,
                std::chrono::milliseconds limit = std::chrono::seconds(10))
{
    struct State {
        bool done{false};
        std::exception_ptr error;
        std::optional<T> value;
    };
    auto state = std::make_shared<State>();
    boost::asio::co_spawn(ctx, std::move(coro), [state](std::exception_ptr e, T v) {
        state->error = e;
        if (!e) {
            state->value.emplace(std::move(v));
        }
        state->done = true;
    });
    if (!run_until(ctx, [&state] { return state->done; }, limit)) {
        throw std::runtime_error("run_awaitable: coroutine did not finish in time");
    }
    if (state->error) {
        std::rethrow_exception(state->error);
    }
    return std::move(*state->value);
}

/// void overload of run_awaitable.
void run_awaitable(boost::asio::io_context& ctx,
                   boost::asio::awaitable<void> coro,
                   std::chrono::milliseconds limit = std::chrono::seconds(10));

}  // namespace paybridge::test
