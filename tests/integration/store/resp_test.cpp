// store/resp.hpp: the RESP request encoding, byte for byte against hiredis' own formatter (the
// oracle), and accepted by a real redis-server (every other test in this folder sends through it).

#include "store/resp.hpp"

#include <doctest/doctest.h>
#include <hiredis/hiredis.h>

#include <string>
#include <vector>

namespace {

std::string hiredis_format(const std::vector<std::string>& argv)
{
    std::vector<const char*> ptrs;
    std::vector<std::size_t> lens;
    for (const std::string& a : argv) {
        ptrs.push_back(a.data());
        lens.push_back(a.size());
    }
    char* raw = nullptr;
    const int len = redisFormatCommandArgv(&raw, static_cast<int>(argv.size()), ptrs.data(), lens.data());
    REQUIRE(len > 0);
    std::string out(raw, static_cast<std::size_t>(len));
    redisFreeCommand(raw);
    return out;
}

}  // namespace

TEST_SUITE("store/resp")
{
    TEST_CASE("append_command writes exactly what redisFormatCommandArgv writes")
    {
        std::vector<std::vector<std::string>> cases{
            {"PING"},
            {"SET", "k", ""},                                            // empty argument
            {"SET", std::string("a\0b\r\n", 5), std::string(1, '\0')},  // binary-safe
            {"HSET", "pb:{s01}:bill:B-1", "description", "\xE5\xA4\xA7 $1\r\n*2"},
        };
        std::vector<std::string> many{"EVALSHA", std::string(40, 'f'), "9"};
        for (int i = 0; i < 40; ++i) {
            many.push_back(std::string(static_cast<std::size_t>(i * 37), static_cast<char>('a' + i % 26)));
        }
        many.push_back(std::string(100'000, 'x'));  // multi-digit lengths
        cases.push_back(many);

        for (const auto& argv : cases) {
            std::string ours = "prefix";  // appends, never overwrites
            REQUIRE(paybridge::store::append_command(ours, argv));
            CHECK(ours == "prefix" + hiredis_format(argv));
        }
    }

    TEST_CASE("an empty command is refused and appends nothing")
    {
        std::string out = "x";
        CHECK_FALSE(paybridge::store::append_command(out, {}));
        CHECK(out == "x");
    }
}
