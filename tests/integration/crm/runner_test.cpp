// daemon::supervise, CrmRunner's restart policy: a dispatcher run that throws is logged and run
// again after a growing pause (not ended for the life of the process), until the runner stops.
// No Redis or CRM is involved: the runs are scripted coroutines.

#include "daemon/crm_wiring.hpp"

#include "core/async.hpp"
#include "core/log.hpp"
#include "tests/integration/crm/crm_fixture.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace paybridge;
using namespace paybridge::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// What each run does, in order: "throw", "throw-other" (not a std::exception) or "return"; the
/// run after the last one asks the supervisor to stop and returns.
struct Script {
    std::vector<std::string> steps;
    std::vector<Clock::time_point> started;
    std::vector<Clock::time_point> ended;
    /// When set: the supervisor's pause timer's expiry as each run starts. It changes only when
    /// supervise() arms the timer, i.e. pauses, between two runs.
    const asio::steady_timer* pause{nullptr};
    std::vector<Clock::time_point> pause_expiry;
    bool stopping{false};
};

asio::awaitable<void> scripted_run(Script& s)
{
    const std::size_t n = s.started.size();
    s.started.push_back(Clock::now());
    if (s.pause != nullptr) {
        s.pause_expiry.push_back(s.pause->expiry());
    }
    const asio::any_io_executor executor = co_await asio::this_coro::executor;
    asio::steady_timer work(executor, 5ms);  // some work before the end
    co_await work.async_wait(kUseTuple);
    s.ended.push_back(Clock::now());
    if (n >= s.steps.size()) {
        s.stopping = true;
        co_return;
    }
    if (s.steps[n] == "throw") {
        throw std::runtime_error("boom " + std::to_string(n + 1));
    }
    if (s.steps[n] == "throw-other") {
        throw 42;
    }
}

}  // namespace

TEST_CASE("a dispatcher run that throws is logged and run again after a growing pause, until stopping")
{
    LogCapture logs;
    asio::io_context ioc;
    asio::steady_timer pause(ioc);
    Script script;
    script.steps = {"throw", "throw-other", "throw", "throw", "return", "throw"};
    script.pause = &pause;
    std::function<asio::awaitable<void>()> body = [&script] { return scripted_run(script); };
    std::function<bool()> stopping = [&script] { return script.stopping; };
    // Wide enough that a loaded sanitizer build's stalls (tens of ms) do not blur the steps.
    const daemon::RestartBackoff backoff{.first = 100ms, .max = 400ms};
    asio::awaitable<void> supervised = daemon::supervise(std::move(body), std::move(stopping), pause, backoff);
    run_awaitable(ioc, std::move(supervised), std::chrono::seconds{10});

    // Every step ran, then the stopping run: the supervisor outlived five exceptions.
    REQUIRE(script.started.size() == 7);
    const auto gap = [&](std::size_t after) { return script.started[after + 1] - script.ended[after]; };
    CHECK(gap(0) >= 100ms);  // first failure: `first`
    CHECK(gap(1) >= 200ms);  // in a row: doubled
    CHECK(gap(2) >= 400ms);  // capped at `max`
    CHECK(gap(3) >= 400ms);
    CHECK(gap(5) >= 100ms);  // after a run that returned, the count starts over
    // A run that returned (a reload) is followed at once: no pause between runs 5 and 6. Checked
    // on the pause timer rather than the clock: it was armed before each run that followed a
    // failure and left alone after the run that returned, so a pause there (of any length) fails.
    REQUIRE(script.pause_expiry.size() == 7);
    for (std::size_t i : {1U, 2U, 3U, 4U, 6U}) {
        CHECK_MESSAGE(script.pause_expiry[i] != script.pause_expiry[i - 1], "no pause before run " << i + 1);
    }
    CHECK(script.pause_expiry[5] == script.pause_expiry[4]);
    // And by the clock, for a pause on some other timer: just under the 400 ms a return taken for
    // a fifth failure in a row would wait (`max`). Normally the gap is well under a millisecond, so
    // a loaded sanitizer build's stalls (tens of ms) stay far from it.
    CHECK(gap(4) < backoff.max);

    const std::vector<std::string> failed = logs.with("\"crm.dispatcher_failed\"");
    REQUIRE(failed.size() == 5);
    CHECK(failed[0].find("boom 1") != std::string::npos);
    CHECK(failed[0].find(R"("restart_in_ms":100)") != std::string::npos);
    CHECK(failed[1].find("not a std::exception") != std::string::npos);
    CHECK(failed[1].find(R"("restart_in_ms":200)") != std::string::npos);
    CHECK(failed[2].find("boom 3") != std::string::npos);
    CHECK(failed[2].find(R"("restart_in_ms":400)") != std::string::npos);
    CHECK(failed[4].find("boom 6") != std::string::npos);
    CHECK(failed[4].find(R"("restart_in_ms":100)") != std::string::npos);
    for (const std::string& line : failed) {
        CHECK(line.find(R"("level":"error")") != std::string::npos);
    }
}

TEST_CASE("a stop during the pause after a failure ends the supervisor at once and a failure while stopping is not rerun")
{
    LogCapture logs;
    asio::io_context ioc;
    asio::steady_timer pause(ioc);
    Script script;
    script.steps = {"throw", "throw"};
    std::function<asio::awaitable<void>()> body = [&script] { return scripted_run(script); };
    std::function<bool()> stopping = [&script] { return script.stopping; };
    const daemon::RestartBackoff backoff{.first = 10s, .max = 60s};
    asio::awaitable<void> supervised = daemon::supervise(std::move(body), std::move(stopping), pause, backoff);
    bool done = false;
    asio::co_spawn(ioc, std::move(supervised), [&done](std::exception_ptr e) {
        CHECK_FALSE(e);
        done = true;
    });
    REQUIRE(run_until(ioc, [&] { return script.ended.size() == 1; }, 5s));
    run_for(ioc, 50ms);
    CHECK_FALSE(done);  // pausing for 10 s
    // As CrmRunner::request_stop(): the flag, then the pause cancelled on the runner's executor.
    const Clock::time_point stop_at = Clock::now();
    script.stopping = true;
    asio::post(ioc, [&pause] { pause.cancel(); });
    REQUIRE(run_until(ioc, [&] { return done; }, 5s));
    CHECK(Clock::now() - stop_at < 1s);
    CHECK(script.started.size() == 1);

    // A run that fails once stopping has begun is logged, and not run again.
    Script last;
    last.steps = {"throw"};
    std::function<asio::awaitable<void>()> body2 = [&last] { return scripted_run(last); };
    std::function<bool()> stopping2 = [&last] { return last.ended.size() == 1; };
    asio::awaitable<void> second = daemon::supervise(std::move(body2), std::move(stopping2), pause, backoff);
    run_awaitable(ioc, std::move(second), std::chrono::seconds{5});
    CHECK(last.started.size() == 1);
    const std::vector<std::string> failed = logs.with("\"crm.dispatcher_failed\"");
    REQUIRE(failed.size() == 2);
    CHECK(failed[1].find(R"("restarting":false)") != std::string::npos);
}
