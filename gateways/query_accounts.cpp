#include "gateways/query_accounts.hpp"

#include "core/error.hpp"
#include "gateways/alipay/alipay_query.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>

namespace paybridge::gateways {

namespace {

/// The path and query of an absolute http(s) URL the config loader checked ("/" when it has none).
std::string target_of(std::string_view url)
{
    const std::size_t scheme = url.find("://");
    const std::size_t slash = url.find('/', scheme == std::string_view::npos ? 0 : scheme + 3);
    return slash == std::string_view::npos ? std::string("/") : std::string(url.substr(slash));
}

/// A provider URL paybridged may send queries to: https://, or http:// to this machine only (a
/// test's fake provider, a local forward proxy). Answers carry buyer data, and Alipay's carry no
/// time: in clear across a network they could be read, or replayed and dropped to hide a payment.
/// `with_query`: a query part is allowed (Alipay's gateway URL; WeChat Pay's base URL is a path
/// prefix only).
bool check_url(std::string_view url, const std::string& pointer, bool with_query, std::vector<std::string>& problems)
{
    const std::size_t scheme_end = url.find("://");
    const std::string_view scheme = url.substr(0, scheme_end);
    if (scheme_end == std::string_view::npos || (scheme != "https" && scheme != "http")) {
        problems.push_back(pointer + ": must be an https:// URL");
        return false;
    }
    std::string_view rest = url.substr(scheme_end + 3);
    rest = rest.substr(0, rest.find_first_of("/?#"));
    std::string_view host = rest;
    if (host.starts_with('[')) {
        host = host.substr(0, host.find(']') + 1);
    } else {
        host = host.substr(0, host.find(':'));
    }
    if (scheme == "http" && host != "127.0.0.1" && host != "localhost" && host != "[::1]") {
        problems.push_back(pointer + ": must be https:// (http:// only to 127.0.0.1, [::1] or localhost): answers carry "
                                     "buyer data and could be replayed or dropped on the way");
        return false;
    }
    if (!with_query && url.find_first_of("?#") != std::string_view::npos) {
        problems.push_back(pointer + ": must not have a query or fragment (it is the base the API paths follow)");
        return false;
    }
    return true;
}

class AlipayAccount final : public QueryAccount {
public:
    AlipayAccount(alipay::AlipayAppKeys app, alipay::AlipayQuerySigner signer, std::string url)
        : app_(std::move(app)), signer_(std::move(signer)), url_(std::move(url)), target_(target_of(url_))
    {
    }

    std::string_view provider() const noexcept override { return "alipay"; }
    const std::string& account() const noexcept override { return app_.app_id; }
    const std::string& url() const noexcept override { return url_; }

    Result<QueryRequest> request(std::string_view bill_id, std::int64_t now_unix) const override
    {
        return alipay::build_trade_query(app_, signer_, target_, bill_id, now_unix);
    }

    Result<QueryAnswer> read(std::string_view bill_id, const QueryResponse& response, std::int64_t now_unix,
                             std::string& detail) const override
    {
        return alipay::read_trade_query(app_, bill_id, response, &detail, now_unix);
    }

private:
    alipay::AlipayAppKeys app_;
    alipay::AlipayQuerySigner signer_;
    std::string url_;
    std::string target_;
};

/// The API base URL's path ("" for https://api.mch.weixin.qq.com): what /v3/... follows.
std::string base_path_of(std::string_view url)
{
    std::string path = target_of(url);
    while (!path.empty() && path.back() == '/') {
        path.pop_back();
    }
    return path;
}

class WechatAccount final : public QueryAccount {
public:
    WechatAccount(wechatpay::V3Merchant merchant, wechatpay::V3QuerySigner signer, std::string url)
        : merchant_(std::move(merchant)), signer_(std::move(signer)), url_(std::move(url)), base_path_(base_path_of(url_))
    {
    }

    std::string_view provider() const noexcept override { return "wechatpay"; }
    const std::string& account() const noexcept override { return merchant_.mchid; }
    const std::string& url() const noexcept override { return url_; }

    Result<QueryRequest> request(std::string_view bill_id, std::int64_t now_unix) const override
    {
        const std::string nonce = crypto::hex_upper(crypto::random_bytes(16));
        return wechatpay::build_transaction_query(merchant_, signer_, base_path_, bill_id, now_unix, nonce);
    }

    Result<QueryAnswer> read(std::string_view bill_id, const QueryResponse& response, std::int64_t now_unix,
                             std::string& detail) const override
    {
        return wechatpay::read_transaction_query(merchant_, bill_id, response, now_unix, &detail);
    }

private:
    wechatpay::V3Merchant merchant_;
    wechatpay::V3QuerySigner signer_;
    std::string url_;
    std::string base_path_;
};

/// An RSA private key, or a problem at `pointer`.
crypto::SharedKey private_key(std::string_view pem, const std::string& pointer, std::vector<std::string>& problems)
{
    Result<crypto::SharedKey> key = crypto::load_private_key(pem);
    if (!key) {
        problems.push_back(pointer + ": not a PEM private key (PKCS#8 or PKCS#1)");
        return nullptr;
    }
    if (EVP_PKEY_get_base_id(key->get()) != EVP_PKEY_RSA) {
        problems.push_back(pointer + ": not an RSA key (both providers sign with RSA)");
        return nullptr;
    }
    return *key;
}

void load_alipay(const config::Config& cfg, QueryAccounts& out, std::vector<std::string>& problems,
                 CertificateBooks* books)
{
    for (std::size_t i = 0; i < cfg.alipay_apps.size(); ++i) {
        const config::AlipayApp& app = cfg.alipay_apps[i];
        if (app.app_private_key_pem.empty()) {
            continue;
        }
        const std::string where = account_pointer(app.pointer, "/alipay/apps", i);
        // The gateway loads the same app and reports its problems: here they would be said twice.
        std::vector<std::string> ignored;
        Result<alipay::AlipayAppKeys> keys = alipay::load_alipay_app(app, where, ignored, books);
        alipay::AlipayQuerySigner signer;
        signer.app_private_key = private_key(app.app_private_key_pem, where + "/app_private_key", problems);
        if (!app.app_public_cert_pem.empty()) {
            Result<std::vector<crypto::X509Ptr>> certs = crypto::load_certificates(app.app_public_cert_pem);
            if (!certs || certs->empty()) {
                problems.push_back(where + "/app_public_cert_file: holds no readable PEM certificate");
            } else {
                X509* cert = certs->front().get();
                signer.app_cert_sn = crypto::alipay_cert_sn(cert);
                const crypto::SharedKey public_half = crypto::certificate_key(cert);
                if (signer.app_private_key && (!public_half || EVP_PKEY_eq(public_half.get(), signer.app_private_key.get()) != 1)) {
                    problems.push_back(where + "/app_public_cert_file: its key is not the public half of app_private_key");
                }
            }
        }
        const bool url_ok = check_url(app.gateway_url, where + "/gateway_url", true, problems);
        if (keys && signer.app_private_key && url_ok) {
            if (app.download_certificates) {
                out.alipay_certificate_sources.push_back(AlipayCertificateSource{
                    .app = *keys, .signer = signer, .url = app.gateway_url, .target = target_of(app.gateway_url)});
            }
            out.accounts.push_back(std::make_unique<AlipayAccount>(std::move(*keys), std::move(signer), app.gateway_url));
        }
    }
}

void load_wechat(const config::Config& cfg, QueryAccounts& out, std::vector<std::string>& problems,
                 CertificateBooks* books)
{
    std::vector<config::WechatMerchant> queried;
    for (const config::WechatMerchant& m : cfg.wechat_merchants) {
        if (!m.merchant_private_key_pem.empty()) {
            queried.push_back(m);
        }
    }
    if (queried.empty()) {
        return;
    }
    std::vector<std::string> ignored;  // the gateway reports these merchants' problems
    Result<std::vector<wechatpay::V3Merchant>> merchants = wechatpay::load_v3_merchants(queried, ignored, books);
    for (std::size_t i = 0; i < queried.size(); ++i) {
        const config::WechatMerchant& m = queried[i];
        const std::string where = account_pointer(m.pointer, "/wechatpay/merchants", i);
        wechatpay::V3QuerySigner signer;
        signer.merchant_private_key = private_key(m.merchant_private_key_pem, where + "/merchant_private_key", problems);
        signer.merchant_serial_no = m.merchant_serial_no;
        std::transform(signer.merchant_serial_no.begin(), signer.merchant_serial_no.end(),
                       signer.merchant_serial_no.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        const bool url_ok = check_url(m.api_url, where + "/api_url", false, problems);
        if (!merchants || !signer.merchant_private_key || !url_ok) {
            continue;
        }
        const auto found = std::find_if(merchants->begin(), merchants->end(),
                                        [&m](const wechatpay::V3Merchant& v3) { return v3.mchid == m.mchid; });
        if (found == merchants->end()) {
            continue;
        }
        if (m.download_certificates) {
            out.certificate_sources.push_back(
                CertificateSource{.merchant = *found, .signer = signer, .url = m.api_url, .base_path = base_path_of(m.api_url)});
        }
        out.accounts.push_back(std::make_unique<WechatAccount>(*found, std::move(signer), m.api_url));
    }
}

}  // namespace

Result<std::shared_ptr<const QueryAccounts>> load_query_accounts(const config::Config& cfg,
                                                                std::vector<std::string>& problems,
                                                                CertificateBooks* books,
                                                                CertificateBooks* alipay_books)
{
    const std::size_t before = problems.size();
    auto accounts = std::make_shared<QueryAccounts>();
    load_alipay(cfg, *accounts, problems, alipay_books);
    load_wechat(cfg, *accounts, problems, books);
    if (problems.size() != before) {
        return make_error_code(errc::invalid_argument);
    }
    return std::shared_ptr<const QueryAccounts>(std::move(accounts));
}

}  // namespace paybridge::gateways
