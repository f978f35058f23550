// What a merchant's book of downloaded WeChat Pay platform certificates holds after each download
// (daemon/certificate_refresh.hpp): what is listed, plus what was listed within the last 48 hours
// and has not expired.

#include "daemon/certificate_refresh.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using paybridge::daemon::detail::kUnlistedGraceSeconds;
using paybridge::daemon::detail::merge_downloaded;
using paybridge::gateways::ProviderCertificate;

namespace {

constexpr std::int64_t kNow = 1'800'000'000;

ProviderCertificate cert(const std::string& serial, std::int64_t not_after = kNow + 365 * 86400)
{
    return ProviderCertificate{.serial = serial, .key = nullptr, .not_before = kNow - 86400, .not_after = not_after};
}

std::vector<std::string> serials(const std::vector<ProviderCertificate>& certs)
{
    std::vector<std::string> out;
    for (const auto& c : certs) {
        out.push_back(c.serial);
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

TEST_CASE("certificate refresh: a certificate no longer listed stays 48 hours after it was last listed, never past its "
          "expiry")
{
    std::map<std::string, std::int64_t> last_listed;
    auto held = merge_downloaded({}, {cert("A"), cert("B")}, last_listed, kNow);
    CHECK(serials(held) == std::vector<std::string>{"A", "B"});
    CHECK(last_listed == std::map<std::string, std::int64_t>{{"A", kNow}, {"B", kNow}});

    // B is no longer listed: kept while within the grace period, A listed again and renewed.
    held = merge_downloaded(held, {cert("A")}, last_listed, kNow + 6 * 3600);
    CHECK(serials(held) == std::vector<std::string>{"A", "B"});
    CHECK(last_listed.at("A") == kNow + 6 * 3600);
    CHECK(last_listed.at("B") == kNow);
    held = merge_downloaded(held, {cert("A")}, last_listed, kNow + kUnlistedGraceSeconds - 1);
    CHECK(serials(held) == std::vector<std::string>{"A", "B"});
    // 48 hours after it was last listed, it goes (and is forgotten).
    held = merge_downloaded(held, {cert("A")}, last_listed, kNow + kUnlistedGraceSeconds);
    CHECK(serials(held) == std::vector<std::string>{"A"});
    CHECK(last_listed.count("B") == 0);

    // A certificate held but never seen listed by this process (no entry) is not kept unlisted.
    held = merge_downloaded({cert("A"), cert("X")}, {cert("A")}, last_listed, kNow + kUnlistedGraceSeconds + 10);
    CHECK(serials(held) == std::vector<std::string>{"A"});
}

TEST_CASE("certificate refresh: expired certificates are dropped, listed or not")
{
    std::map<std::string, std::int64_t> last_listed;
    auto held = merge_downloaded({}, {cert("A"), cert("OLD", kNow + 3600)}, last_listed, kNow);
    CHECK(serials(held) == std::vector<std::string>{"A", "OLD"});
    // Unlisted and expired within the grace period: dropped.
    held = merge_downloaded(held, {cert("A")}, last_listed, kNow + 7200);
    CHECK(serials(held) == std::vector<std::string>{"A"});
    // Still listed but expired: dropped too.
    held = merge_downloaded(held, {cert("A"), cert("OLD", kNow + 3600)}, last_listed, kNow + 7200);
    CHECK(serials(held) == std::vector<std::string>{"A"});
    // An empty list keeps recent unexpired ones only.
    held = merge_downloaded(held, {}, last_listed, kNow + 7300);
    CHECK(serials(held) == std::vector<std::string>{"A"});
}
