#include "tests/support/daemon_fixture.hpp"

#include "tests/support/redis_server.hpp"

#include <doctest/doctest.h>

#include <hiredis/hiredis.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <thread>

#ifndef PAYBRIDGE_BINARY_DIR
#error "PAYBRIDGE_BINARY_DIR must be defined by the build"
#endif

namespace paybridge::test {

std::string DaemonFixture::binary(const char* name)
{
    return std::string(PAYBRIDGE_BINARY_DIR) + "/" + name;
}

DaemonFixture::DaemonFixture(DaemonOptions options) : options_(std::move(options))
{
    redis_ = std::make_unique<RedisTestServer>();
    port_ = free_port();

    alipay_keys = keygen::generate_rsa();
    alipay_root = keygen::make_ca({.common_name = "Ant Financial Certification Authority Class 1 test",
                                   .organization = "Ant Financial test",
                                   .organizational_unit = "Certification Authority test"});
    alipay_cert = keygen::issue(alipay_root, {.common_name = "alipay public key test",
                                              .organization = "Ant Financial test"});
    wechat_public_keys = keygen::generate_rsa();
    wechat_platform = keygen::issue(alipay_root, {.common_name = "Tenpay.com Root CA test",
                                                  .organization = "Tenpay.com",
                                                  .serial_hex = "05157F09EFDC096DE15EBE81A47057A7232F1B8E1"});
    apiv3_key = keygen::random_token(32);
    apiv2_key = keygen::random_token(32);

    dir_.write("keys/alipay_public.pem", alipay_keys.public_pem);
    dir_.write("keys/alipay_root.crt", alipay_root.cert_pem);
    dir_.write("keys/alipay_public.crt", alipay_cert.cert_pem);
    dir_.write("keys/wechatpay_public.pem", wechat_public_keys.public_pem);
    dir_.write("keys/wechatpay_platform.pem", wechat_platform.cert_pem);
    dir_.write("secrets/api_token", kApiToken);
    dir_.write("secrets/apiv3_key", apiv3_key);
    dir_.write("secrets/apiv2_key", apiv2_key);
    for (const char* secret : {"secrets/api_token", "secrets/apiv3_key", "secrets/apiv2_key"}) {
        // As an operator should (and `paybridge keys init` does): a world-readable one is warned about.
        std::filesystem::permissions(dir_ / secret,
                                     std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    }
    write_config(options_);
    if (options_.start) {
        start();
    }
}

DaemonFixture::~DaemonFixture()
{
    if (process_) {
        const int code = process_->stop(SIGTERM, std::chrono::seconds(15));
        // A daemon that does not shut down cleanly (a crash on the way out, a sanitizer's leak
        // report, a hang) fails the test that ran it.
        CHECK_MESSAGE(code == 0, "paybridged exited with " << code << "; its log:\n" << process_->log());
    }
}

void DaemonFixture::write_config(const DaemonOptions& options)
{
    options_ = options;
    const std::string limits = options.limits_json.empty()
                                   ? R"({"read_timeout_ms": 2000, "idle_timeout_ms": 5000, "shutdown_grace_ms": 5000})"
                                   : options.limits_json;
    std::string cfg = "{\n";
    cfg += "  \"listen\": \"127.0.0.1:" + std::to_string(port_) + "\",\n";
    cfg += "  \"workers\": " + std::to_string(options.workers) + ",\n";
    cfg += "  \"limits\": " + limits + ",\n";
    // request_timeout as the example configuration's: 1000 ms could pass on a CI machine running two
    // tests' daemons and Redis servers on two cores, turning an answer into a 503.
    cfg += "  \"redis\": {\"url\": \"redis://127.0.0.1:" + std::to_string(redis_->port()) +
           "/0\", \"request_timeout_ms\": 2000, \"connect_timeout_ms\": 500" + options.redis_extra + "},\n";
    cfg += "  \"api_tokens\": [{\"name\": \"crm\", \"token\": \"file:secrets/api_token\"}],\n";
    cfg += "  \"alipay\": {\"apps\": [\n";
    cfg += "    {\"app_id\": \"" + std::string(kAlipayAppId) + "\", \"seller_id\": \"" + kSellerId +
           "\", \"alipay_public_key_file\": \"keys/alipay_public.pem\"" + options.alipay_app_extra + "},\n";
    cfg += "    {\"app_id\": \"" + std::string(kAlipayCertAppId) + "\", \"seller_id\": \"" + kSellerId +
           "\", \"alipay_public_cert_file\": \"keys/alipay_public.crt\", \"alipay_root_cert_file\": "
           "\"keys/alipay_root.crt\"" +
           options.alipay_cert_app_extra + "}\n  ]},\n";
    cfg += "  \"wechatpay\": {\"merchants\": [{\"mchid\": \"" + std::string(kMchId) + "\", \"appid\": \"" + kAppId +
           "\", \"apiv3_key\": \"file:secrets/apiv3_key\", \"public_key_id\": \"" + kPublicKeyId +
           "\", \"public_key_file\": \"keys/wechatpay_public.pem\", \"platform_certificates\": "
           "[\"keys/wechatpay_platform.pem\"], \"apiv2_key\": \"file:secrets/apiv2_key\"" +
           options.wechat_merchant_extra + "}]},\n";
    if (!options.tls_json.empty()) {
        cfg += "  \"tls\": " + options.tls_json + ",\n";
    }
    if (!options.extra_config.empty()) {
        cfg += "  " + options.extra_config + ",\n";
    }
    cfg += "  \"log\": {\"level\": \"" + options.log_level + "\"}\n}\n";
    dir_.write("paybridge.json", cfg);
}

void DaemonFixture::start(bool wait_ready)
{
    const bool first = !process_;
    for (int attempt = 0;; ++attempt) {
        if (first) {
            // The port is taken as late as possible (the key material above takes seconds under
            // a sanitizer, in which another test could bind the one picked then); a restart keeps it.
            port_ = free_port();
            write_config(options_);
        }
        process_ = std::make_unique<Process>(
            std::vector<std::string>{binary("paybridged"), "--config", config_path().string()}, dir_ / "daemon.log",
            options_.env);
        // Ready means this daemon answers: it said it started (so it holds the port: it listens
        // before it says so), and the port answers. A daemon that exits is not waited for.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        bool ready = false;
        while (!ready && std::chrono::steady_clock::now() < deadline && process_->running()) {
            ready = process_->log().find("daemon.started") != std::string::npos &&
                    http_request(port_, "GET", wait_ready ? "/readyz" : "/healthz").status == 200;
            if (!ready) {
                std::this_thread::sleep_for(std::chrono::milliseconds(25));
            }
        }
        if (ready && process_->running()) {
            return;
        }
        const std::string log = process_->log();
        if (first && attempt < 5 && !process_->running() && log.find("daemon.listen_failed") != std::string::npos &&
            log.find("in use") != std::string::npos) {
            continue;  // another test took the port in the meantime: another one
        }
        throw std::runtime_error(std::string(process_->running() ? "paybridged did not become ready"
                                                                 : "paybridged exited before it was ready") +
                                 "; log:\n" + log);
    }
}

int DaemonFixture::stop()
{
    const int code = process_ ? process_->stop(SIGTERM, std::chrono::seconds(20)) : -1;
    if (code != 0 && process_) {
        std::fprintf(stderr, "paybridged exited with %d; its log:\n%s\n", code, process_->log().c_str());
    }
    return code;
}

HttpResult DaemonFixture::api(const std::string& method, const std::string& target, const std::string& body)
{
    Headers headers{{"Authorization", std::string("Bearer ") + kApiToken}};
    if (!body.empty()) {
        headers.emplace_back("Content-Type", "application/json");
    }
    return http_request(port_, method, target, body, headers);
}

HttpResult DaemonFixture::create_bill(const std::string& id, std::int64_t amount_fen, const std::string& customer)
{
    const std::string body = "{\"id\":\"" + id + "\",\"amount_fen\":" + std::to_string(amount_fen) +
                             ",\"currency\":\"CNY\",\"customer_id\":\"" + customer +
                             "\",\"description\":\"test bill\"}";
    return api("POST", "/v1/bills", body);
}

HttpResult DaemonFixture::post_alipay(const std::string& body, const std::string& charset)
{
    return http_request(port_, "POST", "/notify/alipay", body,
                        {{"Content-Type", "application/x-www-form-urlencoded; charset=" + charset}});
}

namespace {

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

/// One command on a fresh connection to the test Redis; throws when Redis cannot be reached or
/// answers with an error, so that a helper's result is never a silent stand-in value.
ReplyPtr redis_command(std::uint16_t port, const std::vector<std::string>& argv)
{
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c == nullptr || c->err) {
        if (c) {
            redisFree(c);
        }
        throw std::runtime_error("cannot connect to the test redis");
    }
    std::vector<const char*> args;
    std::vector<size_t> lens;
    for (const auto& a : argv) {
        args.push_back(a.data());
        lens.push_back(a.size());
    }
    ReplyPtr reply(static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data())));
    redisFree(c);
    if (!reply) {
        throw std::runtime_error("the test redis did not answer " + argv.front());
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        throw std::runtime_error("the test redis answered " + argv.front() + " with " +
                                 std::string(reply->str, reply->len));
    }
    return reply;
}

}  // namespace

long long DaemonFixture::redis_integer(const std::vector<std::string>& argv)
{
    const ReplyPtr reply = redis_command(redis_->port(), argv);
    if (reply->type != REDIS_REPLY_INTEGER) {
        throw std::runtime_error("the test redis did not answer " + argv.front() + " with an integer");
    }
    return reply->integer;
}

void DaemonFixture::redis_run(const std::vector<std::string>& argv) { redis_command(redis_->port(), argv); }

long long DaemonFixture::outbox_length()
{
    // Every outbox stream there is, whatever the configured prefix and number of shards.
    long long total = 0;
    std::string cursor = "0";
    do {
        const ReplyPtr page = redis_command(redis_->port(), {"SCAN", cursor, "MATCH", "*:outbox", "COUNT", "1000",
                                                             "TYPE", "stream"});
        if (page->type != REDIS_REPLY_ARRAY || page->elements != 2) {
            throw std::runtime_error("unexpected SCAN reply from the test redis");
        }
        cursor.assign(page->element[0]->str, page->element[0]->len);
        const redisReply* keys = page->element[1];
        for (std::size_t i = 0; i < keys->elements; ++i) {
            total += redis_integer({"XLEN", std::string(keys->element[i]->str, keys->element[i]->len)});
        }
    } while (cursor != "0");
    return total;
}

}  // namespace paybridge::test
