// A RedisConnection whose caller's command cannot be buffered (the allocation fails) stays in
// step: every later reply reaches the request it answers. A binary of its own, because it replaces
// the global operator new so that a test can make the next large allocation fail.

#include "store/redis_connection.hpp"
#include "tests/integration/store/store_fixture.hpp"
#include "tests/support/replaced_allocation.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace {

// 0: every allocation is served; otherwise allocations of at least this many bytes fail.
std::atomic<std::size_t> fail_from{0};

}  // namespace

void* operator new(std::size_t size)
{
    const std::size_t limit = fail_from.load(std::memory_order_relaxed);
    if (limit != 0 && size >= limit) {
        throw std::bad_alloc();
    }
    if (void* p = std::malloc(size == 0 ? 1 : size)) {
        return p;
    }
    throw std::bad_alloc();
}

using paybridge::test::StoreFixture;

TEST_CASE("redis connection: a pipeline whose second command cannot be buffered leaves no command behind")
{
    StoreFixture f;
    REQUIRE(f.wait_ready());
    const std::string big(24u << 20, 'x');  // allocated before allocations start failing
    std::vector<std::vector<std::string>> commands{{"ECHO", "a"}, {"SET", "alloc:big", big}};
    fail_from.store(16u << 20);
    CHECK_THROWS_AS(f.run(f.conn->exec_many(std::move(commands))), std::bad_alloc);
    fail_from.store(0);
    // Had "ECHO a" stayed buffered without its request, its reply would answer this one.
    CHECK(f.cmd({"ECHO", "b"}).str == "b");
    CHECK(f.cmd({"ECHO", "c"}).str == "c");
    CHECK(f.integer({"EXISTS", "alloc:big"}) == 0);
    // And the connection still takes large commands.
    CHECK(f.cmd({"SET", "alloc:big", big}).str == "OK");
    CHECK(f.integer({"STRLEN", "alloc:big"}) == static_cast<std::int64_t>(big.size()));
}
