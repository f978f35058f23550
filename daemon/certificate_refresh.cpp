#include "daemon/certificate_refresh.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/time.hpp"
#include "crm/http_client.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/query_accounts.hpp"
#include "gateways/wechatpay/wechatpay_certificates.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <map>
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

std::int64_t steady_now_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::int64_t unix_now() { return unix_ms(std::chrono::system_clock::now()) / 1000; }

struct RefreshMetrics {
    metrics::Family<metrics::Counter>& downloads = metrics::registry().counter(
        "paybridge_wechatpay_certificate_downloads_total",
        "Downloads of WeChat Pay platform certificates (download_certificates), by result: ok, not_found "
        "(the merchant has none: public-key mode), failed.");
};

RefreshMetrics& refresh_metrics()
{
    static RefreshMetrics m;
    return m;
}

/// `fresh` plus the certificates of `before` that it does not list and that have not expired:
/// WeChat Pay may stop listing a certificate while notifications signed with it are still being
/// retried. Expired ones are dropped.
std::vector<PlatformCertificate> merged(const std::vector<PlatformCertificate>& before,
                                        std::vector<PlatformCertificate> fresh, std::int64_t now_unix)
{
    std::erase_if(fresh, [now_unix](const PlatformCertificate& c) { return c.not_after < now_unix; });
    for (const PlatformCertificate& old : before) {
        const bool listed = std::any_of(fresh.begin(), fresh.end(),
                                        [&old](const PlatformCertificate& c) { return c.serial == old.serial; });
        if (!listed && old.not_after >= now_unix) {
            fresh.push_back(old);
        }
    }
    return fresh;
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

struct CertificateRefresher::Impl : std::enable_shared_from_this<CertificateRefresher::Impl> {
    Impl(asio::io_context& io, std::shared_ptr<gateways::CertificateBooks> b)
        : ioc(io), books(std::move(b)), wake(io)
    {
        (void)refresh_metrics();
    }

    /// One merchant's downloads.
    struct Merchant {
        const gateways::CertificateSource* source{nullptr};  ///< in `accounts`
        std::unique_ptr<crm::HttpClient> client;
        std::int64_t next_ms{0};          ///< steady ms of the next download
        std::int64_t last_request_ms{0};  ///< steady ms an unknown serial last moved next_ms (0: never)
        int failures{0};                  ///< in a row
    };

    asio::io_context& ioc;
    std::shared_ptr<gateways::CertificateBooks> books;
    asio::steady_timer wake;
    bool stopping{false};
    bool stopped{false};
    bool started{false};
    bool downloading{false};

    // What update() handed over; taken by the loop between downloads (a client in use is never
    // replaced under it).
    std::shared_ptr<const gateways::QueryAccounts> next_accounts;
    config::ProviderQueryConfig next_settings;
    bool changed{false};

    std::shared_ptr<const gateways::QueryAccounts> accounts;
    std::map<std::string, Merchant, std::less<>> merchants;

    void apply_update()
    {
        changed = false;
        accounts = next_accounts;
        std::map<std::string, Merchant, std::less<>> next;
        const std::int64_t now = steady_now_ms();
        if (accounts) {
            for (const gateways::CertificateSource& source : accounts->certificate_sources) {
                Merchant m;
                if (auto found = merchants.find(source.merchant.mchid); found != merchants.end()) {
                    // Its schedule carries over a reload.
                    m.next_ms = found->second.next_ms;
                    m.last_request_ms = found->second.last_request_ms;
                    m.failures = found->second.failures;
                } else {
                    m.next_ms = now;
                }
                m.source = &source;
                crm::HttpClientOptions options;
                options.url = source.url;
                options.ca_file = next_settings.ca_file;
                options.timeout = next_settings.timeout;
                options.concurrency = 1;
                options.keep_body = kMaxAnswerBytes + 1;
                options.max_body = kMaxAnswerBytes;
                options.keep_headers = true;
                options.user_agent = "paybridge";
                Result<std::unique_ptr<crm::HttpClient>> client = crm::HttpClient::create(ioc.get_executor(), options);
                if (!client) {
                    // The loader checked the URL and read the CA file: it changed since.
                    log::error("wechatpay.certificates_refused",
                               {{"mchid", source.merchant.mchid}, {"error", error_name(client.error())}});
                    continue;
                }
                m.client = std::move(*client);
                next.emplace(source.merchant.mchid, std::move(m));
            }
        }
        merchants = std::move(next);
    }

    void request(const std::string& mchid)
    {
        auto found = merchants.find(mchid);
        if (found == merchants.end() || stopping) {
            return;
        }
        Merchant& m = found->second;
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

    awaitable<void> run()
    {
        auto keep = shared_from_this();
        while (!stopping) {
            if (changed) {
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
            if (due != nullptr) {
                downloading = true;
                co_await download(*due);
                downloading = false;
                continue;
            }
            wake.expires_after(std::chrono::milliseconds(std::max<std::int64_t>(soonest - now, 1)));
            co_await wake.async_wait(kUseTuple);
        }
        stopped = true;
    }

    void schedule_retry(Merchant& m)
    {
        m.failures = std::min(m.failures + 1, 30);
        std::int64_t delay = kFirstRetry.count();
        for (int i = 1; i < m.failures && delay < kRefreshEvery.count(); ++i) {
            delay *= 2;
        }
        m.next_ms = steady_now_ms() + std::min<std::int64_t>(delay, kRefreshEvery.count());
    }

    awaitable<void> download(Merchant& m)
    {
        const gateways::CertificateSource& source = *m.source;
        const std::string& mchid = source.merchant.mchid;
        const std::string nonce = crypto::hex_upper(crypto::random_bytes(16));
        Result<gateways::QueryRequest> request = gateways::wechatpay::build_certificates_request(
            source.merchant, source.signer, source.base_path, unix_now(), nonce);
        if (!request) {
            refresh_metrics().downloads.with({{"result", "failed"}}).inc();
            log::error("wechatpay.certificates_download_failed",
                       {{"mchid", mchid}, {"error", error_name(request.error())}, {"detail", "the request could not be built"}});
            schedule_retry(m);
            co_return;
        }
        crm::Headers headers = std::move(request->headers);
        crm::PostResult sent = co_await m.client->send(std::move(request->method), std::move(request->target),
                                                       std::move(headers), std::move(request->body));
        if (stopping) {
            co_return;
        }
        const bool cut = sent.response && (!sent.response->complete || sent.response->body_head.size() > kMaxAnswerBytes);
        if (!sent.response || cut) {
            refresh_metrics().downloads.with({{"result", "failed"}}).inc();
            log::warning("wechatpay.certificates_download_failed",
                         {{"mchid", mchid},
                          {"error", sent.response ? std::string_view("provider_unavailable") : error_name(sent.response.error())},
                          {"detail", sent.response ? std::string_view("the answer was cut short")
                                                   : std::string_view(sent.error_detail)}});
            schedule_retry(m);
            co_return;
        }
        gateways::QueryResponse response;
        response.status = sent.response->status;
        response.headers = std::move(sent.response->headers);
        response.body = std::move(sent.response->body_head);
        std::string detail;
        const std::int64_t now_unix = unix_now();
        Result<std::vector<PlatformCertificate>> fresh =
            gateways::wechatpay::read_certificates_response(source.merchant, response, now_unix, &detail);
        if (!fresh) {
            if (response.status == 404) {
                // Public-key mode: WeChat Pay signs with the public key, and has no certificates.
                refresh_metrics().downloads.with({{"result", "not_found"}}).inc();
                log::info("wechatpay.certificates_none", {{"mchid", mchid}, {"detail", detail}});
                m.failures = 0;
                m.next_ms = steady_now_ms() + kRefreshEvery.count();
                co_return;
            }
            refresh_metrics().downloads.with({{"result", "failed"}}).inc();
            const bool transient = fresh.error() == errc::provider_unavailable;
            const std::initializer_list<log::Field> fields{{"mchid", mchid},
                                                           {"error", error_name(fresh.error())},
                                                           {"status", static_cast<std::int64_t>(response.status)},
                                                           {"detail", detail}};
            if (transient) {
                log::warning("wechatpay.certificates_download_failed", fields);
            } else {
                // Forged, damaged, our request refused, or our APIv3 key wrong: people must look.
                log::error("wechatpay.certificates_download_failed", fields);
            }
            schedule_retry(m);
            co_return;
        }
        const std::shared_ptr<gateways::CertificateBook>& book = source.merchant.downloaded;
        if (book) {
            const auto before = book->certificates();
            std::vector<PlatformCertificate> now_held = merged(*before, std::move(*fresh), now_unix);
            std::set<std::string> known;
            for (const PlatformCertificate& c : *before) {
                known.insert(c.serial);
            }
            const auto added = std::count_if(now_held.begin(), now_held.end(),
                                             [&known](const PlatformCertificate& c) { return !known.contains(c.serial); });
            const std::string serials = serials_of(now_held);
            book->replace(std::move(now_held));
            log::info("wechatpay.certificates_downloaded",
                      {{"mchid", mchid}, {"serials", serials}, {"added", static_cast<std::int64_t>(added)}, {"detail", detail}});
        }
        refresh_metrics().downloads.with({{"result", "ok"}}).inc();
        m.failures = 0;
        m.next_ms = steady_now_ms() + kRefreshEvery.count();
    }
};

CertificateRefresher::CertificateRefresher(asio::io_context& ioc,
                                           std::shared_ptr<gateways::CertificateBooks> books)
    : impl_(std::make_shared<Impl>(ioc, std::move(books)))
{
}

CertificateRefresher::~CertificateRefresher() = default;

void CertificateRefresher::update(const config::Config& cfg, std::shared_ptr<const gateways::QueryAccounts> accounts)
{
    impl_->next_accounts = std::move(accounts);
    impl_->next_settings = cfg.provider_query;
    impl_->changed = true;
    if (!impl_->downloading) {
        impl_->wake.cancel();
    }
}

void CertificateRefresher::start()
{
    if (impl_->started) {
        return;
    }
    impl_->started = true;
    if (impl_->books) {
        std::weak_ptr<Impl> weak = impl_;
        asio::io_context& ioc = impl_->ioc;
        impl_->books->set_hook([weak, &ioc](const std::string& mchid, const std::string&) {
            asio::post(ioc, [weak, mchid] {
                if (auto impl = weak.lock()) {
                    impl->request(mchid);
                }
            });
        });
    }
    asio::co_spawn(impl_->ioc, impl_->run(), asio::detached);
}

void CertificateRefresher::request(const std::string& mchid)
{
    std::weak_ptr<Impl> weak = impl_;
    asio::post(impl_->ioc, [weak, mchid] {
        if (auto impl = weak.lock()) {
            impl->request(mchid);
        }
    });
}

void CertificateRefresher::request_stop()
{
    impl_->stopping = true;
    if (impl_->books) {
        impl_->books->set_hook({});
    }
    impl_->wake.cancel();
    for (auto& [mchid, m] : impl_->merchants) {
        m.client->abort_in_flight();
    }
    if (!impl_->started) {
        impl_->stopped = true;
    }
}

bool CertificateRefresher::stopped() const noexcept { return impl_->stopped; }

}  // namespace paybridge::daemon
