#include "daemon/provider_call.hpp"

#include "core/error.hpp"
#include "crm/http_client.hpp"

namespace paybridge::daemon {

boost::asio::awaitable<ProviderCall> call_provider(crm::HttpClient& client, gateways::QueryRequest request,
                                                   std::size_t max_body)
{
    crm::Headers headers = std::move(request.headers);
    crm::PostResult sent = co_await client.send(std::move(request.method), std::move(request.target),
                                                std::move(headers), std::move(request.body));
    ProviderCall out;
    if (!sent.response) {
        const auto error = sent.response.error();
        out.ours = error != errc::timeout && error != errc::crm_unavailable;
        out.error = error == errc::timeout ? std::string_view("timeout")
                    : out.ours             ? error_name(error)
                                           : std::string_view("provider_unavailable");
        out.detail = std::move(sent.error_detail);
        co_return out;
    }
    if (!sent.response->complete || sent.response->body_head.size() > max_body) {
        out.error = "provider_unavailable";
        out.status = sent.response->status;
        out.detail = "the answer was cut short";
        co_return out;
    }
    out.response.emplace();
    out.response->status = sent.response->status;
    out.response->headers = std::move(sent.response->headers);
    out.response->body = std::move(sent.response->body_head);
    co_return out;
}

}  // namespace paybridge::daemon
