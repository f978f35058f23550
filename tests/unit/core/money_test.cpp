#include "core/money.hpp"

#include <doctest/doctest.h>

using paybridge::parse_yuan;

TEST_CASE("parse_yuan converts exact decimal yuan to fen")
{
    struct Case {
        const char* text;
        long long fen;  // -1: rejected
    };
    const Case cases[] = {
        {"0.01", 1},       {"2.00", 200},  {"20", 2000},      {"0.5", 50},        {"12.34", 1234},
        {"0", 0},          {"0.00", 0},    {"9999999.99", 999999999},             {"10000000000", 1000000000000},
        {"10000000000.01", -1},            {"1.234", -1},     {"-1.00", -1},      {"+1.00", -1},
        {"1e3", -1},       {" 1.00", -1},  {"1.00 ", -1},     {"1.", -1},         {".5", -1},
        {"", -1},          {"01.00", -1},  {"1,00", -1},      {"1.0a", -1},       {"0x10", -1},
        {"1.-1", -1},      {"１.00", -1},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto r = parse_yuan(c.text);
        if (c.fen < 0) {
            CHECK_FALSE(r);
        } else {
            REQUIRE(r);
            CHECK(*r == c.fen);
        }
    }
}

TEST_CASE("parse_fen and format_yuan")
{
    CHECK(*paybridge::parse_fen("1") == 1);
    CHECK_FALSE(paybridge::parse_fen("-1"));
    CHECK_FALSE(paybridge::parse_fen("1.0"));
    CHECK_FALSE(paybridge::parse_fen("007"));
    CHECK(paybridge::format_yuan(1234) == "12.34");
    CHECK(paybridge::format_yuan(5) == "0.05");
    CHECK(paybridge::format_yuan(200) == "2.00");
}
