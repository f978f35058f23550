#pragma once

#include "config/config.hpp"
#include "gateways/gateway.hpp"

#include <memory>

namespace boost::asio::ssl {
class context;
}
namespace paybridge::gateways {
struct QueryAccounts;
}

namespace paybridge::webhooks {

/// Everything that a configuration reload replaces at once: the config and the gateways built
/// from it (keys, certificates), immutable and shared by every worker. A request holds a
/// shared_ptr to the Runtime it started with, so a reload never changes keys under its feet.
struct Runtime {
    std::shared_ptr<const config::Config> config;
    std::unique_ptr<gateways::Gateway> alipay;      ///< null when no Alipay app is configured
    std::unique_ptr<gateways::Gateway> wechat_v3;   ///< null when no merchant is configured
    std::unique_ptr<gateways::Gateway> wechat_v2;   ///< null when no merchant has an APIv2 key
    /// The HTTPS listener's certificate and key (config.tls), loaded once with the rest: null
    /// without a TLS listener.
    std::shared_ptr<boost::asio::ssl::context> tls;
    /// The accounts active queries may ask (provider_query); empty when none has query keys.
    std::shared_ptr<const gateways::QueryAccounts> query_accounts;
};

using RuntimePtr = std::shared_ptr<const Runtime>;

}  // namespace paybridge::webhooks
