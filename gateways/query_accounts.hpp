#pragma once

// The accounts paybridged may ask about a bill (provider_query): every Alipay app with an
// app_private_key and every WeChat Pay merchant with a merchant_private_key, each able to sign a
// query for a bill and to verify and read the provider's answer. Loaded once per configuration
// (start-up, --check, reload), immutable, shared between threads. No I/O.

#include "config/config.hpp"
#include "core/result.hpp"
#include "gateways/alipay/alipay_query.hpp"
#include "gateways/query.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways {

class QueryAccount {
public:
    virtual ~QueryAccount() = default;

    /// "alipay" or "wechatpay".
    virtual std::string_view provider() const noexcept = 0;
    /// app_id or mchid.
    virtual const std::string& account() const noexcept = 0;
    /// The URL requests go to (its origin; request() gives the target).
    virtual const std::string& url() const noexcept = 0;

    /// The signed request asking about `bill_id` (our out_trade_no) at `now_unix`.
    virtual Result<QueryRequest> request(std::string_view bill_id, std::int64_t now_unix) const = 0;

    /// Verifies and reads the answer to request(bill_id). Errors: provider_unavailable (5xx, 429,
    /// "busy"), provider_rejected (the provider refused the request), bad_signature, stale_timestamp,
    /// unknown_account, malformed_request. `detail` says what the provider said, for the log (its
    /// error code and message; never buyer data).
    virtual Result<QueryAnswer> read(std::string_view bill_id, const QueryResponse& response, std::int64_t now_unix,
                                     std::string& detail) const = 0;
};

/// A WeChat Pay merchant whose platform certificates paybridged downloads (download_certificates,
/// daemon/certificate_refresh.hpp): what signs the request and what reads the answer.
struct CertificateSource {
    wechatpay::V3Merchant merchant;  ///< its `downloaded` book is the one the download fills
    wechatpay::V3QuerySigner signer;
    std::string url;                 ///< api_url
    std::string base_path;           ///< api_url's path without trailing '/' ("" for WeChat's own)
};

/// An Alipay app whose re-issued certificates paybridged downloads (download_certificates):
/// what signs the request (alipay::build_cert_download) and what reads the answer
/// (alipay::read_cert_download).
struct AlipayCertificateSource {
    alipay::AlipayAppKeys app;        ///< its `downloaded` book is the one the download fills
    alipay::AlipayQuerySigner signer;
    std::string url;                  ///< gateway_url
    std::string target;               ///< gateway_url's path and query ("/gateway.do"), as the queries use
};

struct QueryAccounts {
    std::vector<std::unique_ptr<QueryAccount>> accounts;
    /// Merchants with download_certificates (whether provider_query is on or not).
    std::vector<CertificateSource> certificate_sources;
    /// Alipay apps with download_certificates (whether provider_query is on or not).
    std::vector<AlipayCertificateSource> alipay_certificate_sources;
};

/// Every account of `cfg` that has query keys, with its keys loaded and checked: the private key
/// reads as an RSA key, an app's public certificate (certificate mode) holds the public half of
/// app_private_key, the URL parses. Each problem is pushed as "<JSON pointer>: <what>", and then the
/// result is errc::invalid_argument. Accounts are loaded whether provider_query is enabled or not,
/// so that --check finds a bad key before the section is turned on.
/// `books`: see wechatpay::load_v3_merchants (null for --check and tests: nothing is downloaded).
/// `alipay_books`: the same for Alipay apps, by app_id (see alipay::load_alipay_app): an app's
/// query account and its AlipayCertificateSource carry the same book.
Result<std::shared_ptr<const QueryAccounts>> load_query_accounts(const config::Config& cfg,
                                                                std::vector<std::string>& problems,
                                                                CertificateBooks* books = nullptr,
                                                                CertificateBooks* alipay_books = nullptr);

}  // namespace paybridge::gateways
