#pragma once

// Key material and helpers shared by the Alipay unit tests. Keys are generated once per process
// (RSA generation dominates the run time otherwise).

#include "config/config.hpp"
#include "core/result.hpp"
#include "gateways/form.hpp"
#include "gateways/query.hpp"
#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tools/keygen/keygen.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

namespace alipay_test {

inline constexpr std::string_view kAppId = "2021000000000001";
inline constexpr std::string_view kSellerId = "2088000000000001";

/// Alipay's key pair (the daemon holds the public half) and an unrelated pair.
inline const paybridge::keygen::KeyPair& alipay_keys()
{
    static const paybridge::keygen::KeyPair keys = paybridge::keygen::generate_rsa();
    return keys;
}
inline const paybridge::keygen::KeyPair& other_keys()
{
    static const paybridge::keygen::KeyPair keys = paybridge::keygen::generate_rsa();
    return keys;
}

inline paybridge::crypto::SharedKey private_key(const paybridge::keygen::KeyPair& keys)
{
    auto key = paybridge::crypto::load_private_key(keys.private_pem);
    REQUIRE(key.has_value());
    return *key;
}

inline paybridge::crypto::SharedKey public_key(const paybridge::keygen::KeyPair& keys)
{
    auto key = paybridge::crypto::load_public_key(keys.public_pem);
    REQUIRE(key.has_value());
    return *key;
}

/// The app's own key pair (API requests): it signs requests, Alipay checks them with the public half.
inline const paybridge::keygen::KeyPair& app_keys()
{
    static const paybridge::keygen::KeyPair keys = paybridge::keygen::generate_rsa();
    return keys;
}
/// The SN of the app's own certificate, as certificate-mode requests carry it (app_cert_sn).
inline constexpr std::string_view kAppCertSn = "f5476a255774929671073404f7af2b90";

/// An HTTP answer of Alipay's gateway, as the daemon hands it to the gateways.
inline paybridge::gateways::QueryResponse http(std::string body, unsigned status = 200)
{
    paybridge::gateways::QueryResponse r;
    r.status = status;
    r.headers.emplace_back("Content-Type", "text/html;charset=utf-8");
    r.body = std::move(body);
    return r;
}

/// The error of a result that must be one.
template <class T>
boost::system::error_code error_of(const paybridge::Result<T>& r)
{
    REQUIRE_FALSE(r.has_value());
    return r.error();
}

/// A query parameter of a request target, form-decoded.
inline std::string target_param(std::string_view target, std::string_view key)
{
    auto fields = paybridge::gateways::parse_form(target.substr(target.find('?') + 1));
    REQUIRE(fields.has_value());
    for (const auto& [k, v] : *fields) {
        if (k == key) {
            return v;
        }
    }
    FAIL("no parameter " << key);
    return {};
}

/// One app's configuration loaded (REQUIREd to load), with its book from `books` when given.
inline paybridge::gateways::alipay::AlipayAppKeys load(const paybridge::config::AlipayApp& app,
                                                       paybridge::gateways::CertificateBooks* books = nullptr)
{
    std::vector<std::string> problems;
    auto keys = paybridge::gateways::alipay::load_alipay_app(app, "test", problems, books);
    REQUIRE_MESSAGE(keys.has_value(), (problems.empty() ? std::string() : problems.front()));
    return std::move(*keys);
}

inline paybridge::config::AlipayApp app_config(std::string sign_type = "RSA2")
{
    paybridge::config::AlipayApp app;
    app.app_id = std::string(kAppId);
    app.seller_id = std::string(kSellerId);
    app.sign_type = std::move(sign_type);
    app.public_key_pem = alipay_keys().public_pem;
    return app;
}

inline std::unique_ptr<paybridge::gateways::alipay::AlipayGateway> make_gateway(
    const std::vector<paybridge::config::AlipayApp>& apps)
{
    std::vector<paybridge::gateways::alipay::AlipayAppKeys> loaded;
    std::vector<std::string> problems;
    for (const auto& app : apps) {
        auto keys = paybridge::gateways::alipay::load_alipay_app(app, "test", problems);
        REQUIRE_MESSAGE(keys.has_value(), (problems.empty() ? std::string() : problems.front()));
        loaded.push_back(std::move(*keys));
    }
    return std::make_unique<paybridge::gateways::alipay::AlipayGateway>(std::move(loaded));
}

inline paybridge::gateways::alipay::NoticeSpec spec(std::string out_trade_no = "BILL-1001",
                                                    std::int64_t amount_fen = 1234)
{
    paybridge::gateways::alipay::NoticeSpec s;
    s.app_id = std::string(kAppId);
    s.seller_id = std::string(kSellerId);
    s.out_trade_no = std::move(out_trade_no);
    s.amount_fen = amount_fen;
    s.trade_no = "2024050122001400001234567890";
    s.now_unix_ms = 1714536000123;  // 2024-05-01T04:00:00.123Z = 12:00:00.123 in Beijing
    return s;
}

/// The POST body of `notice` signed with Alipay's key.
inline std::string body_of(const paybridge::gateways::alipay::AlipayNotice& notice)
{
    return paybridge::gateways::alipay::build_alipay_body(notice, private_key(alipay_keys()).get());
}

/// A body whose fields are `notice` (form-encoded, UTF-8 values) but whose signature is made over
/// `signed_string` instead: for the fallbacks, where the sender signed something else.
inline std::string body_signed_over(const paybridge::gateways::alipay::AlipayNotice& notice,
                                    std::string_view signed_string)
{
    std::string body;
    for (const auto& [k, v] : notice.fields) {
        body += paybridge::gateways::form_encode(k) + "=" + paybridge::gateways::form_encode(v) + "&";
    }
    auto sig = paybridge::crypto::rsa_sign(private_key(alipay_keys()).get(), paybridge::crypto::Digest::sha256,
                                           signed_string);
    REQUIRE(sig.has_value());
    body += "sign_type=RSA2&sign=" + paybridge::gateways::form_encode(paybridge::crypto::base64_encode(*sig));
    return body;
}

}  // namespace alipay_test
