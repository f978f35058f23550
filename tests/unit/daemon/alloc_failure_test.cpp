// An allocation failure on a connection's way from accept to its first answer (the session's
// coroutine not started, its buffers not allocated) costs that connection only: its place in the
// connection cap comes back and the worker goes on accepting. A binary of its own, because it
// replaces the global operator new and aligned_alloc so that a test can make allocations fail.

#include "tests/support/replaced_allocation.hpp"
#include "tests/unit/daemon/server_fixture.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <string_view>
#include <thread>

namespace {

// While armed: the number of allocations so far, and which one (1-based) fails.
std::atomic<bool> armed{false};
std::atomic<std::size_t> allocations{0};
std::atomic<std::size_t> fail_at{0};

}  // namespace

void* operator new(std::size_t size)
{
    if (armed.load(std::memory_order_relaxed) &&
        allocations.fetch_add(1, std::memory_order_relaxed) + 1 == fail_at.load(std::memory_order_relaxed)) {
        throw std::bad_alloc();
    }
    if (void* p = std::malloc(size == 0 ? 1 : size)) {
        return p;
    }
    throw std::bad_alloc();
}

// Asio allocates coroutine frames (and recycles them per thread) with aligned_alloc, not with
// operator new: counted and failed the same way.
extern "C" void* aligned_alloc(std::size_t align, std::size_t size) noexcept
{
    if (armed.load(std::memory_order_relaxed) &&
        allocations.fetch_add(1, std::memory_order_relaxed) + 1 == fail_at.load(std::memory_order_relaxed)) {
        return nullptr;
    }
    void* p = nullptr;
    return ::posix_memalign(&p, align, size) == 0 ? p : nullptr;
}

using namespace paybridge;
namespace asio = boost::asio;
using test::Server;

namespace {

/// What a client has received so far, read into a fixed buffer: the test thread is the server's,
/// and its allocations are being counted.
struct Reply {
    char bytes[512]{};
    std::size_t size{0};
    bool ended{false};

    bool has(std::string_view text) const { return std::string_view(bytes, size).find(text) != std::string_view::npos; }

    /// Reads what has arrived; true once a response's header has or the connection has ended.
    bool read(asio::ip::tcp::socket& client)
    {
        pollfd p{.fd = client.native_handle(), .events = POLLIN, .revents = 0};
        while (!ended && ::poll(&p, 1, 0) > 0) {
            boost::system::error_code ec;
            size += client.read_some(asio::buffer(bytes + size, sizeof bytes - size), ec);
            ended = ec.failed() || size == sizeof bytes;
        }
        return ended || has("\r\n\r\n");
    }
};

/// One round: a client connects and sends a request while the k-th allocation from then on fails.
struct Round {
    bool failed{false};    ///< the k-th allocation came (and failed)
    bool escaped{false};   ///< its bad_alloc left io_context::run()
    bool settled{false};   ///< the client was answered or its connection closed
    Reply first;           ///< what that client received
    bool freed{false};     ///< once it closed, no session and no place in the cap is left
    Reply second;          ///< what a client connecting afterwards received
};

Round run_round(std::size_t k)
{
    const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    Round r;
    // The server starts (its idle sweep, its accept) before allocations are counted.
    Server s(false);
    s.ioc.run_for(std::chrono::milliseconds(10));
    s.client.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), s.server.port()));
    asio::write(s.client, asio::buffer(request));
    const std::function<bool()> answered_or_closed = [&] { return r.first.read(s.client); };
    allocations = 0;
    fail_at = k;
    armed = true;
    try {
        r.settled = s.serve_until(answered_or_closed);
    } catch (const std::bad_alloc&) {
        r.escaped = true;
    }
    armed = false;
    r.failed = allocations >= k;
    if (r.escaped || !r.settled) {
        return r;
    }
    s.client.close();
    r.freed = s.serve_until([&] { return s.server.sessions() == 0 && s.gate.open.load() == 0; });
    asio::ip::tcp::socket second(s.client_ioc);
    second.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), s.server.port()));
    asio::write(second, asio::buffer(request));
    s.serve_until([&] { return r.second.read(second) && r.second.has("ok\n"); });
    return r;
}

}  // namespace

TEST_CASE("an allocation failure while a connection is accepted costs that connection, not the listener")
{
    // Round k fails the k-th allocation on the way from accept to the first answer: the accepted
    // socket's registration with epoll, the session's coroutine frame, its stream, its entry in
    // the session list, its buffers, the parser, the response. Each round runs on a thread of its
    // own, so that no memory recycled by an earlier one (Asio keeps freed coroutine frames per
    // thread) takes the place of an allocation. The rounds end with the first one in which
    // nothing failed.
    std::size_t recovered = 0;
    std::size_t escaped = 0;
    for (std::size_t k = 1; k <= 64; ++k) {
        CAPTURE(k);
        Round r;
        std::thread([&] { r = run_round(k); }).join();
        if (r.escaped) {
            // Failed inside Asio (registering the accepted socket with epoll): the exception
            // leaves io_context::run(), and the daemon stops that way (App::run: exit 1, for the
            // supervisor to start a whole process), never with a listener nobody accepts on.
            ++escaped;
            continue;
        }
        REQUIRE(r.settled);
        // The connection at hand is closed with no answer, or answered: 200, or 500 when what
        // failed was on the request's way.
        CHECK((r.first.ended || r.first.has("HTTP/1.1 200") || r.first.has("HTTP/1.1 500")));
        // Once it is closed, its place in the connection cap is free again.
        CHECK(r.freed);
        // And the listener still accepts and serves.
        CHECK(r.second.has("HTTP/1.1 200"));
        if (!r.failed) {
            break;
        }
        ++recovered;
    }
    CHECK(recovered > escaped);
    MESSAGE("rounds recovered: " << recovered << ", left io_context::run(): " << escaped);
}
