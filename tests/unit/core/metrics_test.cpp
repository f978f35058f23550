#include "core/metrics.hpp"

#include <doctest/doctest.h>

#include <string>
#include <thread>

using namespace paybridge::metrics;

TEST_CASE("cached() hands out the same child as with(), per label values, from any thread")
{
    Registry reg;
    auto& family = reg.counter("test_cached_total", "Test counter.");
    Counter& a = family.cached<2>({"channel", "outcome"}, {"alipay", "applied"});
    CHECK(&a == &family.with({{"channel", "alipay"}, {"outcome", "applied"}}));
    // Warm: the same pointer again; other values, another child.
    CHECK(&family.cached<2>({"channel", "outcome"}, {"alipay", "applied"}) == &a);
    Counter& b = family.cached<2>({"channel", "outcome"}, {"alipay", "duplicate"});
    CHECK(&b != &a);
    // Values are joined with a separator: ("ab", "c") is not ("a", "bc").
    CHECK(&family.cached<2>({"channel", "outcome"}, {"ab", "c"}) !=
          &family.cached<2>({"channel", "outcome"}, {"a", "bc"}));
    // Another family with the same values has its own children.
    auto& other = reg.counter("test_cached_other_total", "Another test counter.");
    CHECK(&other.cached<2>({"channel", "outcome"}, {"alipay", "applied"}) != &a);
    // Another thread (its own cache) finds the same child.
    Counter* seen = nullptr;
    std::thread([&] { seen = &family.cached<2>({"channel", "outcome"}, {"alipay", "applied"}); }).join();
    CHECK(seen == &a);
    // Values too long for the cache key still work (uncached).
    const std::string long_value(300, 'x');
    CHECK(&family.cached<1>({"route"}, {long_value}) == &family.with({{"route", long_value}}));

    a.inc(3);
    const std::string text = reg.render();
    CHECK(text.find("test_cached_total{channel=\"alipay\",outcome=\"applied\"} 3") != std::string::npos);
}
