// Platform certificates downloaded from WeChat Pay (download_certificates) end to end: the real
// paybridged and redis-server, a fake WeChat Pay API on loopback that checks each
// GET /v3/certificates as WeChat Pay does (the merchant's signature) and answers with certificates
// encrypted under the APIv3 key and a signed answer, made by the provider-side simulator.
// A notification signed with a certificate paybridged was never configured with is accepted once
// the certificate is downloaded; an unknown serial makes paybridged download at once, so WeChat's
// retry succeeds; forged or undecryptable lists change nothing; a reload keeps what was
// downloaded; a hanging API does not hold up the shutdown.

#include "tests/integration/wechatpay/wechat_e2e.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/process.hpp"
#include "tests/support/wait.hpp"
#include "tools/keygen/keygen.hpp"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace wxe2e;
using namespace paybridge::test;
namespace keygen = paybridge::keygen;
using namespace std::chrono_literals;

namespace {

constexpr const char* kMerchantSerial = "3775B6A45ACD588826D15E583A95F5DD";
constexpr const char* kSerialA = "6A00000000000000000000000000000000000001";
constexpr const char* kSerialB = "6A00000000000000000000000000000000000002";
constexpr const char* kSerialC = "6A00000000000000000000000000000000000003";

/// A fake WeChat Pay API serving GET /v3/certificates, and paybridged downloading from it.
struct DownloadWorld {
    // Declared (so destroyed) in this order: what the handler reads, the fake, then the daemon.
    std::mutex mu;
    keygen::Certificate ca = keygen::make_ca({.common_name = "Tenpay.com Root CA test"});
    keygen::Certificate cert_a = keygen::issue(ca, {.common_name = "Tenpay.com platform A", .serial_hex = kSerialA});
    keygen::Certificate cert_b = keygen::issue(ca, {.common_name = "Tenpay.com platform B", .serial_hex = kSerialB});
    keygen::Certificate cert_c = keygen::issue(ca, {.common_name = "Tenpay.com platform C", .serial_hex = kSerialC});
    keygen::KeyPair merchant_keys = keygen::generate_rsa();  ///< the merchant API key pair
    keygen::KeyPair stranger = keygen::generate_rsa();       ///< forges answers
    std::vector<const keygen::Certificate*> listed;          ///< what the API lists (under mu)
    std::string answer_mode{"good"};  ///< "good", "forged" (signed by a stranger), "wrong_key" (another APIv3 key), "404"
    std::atomic<int> refused{0};      ///< requests whose merchant signature did not check
    HttpReceiver api{HttpReceiverOptions{}};
    DaemonOptions opts;
    std::unique_ptr<DaemonFixture> fx;

    DownloadWorld()
    {
        listed = {&cert_a};
        opts.workers = 1;
        opts.start = false;
        opts.wechat_merchant_extra = merchant_extra(api.url(""));
        fx = std::make_unique<DaemonFixture>(opts);
        const auto key_path = fx->dir() / "keys/merchant_private.pem";
        std::filesystem::create_directories(key_path.parent_path());
        std::ofstream(key_path, std::ios::binary) << merchant_keys.private_pem;
        ::chmod(key_path.c_str(), 0600);
        serve();
    }

    static std::string merchant_extra(const std::string& api_url)
    {
        return R"(, "merchant_private_key": "file:keys/merchant_private.pem", "merchant_serial_no": ")" +
               std::string(kMerchantSerial) + R"(", "api_url": ")" + api_url + R"(", "download_certificates": true)";
    }

    /// SIGHUP, and waits until the daemon says it reloaded (the n-th time).
    void reload(std::size_t n)
    {
        REQUIRE(::kill(fx->process().pid(), SIGHUP) == 0);
        REQUIRE(wait_until([&] { return occurrences(fx->log(), "\"daemon.reloaded\"") == n; }, 10s));
    }
    static std::size_t occurrences(const std::string& text, const std::string& what)
    {
        std::size_t n = 0;
        for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
            ++n;
        }
        return n;
    }

    void serve()
    {
        api.set_handler([this](const ReceivedRequest& req) {
            const std::vector<sim::V3ApiMerchant> merchants{
                {DaemonFixture::kMchId, kMerchantSerial, *crypto::load_public_key(merchant_keys.public_pem)}};
            paybridge::gateways::QueryRequest asked{req.method, req.target, req.headers, req.body};
            auto checked = sim::check_v3_certificates_request(asked, merchants, now_unix());
            paybridge::gateways::QueryResponse answer;
            std::lock_guard lock(mu);
            if (!checked) {
                ++refused;
                answer = sim::make_v3_error_response(401, "SIGN_ERROR", "signature does not verify");
            } else if (answer_mode == "404") {
                answer = sim::make_v3_error_response(404, "NOT_FOUND", "no platform certificates");
            } else {
                std::vector<std::pair<std::string, std::string>> certs;
                for (const keygen::Certificate* c : listed) {
                    certs.emplace_back(c->cert_pem, c == &cert_a ? kSerialA : c == &cert_b ? kSerialB : kSerialC);
                }
                // WeChat Pay signs with a certificate it lists (the newest).
                const keygen::Certificate& signer_cert = *listed.back();
                sim::V3Signer signer{*crypto::load_private_key(signer_cert.key.private_pem), certs.back().second};
                if (answer_mode == "forged") {
                    signer.private_key = *crypto::load_private_key(stranger.private_pem);
                }
                const std::string key = answer_mode == "wrong_key" ? keygen::random_token(32) : fx->apiv3_key;
                answer = *sim::make_v3_certificates_response(certs, key, signer);
            }
            ScriptedResponse r;
            r.status = answer.status;
            r.headers = answer.headers;
            r.body = answer.body;
            r.content_type = "";  // among the headers
            return r;
        });
    }

    int downloads()
    {
        int n = 0;
        for (const ReceivedRequest& r : api.requests()) {
            n += r.target == "/v3/certificates" ? 1 : 0;
        }
        return n;
    }
    std::string metrics() { return http_request(fx->port(), "GET", "/metrics").body; }
    bool metric_has(const std::string& line)
    {
        return wait_until([&] { return metrics().find(line) != std::string::npos; }, 20s);
    }
    HttpResult pay(const std::string& bill, const keygen::Certificate& cert, const char* serial)
    {
        Wechat wx{*fx};
        const sim::V3Signer signer{*crypto::load_private_key(cert.key.private_pem), serial};
        return wx.post_v3(wx.pay(wx.tx(bill, 1000, "4200" + bill), signer));
    }
};

}  // namespace

TEST_CASE("wechatpay certificates: downloaded at start, an unknown serial downloads at once and WeChat's retry is "
          "accepted, a reload keeps them")
{
    DownloadWorld w;
    w.fx->start();
    REQUIRE(w.metric_has("paybridge_wechatpay_certificate_downloads_total{mchid=\"1900000001\",result=\"ok\"} 1"));
    CHECK(w.downloads() == 1);
    CHECK(w.refused == 0);
    CHECK(w.metrics().find("paybridge_wechatpay_downloaded_certificates{mchid=\"1900000001\"} 1") != std::string::npos);

    // Certificate A was never configured: it verifies now, as a downloaded one.
    REQUIRE(w.fx->create_bill("CD-1", 1000).status == 201);
    CHECK(w.pay("CD-1", w.cert_a, kSerialA).status == 204);
    CHECK(status_of(*w.fx, "CD-1") == "PAID");
    CHECK(w.fx->log().find("key=downloaded_certificate:6A00000000000000000000000000000000000001") != std::string::npos);

    // WeChat Pay starts signing with certificate B: the first notification is refused (WeChat
    // retries it) and makes paybridged download at once; the retry is accepted.
    {
        std::lock_guard lock(w.mu);
        w.listed = {&w.cert_a, &w.cert_b};
    }
    REQUIRE(w.fx->create_bill("CD-2", 1000).status == 201);
    check_v3_fail(w.pay("CD-2", w.cert_b, kSerialB), 401);
    REQUIRE(wait_until([&] { return w.downloads() == 2; }, 10s));
    REQUIRE(w.metric_has("paybridge_wechatpay_certificate_downloads_total{mchid=\"1900000001\",result=\"ok\"} 2"));
    CHECK(w.pay("CD-2", w.cert_b, kSerialB).status == 204);
    CHECK(status_of(*w.fx, "CD-2") == "PAID");
    CHECK(w.metrics().find("paybridge_wechatpay_downloaded_certificates{mchid=\"1900000001\"} 2") != std::string::npos);
    CHECK(w.fx->log().find("\"event\":\"wechatpay.certificates_downloaded\"") != std::string::npos);

    // Anyone can name an unknown serial: a second one within the minute downloads nothing more.
    REQUIRE(w.fx->create_bill("CD-3", 1000).status == 201);
    check_v3_fail(w.pay("CD-3", w.cert_c, kSerialC), 401);
    std::this_thread::sleep_for(2s);
    CHECK(w.downloads() == 2);

    // A reload builds new gateways from the file, which names no platform certificate: the
    // downloaded ones are kept (the API is down meanwhile, so they cannot have come again).
    w.api.set_handler([](const ReceivedRequest&) {
        ScriptedResponse r;
        r.status = 500;
        r.body = R"({"code":"SYSTEM_ERROR","message":"busy"})";
        return r;
    });
    w.reload(1);
    REQUIRE(w.fx->create_bill("CD-4", 1000).status == 201);
    CHECK(w.pay("CD-4", w.cert_b, kSerialB).status == 204);
    CHECK(status_of(*w.fx, "CD-4") == "PAID");

    // A reload that changes what the downloads were trusted by (here the API's URL) empties the
    // book: certificate B is refused until a download from the new URL brings it (which fails: 500).
    w.opts.wechat_merchant_extra = DownloadWorld::merchant_extra(w.api.url("/elsewhere"));
    w.fx->write_config(w.opts);
    w.reload(2);
    REQUIRE(w.fx->create_bill("CD-5", 1000).status == 201);
    check_v3_fail(w.pay("CD-5", w.cert_b, kSerialB), 401);
    CHECK(w.metrics().find("paybridge_wechatpay_downloaded_certificates{mchid=\"1900000001\"} 0") != std::string::npos);
    CHECK(status_of(*w.fx, "CD-5") == "PENDING");
    CHECK(w.fx->stop() == 0);
}

TEST_CASE("wechatpay certificates: a forged or undecryptable list is refused and changes nothing, 404 (public-key "
          "mode) is no failure")
{
    DownloadWorld w;
    {
        std::lock_guard lock(w.mu);
        w.answer_mode = "forged";
    }
    w.fx->start();
    REQUIRE(w.metric_has("paybridge_wechatpay_certificate_downloads_total{mchid=\"1900000001\",result=\"failed\"} 1"));
    CHECK(w.fx->log().find("bad_signature") != std::string::npos);
    REQUIRE(w.fx->create_bill("CF-1", 1000).status == 201);

    // While downloads fail, an unknown serial does not bring the next one forward (anyone can
    // send one): the backoff holds.
    check_v3_fail(w.pay("CF-1", w.cert_a, kSerialA), 401);
    std::this_thread::sleep_for(2s);
    CHECK(w.downloads() == 1);

    // A reload is a new chance: the next download is at once. Under another APIv3 key (the
    // certificates do not decrypt) it fails too, and the notification stays refused.
    {
        std::lock_guard lock(w.mu);
        w.answer_mode = "wrong_key";
    }
    w.reload(1);
    REQUIRE(w.metric_has("paybridge_wechatpay_certificate_downloads_total{mchid=\"1900000001\",result=\"failed\"} 2"));
    CHECK(w.downloads() == 2);
    CHECK(w.fx->log().find("decrypt failed") != std::string::npos);
    CHECK(w.fx->log().find("\"retry_in_s\":") != std::string::npos);
    CHECK(w.metrics().find("paybridge_wechatpay_downloaded_certificates{mchid=\"1900000001\"} 0") != std::string::npos);
    check_v3_fail(w.pay("CF-1", w.cert_a, kSerialA), 401);
    CHECK(status_of(*w.fx, "CF-1") == "PENDING");
    // The configured WeChat Pay public key works throughout.
    Wechat wx{*w.fx};
    CHECK(wx.post_v3(wx.pay(wx.tx("CF-1", 1000, "4200CF-1"))).status == 204);
    CHECK(status_of(*w.fx, "CF-1") == "PAID");
    CHECK(w.fx->stop() == 0);

    DownloadWorld public_key_mode;
    {
        std::lock_guard lock(public_key_mode.mu);
        public_key_mode.answer_mode = "404";
    }
    public_key_mode.fx->start();
    REQUIRE(public_key_mode.metric_has("paybridge_wechatpay_certificate_downloads_total{mchid=\"1900000001\",result=\"not_found\"} 1"));
    CHECK(public_key_mode.fx->log().find("wechatpay.certificates_none") != std::string::npos);
    CHECK(public_key_mode.fx->log().find("wechatpay.certificates_download_failed") == std::string::npos);
    CHECK(public_key_mode.fx->stop() == 0);
}

TEST_CASE("wechatpay certificates: a hanging API does not hold up the shutdown, and --check downloads nothing")
{
    DownloadWorld w;
    w.api.set_response_delay(60s);
    w.fx->start();
    REQUIRE(wait_until([&] { return w.downloads() == 1; }, 10s));
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(w.fx->stop() == 0);
    CHECK(std::chrono::steady_clock::now() - t0 < 15s);
    CHECK(w.fx->log().find("daemon.forced_stop") == std::string::npos);

    std::string out;
    const std::vector<std::string> check{DaemonFixture::binary("paybridged"), "--config", w.fx->config_path().string(),
                                         "--check"};
    CHECK_MESSAGE(run_command(check, out) == 0, out);
    CHECK(w.downloads() == 1);
}
