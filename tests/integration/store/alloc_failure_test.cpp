// A RedisConnection whose caller's command cannot be buffered (the allocation fails) stays in
// step: every later reply reaches the request it answers. A binary of its own, because it replaces
// the global operator new so that a test can make the next large allocation fail.

#include "store/redis_connection.hpp"
#include "tests/integration/store/store_fixture.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

// g++ inlines the replacements below into the calls it sees and then reports free() on memory
// from "operator new": here both are malloc/free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

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

// Every plain and array form, so that whatever allocates with one frees with another of these
// (AddressSanitizer checks that new and delete match).
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept
{
    try {
        return ::operator new(size);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return ::operator new(size, std::nothrow); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

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
