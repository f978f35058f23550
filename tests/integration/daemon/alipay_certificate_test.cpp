// A re-issued Alipay public certificate downloaded (download_certificates, certificate mode) end
// to end: the real paybridged and redis-server, a fake Alipay gateway on loopback that checks each
// request's signature as Alipay does and answers, signed with a certificate paybridged was never
// configured with, as Alipay does once it has re-issued its certificate. The first query answer
// names the new SN: paybridged downloads that certificate (checked against the configured root),
// then trusts it for query answers and notifications; a certificate from another CA is refused.
// What one instance downloaded is kept in Redis: another instance, and the same one after a
// restart, trust it without a download; what was written there is checked again, never trusted as
// such.

#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "store/keys.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/json.hpp"
#include "tests/support/process.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <sys/stat.h>

#include <atomic>
#include <csignal>
#include <ctime>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

using namespace paybridge;
using namespace paybridge::test;
namespace alipay = paybridge::gateways::alipay;
using namespace std::chrono_literals;

namespace {

/// The SN of a PEM certificate, per PROTOCOLS.md §1.6.
std::string sn_of(const std::string& pem)
{
    auto certs = crypto::load_certificates(pem);
    REQUIRE(certs.has_value());
    REQUIRE(!certs->empty());
    return crypto::alipay_cert_sn(certs->front().get());
}

/// A fake Alipay gateway that has re-issued its certificate, and paybridged's certificate-mode app
/// asking it about bills.
struct ReissueWorld {
    // Declared (so destroyed) in this order: what the handler reads, the fake, then the daemon.
    std::mutex mu;
    std::map<std::string, std::string> trades;  ///< bill → "paid" or "unpaid" (others: unknown)
    std::atomic<int> refused{0};                ///< requests whose app signature did not check
    std::atomic<bool> down{false};              ///< answer every request with 503 (Alipay unreachable)
    keygen::Certificate app_ca = keygen::make_ca({.common_name = "app CA test"});
    keygen::Certificate app_cert = keygen::issue(app_ca, {.common_name = "app public key test"});
    keygen::Certificate other_ca = keygen::make_ca({.common_name = "Not Ant Financial test"});
    std::string new_cert_pem;     ///< the re-issued Alipay certificate (set by the constructor)
    std::string new_private_pem;  ///< its key
    std::string new_sn;
    std::string served_pem;       ///< what the download answer carries (the new certificate, or another)
    std::string root_sn;          ///< of the configured Alipay root, which requests must carry
    HttpReceiver gateway{HttpReceiverOptions{}};
    std::unique_ptr<DaemonFixture> fx;

    /// `reissued_not_before`: 0 for an hour ago (after the configured certificate, which keygen
    /// dates a day back).
    explicit ReissueWorld(bool from_the_right_ca = true, std::int64_t reissued_not_before = 0)
    {
        DaemonOptions opts;
        opts.workers = 1;
        opts.start = false;
        opts.alipay_cert_app_extra = R"(, "app_private_key": "file:keys/app_private.pem", "app_public_cert_file": )"
                                     R"("keys/app_public.crt", "gateway_url": ")" +
                                     gateway.url("/gateway.do") + R"(", "download_certificates": true)";
        opts.extra_config = R"("provider_query": {"after_s": 1, "until_s": 600, "max_gap_s": 1, "interval_s": 1})";
        fx = std::make_unique<DaemonFixture>(opts);
        // Alipay re-issues its certificate under the same root the app was configured with, after
        // the configured one.
        const keygen::Certificate reissued =
            keygen::issue(fx->alipay_root, {.common_name = "alipay public key test",
                                            .organization = "Ant Financial test",
                                            .not_before_unix = reissued_not_before != 0
                                                                   ? reissued_not_before
                                                                   : std::time(nullptr) - 3600});
        new_cert_pem = reissued.cert_pem;
        new_private_pem = reissued.key.private_pem;
        new_sn = sn_of(new_cert_pem);
        auto roots = crypto::load_certificates(fx->alipay_root.cert_pem);
        REQUIRE(roots.has_value());
        root_sn = crypto::alipay_root_cert_sn(*roots);
        served_pem = new_cert_pem;
        if (!from_the_right_ca) {
            // Same subject, same key, another CA: its SN differs too, so it is served under the SN
            // asked for (the check that must refuse it is the chain).
            served_pem = keygen::issue(other_ca, {.common_name = "alipay public key test",
                                                  .organization = "Ant Financial test"})
                             .cert_pem;
        }
        const auto write = [this](const char* name, const std::string& content) {
            const auto path = fx->dir() / name;
            std::filesystem::create_directories(path.parent_path());
            std::ofstream(path, std::ios::binary) << content;
            ::chmod(path.c_str(), 0600);
        };
        write("keys/app_private.pem", app_cert.key.private_pem);
        write("keys/app_public.crt", app_cert.cert_pem);
        serve();
        fx->start();
    }

    void serve()
    {
        gateway.set_handler([this](const ReceivedRequest& req) {
            if (down) {
                return ScriptedResponse{.status = 503, .headers = {}, .body = "down", .content_type = "text/plain"};
            }
            const crypto::SharedKey app_public = *crypto::load_public_key(app_cert.key.public_pem);
            const crypto::SharedKey signer_key = *crypto::load_private_key(new_private_pem);
            alipay::AnswerSigner signer{.alipay_private_key = signer_key.get(), .sign_type = "RSA2", .alipay_cert_sn = new_sn};
            alipay::TradeQueryCheck check;
            check.app_id = DaemonFixture::kAlipayCertAppId;
            check.app_cert_sn = sn_of(app_cert.cert_pem);
            check.alipay_root_cert_sn = root_sn;
            ScriptedResponse r;
            r.content_type = "application/json;charset=utf-8";
            std::string problem;
            std::lock_guard lock(mu);
            if (req.target.find("alipay.open.app.alipaycert.download") != std::string::npos) {
                Result<std::string> sn = alipay::check_cert_download_request(req.target, req.body, app_public.get(), check, &problem);
                if (!sn) {
                    ++refused;
                    r.body = alipay::make_cert_download_error("40002", "Invalid Arguments", "isv.invalid-signature",
                                                              problem, signer);
                } else {
                    r.body = alipay::make_cert_download_answer(served_pem, signer);
                }
                return r;
            }
            Result<std::string> bill = alipay::check_trade_query_request(req.target, req.body, app_public.get(), check, &problem);
            if (!bill) {
                ++refused;
                r.body = alipay::make_trade_query_error("40002", "Invalid Arguments", "isv.invalid-signature", problem,
                                                        signer);
                return r;
            }
            const auto found = trades.find(*bill);
            if (found == trades.end()) {
                r.body = alipay::make_trade_not_exist_answer(*bill, signer);
                return r;
            }
            alipay::QueriedTrade trade;
            trade.out_trade_no = *bill;
            trade.amount_fen = 1000;
            trade.trade_no = "2026120522001" + *bill;
            trade.trade_status = found->second == "paid" ? "TRADE_SUCCESS" : "WAIT_BUYER_PAY";
            r.body = alipay::make_trade_query_answer(trade, signer);
            return r;
        });
    }

    std::string status_of(const std::string& bill)
    {
        const HttpResult r = fx->get_bill(bill);
        REQUIRE_MESSAGE(r.status == 200, r.body);
        return parse_json(r.body)["status"].GetString();
    }
    std::string metrics() { return http_request(fx->port(), "GET", "/metrics").body; }
    int downloads()
    {
        int n = 0;
        for (const ReceivedRequest& r : gateway.requests()) {
            n += r.target.find("alipay.open.app.alipaycert.download") != std::string::npos ? 1 : 0;
        }
        return n;
    }
    /// A payment notification for the certificate-mode app, signed with the re-issued certificate's key.
    HttpResult notify(const std::string& bill) { return fx->post_alipay(notice(bill)); }
    std::string notice(const std::string& bill)
    {
        alipay::NoticeSpec spec;
        spec.app_id = DaemonFixture::kAlipayCertAppId;
        spec.seller_id = DaemonFixture::kSellerId;
        spec.out_trade_no = bill;
        spec.amount_fen = 1000;
        spec.trade_no = "2026120522009" + bill;
        const crypto::SharedKey key = *crypto::load_private_key(new_private_pem);
        return alipay::build_alipay_body(alipay::make_paid_notice(spec), key.get());
    }
    /// Where downloads of the certificate-mode app are kept (the fixture's default prefix and shards).
    static std::string kept_key()
    {
        return store::Keys("pb:", 16).alipay_certificates(DaemonFixture::kAlipayCertAppId);
    }
    std::string held_gauge(int n) const
    {
        return "paybridge_alipay_downloaded_certificates{app_id=\"" + std::string(DaemonFixture::kAlipayCertAppId) +
               "\"} " + std::to_string(n);
    }
    /// Waits until paybridged has read the kept certificates (successfully) at least once.
    void wait_kept_read()
    {
        REQUIRE_MESSAGE(wait_until([&] { return metrics().find("paybridge_alipay_kept_certificate_reads_total{app_id=\"" +
                                                               std::string(DaemonFixture::kAlipayCertAppId) +
                                                               "\",result=\"ok\"}") != std::string::npos; },
                                   30s),
                        fx->log());
    }
    /// Stops paybridged and checks that it stopped by itself (a forced stop also exits 0).
    void stop_cleanly()
    {
        CHECK(fx->stop() == 0);
        CHECK(fx->log().find("daemon.forced_stop") == std::string::npos);
    }
    /// Waits for the download that the first query answer brings.
    void wait_downloaded()
    {
        REQUIRE_MESSAGE(wait_until([&] { return metrics().find("paybridge_alipay_certificate_downloads_total{app_id=\"" +
                                                               std::string(DaemonFixture::kAlipayCertAppId) +
                                                               "\",result=\"ok\"} 1") != std::string::npos; },
                                   30s),
                        fx->log());
    }
    /// A second paybridged: the same configuration on another port, the same Redis and gateway.
    std::unique_ptr<Process> second_instance(std::uint16_t port)
    {
        std::ifstream in(fx->config_path());
        std::ostringstream text;
        text << in.rdbuf();
        std::string cfg = text.str();
        const std::string own = "\"listen\": \"127.0.0.1:" + std::to_string(fx->port()) + "\"";
        const std::size_t at = cfg.find(own);
        REQUIRE(at != std::string::npos);
        cfg.replace(at, own.size(), "\"listen\": \"127.0.0.1:" + std::to_string(port) + "\"");
        std::ofstream(fx->dir() / "second.json") << cfg;
        return std::make_unique<Process>(
            std::vector<std::string>{DaemonFixture::binary("paybridged"), "--config", (fx->dir() / "second.json").string()},
            fx->dir() / "second.log");
    }
};

}  // namespace

TEST_CASE("alipay certificate - a re-issued certificate named by a query answer is downloaded, then trusted for "
          "answers and notifications")
{
    ReissueWorld w;
    {
        std::lock_guard lock(w.mu);
        w.trades["AC-0"] = "unpaid";
        w.trades["AC-1"] = "paid";
    }
    REQUIRE(w.fx->create_bill("AC-0", 1000).status == 201);
    // Signed with a certificate paybridged does not have yet: refused (Alipay retries it).
    const HttpResult early = w.notify("AC-0");
    CHECK(early.status == 400);
    CHECK(early.body == "fail");

    // The first query answer names the new SN: it is downloaded, checked against the root.
    REQUIRE_MESSAGE(wait_until([&] { return w.metrics().find("paybridge_alipay_certificate_downloads_total{app_id=\"" +
                                                             std::string(DaemonFixture::kAlipayCertAppId) +
                                                             "\",result=\"ok\"} 1") != std::string::npos; },
                               30s),
                    w.fx->log());
    CHECK(w.downloads() == 1);
    CHECK(w.refused == 0);
    CHECK(w.fx->log().find("\"event\":\"alipay.certificate_downloaded\"") != std::string::npos);
    CHECK(w.fx->log().find(w.new_sn) != std::string::npos);

    // Alipay's retry of the notification is accepted now.
    const HttpResult retry = w.notify("AC-0");
    CHECK(retry.status == 200);
    CHECK(retry.body == "success");
    CHECK(w.status_of("AC-0") == "PAID");

    // Query answers signed with it are trusted: a payment found by a query is applied.
    REQUIRE(w.fx->create_bill("AC-1", 1000).status == 201);
    CHECK(wait_until([&] { return w.status_of("AC-1") == "PAID"; }, 30s));
    // One download was enough.
    CHECK(w.downloads() == 1);
    CHECK(w.fx->stop() == 0);
}

TEST_CASE("alipay certificate - a certificate that does not chain to the configured root is refused")
{
    ReissueWorld w(false);
    {
        std::lock_guard lock(w.mu);
        w.trades["AF-1"] = "paid";
    }
    REQUIRE(w.fx->create_bill("AF-1", 1000).status == 201);
    REQUIRE_MESSAGE(wait_until([&] { return w.metrics().find("paybridge_alipay_certificate_downloads_total{app_id=\"" +
                                                             std::string(DaemonFixture::kAlipayCertAppId) +
                                                             "\",result=\"failed\"} 1") != std::string::npos; },
                               30s),
                    w.fx->log());
    CHECK(w.fx->log().find("\"event\":\"alipay.certificate_download_failed\"") != std::string::npos);
    // Nothing signed with it is trusted: the notification is refused, the query's payment not applied.
    CHECK(w.notify("AF-1").body == "fail");
    std::this_thread::sleep_for(3s);
    CHECK(w.status_of("AF-1") == "PENDING");
    // While downloads fail, the answers naming the SN do not ask again at once (the backoff holds),
    // but the SN waits for the next attempt (not dropped for good).
    CHECK(w.downloads() == 1);
    const std::string log = w.fx->log();
    const auto queued = log.find("\"event\":\"alipay.certificate_requested\"", log.find("alipay.certificate_download_failed"));
    REQUIRE(queued != std::string::npos);
    CHECK(log.find("\"retry_in_s\":", queued) != std::string::npos);
    CHECK(w.fx->stop() == 0);
}

TEST_CASE("alipay certificate - a download is kept in Redis: another instance and a restarted one trust it without "
          "downloading")
{
    ReissueWorld w;
    {
        std::lock_guard lock(w.mu);
        w.trades["AK-0"] = "unpaid";
    }
    REQUIRE(w.fx->create_bill("AK-0", 1000).status == 201);
    w.wait_downloaded();
    // Kept where every instance reads: SN -> "<not_after> <certificate>".
    CHECK(w.fx->redis_integer({"HLEN", ReissueWorld::kept_key()}) == 1);
    CHECK(w.fx->log().find("\"kept\":\"redis\"") != std::string::npos);

    // Alipay is unreachable from now on: nothing can be downloaded again.
    w.down = true;
    const int downloads_before = w.downloads();

    // Another instance, started after the download, has it from Redis at once.
    const std::uint16_t second_port = free_port();
    auto second = w.second_instance(second_port);
    REQUIRE_MESSAGE(wait_until([&] { return second->log().find("\"event\":\"alipay.certificate_restored\"") !=
                                            std::string::npos; },
                               30s),
                    second->log());
    CHECK(second->log().find(w.new_sn) != std::string::npos);
    REQUIRE(wait_until([&] { return http_request(second_port, "GET", "/readyz").status == 200; }, 30s));
    REQUIRE(w.fx->create_bill("AK-1", 1000).status == 201);
    const HttpResult on_second = http_request(second_port, "POST", "/notify/alipay", w.notice("AK-1"),
                                              {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}});
    CHECK(on_second.status == 200);
    CHECK(on_second.body == "success");
    CHECK(w.status_of("AK-1") == "PAID");
    CHECK(second->stop(SIGTERM) == 0);
    CHECK(second->log().find("daemon.forced_stop") == std::string::npos);

    // The first instance, restarted, has it back before any answer names it.
    w.stop_cleanly();
    w.fx->start();
    REQUIRE_MESSAGE(wait_until([&] { return w.metrics().find(w.held_gauge(1)) != std::string::npos; }, 30s), w.fx->log());
    const HttpResult retry = w.notify("AK-0");
    CHECK(retry.status == 200);
    CHECK(retry.body == "success");
    CHECK(w.status_of("AK-0") == "PAID");
    CHECK(w.downloads() == downloads_before);
    w.stop_cleanly();
}

TEST_CASE("alipay certificate - what Redis holds is checked again: a stranger's certificate is refused, expired and "
          "unreadable entries are removed")
{
    ReissueWorld w;
    // Written into Redis by someone else before paybridged starts: a certificate of Alipay's name
    // from another CA under its own SN, one past its not_after, and one that does not read.
    const keygen::Certificate stranger =
        keygen::issue(w.other_ca, {.common_name = "alipay public key test", .organization = "Ant Financial test"});
    const std::string stranger_sn = sn_of(stranger.cert_pem);
    REQUIRE(w.fx->stop() == 0);
    w.fx->redis_run({"HSET", ReissueWorld::kept_key(), stranger_sn, "1999999999 " + crypto::base64_encode(stranger.cert_pem),
                     "0123456789abcdef0123456789abcdef", "1000 " + crypto::base64_encode(w.new_cert_pem),
                     "fedcba9876543210fedcba9876543210", "garbage"});
    w.fx->start();
    REQUIRE_MESSAGE(wait_until([&] { return w.fx->log().find("\"event\":\"alipay.kept_certificates_dropped\"") !=
                                            std::string::npos; },
                               30s),
                    w.fx->log());
    const std::string log = w.fx->log();
    const auto refused = log.find("\"event\":\"alipay.kept_certificate_refused\"");
    REQUIRE(refused != std::string::npos);
    CHECK(log.find(stranger_sn, refused) != std::string::npos);
    CHECK(log.find("does not chain to alipay_root_cert_file", refused) != std::string::npos);
    CHECK(log.find("alipay.certificate_restored") == std::string::npos);
    // The stranger's entry stays (an instance configured with its root may use it); the others are gone.
    CHECK(w.fx->redis_integer({"HLEN", ReissueWorld::kept_key()}) == 1);
    CHECK(w.fx->redis_integer({"HEXISTS", ReissueWorld::kept_key(), stranger_sn}) == 1);
    CHECK(w.metrics().find(w.held_gauge(0)) != std::string::npos);
    CHECK(log.find("\"expired\":\"0123456789abcdef0123456789abcdef\"") != std::string::npos);
    CHECK(log.find("\"unreadable\":1") != std::string::npos);
    w.stop_cleanly();
}

TEST_CASE("alipay certificate - an answer naming a certificate another instance kept brings no download")
{
    ReissueWorld w;
    {
        std::lock_guard lock(w.mu);
        w.trades["AR-0"] = "paid";
    }
    // Written after this instance's first read (the next is a minute later), as another
    // instance's download would be.
    w.wait_kept_read();
    w.fx->redis_run({"HSET", ReissueWorld::kept_key(), w.new_sn, "1999999999 " + crypto::base64_encode(w.new_cert_pem)});
    REQUIRE(w.fx->create_bill("AR-0", 1000).status == 201);
    // The query answer names the new SN: the read before the download finds it.
    REQUIRE_MESSAGE(wait_until([&] { return w.status_of("AR-0") == "PAID"; }, 30s), w.fx->log());
    const std::string log = w.fx->log();
    CHECK(log.find("\"event\":\"alipay.certificate_requested\"") != std::string::npos);
    CHECK(log.find("\"event\":\"alipay.certificate_restored\"") != std::string::npos);
    CHECK(w.downloads() == 0);
    CHECK(w.metrics().find(w.held_gauge(1)) != std::string::npos);
    w.stop_cleanly();
}

TEST_CASE("alipay certificate - once the downloaded certificate is installed, neither the book nor Redis brings it back")
{
    ReissueWorld w;
    {
        std::lock_guard lock(w.mu);
        w.trades["AI-0"] = "paid";
    }
    REQUIRE(w.fx->create_bill("AI-0", 1000).status == 201);
    w.wait_downloaded();
    REQUIRE(wait_until([&] { return w.metrics().find(w.held_gauge(1)) != std::string::npos; }, 10s));
    CHECK(w.fx->redis_integer({"HLEN", ReissueWorld::kept_key()}) == 1);

    // The operator installs it: the new certificate in alipay_public_cert_file, and reloads.
    {
        std::ofstream(w.fx->dir() / "keys/alipay_public.crt", std::ios::binary) << w.new_cert_pem;
    }
    w.fx->process().signal(SIGHUP);
    REQUIRE_MESSAGE(wait_until([&] { return w.metrics().find(w.held_gauge(0)) != std::string::npos; }, 30s), w.fx->log());
    // Notifications signed with it verify with the configured certificate now.
    REQUIRE(w.fx->create_bill("AI-1", 1000).status == 201);
    CHECK(w.notify("AI-1").body == "success");
    // A restart reads Redis, which still holds it, and does not take it back.
    REQUIRE(w.fx->stop() == 0);
    w.fx->start();
    w.wait_kept_read();  // Redis was read, and held it
    CHECK(w.metrics().find(w.held_gauge(0)) != std::string::npos);
    CHECK(w.fx->log().find("alipay.certificate_restored") == std::string::npos);
    // Not even looked at: it is the configured one, not a refused stranger.
    CHECK(w.fx->log().find("alipay.kept_certificate_refused") == std::string::npos);
    w.stop_cleanly();
}

TEST_CASE("alipay certificate - a certificate Alipay names that is no newer than the configured one is used, not kept")
{
    // Alipay signs with a certificate dated before the configured one (say, the configured one was
    // re-issued early and Alipay still uses its predecessor): the download is trusted, Alipay
    // named it, but other instances would refuse a kept copy (check_kept_certificate), so it is
    // not written to Redis.
    ReissueWorld w(true, std::time(nullptr) - 3 * 86400);
    {
        std::lock_guard lock(w.mu);
        w.trades["AO-0"] = "unpaid";
    }
    REQUIRE(w.fx->create_bill("AO-0", 1000).status == 201);
    w.wait_downloaded();
    CHECK(w.notify("AO-0").body == "success");
    CHECK(w.fx->log().find("\"kept\":\"no (not newer than alipay_public_cert_file)\"") != std::string::npos);
    CHECK(w.fx->redis_integer({"EXISTS", ReissueWorld::kept_key()}) == 0);
    w.stop_cleanly();
}
