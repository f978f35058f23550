#pragma once

#include "core/bill_store.hpp"
#include "core/delivery_admin.hpp"
#include "core/query_admin.hpp"
#include "webhooks/http.hpp"
#include "webhooks/runtime.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <functional>
#include <string>

namespace paybridge::webhooks {

/// The whole HTTP application of one worker (event-loop thread): routing, the provider
/// notification use case (verify → apply atomically → acknowledge), the CRM-facing API and the
/// operations endpoints. Transport-free: the server hands it a parsed Request.
///
/// Routes (API.md): POST /notify/alipay, POST /notify/wechatpay/{mchid}, POST
/// /notify/wechatpay/{mchid}/v2; bearer-protected /v1/bills, /v1/bills/{id}, /v1/events,
/// /v1/events/{id}, /v1/events/{id}/redeliver, /v1/deliveries, /v1/deliveries/recover,
/// /v1/anomalies, /v1/reconciliation/summary; GET /healthz, /readyz, /metrics.
class Service {
public:
    struct Deps {
        BillStore& store;
        DeliveryAdmin* deliveries{nullptr};                    ///< null when CRM delivery is off
        QueryAdmin* queries{nullptr};                          ///< null: POST /v1/bills/{id}/query is refused (409)
        std::function<RuntimePtr()> runtime;                   ///< the current Runtime (reload-aware)
        std::function<bool()> ready;                           ///< store connected and scripts loaded
        std::function<std::chrono::system_clock::time_point()> now{[] { return std::chrono::system_clock::now(); }};
    };

    explicit Service(Deps deps);

    /// Answers one request. Never throws for anything a client can send; a bug becomes a 500.
    /// `routes`: the config::RouteGroup bits the listener it came on serves; other paths are 404.
    boost::asio::awaitable<Response> handle(Request req, unsigned routes = config::kRoutesAll);

    /// The answer to a request the server refused before it reached handle() (413: body too
    /// large, 414/431: request line/header too large, 400: unreadable), given its header: a
    /// provider's route gets the failure in that provider's format with `status`, a /v1/ route
    /// the API's JSON error, anything else `text` as text/plain. Always Connection: close.
    Response reject(const Request& header, unsigned status, std::string_view text) const;

private:
    boost::asio::awaitable<Response> route(const Request& req, const RuntimePtr& rt, unsigned routes);
    boost::asio::awaitable<Response> notify(const Request& req, const gateways::Gateway* gw, std::string_view route,
                                            std::string_view param);
    boost::asio::awaitable<Response> api(const Request& req, const RuntimePtr& rt, std::string_view path,
                                         std::string_view query);
    boost::asio::awaitable<Response> create_bill(const Request& req);

    Deps deps_;
};

}  // namespace paybridge::webhooks
