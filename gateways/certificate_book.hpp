#pragma once

// Certificates downloaded from a provider while paybridged runs: WeChat Pay's platform
// certificates (GET /v3/certificates) and Alipay's re-issued public certificate
// (alipay.open.app.alipaycert.download). They are the only part of an account's keys that changes
// without a reload: every gateway and query account built for the account (a reload builds new
// ones) shares its book, and the downloader (daemon/certificate_refresh.hpp) replaces what it
// holds. No I/O.

#include "gateways/crypto/crypto.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace paybridge::gateways {

/// A provider's certificate, reduced to what verification needs.
struct ProviderCertificate {
    std::string serial;          ///< how the provider names it (WeChat: normalized hex serial; Alipay: its SN)
    crypto::SharedKey key;
    std::int64_t not_before{0};  ///< Unix seconds
    std::int64_t not_after{0};   ///< Unix seconds
};

/// One account's downloaded certificates. Thread-safe.
class CertificateBook {
public:
    /// Told the account and the serial when a signature names a serial none of the account's keys
    /// has (on the verifying thread).
    using UnknownSerialHook = std::function<void(const std::string& account, const std::string& serial)>;

    explicit CertificateBook(std::string account);
    CertificateBook(const CertificateBook&) = delete;
    CertificateBook& operator=(const CertificateBook&) = delete;

    /// mchid or app_id.
    const std::string& account() const noexcept { return account_; }
    /// What was downloaded (never null; empty before the first download).
    std::shared_ptr<const std::vector<ProviderCertificate>> certificates() const;
    void replace(std::vector<ProviderCertificate> certificates);
    /// Calls the hook, at most once a second: a request naming an unknown serial may come from
    /// anyone, and one download answers them all.
    void unknown_serial(const std::string& serial) const;
    void set_hook(UnknownSerialHook hook);

private:
    const std::string account_;
    mutable std::mutex mutex_;
    std::shared_ptr<const std::vector<ProviderCertificate>> certificates_;
    UnknownSerialHook hook_;
    mutable std::atomic<std::int64_t> last_hook_ms_{0};
};

/// The books of one process for one provider, by account: the same book across reloads.
class CertificateBooks {
public:
    /// The account's book, made on first use (with the hook given to set_hook, if any).
    std::shared_ptr<CertificateBook> book(const std::string& account);
    /// Every book made so far.
    std::vector<std::shared_ptr<CertificateBook>> all() const;
    /// The hook of every book, made or to be made.
    void set_hook(const CertificateBook::UnknownSerialHook& hook);

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::shared_ptr<CertificateBook>, std::less<>> books_;
    CertificateBook::UnknownSerialHook hook_;
};

/// Every provider's books of one process.
struct ProviderBooks {
    CertificateBooks wechatpay;  ///< by mchid: platform certificates (GET /v3/certificates)
    CertificateBooks alipay;     ///< by app_id: re-issued Alipay public certificates (by SN)
};

}  // namespace paybridge::gateways
