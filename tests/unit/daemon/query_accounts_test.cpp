// The accounts active queries ask (gateways/query_accounts.hpp), built from a configuration: which
// apps and merchants become accounts, what their requests look like, and the problems --check
// reports for their keys.

#include "gateways/query_accounts.hpp"

#include "core/error.hpp"
#include "gateways/alipay/alipay_cert_download.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/certificate_book.hpp"
#include "tools/keygen/keygen.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

using namespace paybridge;

namespace {

constexpr std::int64_t kNow = 1'764'900'000;

/// An EC private key in PEM: a key both providers refuse to sign with.
std::string ec_private_pem()
{
    EVP_PKEY* key = EVP_EC_gen("P-256");
    REQUIRE(key != nullptr);
    BIO* bio = BIO_new(BIO_s_mem());
    REQUIRE(PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr) == 1);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string pem(data, static_cast<std::size_t>(n));
    BIO_free(bio);
    EVP_PKEY_free(key);
    return pem;
}

struct Keys {
    keygen::KeyPair alipay = keygen::generate_rsa();
    keygen::KeyPair app = keygen::generate_rsa();
    keygen::KeyPair wechat = keygen::generate_rsa();
    keygen::KeyPair merchant = keygen::generate_rsa();
    keygen::Certificate ca = keygen::make_ca({.common_name = "Test Root", .is_ca = true});
};

config::AlipayApp alipay_app(const Keys& k, std::string app_id, bool with_query_key)
{
    config::AlipayApp app;
    app.app_id = std::move(app_id);
    app.public_key_pem = k.alipay.public_pem;
    if (with_query_key) {
        app.app_private_key_pem = k.app.private_pem;
        app.gateway_url = "http://127.0.0.1:9001/gateway.do";
    }
    return app;
}

config::WechatMerchant merchant(const Keys& k, std::string mchid, bool with_query_key)
{
    config::WechatMerchant m;
    m.mchid = std::move(mchid);
    m.appid = "wx0000000000000001";
    m.apiv3_key = std::string(32, 'k');
    m.public_key_id = "PUB_KEY_ID_0000000000000000000000000000000001";
    m.public_key_pem = k.wechat.public_pem;
    if (with_query_key) {
        m.merchant_private_key_pem = k.merchant.private_pem;
        m.merchant_serial_no = "3775b6a45acd588826d15e583a95f5dd";
        m.api_url = "https://api.example.test/prefix/";
    }
    return m;
}

std::string header(const gateways::QueryRequest& r, std::string_view name)
{
    for (const auto& [k, v] : r.headers) {
        if (k == name) {
            return v;
        }
    }
    return {};
}

std::string dump(const std::vector<std::string>& lines)
{
    std::string out;
    for (const std::string& line : lines) {
        out += "  " + line + "\n";
    }
    return out;
}

}  // namespace

TEST_CASE("query accounts - only apps and merchants with query keys are asked, at their URLs")
{
    const Keys k;
    config::Config cfg;
    cfg.alipay_apps = {alipay_app(k, "2021000000000001", true), alipay_app(k, "2021000000000002", false)};
    cfg.wechat_merchants = {merchant(k, "1900000001", false), merchant(k, "1900000002", true)};
    std::vector<std::string> problems;
    Result<std::shared_ptr<const gateways::QueryAccounts>> loaded = gateways::load_query_accounts(cfg, problems);
    INFO(dump(problems));
    REQUIRE(loaded.has_value());
    const auto& accounts = (*loaded)->accounts;
    REQUIRE(accounts.size() == 2);

    const gateways::QueryAccount& app = *accounts[0];
    CHECK(app.provider() == "alipay");
    CHECK(app.account() == "2021000000000001");
    CHECK(app.url() == "http://127.0.0.1:9001/gateway.do");
    Result<gateways::QueryRequest> asked = app.request("B-1", kNow);
    REQUIRE(asked.has_value());
    CHECK(asked->method == "POST");
    CHECK(asked->target.rfind("/gateway.do?", 0) == 0);
    CHECK(asked->target.find("app_id=2021000000000001") != std::string::npos);
    CHECK(asked->body.find("B-1") != std::string::npos);

    const gateways::QueryAccount& mch = *accounts[1];
    CHECK(mch.provider() == "wechatpay");
    CHECK(mch.account() == "1900000002");
    Result<gateways::QueryRequest> get = mch.request("B-1", kNow);
    REQUIRE(get.has_value());
    CHECK(get->method == "GET");
    // The base URL's path goes first; its trailing '/' does not double.
    CHECK(get->target == "/prefix/v3/pay/transactions/out-trade-no/B-1?mchid=1900000002");
    const std::string authorization = header(*get, "Authorization");
    // The configured serial, upper-cased as WeChat Pay prints it.
    CHECK(authorization.find("serial_no=\"3775B6A45ACD588826D15E583A95F5DD\"") != std::string::npos);
    // A fresh nonce per request.
    Result<gateways::QueryRequest> again = mch.request("B-1", kNow);
    REQUIRE(again.has_value());
    CHECK(header(*again, "Authorization") != authorization);
}

TEST_CASE("query accounts - a configuration without query keys has no accounts and no problems")
{
    const Keys k;
    config::Config cfg;
    cfg.alipay_apps = {alipay_app(k, "2021000000000001", false)};
    cfg.wechat_merchants = {merchant(k, "1900000001", false)};
    std::vector<std::string> problems;
    Result<std::shared_ptr<const gateways::QueryAccounts>> loaded = gateways::load_query_accounts(cfg, problems);
    REQUIRE(loaded.has_value());
    CHECK((*loaded)->accounts.empty());
    CHECK(problems.empty());
}

TEST_CASE("query accounts - keys that cannot sign a query are problems naming their keys")
{
    const Keys k;
    config::Config cfg;
    config::AlipayApp garbage = alipay_app(k, "2021000000000001", true);
    garbage.pointer = "/alipay/apps/0";
    garbage.app_private_key_pem = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n";
    config::AlipayApp ec = alipay_app(k, "2021000000000002", true);
    ec.pointer = "/alipay/apps/1";
    ec.app_private_key_pem = ec_private_pem();
    // Certificate mode, with an app certificate whose key is not the app's private key.
    const keygen::Certificate alipay_cert = keygen::issue(k.ca, {.common_name = "Alipay"});
    const keygen::Certificate app_cert = keygen::issue(k.ca, {.common_name = "2021000000000003"});
    config::AlipayApp cert_mode;
    cert_mode.pointer = "/alipay/apps/2";
    cert_mode.app_id = "2021000000000003";
    cert_mode.public_cert_pem = alipay_cert.cert_pem;
    cert_mode.root_cert_pem = k.ca.cert_pem;
    cert_mode.app_private_key_pem = k.app.private_pem;
    cert_mode.app_public_cert_pem = app_cert.cert_pem;
    config::WechatMerchant bad_merchant = merchant(k, "1900000001", true);
    bad_merchant.pointer = "/wechatpay/merchants/0";
    bad_merchant.merchant_private_key_pem = k.merchant.public_pem;  // the public half by mistake
    cfg.alipay_apps = {garbage, ec, cert_mode};
    cfg.wechat_merchants = {bad_merchant};

    std::vector<std::string> problems;
    Result<std::shared_ptr<const gateways::QueryAccounts>> loaded = gateways::load_query_accounts(cfg, problems);
    CHECK_FALSE(loaded.has_value());
    std::sort(problems.begin(), problems.end());
    const std::vector<std::string> expected{
        "/alipay/apps/0/app_private_key: not a PEM private key (PKCS#8 or PKCS#1)",
        "/alipay/apps/1/app_private_key: not an RSA key (both providers sign with RSA)",
        "/alipay/apps/2/app_public_cert_file: its key is not the public half of app_private_key",
        "/wechatpay/merchants/0/merchant_private_key: not a PEM private key (PKCS#8 or PKCS#1)",
    };
    INFO(dump(problems));
    CHECK(problems == expected);

    // The same certificate-mode app with its own key: an account, which sends the app's SN.
    cfg.alipay_apps = {cert_mode};
    cfg.alipay_apps[0].app_private_key_pem = app_cert.key.private_pem;
    cfg.wechat_merchants.clear();
    problems.clear();
    loaded = gateways::load_query_accounts(cfg, problems);
    INFO(dump(problems));
    REQUIRE(loaded.has_value());
    REQUIRE((*loaded)->accounts.size() == 1);
    Result<gateways::QueryRequest> asked = (*loaded)->accounts[0]->request("B-2", kNow);
    REQUIRE(asked.has_value());
    CHECK(asked->target.find("app_cert_sn=") != std::string::npos);
    CHECK(asked->target.find("alipay_root_cert_sn=") != std::string::npos);
}

TEST_CASE("query accounts - provider URLs are https, or http to this machine only")
{
    const Keys k;
    config::Config cfg;
    cfg.alipay_apps = {alipay_app(k, "2021000000000001", true)};
    cfg.alipay_apps[0].pointer = "/alipay/apps/0";
    cfg.alipay_apps[0].gateway_url = "http://openapi.alipay.com/gateway.do";
    cfg.wechat_merchants = {merchant(k, "1900000001", true)};
    cfg.wechat_merchants[0].pointer = "/wechatpay/merchants/0";
    cfg.wechat_merchants[0].api_url = "https://api.mch.weixin.qq.com/?x=1";
    std::vector<std::string> problems;
    CHECK_FALSE(gateways::load_query_accounts(cfg, problems).has_value());
    std::sort(problems.begin(), problems.end());
    const std::vector<std::string> expected{
        "/alipay/apps/0/gateway_url: must be https:// (http:// only to 127.0.0.1, [::1] or localhost): answers carry "
        "buyer data and could be replayed or dropped on the way",
        "/wechatpay/merchants/0/api_url: must not have a query or fragment (it is the base the API paths follow)",
    };
    INFO(dump(problems));
    CHECK(problems == expected);

    for (const char* local : {"http://127.0.0.1:9001/gateway.do", "http://localhost/gateway.do", "http://[::1]:80/gateway.do",
                              "https://openapi.alipay.com/gateway.do"}) {
        CAPTURE(local);
        cfg.alipay_apps[0].gateway_url = local;
        cfg.wechat_merchants[0].api_url = "https://api.mch.weixin.qq.com";
        problems.clear();
        CHECK(gateways::load_query_accounts(cfg, problems).has_value());
        CHECK(problems.empty());
    }
}

TEST_CASE("query accounts - an Alipay app with download_certificates is a certificate source sharing its account's book")
{
    const Keys k;
    const keygen::Certificate alipay_cert = keygen::issue(k.ca, {.common_name = "Alipay"});
    const keygen::Certificate reissued = keygen::issue(k.ca, {.common_name = "Alipay"});
    const keygen::Certificate app_cert = keygen::issue(k.ca, {.common_name = "2021000000000003"});
    const auto sn_of = [](const std::string& pem) {
        auto certs = crypto::load_certificates(pem);
        REQUIRE(certs.has_value());
        return crypto::alipay_cert_sn(certs->front().get());
    };
    const std::string reissued_sn = sn_of(reissued.cert_pem);
    config::AlipayApp downloading;
    downloading.app_id = "2021000000000003";
    downloading.public_cert_pem = alipay_cert.cert_pem;
    downloading.root_cert_pem = k.ca.cert_pem;
    downloading.app_private_key_pem = app_cert.key.private_pem;
    downloading.app_public_cert_pem = app_cert.cert_pem;
    downloading.gateway_url = "http://127.0.0.1:9001/api/gateway.do?tenant=1";
    downloading.download_certificates = true;
    config::AlipayApp plain = downloading;
    plain.app_id = "2021000000000004";
    plain.download_certificates = false;
    config::Config cfg;
    cfg.alipay_apps = {downloading, plain};

    gateways::CertificateBooks wechat_books;
    gateways::CertificateBooks alipay_books;
    std::vector<std::pair<std::string, std::string>> asked;
    alipay_books.set_hook([&asked](const std::string& account, const std::string& serial) {
        asked.emplace_back(account, serial);
    });
    std::vector<std::string> problems;
    auto loaded = gateways::load_query_accounts(cfg, problems, &wechat_books, &alipay_books);
    INFO(dump(problems));
    REQUIRE(loaded.has_value());
    const gateways::QueryAccounts& accounts = **loaded;
    REQUIRE(accounts.accounts.size() == 2);
    CHECK(accounts.certificate_sources.empty());
    REQUIRE(accounts.alipay_certificate_sources.size() == 1);
    const gateways::AlipayCertificateSource& source = accounts.alipay_certificate_sources[0];
    CHECK(source.app.app_id == "2021000000000003");
    CHECK(source.url == "http://127.0.0.1:9001/api/gateway.do?tenant=1");
    CHECK(source.target == "/api/gateway.do?tenant=1");
    CHECK(source.signer.app_cert_sn == sn_of(app_cert.cert_pem));
    REQUIRE(source.app.downloaded);
    CHECK(source.app.downloaded == alipay_books.book("2021000000000003"));
    CHECK(alipay_books.all().size() == 1);  // the other app has none
    CHECK(wechat_books.all().empty());

    // The download request, as Alipay's gateway checks it.
    auto request = gateways::alipay::build_cert_download(source.app, source.signer, source.target, reissued_sn, kNow);
    REQUIRE(request.has_value());
    CHECK(request->target.rfind("/api/gateway.do?tenant=1&app_id=2021000000000003&method="
                                "alipay.open.app.alipaycert.download&", 0) == 0);
    auto app_public = crypto::load_public_key(app_cert.key.public_pem);
    REQUIRE(app_public.has_value());
    // (The gateway URL's own parameter is not one the simulated gateway knows: it is left out.)
    std::string target = request->target;
    target.erase(target.find("tenant=1&"), std::string_view("tenant=1&").size());
    std::string problem;
    auto sn = gateways::alipay::check_cert_download_request(
        target, request->body, app_public->get(),
        {.app_id = "2021000000000003", .app_cert_sn = source.signer.app_cert_sn,
         .alipay_root_cert_sn = source.app.alipay_root_cert_sn},
        &problem);
    REQUIRE_MESSAGE(sn.has_value(), problem);
    CHECK(*sn == reissued_sn);

    // The query account holds the same book: an answer signed with the re-issued certificate asks
    // for its download, and reads once the download has filled the book.
    const std::int64_t now = std::time(nullptr);
    auto reissued_key = crypto::load_private_key(reissued.key.private_pem);
    REQUIRE(reissued_key.has_value());
    gateways::alipay::AnswerSigner by_reissued;
    by_reissued.alipay_private_key = reissued_key->get();
    by_reissued.alipay_cert_sn = reissued_sn;
    gateways::alipay::QueriedTrade trade;
    trade.out_trade_no = "B-1";
    trade.amount_fen = 100;
    gateways::QueryResponse answer;
    answer.status = 200;
    answer.body = gateways::alipay::make_trade_query_answer(trade, by_reissued);
    const gateways::QueryAccount& account = *accounts.accounts[0];
    REQUIRE(account.account() == "2021000000000003");
    std::string detail;
    auto before = account.read("B-1", answer, now, detail);
    REQUIRE_FALSE(before.has_value());
    CHECK(before.error() == make_error_code(errc::provider_unavailable));
    CHECK(asked == std::vector<std::pair<std::string, std::string>>{{"2021000000000003", reissued_sn}});

    gateways::QueryResponse download;
    download.status = 200;
    download.body = gateways::alipay::make_cert_download_answer(reissued.cert_pem, by_reissued);
    auto fetched = gateways::alipay::read_cert_download(source.app, reissued_sn, download, now, &detail);
    REQUIRE_MESSAGE(fetched.has_value(), detail);
    source.app.downloaded->replace({*fetched});
    auto after = account.read("B-1", answer, now, detail);
    REQUIRE_MESSAGE(after.has_value(), detail);
    CHECK(after->state == gateways::QueryState::paid);
    CHECK(detail == "verified with the downloaded Alipay certificate " + reissued_sn);

    // Without registries (--check): the source is there, without a book.
    problems.clear();
    auto checked = gateways::load_query_accounts(cfg, problems);
    REQUIRE(checked.has_value());
    REQUIRE((*checked)->alipay_certificate_sources.size() == 1);
    CHECK_FALSE((*checked)->alipay_certificate_sources[0].app.downloaded);
}
