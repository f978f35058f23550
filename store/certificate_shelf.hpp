#pragma once

// Where the Alipay certificates one instance downloaded (daemon/certificate_refresh.hpp) are kept
// for every instance, and for this one after a restart: one hash per app (store/keys.hpp),
// SN -> "<not_after> <content>", the content as read_cert_download gave it (base64 of the PEM).
// Nothing here is trusted: a reader checks each certificate again against its own configuration
// (gateways::alipay::check_kept_certificate) before it uses it. An entry whose not_after has
// passed is removed by whoever reads it; so is one that does not read.

#include "core/result.hpp"
#include "store/keys.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace paybridge::config {
struct RedisConfig;
}

namespace paybridge::store {

class RedisConnection;

/// One kept certificate.
struct KeptCertificate {
    std::string sn;
    std::int64_t not_after{0};  ///< Unix seconds, as written
    std::string content;        ///< base64 of the PEM
};

/// What one read found: the entries that read, and the fields of those that did not (a field that
/// is not an SN as §1.6 computes it, 32 lower-case hex digits; a value without its "<digits> "
/// head, or longer than kMaxValueBytes).
struct KeptCertificates {
    std::vector<KeptCertificate> certificates;
    std::vector<std::string> unreadable;
};

/// On one connection; every call on its executor.
class CertificateShelf {
public:
    CertificateShelf(RedisConnection& redis, const config::RedisConfig& cfg);

    /// A read asks for this many entries of one app (a re-issue adds one a year or so): the first
    /// page of an HSCAN, so a hash that somebody filled is not read whole.
    static constexpr std::size_t kMaxEntries = 64;
    /// A certificate with its chain is a few KB.
    static constexpr std::size_t kMaxValueBytes = 16 * 1024;

    /// The app's entries (HSCAN 0 COUNT kMaxEntries: a small hash whole, a big one in part; at
    /// most kMaxEntries are returned, readable or not). Errors: as RedisConnection::exec, and
    /// store_unavailable for a reply that is not a hash's.
    boost::asio::awaitable<Result<KeptCertificates>> read_alipay(std::string app_id);
    /// HSET of one entry (a later download of the same SN replaces it).
    boost::asio::awaitable<Result<void>> keep_alipay(std::string app_id, KeptCertificate certificate);
    /// HDEL of the SNs given (expired or unreadable). Nothing to drop: no command.
    boost::asio::awaitable<Result<void>> drop_alipay(std::string app_id, std::vector<std::string> sns);

private:
    RedisConnection& redis_;
    Keys keys_;
};

}  // namespace paybridge::store
