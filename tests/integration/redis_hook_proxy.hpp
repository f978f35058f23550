#pragma once

// A TCP proxy in front of a real redis-server that can run a hook just before it passes on a
// chosen command. The code under test talks to the proxy; the hook talks to Redis directly. So a
// test decides exactly what "another client" changes between two commands of the code under test
// (between the read that checks a filter and the read that builds the page, say), without
// sleeping, and without depending on how the connection pipelines or schedules its coroutines.
//
// Commands are recognised in the RESP arrays of bulk strings that RedisConnection sends. Replies
// are passed through untouched.

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace paybridge::test {

class RedisHookProxy {
public:
    using Argv = std::vector<std::string>;
    /// Runs one command on the real server, on a connection of its own; returns the raw reply.
    using Direct = std::function<std::string(const Argv&)>;

    /// `when` sees every command a client of the proxy sends, in order, on the proxy's thread;
    /// each time it returns true, `hook` runs before that command is passed on.
    RedisHookProxy(std::uint16_t redis_port, std::function<bool(const Argv&)> when,
                   std::function<void(const Direct&)> hook)
        : redis_port_(redis_port), when_(std::move(when)), hook_(std::move(hook))
    {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(listener_ >= 0);
        const int one = 1;
        ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr = loopback(0);
        REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listener_, 16) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        accept_thread_ = std::thread([this] { accept_loop(); });
    }

    ~RedisHookProxy()
    {
        stop_ = true;
        accept_thread_.join();
        std::lock_guard lock(mutex_);
        for (std::thread& t : pumps_) {
            t.join();
        }
        ::close(listener_);
    }

    RedisHookProxy(const RedisHookProxy&) = delete;
    RedisHookProxy& operator=(const RedisHookProxy&) = delete;

    std::uint16_t port() const { return port_; }
    /// How many times the hook has run.
    int fired() const { return fired_; }

private:
    static sockaddr_in loopback(std::uint16_t port)
    {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port);
        return addr;
    }

    static int connect_to(std::uint16_t port)
    {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr = loopback(port);
        if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
            if (fd >= 0) {
                ::close(fd);
            }
            return -1;
        }
        return fd;
    }

    static bool send_all(int fd, std::string_view data)
    {
        while (!data.empty()) {
            const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    /// Where the line that starts at `at` ends (the index of its "\r\n"), or npos.
    static std::size_t line_end(std::string_view buf, std::size_t at) { return buf.find("\r\n", at); }

    /// The length of the complete RESP value at the start of `buf`, or nullopt while incomplete.
    static std::optional<std::size_t> reply_length(std::string_view buf, std::size_t at = 0)
    {
        const std::size_t eol = line_end(buf, at);
        if (eol == std::string_view::npos) {
            return std::nullopt;
        }
        const char type = buf[at];
        const std::string header(buf.substr(at + 1, eol - at - 1));
        std::size_t next = eol + 2;
        if (type == '$') {
            const long long n = std::stoll(header);
            if (n < 0) {
                return next - at;
            }
            next += static_cast<std::size_t>(n) + 2;
            return next <= buf.size() ? std::optional<std::size_t>(next - at) : std::nullopt;
        }
        if (type == '*') {
            const long long n = std::stoll(header);
            for (long long i = 0; i < n; ++i) {
                const std::optional<std::size_t> element = reply_length(buf, next);
                if (!element) {
                    return std::nullopt;
                }
                next += *element;
            }
            return next - at;
        }
        return next - at;  // + - : and the rest: one line
    }

    /// One command at the start of `buf`: its length and arguments, or nullopt while incomplete.
    static std::optional<std::pair<std::size_t, Argv>> command(std::string_view buf)
    {
        if (buf.empty()) {
            return std::nullopt;
        }
        if (buf[0] != '*') {  // an inline command: one line
            const std::size_t eol = line_end(buf, 0);
            if (eol == std::string_view::npos) {
                return std::nullopt;
            }
            return std::pair{eol + 2, Argv{std::string(buf.substr(0, eol))}};
        }
        std::size_t eol = line_end(buf, 0);
        if (eol == std::string_view::npos) {
            return std::nullopt;
        }
        const long long n = std::stoll(std::string(buf.substr(1, eol - 1)));
        std::size_t at = eol + 2;
        Argv argv;
        for (long long i = 0; i < n; ++i) {
            eol = line_end(buf, at);
            if (eol == std::string_view::npos) {
                return std::nullopt;
            }
            const auto len = static_cast<std::size_t>(std::stoll(std::string(buf.substr(at + 1, eol - at - 1))));
            at = eol + 2;
            if (at + len + 2 > buf.size()) {
                return std::nullopt;
            }
            argv.emplace_back(buf.substr(at, len));
            at += len + 2;
        }
        return std::pair{at, std::move(argv)};
    }

    // Empty when the command could not be run (the test checks the reply it expects: no doctest
    // assertion on this thread, where a failing REQUIRE would end the process).
    std::string run_direct(const Argv& argv) const
    {
        const int fd = connect_to(redis_port_);
        if (fd < 0) {
            return {};
        }
        std::string out = "*" + std::to_string(argv.size()) + "\r\n";
        for (const std::string& a : argv) {
            out += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
        }
        std::string in;
        if (send_all(fd, out)) {
            char buf[4096];
            while (!reply_length(in)) {
                const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
                if (n <= 0) {
                    in.clear();
                    break;
                }
                in.append(buf, static_cast<std::size_t>(n));
            }
        }
        ::close(fd);
        return in;
    }

    void accept_loop()
    {
        while (!stop_) {
            pollfd p{.fd = listener_, .events = POLLIN, .revents = 0};
            if (::poll(&p, 1, 20) <= 0) {
                continue;
            }
            const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
            if (client < 0) {
                continue;
            }
            const int server = connect_to(redis_port_);
            if (server < 0) {
                ::close(client);
                continue;
            }
            std::lock_guard lock(mutex_);
            pumps_.emplace_back([this, client, server] { pump(client, server); });
        }
    }

    void pump(int client, int server)
    {
        const Direct direct = [this](const Argv& argv) { return run_direct(argv); };
        std::string pending;  // bytes from the client not yet passed on: an incomplete command
        char buf[65536];
        while (!stop_) {
            pollfd p[2] = {{.fd = client, .events = POLLIN, .revents = 0}, {.fd = server, .events = POLLIN, .revents = 0}};
            if (::poll(p, 2, 20) <= 0) {
                continue;
            }
            if (p[1].revents != 0) {
                const ssize_t n = ::recv(server, buf, sizeof buf, 0);
                if (n <= 0 || !send_all(client, std::string_view(buf, static_cast<std::size_t>(n)))) {
                    break;
                }
            }
            if (p[0].revents != 0) {
                const ssize_t n = ::recv(client, buf, sizeof buf, 0);
                if (n <= 0) {
                    break;
                }
                pending.append(buf, static_cast<std::size_t>(n));
                std::size_t done = 0;
                bool ok = true;
                while (auto cmd = command(std::string_view(pending).substr(done))) {
                    if (when_(cmd->second)) {
                        ++fired_;
                        hook_(direct);
                    }
                    ok = send_all(server, std::string_view(pending).substr(done, cmd->first));
                    done += cmd->first;
                    if (!ok) {
                        break;
                    }
                }
                pending.erase(0, done);
                if (!ok) {
                    break;
                }
            }
        }
        ::close(client);
        ::close(server);
    }

    std::uint16_t redis_port_;
    std::function<bool(const Argv&)> when_;
    std::function<void(const Direct&)> hook_;
    int listener_{-1};
    std::uint16_t port_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> fired_{0};
    std::mutex mutex_;
    std::vector<std::thread> pumps_;
    std::thread accept_thread_;
};

}  // namespace paybridge::test
