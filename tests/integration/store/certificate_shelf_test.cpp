// Where downloaded Alipay certificates are kept for every instance (store/certificate_shelf.hpp),
// against a real redis-server: what is kept reads back, a later keep of the same SN replaces it,
// entries that do not read are reported (not guessed at), drops remove only what they name, the
// key follows key_prefix, and a key of another type is an error, not an empty shelf.

#include "store/certificate_shelf.hpp"

#include "core/error.hpp"
#include "store/keys.hpp"
#include "tests/integration/store/store_fixture.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using paybridge::Result;
using paybridge::store::CertificateShelf;
using paybridge::store::KeptCertificate;
using paybridge::store::KeptCertificates;
using paybridge::test::StoreFixture;

namespace {

constexpr const char* kApp = "2021000000000001";
// SNs as §1.6 computes them: 32 lower-case hex digits.
const std::string kSnA(32, 'a');
const std::string kSnB(32, 'b');
const std::string kSnC(32, 'c');

std::vector<std::string> sns(const KeptCertificates& kept)
{
    std::vector<std::string> out;
    for (const KeptCertificate& c : kept.certificates) {
        out.push_back(c.sn);
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

TEST_CASE("certificate shelf - kept certificates read back, by app, and a keep of the same SN replaces")
{
    StoreFixture f;
    REQUIRE(f.wait_ready());
    CertificateShelf shelf(*f.conn, f.cfg);

    Result<KeptCertificates> empty = f.run(shelf.read_alipay(kApp));
    REQUIRE(empty.has_value());
    CHECK(empty->certificates.empty());
    CHECK(empty->unreadable.empty());

    REQUIRE(f.run(shelf.keep_alipay(kApp, KeptCertificate{.sn = kSnA, .not_after = 1900000000, .content = "TUlJQ0FB"}))
                .has_value());
    REQUIRE(f.run(shelf.keep_alipay(kApp, KeptCertificate{.sn = kSnB, .not_after = 1800000000, .content = "Zm9v"}))
                .has_value());
    REQUIRE(f.run(shelf.keep_alipay("other-app", KeptCertificate{.sn = kSnC, .not_after = 1, .content = "eA=="}))
                .has_value());
    // The same SN again: replaced, not added.
    REQUIRE(f.run(shelf.keep_alipay(kApp, KeptCertificate{.sn = kSnB, .not_after = 1800000001, .content = "YmFy"}))
                .has_value());

    Result<KeptCertificates> kept = f.run(shelf.read_alipay(kApp));
    REQUIRE(kept.has_value());
    CHECK(sns(*kept) == std::vector<std::string>{kSnA, kSnB});
    for (const KeptCertificate& c : kept->certificates) {
        if (c.sn == kSnA) {
            CHECK(c.not_after == 1900000000);
            CHECK(c.content == "TUlJQ0FB");
        } else {
            CHECK(c.not_after == 1800000001);
            CHECK(c.content == "YmFy");
        }
    }
    // Stored where keys.hpp says: the app's shard's hash tag, under key_prefix.
    const paybridge::store::Keys keys(f.cfg.key_prefix, f.cfg.shards);
    CHECK(f.cmd({"HLEN", keys.alipay_certificates(kApp)}).integer == 2);
    CHECK(f.cmd({"HGET", keys.alipay_certificates(kApp), kSnA}).str == "1900000000 TUlJQ0FB");
    CHECK(keys.alipay_certificates(kApp).starts_with(f.cfg.key_prefix + "{s"));

    // A drop removes what it names only; nothing to drop sends nothing and succeeds.
    REQUIRE(f.run(shelf.drop_alipay(kApp, {kSnB, std::string(32, '9')})).has_value());
    REQUIRE(f.run(shelf.drop_alipay(kApp, {})).has_value());
    kept = f.run(shelf.read_alipay(kApp));
    REQUIRE(kept.has_value());
    CHECK(sns(*kept) == std::vector<std::string>{kSnA});
    Result<KeptCertificates> other = f.run(shelf.read_alipay("other-app"));
    REQUIRE(other.has_value());
    CHECK(sns(*other) == std::vector<std::string>{kSnC});
}

TEST_CASE("certificate shelf - entries that do not read are reported by SN, and a key of another type is an error")
{
    StoreFixture f;
    REQUIRE(f.wait_ready());
    CertificateShelf shelf(*f.conn, f.cfg);
    const paybridge::store::Keys keys(f.cfg.key_prefix, f.cfg.shards);
    const std::string key = keys.alipay_certificates(kApp);
    const auto sn = [](char c) { return std::string(32, c); };
    f.cmd({"HSET", key, sn('0'), "1900000000 Zm9v", sn('1'), "1900000000", sn('2'), "19x0 Zm9v", sn('3'),
           "1900000000 ", sn('4'), " Zm9v", "not-an-sn", "1900000000 Zm9v", std::string(32, 'A'), "1900000000 Zm9v",
           sn('5'), "1900000000 " + std::string(CertificateShelf::kMaxValueBytes, 'x')});
    Result<KeptCertificates> kept = f.run(shelf.read_alipay(kApp));
    REQUIRE(kept.has_value());
    CHECK(sns(*kept) == std::vector<std::string>{sn('0')});
    std::vector<std::string> unreadable = kept->unreadable;
    std::sort(unreadable.begin(), unreadable.end());
    CHECK(unreadable ==
          std::vector<std::string>{sn('1'), sn('2'), sn('3'), sn('4'), sn('5'), std::string(32, 'A'), "not-an-sn"});

    f.cmd({"DEL", key});
    f.cmd({"SET", key, "not a hash"});
    Result<KeptCertificates> wrong = f.run(shelf.read_alipay(kApp));
    REQUIRE(!wrong.has_value());
    CHECK(wrong.error() == paybridge::errc::store_unavailable);
    CHECK(!f.run(shelf.keep_alipay(kApp, KeptCertificate{.sn = kSnA, .not_after = 1, .content = "eA=="})).has_value());
}

TEST_CASE("certificate shelf - a hash that somebody filled is read one page at most, not whole")
{
    StoreFixture f;
    REQUIRE(f.wait_ready());
    CertificateShelf shelf(*f.conn, f.cfg);
    const paybridge::store::Keys keys(f.cfg.key_prefix, f.cfg.shards);
    std::vector<std::string> argv{"HSET", keys.alipay_certificates(kApp)};
    for (std::size_t i = 0; i < 1000; ++i) {
        std::string sn = std::to_string(i);
        argv.push_back(std::string(32 - sn.size(), 'f') + sn);
        argv.push_back("1900000000 Zm9v");
    }
    f.cmd(argv);
    Result<KeptCertificates> kept = f.run(shelf.read_alipay(kApp));
    REQUIRE(kept.has_value());
    CHECK(kept->certificates.size() <= CertificateShelf::kMaxEntries);
    CHECK(kept->certificates.size() >= CertificateShelf::kMaxEntries / 2);  // a page, not nothing
    CHECK(kept->unreadable.empty());
}
