#include "crm/webhook_signer.hpp"

#include "core/error.hpp"
#include "gateways/crypto/crypto.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::crm;

namespace {

// The Standard Webhooks reference vector (standard-webhooks/standard-webhooks spec and libraries).
constexpr std::string_view kSpecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
constexpr std::string_view kSpecId = "msg_p5jXN8AQM9LWM0D4loKWxJek";
constexpr std::int64_t kSpecTimestamp = 1614265330;
constexpr std::string_view kSpecBody = R"({"test": 2432232314})";
constexpr std::string_view kSpecSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

std::string fresh_secret()
{
    return "whsec_" + crypto::base64_encode(crypto::random_bytes(32));
}

}  // namespace

TEST_CASE("sign reproduces the Standard Webhooks reference signature")
{
    CHECK(sign({std::string(kSpecSecret)}, kSpecId, kSpecTimestamp, kSpecBody) == kSpecSignature);
    // The prefix is optional.
    CHECK(sign({std::string(kSpecSecret.substr(6))}, kSpecId, kSpecTimestamp, kSpecBody) == kSpecSignature);
}

TEST_CASE("verify accepts the reference message and rejects any change")
{
    const std::string ts = std::to_string(kSpecTimestamp);
    const std::int64_t now = kSpecTimestamp + 10;
    CHECK(verify(kSpecSecret, kSpecId, ts, kSpecSignature, kSpecBody, now));
    CHECK_FALSE(verify(kSpecSecret, kSpecId, ts, kSpecSignature, R"({"test": 2432232315})", now));
    CHECK_FALSE(verify(kSpecSecret, "msg_other", ts, kSpecSignature, kSpecBody, now));
    CHECK_FALSE(verify(kSpecSecret, kSpecId, std::to_string(kSpecTimestamp + 1), kSpecSignature, kSpecBody, now));
    CHECK_FALSE(verify(fresh_secret(), kSpecId, ts, kSpecSignature, kSpecBody, now));
    CHECK(check(kSpecSecret, kSpecId, ts, "v1,AAAA", kSpecBody, now).error() == errc::bad_signature);
}

TEST_CASE("verify enforces the timestamp tolerance in both directions")
{
    const std::string secret = fresh_secret();
    const std::int64_t ts = 1'700'000'000;
    const std::string header = sign({secret}, "evt_1", ts, "{}");
    const std::string ts_text = std::to_string(ts);
    CHECK(verify(secret, "evt_1", ts_text, header, "{}", ts + 300));
    CHECK(verify(secret, "evt_1", ts_text, header, "{}", ts - 300));
    CHECK(check(secret, "evt_1", ts_text, header, "{}", ts + 301).error() == errc::stale_timestamp);
    CHECK(check(secret, "evt_1", ts_text, header, "{}", ts - 301).error() == errc::stale_timestamp);
    CHECK(verify(secret, "evt_1", ts_text, header, "{}", ts + 1000, std::chrono::seconds{1000}));
}

TEST_CASE("malformed inputs are reported as such")
{
    const std::string secret = fresh_secret();
    const std::string header = sign({secret}, "evt_1", 100, "{}");
    CHECK(check(secret, "evt_1", "1e2", header, "{}", 100).error() == errc::malformed_request);
    CHECK(check(secret, "evt_1", "", header, "{}", 100).error() == errc::malformed_request);
    CHECK(check(secret, "evt_1", "-5", header, "{}", 100).error() == errc::malformed_request);
    CHECK(check(secret, "", "100", header, "{}", 100).error() == errc::malformed_request);
    CHECK(check(secret, "evt_1", "100", "v2,abc", "{}", 100).error() == errc::malformed_request);
    CHECK(check("whsec_***", "evt_1", "100", header, "{}", 100).error() == errc::bad_signature);
}

TEST_CASE("rotation: both secrets sign, each verifies on its own, unknown versions are ignored")
{
    const std::string old_secret = fresh_secret();
    const std::string new_secret = fresh_secret();
    Result<WebhookSigner> signer = WebhookSigner::create({new_secret, old_secret});
    REQUIRE(signer.has_value());
    CHECK(signer->secret_count() == 2);
    const std::string header = signer->sign("evt_9", 1234, R"({"a":1})");

    const auto space = header.find(' ');
    REQUIRE(space != std::string::npos);
    CHECK(header.substr(0, space) == sign({new_secret}, "evt_9", 1234, R"({"a":1})"));
    CHECK(header.substr(space + 1) == sign({old_secret}, "evt_9", 1234, R"({"a":1})"));

    CHECK(verify(old_secret, "evt_9", "1234", header, R"({"a":1})", 1234));
    CHECK(verify(new_secret, "evt_9", "1234", header, R"({"a":1})", 1234));
    CHECK_FALSE(verify(fresh_secret(), "evt_9", "1234", header, R"({"a":1})", 1234));
    CHECK(verify(new_secret, "evt_9", "1234", "v1a,xyz " + header, R"({"a":1})", 1234));
}

TEST_CASE("bad secrets are refused at creation")
{
    CHECK(WebhookSigner::create({}).error() == errc::invalid_argument);
    CHECK(WebhookSigner::create({"whsec_"}).error() == errc::invalid_argument);
    CHECK(WebhookSigner::create({"whsec_not base64!"}).error() == errc::invalid_argument);
    CHECK(WebhookSigner::create({fresh_secret(), "whsec_%%"}).error() == errc::invalid_argument);
    CHECK_THROWS_AS(sign({"whsec_%%"}, "evt", 1, "{}"), std::invalid_argument);
    Result<std::string> key = decode_secret(kSpecSecret);
    REQUIRE(key.has_value());
    CHECK(key->size() == 24);
}
