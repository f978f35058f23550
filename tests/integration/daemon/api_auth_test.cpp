// The CRM-facing API's authentication end to end (API.md: "Authorization: Bearer <token>; 401 without
// a valid token"): every /v1 route the daemon serves (webhooks/service.cpp Service::api), sent over
// HTTP with no token, a wrong one, one of the right length that differs in one byte, and the right
// one in a malformed header, answers 401 and changes nothing. The same routes with the right token
// are answered (the control: the requests themselves are valid and would have changed the state).

#include "core/time.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/json.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

using namespace paybridge;
using namespace paybridge::test;
namespace alipay = paybridge::gateways::alipay;

namespace {


struct Route {
    std::string method;
    std::string target;
    std::string body;  ///< JSON, for POST /v1/bills
};

struct Credentials {
    std::string what;
    Headers headers;
};

}  // namespace

TEST_CASE("/v1 API without a valid bearer token: every route answers 401 and changes nothing")
{
    // A CRM that always answers 503 and one retry: the event is dead-lettered within seconds, so
    // that redeliver and recover have something they would change.
    const std::string secret = "whsec_" + crypto::base64_encode(crypto::random_bytes(32));
    HttpReceiver crm(HttpReceiverOptions{.secrets = {secret}, .default_status = 503});
    DaemonOptions options;
    options.start = false;
    DaemonFixture fx(options);
    std::ofstream(fx.dir() / "secrets/crm1") << secret;
    std::filesystem::permissions(fx.dir() / "secrets/crm1",
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write,
                                 std::filesystem::perm_options::replace);
    options.extra_config = "\"crm\": {\"url\": \"" + crm.url("/paybridge/events") +
                           "\", \"secret\": \"file:secrets/crm1\", \"retry_schedule_s\": [1]}";
    fx.write_config(options);
    fx.start();
    INFO("paybridged log:\n", fx.log());

    // A paid bill whose event is dead.
    const std::string since = format_rfc3339(unix_ms(std::chrono::system_clock::now()) - 60'000);
    REQUIRE(fx.create_bill("A9001", 1234).status == 201);
    {
        const auto key = *crypto::load_private_key(fx.alipay_keys.private_pem);
        alipay::NoticeSpec spec;
        spec.app_id = DaemonFixture::kAlipayAppId;
        spec.seller_id = DaemonFixture::kSellerId;
        spec.out_trade_no = "A9001";
        spec.amount_fen = 1234;
        spec.trade_no = "20261127220014000000009001";
        const HttpResult paid = fx.post_alipay(alipay::build_alipay_body(alipay::make_paid_notice(spec), key.get()));
        REQUIRE_MESSAGE(paid.body == "success", paid.body);
    }
    std::string event_id;
    {
        const HttpResult bill = fx.get_bill("A9001");
        REQUIRE_MESSAGE(bill.status == 200, bill.body);
        const rapidjson::Document d = parse_json(bill.body);
        REQUIRE(d["events"].Size() == 1);
        event_id = d["events"][0]["id"].GetString();
    }
    const auto dead_listed = [&] {
        const HttpResult r = fx.api("GET", "/v1/deliveries?state=dead");
        REQUIRE_MESSAGE(r.status == 200, r.body);
        return r.body.find("\"" + event_id + "\"") != std::string::npos;
    };
    REQUIRE(wait_until(dead_listed, std::chrono::seconds(20)));

    // What must not change: the bills (none created), the bill, the event's delivery record (dead:
    // a redeliver or recover would make it pending), the outbox.
    const auto bills_list = [&] { return fx.api("GET", "/v1/bills?limit=500").body; };
    const auto delivery = [&] {
        const HttpResult r = fx.api("GET", "/v1/events/" + event_id);
        REQUIRE_MESSAGE(r.status == 200, r.body);
        return r.body;
    };
    const std::string bills_before = bills_list();
    const std::string bill_before = fx.get_bill("A9001").body;
    const std::string delivery_before = delivery();
    REQUIRE(std::string(parse_json(delivery_before)["delivery"]["state"].GetString()) == "dead");
    const long long outbox_before = fx.outbox_length();
    const std::size_t crm_requests_before = crm.count();

    const std::string now = format_rfc3339(unix_ms(std::chrono::system_clock::now()) + 60'000);
    const std::vector<Route> routes{
        {"GET", "/v1/bills", ""},
        {"GET", "/v1/bills?status=PAID&limit=10", ""},
        {"GET", "/v1/bills/A9001", ""},
        {"POST", "/v1/bills",
         R"({"id":"A9002","amount_fen":500,"currency":"CNY","customer_id":"cust-1","description":"test bill"})"},
        {"GET", "/v1/anomalies", ""},
        {"GET", "/v1/events", ""},
        {"GET", "/v1/events/" + event_id, ""},
        {"POST", "/v1/events/" + event_id + "/redeliver", ""},
        {"GET", "/v1/deliveries?state=dead", ""},
        {"POST", "/v1/deliveries/recover?since=" + since, ""},
        {"GET", "/v1/reconciliation/summary?from=" + since + "&to=" + now, ""},
    };

    const std::string token = DaemonFixture::kApiToken;
    std::string one_byte_off = token;
    one_byte_off[token.size() / 2] = one_byte_off[token.size() / 2] == 'x' ? 'y' : 'x';
    REQUIRE(one_byte_off.size() == token.size());
    REQUIRE(one_byte_off != token);
    const std::vector<Credentials> refused{
        {"no Authorization header", {}},
        {"a wrong token", {{"Authorization", "Bearer wrong-token"}}},
        {"the right length with one byte different", {{"Authorization", "Bearer " + one_byte_off}}},
        {"the right token less its last byte", {{"Authorization", "Bearer " + token.substr(0, token.size() - 1)}}},
        {"the right token and one more byte", {{"Authorization", "Bearer " + token + "0"}}},
        {"the right token without a scheme", {{"Authorization", token}}},
        {"the right token under another scheme", {{"Authorization", "Basic " + token}}},
        {"an empty bearer token", {{"Authorization", "Bearer "}}},
    };

    for (const Credentials& credentials : refused) {
        CAPTURE(credentials.what);
        for (const Route& route : routes) {
            CAPTURE(route.method);
            CAPTURE(route.target);
            Headers headers = credentials.headers;
            if (!route.body.empty()) {
                headers.emplace_back("Content-Type", "application/json");
            }
            const HttpResult r = http_request(fx.port(), route.method, route.target, route.body, headers);
            CHECK(r.status == 401);
            CHECK(r.header("www-authenticate").starts_with("Bearer"));
            CHECK(r.body.find("A9001") == std::string::npos);  // nothing of the data leaks
            CHECK(r.body.find(event_id) == std::string::npos);
        }
    }

    // Each refusal is logged once, with its reason, and no token or part of one.
    {
        const std::string log = fx.log();
        std::size_t logged = 0;
        for (std::size_t at = log.find("api.unauthorized"); at != std::string::npos;
             at = log.find("api.unauthorized", at + 1)) {
            ++logged;
        }
        CHECK(logged == refused.size() * routes.size());
        CHECK(log.find(R"("reason":"no_authorization_header")") != std::string::npos);
        CHECK(log.find(R"("reason":"not_a_bearer_token")") != std::string::npos);
        CHECK(log.find(R"("reason":"unknown_token")") != std::string::npos);
        CHECK(log.find(R"("path":"/v1/deliveries/recover")") != std::string::npos);
        CHECK(log.find(token.substr(0, 12)) == std::string::npos);
        CHECK(log.find(one_byte_off.substr(0, 12)) == std::string::npos);
        CHECK(log.find("since=") == std::string::npos);
    }

    // Nothing changed.
    CHECK(fx.get_bill("A9002").status == 404);
    CHECK(bills_list() == bills_before);
    CHECK(fx.get_bill("A9001").body == bill_before);
    CHECK(delivery() == delivery_before);
    CHECK(dead_listed());
    CHECK(fx.outbox_length() == outbox_before);
    CHECK(crm.count() == crm_requests_before);

    // The control: with the right token the same requests are served, and the ones that change
    // something do.
    for (const Route& route : routes) {
        CAPTURE(route.method);
        CAPTURE(route.target);
        const HttpResult r = fx.api(route.method, route.target, route.body);
        CHECK_MESSAGE(r.status != 401, r.body);
        if (route.method == "POST" && route.target == "/v1/bills") {
            CHECK_MESSAGE(r.status == 201, r.body);
        } else if (route.target.ends_with("/redeliver")) {
            REQUIRE_MESSAGE(r.status == 200, r.body);
            CHECK(std::string(parse_json(r.body)["previous_state"].GetString()) == "dead");
        } else {
            CHECK_MESSAGE(r.status == 200, r.body);
        }
    }
    CHECK(fx.get_bill("A9002").status == 200);
}
