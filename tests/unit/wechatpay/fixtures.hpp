#pragma once

// Test-only WeChat Pay key material, generated once per test process with tools/keygen.

#include "config/config.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/gateway.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "tests/unit/wechatpay/result_printer.hpp"
#include "tools/keygen/keygen.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <optional>
#include <string>

namespace wxtest {

namespace gw = paybridge::gateways;
namespace wx = paybridge::gateways::wechatpay;
namespace sim = paybridge::gateways::wechatpay::sim;
namespace keygen = paybridge::keygen;
namespace crypto = paybridge::crypto;

inline constexpr const char* kMchid = "1900000109";
inline constexpr const char* kAppid = "wxd678efh567hg6787";
inline constexpr const char* kPublicKeyId = "PUB_KEY_ID_0119000001092024101100397200000006";
/// A platform certificate serial with a leading zero digit (Go's %X keeps it, Java drops it).
inline constexpr const char* kPlatformSerial = "0A1B2C3D4E5F60718293A4B5C6D7E8F901234567";

inline std::int64_t now_unix()
{
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// Key material, each piece generated on first use (RSA generation dominates test time).
struct Keys {
    std::int64_t created{now_unix()};
    std::string apiv3_key{keygen::random_token(32)};
    std::string apiv2_key{keygen::random_token(32)};

    const keygen::Certificate& ca() const
    {
        return lazy(ca_, [] { return keygen::make_ca({.common_name = "Tenpay.com Root CA"}); });
    }
    /// Valid now, serial kPlatformSerial.
    const keygen::Certificate& platform() const
    {
        return lazy(platform_, [this] {
            return keygen::issue(ca(), {.common_name = "Tenpay.com platform", .serial_hex = kPlatformSerial});
        });
    }
    /// Valid from created-400d to created-30d.
    const keygen::Certificate& expired() const
    {
        return lazy(expired_, [this] {
            return keygen::issue(ca(), {.common_name = "Tenpay.com old platform",
                                        .serial_hex = "7E57000000000000000000000000000000000001",
                                        .not_before_unix = created - 400 * 86400,
                                        .not_after_unix = created - 30 * 86400});
        });
    }
    /// Valid from created+30d to created+400d.
    const keygen::Certificate& future() const
    {
        return lazy(future_, [this] {
            return keygen::issue(ca(), {.common_name = "Tenpay.com next platform",
                                        .serial_hex = "7E57000000000000000000000000000000000002",
                                        .not_before_unix = created + 30 * 86400,
                                        .not_after_unix = created + 400 * 86400});
        });
    }
    /// The WeChat Pay public key pair (public-key mode).
    const keygen::KeyPair& wechat_public() const
    {
        return lazy(wechat_public_, [] { return keygen::generate_rsa(); });
    }

private:
    template <class T, class Make>
    static const T& lazy(std::optional<T>& slot, Make make)
    {
        if (!slot) {
            slot = make();
        }
        return *slot;
    }
    mutable std::optional<keygen::Certificate> ca_;
    mutable std::optional<keygen::Certificate> platform_;
    mutable std::optional<keygen::Certificate> expired_;
    mutable std::optional<keygen::Certificate> future_;
    mutable std::optional<keygen::KeyPair> wechat_public_;
};

inline const Keys& keys()
{
    static const Keys k;
    return k;
}

inline crypto::SharedKey private_key(const std::string& pem)
{
    auto key = crypto::load_private_key(pem);
    REQUIRE(key);
    return *key;
}

/// Signs as WeChat Pay with a platform certificate's key, announcing `serial`.
inline sim::V3Signer cert_signer(const keygen::Certificate& cert, std::string serial)
{
    return sim::V3Signer{.private_key = private_key(cert.key.private_pem), .serial = std::move(serial)};
}

inline sim::V3Signer public_key_signer()
{
    return sim::V3Signer{.private_key = private_key(keys().wechat_public().private_pem), .serial = kPublicKeyId};
}

/// The merchant as config would hand it over: public key, platform certificates, or both.
/// `with_rotation` adds the expired and the not yet valid certificate (one PEM bundle).
inline paybridge::config::WechatMerchant merchant(bool with_public_key, bool with_certificates,
                                                  bool with_rotation = false)
{
    paybridge::config::WechatMerchant m;
    m.mchid = kMchid;
    m.appid = kAppid;
    m.apiv3_key = keys().apiv3_key;
    m.apiv2_key = keys().apiv2_key;
    if (with_public_key) {
        m.public_key_id = kPublicKeyId;
        m.public_key_pem = keys().wechat_public().public_pem;
    }
    if (with_certificates) {
        m.platform_certificates_pem = {keys().platform().cert_pem};
    }
    if (with_rotation) {
        m.platform_certificates_pem.push_back(keys().expired().cert_pem + keys().future().cert_pem);
    }
    return m;
}

inline gw::InboundRequest request(const std::vector<std::pair<std::string_view, std::string_view>>& headers,
                                  std::string_view body, std::string_view mchid, std::int64_t now)
{
    return gw::InboundRequest{.headers = headers, .body = body, .route_param = mchid, .now_unix = now};
}

}  // namespace wxtest
