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
