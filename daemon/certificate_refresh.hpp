#pragma once

// Downloads WeChat Pay platform certificates (PROTOCOLS.md §2.13) for the merchants with
// download_certificates: GET /v3/certificates signed with the merchant's API key, the answer
// decrypted with the APIv3 key and verified (gateways/wechatpay/wechatpay_certificates.hpp), the
// certificates put in the merchant's CertificateBook, which its gateway and query account consult
// after the configured keys.
//
// When: at start (and when a reload adds a merchant), every 6 hours after a download (WeChat Pay
// lists a new certificate 24 h before it signs with it, and advises polling at least every 12 h),
// and at once when a notification names a serial no key of the merchant has (at most once a
// minute per merchant: WeChat Pay retries the notification, and the retry finds the new
// certificate). A failed download is tried again after 1 min, 2 min, 4 min ... up to 6 h. A
// certificate stays in the book until it expires, also when a later download no longer lists it.
// A 404 means the merchant has no platform certificates (public-key mode): nothing changes.
//
// Each instance downloads for itself: the certificates are WeChat Pay's to give, not state of
// ours, and every instance can fetch them.
//
// Runs on the daemon's control io_context (the thread that handles signals and reloads); not
// thread-safe except request().

#include "config/config.hpp"

#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>

namespace paybridge::gateways {
struct QueryAccounts;
class CertificateBooks;
}  // namespace paybridge::gateways

namespace paybridge::daemon {

class CertificateRefresher {
public:
    CertificateRefresher(boost::asio::io_context& ioc, std::shared_ptr<gateways::CertificateBooks> books);
    ~CertificateRefresher();
    CertificateRefresher(const CertificateRefresher&) = delete;
    CertificateRefresher& operator=(const CertificateRefresher&) = delete;

    /// The merchants to download for: `accounts`' certificate_sources (start-up, reload). The
    /// download timeout and CA file are provider_query's (its defaults without the section).
    void update(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts);
    void start();
    /// A request named a serial none of the merchant's keys has: download soon. Any thread.
    void request(const std::string& mchid);
    /// Cuts a download in flight off and ends the loop.
    void request_stop();
    bool stopped() const noexcept;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace paybridge::daemon
