#include "daemon/certificate_refresh.hpp"

#include "daemon/provider_call.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/time.hpp"
#include "crm/http_client.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query_accounts.hpp"
#include "gateways/alipay/alipay_cert_download.hpp"
#include "gateways/wechatpay/wechatpay_certificates.hpp"
#include "store/certificate_shelf.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <map>
#include <mutex>
#include <set>

namespace paybridge::daemon {

namespace asio = boost::asio;
using asio::awaitable;
using namespace std::chrono_literals;
using gateways::wechatpay::PlatformCertificate;

namespace {

constexpr std::chrono::milliseconds kRefreshEvery = 6h;
constexpr std::chrono::milliseconds kFirstRetry = 1min;
/// An unknown serial brings a download forward no sooner than this after the last one it did.
constexpr std::chrono::milliseconds kRequestSpacing = 1min;
/// A certificate list is a few KB.
constexpr std::size_t kMaxAnswerBytes = 256 * 1024;
/// How often each Alipay app's kept certificates are read (what other instances downloaded).
constexpr std::chrono::milliseconds kLookEvery = 1min;
/// ... and again after a failed read.
constexpr std::chrono::milliseconds kLookRetry = 5s;
/// ... and while the Redis connection is not ready yet (at start).
constexpr std::chrono::milliseconds kLookNotReady = 1s;
/// A kept certificate that failed the checks is checked (and logged) again after this long.
constexpr std::chrono::milliseconds kRecheckRefused = 1h;
/// At most this many refusals are remembered per app (a hash somebody fills with junk).
constexpr std::size_t kMaxRefused = 256;

std::int64_t steady_now_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::int64_t unix_now() { return unix_ms(std::chrono::system_clock::now()) / 1000; }

struct RefreshMetrics {
    metrics::Family<metrics::Counter>& alipay_downloads = metrics::registry().counter(
        "paybridge_alipay_certificate_downloads_total",
        "Downloads of re-issued Alipay public certificates (download_certificates), by app and result: ok, failed.");
    metrics::Family<metrics::Counter>& alipay_kept_reads = metrics::registry().counter(
        "paybridge_alipay_kept_certificate_reads_total",
        "Reads of the Alipay certificates kept in Redis (what any instance downloaded), by app and result: ok, failed.");
    metrics::Family<metrics::Gauge>& alipay_held = metrics::registry().gauge(
        "paybridge_alipay_downloaded_certificates",
        "Re-issued Alipay certificates held from downloads and valid now, by app (download_certificates): install "
        "them in the configuration.");
    metrics::Family<metrics::Counter>& downloads = metrics::registry().counter(
        "paybridge_wechatpay_certificate_downloads_total",
        "Downloads of WeChat Pay platform certificates (download_certificates), by merchant and result: ok, "
        "not_found (the merchant has none: public-key mode), failed.");
    metrics::Family<metrics::Gauge>& held = metrics::registry().gauge(
        "paybridge_wechatpay_downloaded_certificates",
        "WeChat Pay platform certificates held from downloads and valid now, by merchant (download_certificates).");
};

RefreshMetrics& refresh_metrics()
{
    static RefreshMetrics m;
    return m;
}

/// What an Alipay app's downloads trust: the roots they are checked against, the configured Alipay
/// certificate's issuer and subject (which a download must carry), the app's identity, where they
/// come from. A change empties its book.
std::string alipay_trust_inputs(const gateways::AlipayCertificateSource& source,
                                const config::ProviderQueryConfig& settings)
{
    return source.app.alipay_root_cert_sn + "|" + crypto::hex_lower(source.app.alipay_cert_issuer_der) + "|" +
           crypto::hex_lower(source.app.alipay_cert_subject_der) + "|" + source.signer.app_cert_sn + "|" + source.url +
           "|" + settings.ca_file;
}

/// An Alipay certificate SN as §1.6 computes it: 32 hex digits (MD5).
bool alipay_sn(const std::string& sn)
{
    return sn.size() == 32 &&
           std::all_of(sn.begin(), sn.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

/// What the downloads of a merchant trust: a change empties its book (what came under an APIv3 key
/// that was replaced, say a leaked one, is not kept).
std::string trust_inputs(const gateways::CertificateSource& source, const config::ProviderQueryConfig& settings)
{
    return crypto::hex_lower(crypto::sha256(source.merchant.apiv3_key)) + "|" + source.url + "|" + settings.ca_file + "|" +
           source.signer.merchant_serial_no;
}

std::string serials_of(const std::vector<PlatformCertificate>& certificates)
{
    std::string out;
    for (const PlatformCertificate& c : certificates) {
        if (!out.empty()) {
            out += ',';
        }
        out += c.serial;
    }
    return out;
}

}  // namespace

namespace detail {

/// `fresh` plus the certificates of `before` that it does not list, while they have not expired
/// and were listed less than kUnlistedGraceSeconds ago (`last_listed`, by serial, which this
/// updates): WeChat Pay may stop listing a certificate while notifications signed with it are
/// still being retried. Expired certificates are dropped.
std::vector<PlatformCertificate> merge_downloaded(const std::vector<PlatformCertificate>& before,
                                                  std::vector<PlatformCertificate> fresh,
                                                  std::map<std::string, std::int64_t>& last_listed, std::int64_t now_unix)
{
    std::erase_if(fresh, [now_unix](const PlatformCertificate& c) { return c.not_after < now_unix; });
    for (const PlatformCertificate& c : fresh) {
        last_listed[c.serial] = now_unix;
    }
    for (const PlatformCertificate& old : before) {
        const bool listed = std::any_of(fresh.begin(), fresh.end(),
                                        [&old](const PlatformCertificate& c) { return c.serial == old.serial; });
        const auto seen = last_listed.find(old.serial);
        const bool recent = seen != last_listed.end() && now_unix - seen->second < kUnlistedGraceSeconds;
        if (!listed && old.not_after >= now_unix && recent) {
            fresh.push_back(old);
        }
    }
    std::erase_if(last_listed, [&fresh](const auto& entry) {
        return std::none_of(fresh.begin(), fresh.end(),
                            [&entry](const PlatformCertificate& c) { return c.serial == entry.first; });
    });
    return fresh;
}

}  // namespace detail

struct CertificateRefresher::Impl {
    Impl(const config::RedisConfig& redis_config, std::shared_ptr<gateways::ProviderBooks> b)
        : redis_cfg(redis_config), books(std::move(b))
    {
        (void)refresh_metrics();
    }

    /// When an account's next download is, and how the last ones went.
    struct Schedule {
        std::unique_ptr<crm::HttpClient> client;
        std::int64_t next_ms{0};          ///< steady ms of the next download
        std::int64_t last_request_ms{0};  ///< steady ms an unknown serial last moved next_ms (0: never)
        int failures{0};                  ///< in a row
        std::string trusted;              ///< what its downloads are trusted by (a change empties its book)
    };

    /// One WeChat Pay merchant's downloads: the whole list, every kRefreshEvery.
    struct Merchant : Schedule {
        const gateways::CertificateSource* source{nullptr};  ///< in `accounts`
        std::map<std::string, std::int64_t> last_listed;  ///< serial → Unix seconds it was last listed
    };

    /// One Alipay app's downloads: a certificate by SN, when a query answer named one not held
    /// (Alipay has no list to poll).
    struct AlipayApp : Schedule {
        const gateways::AlipayCertificateSource* source{nullptr};  ///< in `accounts`
        std::vector<std::string> pending;  ///< SNs to download, oldest first
        std::int64_t next_look_ms{0};      ///< steady ms of the next read of its kept certificates
        bool look_failing{false};          ///< the last read failed (logged once per run of failures)
        /// Kept entries that failed the checks, by SN and content digest → steady ms when: logged
        /// and not checked again for kRecheckRefused (time-based refusals, such as "not valid
        /// yet" under clock skew, then get another chance).
        std::map<std::string, std::int64_t> refused_kept;
        std::map<std::string, store::KeptCertificate> unsaved;  ///< downloaded, not kept in Redis yet, by SN
    };

    /// A client for one provider account's downloads, or null (logged).
    std::unique_ptr<crm::HttpClient> make_client(const std::string& url, std::string_view event, const log::Field& who)
    {
        crm::HttpClientOptions options;
        options.url = url;
        options.ca_file = settings.ca_file;
        options.timeout = settings.timeout;
        options.concurrency = 1;
        options.keep_body = kMaxAnswerBytes + 1;
        options.max_body = kMaxAnswerBytes;
        options.keep_headers = true;
        options.user_agent = "paybridge";
        Result<std::unique_ptr<crm::HttpClient>> client = crm::HttpClient::create(ioc.get_executor(), options);
        if (!client) {
            // The loader checked the URL and read the CA file: it changed since.
            log::error(event, {who, {"error", error_name(client.error())}});
            return nullptr;
        }
        return std::move(*client);
    }

    asio::io_context ioc{1};
    const config::RedisConfig redis_cfg;
    std::shared_ptr<gateways::ProviderBooks> books;
    asio::steady_timer wake{ioc};
    std::atomic<bool> stopping{false};
    std::atomic<bool> finished{false};  ///< the thread's io_context ran out of work (or never ran)
    std::atomic<bool> started{false};

    // What update() handed over, under the mutex; taken by the loop between downloads (a client
    // in use is never replaced under it).
    std::mutex mutex;
    std::shared_ptr<const gateways::QueryAccounts> next_accounts;
    config::ProviderQueryConfig next_settings;
    bool changed{false};

    // Made at the first update with an Alipay app that downloads (the loop's own, as everything below).
    std::unique_ptr<store::RedisConnection> redis;
    std::unique_ptr<store::CertificateShelf> shelf;
    config::ProviderQueryConfig settings;  ///< taken from next_settings

    std::shared_ptr<const gateways::QueryAccounts> accounts;
    std::map<std::string, Merchant, std::less<>> merchants;
    std::map<std::string, AlipayApp, std::less<>> alipay_apps;

    /// Takes what update() handed over, if anything.
    bool take_update()
    {
        std::lock_guard lock(mutex);
        if (!changed) {
            return false;
        }
        changed = false;
        handed_accounts = next_accounts;
        settings = next_settings;
        return true;
    }
    std::shared_ptr<const gateways::QueryAccounts> handed_accounts;

    void apply_update()
    {
        // The sources the schedules point into stay alive until every old schedule is looked at.
        const std::shared_ptr<const gateways::QueryAccounts> previous = std::move(accounts);
        accounts = std::move(handed_accounts);
        std::map<std::string, Merchant, std::less<>> next;
        const std::int64_t now = steady_now_ms();
        if (accounts) {
            for (const gateways::CertificateSource& source : accounts->certificate_sources) {
                Merchant m;
                m.trusted = trust_inputs(source, settings);
                auto found = merchants.find(source.merchant.mchid);
                if (found != merchants.end() && found->second.trusted == m.trusted) {
                    // Its schedule carries over a reload, but a reload is a new chance after failures
                    // (the cause may have been fixed).
                    m.next_ms = found->second.failures > 0 ? now : found->second.next_ms;
                    m.last_request_ms = found->second.last_request_ms;
                    m.last_listed = std::move(found->second.last_listed);
                } else {
                    // New, turned on again, or trusting other inputs: what its book holds came
                    // another way; start again.
                    if (source.merchant.downloaded) {
                        source.merchant.downloaded->replace({});
                    }
                    m.next_ms = now;
                }
                show_held(source.merchant.mchid, source.merchant.downloaded);
                m.source = &source;
                m.client = make_client(source.url, "wechatpay.certificates_refused", {"mchid", source.merchant.mchid});
                if (m.client) {
                    next.emplace(source.merchant.mchid, std::move(m));
                }
            }
        }
        apply_alipay_update();
        for (auto& [mchid, m] : merchants) {
            if (!next.contains(mchid)) {
                // No longer downloaded for (removed, or download_certificates off): its gateway no
                // longer consults the book; empty it so that turning downloads on again starts afresh.
                if (m.source->merchant.downloaded) {
                    m.source->merchant.downloaded->replace({});
                }
                refresh_metrics().held.with({{"mchid", mchid}}).set(0);
            }
        }
        merchants = std::move(next);
    }

    void apply_alipay_update()
    {
        std::map<std::string, AlipayApp, std::less<>> next;
        if (accounts) {
            for (const gateways::AlipayCertificateSource& source : accounts->alipay_certificate_sources) {
                AlipayApp a;
                a.trusted = alipay_trust_inputs(source, settings);
                auto found = alipay_apps.find(source.app.app_id);
                if (found != alipay_apps.end() && found->second.trusted == a.trusted) {
                    a.last_request_ms = found->second.last_request_ms;  // a reload resets the backoff
                    a.next_look_ms = found->second.next_look_ms;
                    a.refused_kept = std::move(found->second.refused_kept);
                    a.unsaved = std::move(found->second.unsaved);
                    a.pending = std::move(found->second.pending);  // tried at once: a reload is a new chance
                    drop_superseded(source.app);
                } else if (source.app.downloaded) {
                    // Emptied; what is kept in Redis comes back at once if it passes the new checks.
                    source.app.downloaded->replace({});
                }
                a.source = &source;
                show_alipay_held(source.app.app_id, source.app.downloaded);
                a.client = make_client(source.url, "alipay.certificate_refused", {"app_id", source.app.app_id});
                if (a.client) {
                    next.emplace(source.app.app_id, std::move(a));
                }
            }
        }
        for (auto& [app_id, a] : alipay_apps) {
            if (!next.contains(app_id)) {
                if (a.source->app.downloaded) {
                    a.source->app.downloaded->replace({});
                }
                refresh_metrics().alipay_held.with({{"app_id", app_id}}).set(0);
            }
        }
        alipay_apps = std::move(next);
        if (!alipay_apps.empty() && !redis) {
            redis = std::make_unique<store::RedisConnection>(ioc.get_executor(), redis_cfg);
            redis->start();
            shelf = std::make_unique<store::CertificateShelf>(*redis, redis_cfg);
        }
    }

    /// A query answer named an Alipay certificate SN the app does not hold: download it soon.
    void request_alipay(const std::string& app_id, const std::string& sn)
    {
        auto found = alipay_apps.find(app_id);
        if (found == alipay_apps.end() || stopping || !alipay_sn(sn)) {
            return;
        }
        AlipayApp& a = found->second;
        const bool have = holds(a.source->app.downloaded, sn);
        // A few SNs at a time (a re-issue is one).
        if (have || a.pending.size() >= 4 || std::find(a.pending.begin(), a.pending.end(), sn) != a.pending.end()) {
            return;
        }
        if (a.failures > 0) {
            // While downloads fail the backoff holds: the SN waits for the next attempt.
            a.pending.push_back(sn);
            log::info("alipay.certificate_requested", {{"app_id", app_id}, {"alipay_cert_sn", sn},
                                                       {"why", "a query answer was signed with it"},
                                                       {"retry_in_s", retry_in_s(a)}});
            return;
        }
        const std::int64_t earliest = a.last_request_ms == 0 ? 0 : a.last_request_ms + kRequestSpacing.count();
        const std::int64_t at = std::max(steady_now_ms(), earliest);
        if (a.pending.empty() || at < a.next_ms) {
            a.next_ms = at;
        }
        a.last_request_ms = at;
        a.pending.push_back(sn);
        log::info("alipay.certificate_requested",
                  {{"app_id", app_id}, {"alipay_cert_sn", sn}, {"why", "a query answer was signed with it"}});
        wake.cancel();
    }

    /// How many of the book's certificates are valid now (for the gauges).
    static double valid_now(const std::shared_ptr<gateways::CertificateBook>& book)
    {
        double valid = 0;
        if (book) {
            const std::int64_t now_unix = unix_now();
            for (const gateways::ProviderCertificate& c : *book->certificates()) {
                valid += now_unix >= c.not_before && now_unix <= c.not_after ? 1 : 0;
            }
        }
        return valid;
    }
    static void show_alipay_held(const std::string& app_id, const std::shared_ptr<gateways::CertificateBook>& book)
    {
        refresh_metrics().alipay_held.with({{"app_id", app_id}}).set(valid_now(book));
    }
    static void show_held(const std::string& mchid, const std::shared_ptr<gateways::CertificateBook>& book)
    {
        refresh_metrics().held.with({{"mchid", mchid}}).set(valid_now(book));
    }

    void request(const std::string& mchid, const std::string& serial)
    {
        auto found = merchants.find(mchid);
        if (found == merchants.end() || stopping) {
            return;
        }
        Merchant& m = found->second;
        // /v3/certificates lists platform certificates, named by hex serials: a public key id
        // (PUB_KEY_ID_...) or anything else cannot be in it. And while downloads fail, the
        // backoff holds: anyone can send a serial.
        const bool hex = !serial.empty() && serial.size() <= 64 &&
                         std::all_of(serial.begin(), serial.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
        if (!hex || m.failures > 0) {
            return;
        }
        // Spaced from the last download an unknown serial brought forward, not from the scheduled
        // ones: the first unknown serial after a scheduled download is answered at once.
        const std::int64_t earliest = m.last_request_ms == 0 ? 0 : m.last_request_ms + kRequestSpacing.count();
        const std::int64_t at = std::max(steady_now_ms(), earliest);
        if (at < m.next_ms) {
            m.next_ms = at;
            m.last_request_ms = at;
            log::info("wechatpay.certificates_requested", {{"mchid", mchid}, {"why", "a request named an unknown serial"}});
            wake.cancel();
        }
    }

    /// On the thread: ends the loop and everything that keeps the io_context busy.
    void stop_now()
    {
        wake.cancel();
        for (auto& [mchid, m] : merchants) {
            m.client->abort_in_flight();
        }
        for (auto& [app_id, a] : alipay_apps) {
            a.client->abort_in_flight();
        }
        if (redis) {
            redis->stop();
        }
    }

    awaitable<void> run()
    {
        while (!stopping) {
            if (take_update()) {
                apply_update();
            }
            const std::int64_t now = steady_now_ms();
            Merchant* due = nullptr;
            std::int64_t soonest = now + kRefreshEvery.count();
            for (auto& [mchid, m] : merchants) {
                if (m.next_ms <= now && (due == nullptr || m.next_ms < due->next_ms)) {
                    due = &m;
                }
                soonest = std::min(soonest, m.next_ms);
            }
            AlipayApp* due_app = nullptr;
            AlipayApp* due_look = nullptr;
            for (auto& [app_id, a] : alipay_apps) {
                if (a.next_look_ms <= now && due_look == nullptr) {
                    due_look = &a;
                }
                soonest = std::min(soonest, a.next_look_ms);
                if (a.pending.empty()) {
                    continue;
                }
                if (a.next_ms <= now && (due_app == nullptr || a.next_ms < due_app->next_ms)) {
                    due_app = &a;
                }
                soonest = std::min(soonest, a.next_ms);
            }
            if (due_look != nullptr) {
                co_await look(*due_look);
                continue;
            }
            if (due != nullptr || due_app != nullptr) {
                if (due != nullptr) {
                    co_await download(*due);
                } else {
                    co_await download_alipay(*due_app);
                }
                continue;
            }
            wake.expires_after(std::chrono::milliseconds(std::max<std::int64_t>(soonest - now, 1)));
            co_await wake.async_wait(kUseTuple);
        }
    }

    static void schedule_retry(Schedule& m)
    {
        m.failures = std::min(m.failures + 1, 30);
        std::int64_t delay = kFirstRetry.count();
        for (int i = 1; i < m.failures && delay < kRefreshEvery.count(); ++i) {
            delay *= 2;
        }
        m.next_ms = steady_now_ms() + std::min<std::int64_t>(delay, kRefreshEvery.count());
    }

    /// Seconds to the next attempt, for the failure logs.
    static std::int64_t retry_in_s(const Schedule& m) { return (m.next_ms - steady_now_ms() + 999) / 1000; }

    /// Counts and logs a failed download, and schedules the next attempt.
    void failed(Merchant& m, bool people_must_look, std::string_view error, std::int64_t status, std::string_view detail)
    {
        const std::string& mchid = m.source->merchant.mchid;
        schedule_retry(m);
        refresh_metrics().downloads.with({{"mchid", mchid}, {"result", "failed"}}).inc();
        const std::initializer_list<log::Field> fields{{"mchid", mchid},
                                                       {"error", error},
                                                       {"status", status},
                                                       {"detail", detail},
                                                       {"retry_in_s", retry_in_s(m)}};
        if (people_must_look) {
            log::error("wechatpay.certificates_download_failed", fields);
        } else {
            log::warning("wechatpay.certificates_download_failed", fields);
        }
    }

    awaitable<void> download(Merchant& m)
    {
        const gateways::CertificateSource& source = *m.source;
        const std::string& mchid = source.merchant.mchid;
        const std::string nonce = crypto::hex_upper(crypto::random_bytes(16));
        Result<gateways::QueryRequest> request = gateways::wechatpay::build_certificates_request(
            source.merchant, source.signer, source.base_path, unix_now(), nonce);
        if (!request) {
            failed(m, true, error_name(request.error()), 0, "the request could not be built");
            co_return;
        }
        ProviderCall call = co_await call_provider(*m.client, std::move(*request), kMaxAnswerBytes);
        if (stopping) {
            co_return;
        }
        if (!call.response) {
            failed(m, call.ours, call.error, call.status, call.detail);
            co_return;
        }
        const gateways::QueryResponse& response = *call.response;
        std::string detail;
        const std::int64_t now_unix = unix_now();
        Result<std::vector<PlatformCertificate>> fresh =
            gateways::wechatpay::read_certificates_response(source.merchant, response, now_unix, &detail);
        if (!fresh && response.status == 404) {
            // Public-key mode: WeChat Pay signs with the public key, and has no certificates.
            refresh_metrics().downloads.with({{"mchid", mchid}, {"result", "not_found"}}).inc();
            m.failures = 0;
            m.next_ms = steady_now_ms() + kRefreshEvery.count();
            if (!source.merchant.public_key && source.merchant.certificates.empty()) {
                // Nothing else verifies this merchant's notifications: each one is refused.
                log::error("wechatpay.certificates_none",
                           {{"mchid", mchid}, {"detail", detail},
                            {"why", "no public key or platform certificate is configured either: every notification "
                                    "is refused until one is"}});
            } else {
                log::info("wechatpay.certificates_none", {{"mchid", mchid}, {"detail", detail}});
            }
            co_return;
        }
        if (!fresh) {
            // Forged, damaged, our request refused, or our APIv3 key wrong: people must look.
            failed(m, fresh.error() != errc::provider_unavailable, error_name(fresh.error()),
                   static_cast<std::int64_t>(response.status), detail);
            co_return;
        }
        const std::shared_ptr<gateways::CertificateBook>& book = source.merchant.downloaded;
        if (book) {
            const auto before = book->certificates();
            std::vector<PlatformCertificate> now_held = detail::merge_downloaded(*before, std::move(*fresh), m.last_listed, now_unix);
            std::set<std::string> known;
            for (const PlatformCertificate& c : *before) {
                known.insert(c.serial);
            }
            const auto added = std::count_if(now_held.begin(), now_held.end(),
                                             [&known](const PlatformCertificate& c) { return !known.contains(c.serial); });
            const auto dropped = std::count_if(before->begin(), before->end(), [&now_held](const PlatformCertificate& c) {
                return std::none_of(now_held.begin(), now_held.end(),
                                    [&c](const PlatformCertificate& h) { return h.serial == c.serial; });
            });
            const std::string serials = serials_of(now_held);
            book->replace(std::move(now_held));
            log::info("wechatpay.certificates_downloaded",
                      {{"mchid", mchid}, {"serials", serials}, {"added", static_cast<std::int64_t>(added)},
                       {"dropped", static_cast<std::int64_t>(dropped)}, {"detail", detail}});
        }
        show_held(mchid, book);
        refresh_metrics().downloads.with({{"mchid", mchid}, {"result", "ok"}}).inc();
        m.failures = 0;
        m.next_ms = steady_now_ms() + kRefreshEvery.count();
    }

    awaitable<void> download_alipay(AlipayApp& a)
    {
        const gateways::AlipayCertificateSource& source = *a.source;
        const std::string& app_id = source.app.app_id;
        const std::string sn = a.pending.front();
        const auto give_up_on = [&a, &sn] { std::erase(a.pending, sn); };
        const auto fail = [&](bool transient, std::string_view error, std::int64_t status, std::string_view detail) {
            schedule_retry(a);
            if (!transient) {
                give_up_on();  // asked again when an answer names it again, after the backoff
            }
            refresh_metrics().alipay_downloads.with({{"app_id", app_id}, {"result", "failed"}}).inc();
            const std::initializer_list<log::Field> fields{{"app_id", app_id},          {"alipay_cert_sn", sn},
                                                           {"error", error},            {"status", status},
                                                           {"detail", detail},          {"retry_in_s", retry_in_s(a)}};
            if (transient) {
                log::warning("alipay.certificate_download_failed", fields);
            } else {
                log::error("alipay.certificate_download_failed", fields);
            }
        };
        // Another instance may have downloaded it already (or this one, before a restart).
        co_await look(a);
        if (stopping) {
            co_return;
        }
        if (holds(source.app.downloaded, sn)) {
            give_up_on();
            a.next_ms = steady_now_ms();  // the next pending SN, if any
            co_return;
        }
        Result<gateways::QueryRequest> request =
            gateways::alipay::build_cert_download(source.app, source.signer, source.target, sn, unix_now());
        if (!request) {
            fail(false, error_name(request.error()), 0, "the request could not be built");
            co_return;
        }
        ProviderCall call = co_await call_provider(*a.client, std::move(*request), kMaxAnswerBytes);
        if (stopping) {
            co_return;
        }
        if (!call.response) {
            fail(!call.ours, call.error, call.status, call.detail);
            co_return;
        }
        const gateways::QueryResponse& response = *call.response;
        std::string detail;
        std::string content;
        const std::int64_t now_unix = unix_now();
        Result<gateways::ProviderCertificate> cert =
            gateways::alipay::read_cert_download(source.app, sn, response, now_unix, &detail, &content);
        if (!cert) {
            fail(cert.error() == errc::provider_unavailable, error_name(cert.error()),
                 static_cast<std::int64_t>(response.status), detail);
            co_return;
        }
        add_to_book(source.app.downloaded, *cert, now_unix);
        give_up_on();
        a.failures = 0;
        a.next_ms = steady_now_ms();  // the next pending SN, if any
        show_alipay_held(app_id, source.app.downloaded);
        // For every instance, and for this one after a restart. Installing it is still the lasting
        // fix: until then each notification is tried with the configured certificates first.
        // Only what other instances would take (check_kept_certificate: read_cert_download made
        // its other checks): a certificate Alipay named that is no newer than the configured one
        // is used here, not kept.
        std::string_view kept_where = "no (not newer than alipay_public_cert_file)";
        if (gateways::alipay::newer_than_configured(source.app, *cert)) {
            a.unsaved[sn] = store::KeptCertificate{.sn = sn, .not_after = cert->not_after, .content = std::move(content)};
            const bool saved = co_await save(a);
            kept_where = saved ? std::string_view("redis") : std::string_view("not yet (tried again every minute)");
        }
        log::warning("alipay.certificate_downloaded",
                     {{"app_id", app_id}, {"alipay_cert_sn", sn}, {"not_after", cert->not_after}, {"detail", detail},
                      {"kept", kept_where},
                      {"action", "install it as alipay_public_cert_file (the old one as previous_alipay_public_cert_file) "
                                 "and reload"}});
        // Counted once kept and logged: who sees the count sees both.
        refresh_metrics().alipay_downloads.with({{"app_id", app_id}, {"result", "ok"}}).inc();
    }

    /// Keeps in Redis what this instance downloaded and could not keep yet; true when nothing is
    /// left unsaved.
    awaitable<bool> save(AlipayApp& a)
    {
        const std::string& app_id = a.source->app.app_id;
        while (!a.unsaved.empty() && !stopping) {
            store::KeptCertificate kept = a.unsaved.begin()->second;
            const std::string sn = kept.sn;
            Result<void> saved = co_await shelf->keep_alipay(app_id, std::move(kept));
            if (stopping) {
                break;
            }
            if (!saved) {
                // Other instances download it themselves when their answers name it; this one
                // tries again at its next read.
                log::warning("alipay.certificate_not_kept",
                             {{"app_id", app_id}, {"alipay_cert_sn", sn}, {"error", error_name(saved.error())},
                              {"retry_in_s", kLookEvery.count() / 1000}});
                co_return false;
            }
            a.unsaved.erase(sn);
        }
        co_return a.unsaved.empty();
    }


    /// Whether `book` holds the certificate of SN `sn`.
    static bool holds(const std::shared_ptr<gateways::CertificateBook>& book, const std::string& sn)
    {
        if (!book) {
            return false;
        }
        const auto held = book->certificates();
        return std::any_of(held->begin(), held->end(), [&sn](const gateways::ProviderCertificate& c) { return c.serial == sn; });
    }

    /// Puts `cert` in `book` (in place of one of its SN), dropping what has expired.
    static void add_to_book(const std::shared_ptr<gateways::CertificateBook>& book, const gateways::ProviderCertificate& cert,
                            std::int64_t now_unix)
    {
        if (!book) {
            return;
        }
        std::vector<gateways::ProviderCertificate> held = *book->certificates();
        std::erase_if(held, [&](const gateways::ProviderCertificate& c) {
            return c.serial == cert.serial || c.not_after < now_unix;
        });
        held.push_back(cert);
        book->replace(std::move(held));
    }

    /// A downloaded certificate an installation made needless: now configured (its gateway tries
    /// it first anyway), or not newer than the configured one.
    static bool superseded(const gateways::alipay::AlipayAppKeys& app, const gateways::ProviderCertificate& c)
    {
        return gateways::alipay::configured_sn(app, c.serial) || !gateways::alipay::newer_than_configured(app, c);
    }

    /// Drops from the app's book what an installation superseded, so that the gauge tells that the
    /// installation is done.
    static void drop_superseded(const gateways::alipay::AlipayAppKeys& app)
    {
        if (!app.downloaded) {
            return;
        }
        std::vector<gateways::ProviderCertificate> held = *app.downloaded->certificates();
        if (std::erase_if(held, [&app](const gateways::ProviderCertificate& c) { return superseded(app, c); }) > 0) {
            app.downloaded->replace(std::move(held));
        }
    }

    /// Reads the app's kept certificates (what any instance downloaded) and takes into its book
    /// those it neither holds nor has configured that pass the checks; removes expired and
    /// unreadable entries; keeps what this instance could not keep before.
    awaitable<void> look(AlipayApp& a)
    {
        const gateways::AlipayCertificateSource& source = *a.source;
        const std::string& app_id = source.app.app_id;
        if (!source.app.downloaded) {
            a.next_look_ms = steady_now_ms() + kRefreshEvery.count();
            co_return;
        }
        if (!redis->usable()) {
            // At start, or Redis is down (which the workers' logs and /readyz say).
            a.next_look_ms = steady_now_ms() + kLookNotReady.count();
            co_return;
        }
        Result<store::KeptCertificates> kept = co_await shelf->read_alipay(app_id);
        if (stopping) {
            co_return;
        }
        refresh_metrics().alipay_kept_reads.with({{"app_id", app_id}, {"result", kept ? "ok" : "failed"}}).inc();
        if (!kept) {
            a.next_look_ms = steady_now_ms() + kLookRetry.count();
            if (!a.look_failing) {
                log::warning("alipay.kept_certificates_unreadable",
                             {{"app_id", app_id}, {"error", error_name(kept.error())}, {"retry_in_s", kLookRetry.count() / 1000}});
            }
            a.look_failing = true;
            co_return;
        }
        a.look_failing = false;
        a.next_look_ms = steady_now_ms() + kLookEvery.count();
        const std::int64_t now_unix = unix_now();
        const std::int64_t now_ms = steady_now_ms();
        std::erase_if(a.refused_kept, [now_ms](const auto& r) { return now_ms - r.second >= kRecheckRefused.count(); });
        std::vector<std::string> expired;
        bool added = false;
        for (store::KeptCertificate& k : kept->certificates) {
            if (const auto mine = a.unsaved.find(k.sn); mine != a.unsaved.end() && mine->second.content == k.content) {
                a.unsaved.erase(mine);  // kept by another instance meanwhile
            }
            if (k.not_after < now_unix) {
                expired.push_back(std::move(k.sn));
                continue;
            }
            if (gateways::alipay::configured_sn(source.app, k.sn) || holds(source.app.downloaded, k.sn)) {
                continue;
            }
            const std::string refusal = k.sn + ":" + crypto::hex_lower(crypto::sha256(k.content)).substr(0, 16);
            if (a.refused_kept.contains(refusal)) {
                continue;
            }
            std::string detail;
            Result<gateways::ProviderCertificate> cert =
                gateways::alipay::check_kept_certificate(source.app, k.sn, k.content, now_unix, &detail);
            if (!cert) {
                // Kept by an instance configured otherwise, or written by someone else: not ours
                // to remove, not to be trusted.
                log::warning("alipay.kept_certificate_refused",
                             {{"app_id", app_id}, {"alipay_cert_sn", k.sn}, {"error", error_name(cert.error())},
                              {"detail", detail}, {"recheck_in_s", kRecheckRefused.count() / 1000}});
                if (a.refused_kept.size() >= kMaxRefused) {
                    a.refused_kept.clear();
                }
                a.refused_kept.emplace(refusal, now_ms);
                continue;
            }
            add_to_book(source.app.downloaded, *cert, now_unix);
            std::erase(a.pending, k.sn);
            added = true;
            log::info("alipay.certificate_restored",
                      {{"app_id", app_id}, {"alipay_cert_sn", k.sn}, {"not_after", cert->not_after},
                       {"why", "kept in Redis by a download (this instance's before a restart, or another's)"}});
        }
        if (added) {
            show_alipay_held(app_id, source.app.downloaded);
            if (a.pending.empty()) {
                a.failures = 0;  // what the failed downloads were for is here
            }
        }
        if (!a.unsaved.empty()) {
            (void)co_await save(a);
        }
        const std::size_t unreadable = kept->unreadable.size();
        if (stopping || (expired.empty() && unreadable == 0)) {
            co_return;
        }
        std::string sns;
        for (const std::string& sn : expired) {
            sns += sns.empty() ? sn : "," + sn;
        }
        std::vector<std::string> drop = std::move(expired);
        for (std::string& field : kept->unreadable) {
            drop.push_back(std::move(field));
        }
        Result<void> dropped = co_await shelf->drop_alipay(app_id, std::move(drop));
        if (dropped) {
            // Unreadable fields are counted, not logged: anything may be written there.
            log::info("alipay.kept_certificates_dropped",
                      {{"app_id", app_id}, {"expired", sns}, {"unreadable", static_cast<std::int64_t>(unreadable)}});
        }
    }
};

CertificateRefresher::CertificateRefresher(const config::RedisConfig& redis,
                                           std::shared_ptr<gateways::ProviderBooks> books)
    : impl_(std::make_shared<Impl>(redis, std::move(books)))
{
}

CertificateRefresher::~CertificateRefresher() { stop(); }

void CertificateRefresher::update(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts)
{
    {
        std::lock_guard lock(impl_->mutex);
        impl_->next_accounts = std::move(accounts);
        impl_->next_settings = cfg.provider_query;
        impl_->changed = true;
    }
    Impl* impl = impl_.get();
    // Taken at the loop's next turn: at once when it waits, after the download in flight otherwise.
    asio::post(impl->ioc, [impl] { impl->wake.cancel(); });
}

void CertificateRefresher::start()
{
    if (impl_->started.exchange(true)) {
        return;
    }
    if (impl_->books) {
        std::weak_ptr<Impl> weak = impl_;
        impl_->books->wechatpay.set_hook([weak](const std::string& mchid, const std::string& serial) {
            if (auto impl = weak.lock()) {
                asio::post(impl->ioc, [weak, mchid, serial] {
                    if (auto alive = weak.lock()) {
                        alive->request(mchid, serial);
                    }
                });
            }
        });
        impl_->books->alipay.set_hook([weak](const std::string& app_id, const std::string& sn) {
            if (auto impl = weak.lock()) {
                asio::post(impl->ioc, [weak, app_id, sn] {
                    if (auto alive = weak.lock()) {
                        alive->request_alipay(app_id, sn);
                    }
                });
            }
        });
    }
    asio::co_spawn(impl_->ioc, impl_->run(), LogFailure("certificates.refresher_failed"));
    Impl* impl = impl_.get();
    thread_ = std::thread([impl] {
        try {
            impl->ioc.run();
        } catch (const std::exception& e) {
            log::error("certificates.refresher_failed", {{"what", e.what()}});
        }
        impl->finished = true;
    });
}

void CertificateRefresher::request_stop()
{
    if (impl_->stopping.exchange(true)) {
        return;
    }
    if (impl_->books) {
        impl_->books->wechatpay.set_hook({});
        impl_->books->alipay.set_hook({});
    }
    if (!impl_->started) {
        impl_->finished = true;
        return;
    }
    Impl* impl = impl_.get();
    asio::post(impl->ioc, [impl] { impl->stop_now(); });
}

void CertificateRefresher::abort() { impl_->ioc.stop(); }

void CertificateRefresher::stop()
{
    request_stop();
    if (thread_.joinable()) {
        thread_.join();
    }
}

bool CertificateRefresher::stopped() const noexcept { return impl_->finished; }

}  // namespace paybridge::daemon
