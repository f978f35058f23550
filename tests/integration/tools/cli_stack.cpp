#include "tests/integration/tools/cli_stack.hpp"

#include <doctest/doctest.h>

#include <signal.h>

#include <sstream>
#include <thread>

#ifndef PAYBRIDGE_BINARY_DIR
#error "PAYBRIDGE_BINARY_DIR must be defined by the build"
#endif

namespace paybridge::test::cli {

std::string binary(const char* name) { return std::string(PAYBRIDGE_BINARY_DIR) + "/" + name; }

Run paybridge_cli(const std::vector<std::string>& args, const std::map<std::string, std::string>& env)
{
    std::vector<std::string> argv{binary("paybridge")};
    argv.insert(argv.end(), args.begin(), args.end());
    Run r;
    r.code = run_command(argv, r.output, std::chrono::seconds(60), env);
    return r;
}

Stack::Stack(std::vector<std::string> listen_args)
{
    daemon_port_ = free_port();
    listen_port_ = free_port();
    while (listen_port_ == daemon_port_) {
        listen_port_ = free_port();
    }
    const Run init = paybridge_cli(
        {"keys", "init", keys().string(), "--config", config().string(), "--listen",
         "127.0.0.1:" + std::to_string(daemon_port_), "--redis-port", std::to_string(redis_.port()),
         "--crm-url", "http://127.0.0.1:" + std::to_string(listen_port_) + "/paybridge/events"});
    REQUIRE_MESSAGE(init.code == 0, init.output);

    std::vector<std::string> listen{binary("paybridge"), "listen", "--json", "--config", config().string()};
    listen.insert(listen.end(), listen_args.begin(), listen_args.end());
    listen_ = std::make_unique<Process>(listen, tmp_ / "listen.log");

    daemon_ = std::make_unique<Process>(
        std::vector<std::string>{binary("paybridged"), "--config", config().string()}, tmp_ / "daemon.log");
    REQUIRE_MESSAGE(wait_for_http(daemon_port_, "/readyz", 200, std::chrono::seconds(20)), daemon_->log());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (listen_->log().find("listening on") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    REQUIRE_MESSAGE(listen_->log().find("listening on") != std::string::npos, listen_->log());
}

Stack::~Stack()
{
    if (daemon_) {
        const int code = daemon_->stop(SIGTERM);
        CHECK_MESSAGE(code == 0, "paybridged exited with " << code << "; its log:\n" << daemon_->log());
    }
    if (listen_) {
        const int code = listen_->stop(SIGTERM);
        CHECK_MESSAGE(code == 0, "paybridge listen exited with " << code << "; its output:\n" << listen_->log());
    }
}

Run Stack::run(std::vector<std::string> args)
{
    args.push_back("--config");
    args.push_back(config().string());
    return paybridge_cli(args);
}

std::vector<Received> Stack::received() const
{
    std::vector<Received> out;
    std::istringstream lines(listen_->log());
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty() || line.front() != '{') {
            continue;
        }
        rapidjson::Document d;
        d.Parse(line.c_str());
        if (d.HasParseError() || !d.IsObject()) {
            continue;  // a line still being written
        }
        Received r;
        r.webhook_id = d["webhook_id"].GetString();
        r.verified = d["verified"].GetBool();
        r.delivery = d["delivery"].GetInt();
        r.answered = d["answered"].GetInt();
        if (d["event"].IsObject()) {
            const auto& ev = d["event"];
            r.type = ev["type"].GetString();
            r.bill_id = ev["bill_id"].GetString();
            r.sequence = ev["sequence"].GetInt64();
            if (ev.HasMember("bill") && ev["bill"].IsObject()) {
                r.bill_status = ev["bill"]["status"].GetString();
            }
            if (ev.HasMember("data") && ev["data"].IsObject()) {
                const auto& data = ev["data"];
                if (data.HasMember("kind") && data["kind"].IsString()) {
                    r.data_kind = data["kind"].GetString();
                }
                if (data.HasMember("anomaly") && data["anomaly"].IsString()) {
                    r.anomaly = data["anomaly"].GetString();
                }
            }
        }
        out.push_back(std::move(r));
    }
    return out;
}

bool Stack::wait_received(const std::function<bool(const std::vector<Received>&)>& pred,
                          std::chrono::milliseconds limit) const
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        const bool ok = pred(received());
        if (ok || std::chrono::steady_clock::now() >= deadline) {
            return ok;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

std::vector<Received> Stack::events_for(const std::string& bill) const
{
    std::vector<Received> out;
    for (auto& r : received()) {
        if (r.verified && r.bill_id == bill && r.delivery == 1) {
            out.push_back(r);
        }
    }
    return out;
}

rapidjson::Document Stack::bill(const std::string& id)
{
    const Run r = run({"bills", "get", id, "--json"});
    REQUIRE_MESSAGE(r.code == 0, r.output);
    rapidjson::Document d;
    d.Parse(r.output.c_str());
    REQUIRE_MESSAGE(!d.HasParseError(), r.output);
    return d;
}

}  // namespace paybridge::test::cli
