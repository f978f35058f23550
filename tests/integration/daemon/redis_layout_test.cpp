// The key-layout marker end to end: instances whose redis.shards differ from what the
// deployment's data was written with refuse to start (exit 78) instead of turning payments into
// orphans; the same shards start; data from before the marker gets it written.

#include "tests/support/daemon_fixture.hpp"
#include "tests/support/redis_server.hpp"

#include <doctest/doctest.h>
#include <signal.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace paybridge::test;
using namespace std::chrono_literals;

namespace {

std::string read_file(const std::filesystem::path& path)
{
    std::ifstream in(path);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

/// Starts paybridged with `fx`'s configuration (fx constructed with start = false), its Redis
/// URL pointed at the Redis on `redis_port`: a second instance of the deployment `redis_port`
/// belongs to.
std::unique_ptr<Process> start_against(DaemonFixture& fx, std::uint16_t redis_port)
{
    std::string cfg = read_file(fx.config_path());
    const std::string own = "redis://127.0.0.1:" + std::to_string(fx.redis().port()) + "/";
    const std::size_t at = cfg.find(own);
    REQUIRE(at != std::string::npos);
    cfg.replace(at, own.size(), "redis://127.0.0.1:" + std::to_string(redis_port) + "/");
    std::ofstream(fx.config_path()) << cfg;
    return std::make_unique<Process>(
        std::vector<std::string>{DaemonFixture::binary("paybridged"), "--config", fx.config_path().string()},
        fx.dir() / "daemon.log");
}

/// How many of the 16 shards' markers on the fixture's Redis hold `value`; -1 if one holds another.
long long markers(DaemonFixture& fx, const std::string& value = "paybridge-keys/1 shards=16")
{
    return fx.redis_integer({"EVAL",
                             "local n = 0 "
                             "for i = 0, 15 do "
                             "  local v = redis.call('GET', string.format('pb:{s%02d}:layout', i)) "
                             "  if v == ARGV[1] then n = n + 1 elseif v then return -1 end "
                             "end "
                             "return n",
                             "0", value});
}

}  // namespace

TEST_CASE("instances with other redis.shards than the deployment's data exit 78 naming both and the same shards start")
{
    DaemonFixture fx;  // shards 16 (the default): records the marker
    REQUIRE(fx.create_bill("S-1", 100).status == 201);
    CHECK(markers(fx) == 16);

    DaemonFixture eight({.redis_extra = ", \"shards\": 8", .start = false});
    const std::unique_ptr<Process> refused = start_against(eight, fx.redis().port());
    const int code = refused->wait(30s);
    const std::string said = refused->log();
    CHECK_MESSAGE(code == 78, "exit " << code << "; log:\n" << said);
    CHECK(said.find("\"event\":\"redis.layout_mismatch\"") != std::string::npos);
    CHECK(said.find(R"("configured":"paybridge-keys/1 shards=8")") != std::string::npos);
    CHECK(said.find(R"("found":"paybridge-keys/1 shards=16")") != std::string::npos);
    CHECK(said.find("daemon.layout_refused") != std::string::npos);
    CHECK(markers(fx) == 16);

    DaemonFixture same({.start = false});
    const std::unique_ptr<Process> second = start_against(same, fx.redis().port());
    CHECK_MESSAGE(wait_for_http(same.port(), "/readyz", 200, 30s), second->log());
    CHECK(http_request(fx.port(), "GET", "/readyz").status == 200);
    CHECK(second->stop(SIGTERM) == 0);
}

TEST_CASE("an existing deployment without the layout marker gets it written at start unless its data contradicts the shards")
{
    DaemonFixture fx;
    for (int i = 0; i < 30; ++i) {
        REQUIRE(fx.create_bill("U-" + std::to_string(i), 100).status == 201);
    }
    // As a version from before the marker left it: the data, no marker.
    REQUIRE(fx.stop() == 0);
    std::vector<std::string> del{"DEL"};
    for (int shard = 0; shard < 16; ++shard) {
        del.push_back("pb:{s" + std::string(shard < 10 ? "0" : "") + std::to_string(shard) + "}:layout");
    }
    CHECK(fx.redis_integer(del) == 16);

    // An instance with fewer shards looks at the data and refuses, writing nothing.
    DaemonFixture eight({.redis_extra = ", \"shards\": 8", .start = false});
    const std::unique_ptr<Process> refused = start_against(eight, fx.redis().port());
    const int code = refused->wait(30s);
    CHECK_MESSAGE(code == 78, "exit " << code << "; log:\n" << refused->log());
    CHECK(refused->log().find(R"("found":"no marker")") != std::string::npos);
    CHECK(markers(fx) == 0);

    // The upgraded deployment starts as before, and the marker is written.
    fx.start();
    CHECK(markers(fx) == 16);
    CHECK(fx.log().find("keys of an earlier version agree with it") != std::string::npos);
    CHECK(fx.get_bill("U-7").status == 200);
}
