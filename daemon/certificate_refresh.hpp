#pragma once

// Downloads WeChat Pay platform certificates (PROTOCOLS.md §2.13) for the merchants with
// download_certificates: GET /v3/certificates signed with the merchant's API key, the answer
// decrypted with the APIv3 key and verified (gateways/wechatpay/wechatpay_certificates.hpp), the
// certificates put in the merchant's CertificateBook, which its gateway and query account consult
// after the configured keys.
//
// When: at start (and when a reload adds a merchant), every 6 hours after a download (WeChat Pay
// lists a new certificate 24 h before it signs with it, and advises polling at least every 12 h),
// and at once when a notification names a hex serial no key of the merchant has (at most once a
// minute per merchant, and not while downloads fail: WeChat Pay retries the notification, and the
// retry finds the new certificate). A failed download is tried again after 1 min, 2 min, 4 min
// ... up to 6 h, and at once after a reload. A certificate a later download no longer lists stays
// 48 hours after it was last listed (retries of notifications signed with it), never past its
// expiry. A merchant's book is emptied when the inputs its downloads were trusted by change on a
// reload (APIv3 key, URL, CA file, merchant serial) and when downloads for it are turned off.
// A 404 means the merchant has no platform certificates (public-key mode): nothing changes.
//
// Alipay (certificate-mode apps with download_certificates): Alipay has no list to poll; when a
// query answer is signed with a certificate SN the app does not hold (its book's hook says so),
// that certificate is downloaded (alipay.open.app.alipaycert.download,
// gateways/alipay/alipay_cert_download.hpp: trusted through its chain to the configured roots)
// and kept until it expires. The same spacing, backoff and emptying on reload apply.
//
// WeChat Pay: each instance downloads for itself, since every instance can fetch the whole list
// at any time. Alipay: a certificate is downloaded only when an answer names it, so what one
// instance downloaded is kept in Redis (store/certificate_shelf.hpp) for every instance and for
// restarts: each app's kept certificates are read at start (and when a reload adds the app or
// changes what it trusts), every minute, and before a download (another instance may have done
// it), each checked again against the app's configuration (check_kept_certificate: the chain to
// the configured roots, and newer than the configured certificate) before its book takes it;
// a configured SN is not taken (installing the certificate ends its use from the book); expired
// and unreadable entries are removed; one that fails the checks is logged and checked again an
// hour later. A download Redis could not take is kept at the next read.
//
// Runs on a thread of its own (its own io_context and, from the first update with an Alipay app
// that downloads, its own Redis connection); update(), request_stop(), abort() and stopped() may
// be called from any thread, start() and stop() from the owner's.

#include "config/config.hpp"
#include "gateways/certificate_book.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace paybridge::gateways {
struct QueryAccounts;
struct ProviderBooks;
}  // namespace paybridge::gateways

namespace paybridge::daemon {

namespace detail {

/// A certificate WeChat Pay no longer lists is kept this long after it was last listed: enough for
/// the retries of notifications signed with it (24 h 4 min), not for a withdrawn one to linger.
inline constexpr std::int64_t kUnlistedGraceSeconds = 48 * 3600;

/// What a merchant's book holds after a download listed `fresh`: `fresh` plus the certificates of
/// `before` it does not list, while they have not expired and were listed less than
/// kUnlistedGraceSeconds ago (`last_listed`: serial → Unix seconds, updated here); expired ones
/// are dropped.
std::vector<gateways::ProviderCertificate> merge_downloaded(const std::vector<gateways::ProviderCertificate>& before,
                                                            std::vector<gateways::ProviderCertificate> fresh,
                                                            std::map<std::string, std::int64_t>& last_listed,
                                                            std::int64_t now_unix);

}  // namespace detail

class CertificateRefresher {
public:
    /// `redis`: where Alipay downloads are kept (connected to from the first update with an
    /// Alipay app that downloads).
    CertificateRefresher(const config::RedisConfig& redis, std::shared_ptr<gateways::ProviderBooks> books);
    /// stop().
    ~CertificateRefresher();
    CertificateRefresher(const CertificateRefresher&) = delete;
    CertificateRefresher& operator=(const CertificateRefresher&) = delete;

    /// The accounts to download for: `accounts`' certificate_sources and
    /// alipay_certificate_sources (start-up, reload). The download timeout and CA file are
    /// provider_query's (its defaults without the section).
    void update(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts);
    /// Starts the thread.
    void start();
    /// Cuts a download in flight off, ends the loop and closes the Redis connection; returns at
    /// once. The thread ends when what was in flight has unwound (stopped()).
    void request_stop();
    /// Ends the thread's loop now, whatever is in flight (a forced stop).
    void abort();
    /// request_stop(), then joins the thread.
    void stop();
    bool stopped() const noexcept;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
    std::thread thread_;
};

}  // namespace paybridge::daemon
