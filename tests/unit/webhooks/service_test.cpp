// webhooks::Service without a network or Redis: which gateway a notification reaches, and what a
// provider is answered when handling it fails with an exception. Fakes behind the core/ and
// gateways/ interfaces; the real gateways and store are tested end to end in tests/integration.

#include "core/error.hpp"
#include "tests/support/fake_bill_store.hpp"
#include "tests/support/redis_server.hpp"
#include "webhooks/service.hpp"

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/field.hpp>
#include <rapidjson/document.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace paybridge;
namespace http = boost::beast::http;
using boost::asio::awaitable;

/// Answers every notification as verified, and says in every reply which gateway it was.
class FakeGateway final : public gateways::Gateway {
public:
    explicit FakeGateway(std::string name) : name_(std::move(name)) {}
    std::string_view name() const noexcept override { return name_; }
    Result<gateways::Verified> verify_and_parse(const gateways::InboundRequest& req) const override
    {
        seen_params.emplace_back(req.route_param);
        gateways::Verified v;
        v.event.provider = "fake";
        v.event.channel = name_;
        v.event.kind = kind;
        v.event.bill_id = "B-1";
        return v;
    }
    EventKind kind{EventKind::payment};
    gateways::Reply success() const override { return {.status = 200, .content_type = "text/plain", .body = "ok " + name_}; }
    gateways::Reply failure(const boost::system::error_code& ec) const override
    {
        return {.status = ec == errc::internal ? 500 : 400, .content_type = "text/plain",
                .body = "FAIL " + name_ + " " + std::string(error_name(ec))};
    }
    mutable std::vector<std::string> seen_params;

private:
    std::string name_;
};

/// apply() throws when told to; every other call is never made by these tests.
using FakeStore = paybridge::test::FakeBillStore;

struct Fixture {
    FakeStore store;
    FakeGateway* alipay{nullptr};
    FakeGateway* v3{nullptr};
    FakeGateway* v2{nullptr};
    webhooks::RuntimePtr runtime;
    std::unique_ptr<webhooks::Service> service;
    boost::asio::io_context ioc;

    Fixture()
    {
        auto rt = std::make_shared<webhooks::Runtime>();
        auto a = std::make_unique<FakeGateway>("alipay");
        auto w3 = std::make_unique<FakeGateway>("wechatpay_v3");
        auto w2 = std::make_unique<FakeGateway>("wechatpay_v2");
        alipay = a.get();
        v3 = w3.get();
        v2 = w2.get();
        rt->alipay = std::move(a);
        rt->wechat_v3 = std::move(w3);
        rt->wechat_v2 = std::move(w2);
        runtime = rt;
        webhooks::Service::Deps deps{.store = store,
                                     .deliveries = nullptr,
                                     .runtime = [this] { return runtime; },
                                     .ready = [] { return true; }};
        service = std::make_unique<webhooks::Service>(std::move(deps));
    }

    webhooks::Response post(const std::string& target, const std::string& body,
                            const std::vector<std::pair<std::string, std::string>>& headers = {})
    {
        webhooks::Request req{http::verb::post, target, 11};
        for (const auto& [name, value] : headers) {
            req.set(name, value);
        }
        req.body() = body;
        req.prepare_payload();
        return paybridge::test::run_awaitable(ioc, service->handle(std::move(req)));
    }
};

}  // namespace

TEST_CASE("a WeChat Pay notification reaches v2 by its /v2 path or as XML without v3 headers, else v3")
{
    Fixture f;
    SUBCASE("v3: signed JSON")
    {
        const auto r = f.post("/notify/wechatpay/1900000001", R"({"id":"x"})",
                              {{"Content-Type", "application/json"}, {"Wechatpay-Signature", "c2ln"}});
        CHECK(r.body() == "ok wechatpay_v3");
        CHECK(f.v3->seen_params == std::vector<std::string>{"1900000001"});
    }
    SUBCASE("v2: the /v2 path, whatever the body")
    {
        const auto r = f.post("/notify/wechatpay/1900000001/v2", "<xml/>", {{"Content-Type", "text/xml"}});
        CHECK(r.body() == "ok wechatpay_v2");
        CHECK(f.v2->seen_params == std::vector<std::string>{"1900000001"});
    }
    SUBCASE("v2: a merchant-portal refund at the v3 URL (text/xml or application/xml, any case)")
    {
        for (const char* type : {"text/xml", "application/xml; charset=utf-8", "TEXT/XML"}) {
            CAPTURE(type);
            const auto r = f.post("/notify/wechatpay/1900000001", "<xml><req_info/></xml>", {{"Content-Type", type}});
            CHECK(r.body() == "ok wechatpay_v2");
        }
        CHECK(f.v2->seen_params.size() == 3);
        CHECK(f.v3->seen_params.empty());
    }
    SUBCASE("v2: an XML body without a Content-Type")
    {
        const auto r = f.post("/notify/wechatpay/1900000001", "\r\n <xml><req_info/></xml>");
        CHECK(r.body() == "ok wechatpay_v2");
    }
    SUBCASE("v3 when its signature header is there, even with an XML-looking body (v3 then refuses it)")
    {
        const auto r = f.post("/notify/wechatpay/1900000001", "<xml/>",
                              {{"Content-Type", "text/xml"}, {"Wechatpay-Signature", "c2ln"}});
        CHECK(r.body() == "ok wechatpay_v3");
    }
    SUBCASE("no merchant id, or a deeper path: 404, no gateway asked")
    {
        CHECK(f.post("/notify/wechatpay/", "{}").result_int() == 404);
        CHECK(f.post("/notify/wechatpay/1900000001/v3", "{}").result_int() == 404);
        CHECK(f.post("/notify/wechatpay//v2", "<xml/>").result_int() == 404);
        CHECK(f.v2->seen_params.empty());
        CHECK(f.v3->seen_params.empty());
    }
    CHECK(f.alipay->seen_params.empty());
}

TEST_CASE("an exception while handling a notification is answered in the provider's format, with a 5xx")
{
    Fixture f;
    f.store.throw_on_apply = true;
    auto r = f.post("/notify/wechatpay/1900000001", "{}", {{"Wechatpay-Signature", "c2ln"}});
    CHECK(r.result_int() == 500);
    CHECK(r.body() == "FAIL wechatpay_v3 internal");
    r = f.post("/notify/wechatpay/1900000001/v2", "<xml/>");
    CHECK(r.result_int() == 500);
    CHECK(r.body() == "FAIL wechatpay_v2 internal");
    r = f.post("/notify/alipay?x=1", "a=b");
    CHECK(r.result_int() == 500);
    CHECK(r.body() == "FAIL alipay internal");
    CHECK(f.store.applied == 0);

    // Without the exception, the same requests are acknowledged (the fakes above are not what failed).
    f.store.throw_on_apply = false;
    CHECK(f.post("/notify/alipay", "a=b").body() == "ok alipay");
    CHECK(f.store.applied == 1);
}

TEST_CASE("an unusable notification is refused whether the store recorded it now or before")
{
    Fixture f;
    f.alipay->kind = EventKind::unusable;
    const std::vector<std::pair<ApplyOutcome, std::string>> recorded = {
        {ApplyOutcome::anomaly, "unusable_notification"},  // the first time
        {ApplyOutcome::anomaly, ""},                       // a retry: already on record
    };
    for (const auto& [outcome, anomaly] : recorded) {
        f.store.answer = ApplyResult{.outcome = outcome, .anomaly = anomaly, .status = "PENDING"};
        const auto r = f.post("/notify/alipay", "a=b");
        CHECK(r.result_int() == 400);
        CHECK(r.body() == "FAIL alipay malformed_request");
    }
    // Its notification id was applied (by a paybridge that could read it): acknowledged.
    f.store.answer = ApplyResult{.outcome = ApplyOutcome::duplicate, .anomaly = "", .status = "PAID"};
    const auto r = f.post("/notify/alipay", "a=b");
    CHECK(r.result_int() == 200);
    CHECK(r.body() == "ok alipay");
    CHECK(f.store.applied == 3);
}

namespace {

/// Records what the API asks of the store; register_bill answers `on_register` (created by default).
class RecordingStore final : public BillStore {
public:
    template <class T>
    using awaitable = boost::asio::awaitable<T>;

    std::vector<NewBill> registered;
    std::vector<BillFilter> listed;
    int summaries{0};
    std::function<RegisterResult(const NewBill&)> on_register;

    awaitable<Result<ApplyResult>> apply(PaymentEvent) override { co_return make_error_code(errc::internal); }
    awaitable<Result<RegisterResult>> register_bill(NewBill bill) override
    {
        registered.push_back(bill);
        RegisterResult r{.outcome = RegisterOutcome::created, .bill_json = R"({"id":"B-1"})"};
        if (on_register) {
            r = on_register(bill);
        }
        co_return r;
    }
    awaitable<Result<std::optional<BillView>>> get_bill(std::string) override
    {
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<Page>> list_bills(BillFilter filter) override
    {
        listed.push_back(filter);
        Page empty;
        co_return empty;
    }
    awaitable<Result<Page>> list_events(std::string, std::size_t) override { co_return make_error_code(errc::internal); }
    awaitable<Result<Page>> list_anomalies(std::string, std::size_t) override
    {
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<std::string>> summary(std::int64_t, std::int64_t) override
    {
        ++summaries;
        co_return std::string("{}");
    }
    awaitable<Result<void>> ping() override { co_return Result<void>{}; }
};

/// CRM delivery administration that counts the calls that reach it (none should, below).
class CountingDeliveries final : public DeliveryAdmin {
public:
    template <class T>
    using awaitable = boost::asio::awaitable<T>;

    int calls{0};

    awaitable<Result<std::optional<std::string>>> event(std::string) override
    {
        ++calls;
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<std::string>> deliveries(std::string, std::size_t, std::string) override
    {
        ++calls;
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<std::string>> redeliver(std::string) override
    {
        ++calls;
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<std::string>> recover(std::int64_t, std::string) override
    {
        ++calls;
        co_return std::string(R"({"requeued":0,"event_ids":[],"more":false})");
    }
};

constexpr const char* kToken = "test-token-0123456789abcdef";

struct ApiFixture {
    RecordingStore store;
    CountingDeliveries deliveries;
    webhooks::RuntimePtr runtime;
    std::unique_ptr<webhooks::Service> service;
    boost::asio::io_context ioc;

    ApiFixture()
    {
        auto rt = std::make_shared<webhooks::Runtime>();
        auto cfg = std::make_shared<config::Config>();
        cfg->api_tokens.push_back({.name = "crm", .token = kToken});
        rt->config = std::move(cfg);
        runtime = rt;
        webhooks::Service::Deps deps{.store = store,
                                     .deliveries = &deliveries,
                                     .runtime = [this] { return runtime; },
                                     .ready = [] { return true; }};
        service = std::make_unique<webhooks::Service>(std::move(deps));
    }

    webhooks::Response call(http::verb method, const std::string& target, const std::string& body = {})
    {
        webhooks::Request req{method, target, 11};
        req.set(http::field::authorization, std::string("Bearer ") + kToken);
        if (!body.empty()) {
            req.set(http::field::content_type, "application/json");
            req.body() = body;
        }
        req.prepare_payload();
        return paybridge::test::run_awaitable(ioc, service->handle(std::move(req)));
    }
    webhooks::Response create(const std::string& body) { return call(http::verb::post, "/v1/bills", body); }
};

/// A bill's body with the given members after id, amount_fen and customer_id (or in place of
/// customer_id when `members` gives one).
std::string bill_body(const std::string& members)
{
    std::string body = R"({"id":"B-1","amount_fen":100)";
    if (members.find("\"customer_id\"") == std::string::npos) {
        body += R"(,"customer_id":"alice")";
    }
    return body + (members.empty() ? "" : "," + members) + "}";
}

bool names(const webhooks::Response& r, const std::string& field, const std::string& says)
{
    return r.body().find("\"field\":\"" + field + "\"") != std::string::npos && r.body().find(says) != std::string::npos;
}

}  // namespace

TEST_CASE("an empty time parameter is a 400 naming it on every endpoint that takes times")
{
    ApiFixture f;
    const std::string to = "2026-02-01T00:00:00Z";
    struct Case {
        std::string target, field, says;
    };
    const std::vector<Case> cases{
        {"/v1/bills?updated_from=", "updated_from", "must not be empty; leave it out for no bound"},
        {"/v1/bills?updated_to=", "updated_to", "must not be empty; leave it out for no bound"},
        {"/v1/bills?status=PAID&updated_from=2026-01-01T00:00:00Z&updated_to=", "updated_to", "must not be empty"},
        {"/v1/reconciliation/summary?from=&to=" + to, "from", "must not be empty"},
        {"/v1/reconciliation/summary?from=2026-01-01T00:00:00Z&to=", "to", "must not be empty"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.target);
        const auto r = f.call(http::verb::get, c.target);
        CHECK(r.result_int() == 400);
        CHECK_MESSAGE(names(r, c.field, c.says), r.body());
    }
    const auto recover = f.call(http::verb::post, "/v1/deliveries/recover?since=");
    CHECK(recover.result_int() == 400);
    CHECK_MESSAGE(names(recover, "since", "must not be empty"), recover.body());
    CHECK(f.store.listed.empty());
    CHECK(f.store.summaries == 0);
    CHECK(f.deliveries.calls == 0);
    CHECK(f.call(http::verb::post, "/v1/deliveries/recover?since=2026-01-01T00:00:00Z").result_int() == 200);
    CHECK(f.deliveries.calls == 1);
    // Left out, they are no bound; given, a bound.
    CHECK(f.call(http::verb::get, "/v1/bills?status=PAID").result_int() == 200);
    CHECK(f.call(http::verb::get, "/v1/bills?updated_from=2026-01-01T00:00:00Z").result_int() == 200);
    REQUIRE(f.store.listed.size() == 2);
    CHECK(f.store.listed[0].updated_from_ms == 0);
    CHECK(f.store.listed[1].updated_from_ms == 1'767'225'600'000);
}

TEST_CASE("metadata given as an empty object registers the same bill as no metadata")
{
    ApiFixture f;
    for (const char* metadata : {"", R"("metadata":null)", R"("metadata":{})"}) {
        CAPTURE(metadata);
        f.store.registered.clear();
        CHECK(f.create(bill_body(metadata)).result_int() == 201);
        REQUIRE(f.store.registered.size() == 1);
        CHECK(f.store.registered[0].metadata_json.empty());
    }
    // A bill registered with {} before {} meant none holds "metadata":{}: the same request, or one
    // without metadata, is still the same bill (200), asked again with the {} it was stored with.
    f.store.on_register = [](const NewBill& bill) {
        const bool as_stored = bill.metadata_json == "{}";
        return RegisterResult{.outcome = as_stored ? RegisterOutcome::identical : RegisterOutcome::conflict,
                              .bill_json = R"({"id":"B-1","metadata":{}})"};
    };
    for (const char* metadata : {"", R"("metadata":{})"}) {
        CAPTURE(metadata);
        f.store.registered.clear();
        CHECK(f.create(bill_body(metadata)).result_int() == 200);
        CHECK(f.store.registered.size() == 2);
    }
    // Other content is still a conflict, asked once.
    f.store.on_register = [](const NewBill&) {
        return RegisterResult{.outcome = RegisterOutcome::conflict, .bill_json = R"({"id":"B-1","metadata":{"a":1}})"};
    };
    f.store.registered.clear();
    CHECK(f.create(bill_body("")).result_int() == 409);
    CHECK(f.store.registered.size() == 1);
}

TEST_CASE("metadata numbers reach the store exactly as sent - doubles to the last bit and 64-bit integers")
{
    ApiFixture f;
    // Read without full precision, 8.0863067236109623e+24 and 2.2250738585072011e-308 were each a
    // ULP off. (The text written back need not be the digits sent: the value is what is kept.)
    const std::vector<std::pair<std::string, std::string>> doubles{
        {"sum", "0.30000000000000004"},
        {"big", "8.0863067236109623e+24"},
        {"tiny", "2.2250738585072011e-308"},
        {"small", "1.3927926388013963e-143"},
    };
    std::string metadata = R"({"above_2_53":9007199254740993,"max_u64":18446744073709551615,)"
                           R"("min_i64":-9223372036854775808)";
    for (const auto& [name, text] : doubles) {
        metadata += ",\"" + name + "\":" + text;
    }
    metadata += "}";
    CHECK(f.create(bill_body(R"("metadata":)" + metadata)).result_int() == 201);
    REQUIRE(f.store.registered.size() == 1);
    rapidjson::Document stored;
    stored.Parse<rapidjson::kParseFullPrecisionFlag>(f.store.registered[0].metadata_json.c_str());
    REQUIRE(stored.IsObject());
    INFO(f.store.registered[0].metadata_json);
    for (const auto& [name, text] : doubles) {
        CAPTURE(name);
        REQUIRE(stored[name.c_str()].IsDouble());
        CHECK(stored[name.c_str()].GetDouble() == std::strtod(text.c_str(), nullptr));  // glibc: correctly rounded
    }
    CHECK(stored["above_2_53"].GetInt64() == 9'007'199'254'740'993);
    CHECK(stored["max_u64"].GetUint64() == 18'446'744'073'709'551'615ULL);
    CHECK(stored["min_i64"].GetInt64() == std::numeric_limits<std::int64_t>::min());
}

TEST_CASE("customer_id must not be blank or hold control characters - description may hold tab and newlines only")
{
    ApiFixture f;
    struct Case {
        std::string members, field, says;
    };
    const std::vector<Case> refused{
        {R"("customer_id":" ")", "customer_id", "must not be only whitespace"},
        {R"("customer_id":"  \u3000 ")", "customer_id", "must not be only whitespace"},  // ideographic space
        {R"("customer_id":"\u00a0")", "customer_id", "must not be only whitespace"},
        {R"("customer_id":"ali\u0000ce")", "customer_id", "must not contain control characters"},
        {R"("customer_id":"alice\n")", "customer_id", "must not contain control characters"},
        {R"("customer_id":"\t")", "customer_id", "must not contain control characters"},
        {R"("customer_id":"ali\u007fce")", "customer_id", "must not contain control characters"},
        {R"("customer_id":"ali\u0085ce")", "customer_id", "must not contain control characters"},
        {R"("description":"bell\u0007")", "description", "other than tab, line feed and carriage return"},
        {R"("description":"nul\u0000")", "description", "other than tab, line feed and carriage return"},
        {R"("description":"esc\u001b[31m")", "description", "other than tab, line feed and carriage return"},
        {R"("description":"c1\u009b")", "description", "other than tab, line feed and carriage return"},
    };
    for (const Case& c : refused) {
        CAPTURE(c.members);
        const auto r = f.create(bill_body(c.members));
        CHECK(r.result_int() == 400);
        CHECK_MESSAGE(names(r, c.field, c.says), r.body());
    }
    CHECK(f.store.registered.empty());
    for (const char* members : {R"("customer_id":" alice ")", R"("customer_id":"张 三")",
                                R"("description":"line 1\r\nline 2\tend")", R"("description":"  ")",
                                R"("description":"\u2028")"}) {
        CAPTURE(members);
        CHECK(f.create(bill_body(members)).result_int() == 201);
    }
}
