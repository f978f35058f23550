#pragma once

// The whole developer loop of docs/cli.md, for end-to-end tests of the `paybridge` binary:
//   paybridge keys init  → a real redis-server → paybridged with that configuration →
//   paybridge listen --json (the CRM stand-in) → paybridge trigger / bills / events / anomalies.
// Every process is the real binary from the build root, on free loopback ports.

#include "tests/support/process.hpp"
#include "tests/support/redis_server.hpp"

#include <rapidjson/document.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace paybridge::test::cli {

/// Path of a binary in the build root (paybridge, paybridged).
std::string binary(const char* name);

/// Result of one `paybridge ...` run: exit code and stdout+stderr.
struct Run {
    int code{-1};
    std::string output;
};

/// Runs the real `paybridge` binary with these arguments.
Run paybridge_cli(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {});

/// One request the CRM stand-in logged with --json.
struct Received {
    std::string webhook_id;
    bool verified{false};
    int delivery{0};
    int answered{0};
    std::string type;     ///< event.type
    std::string bill_id;  ///< event.bill_id
    std::string bill_status;
    std::int64_t sequence{-1};
    std::string data_kind;  ///< event.data.kind
    std::string anomaly;    ///< event.data.anomaly
};

class Stack {
public:
    /// keys init + redis + paybridged (ready) + listen (--json, with the configuration's secret).
    /// `listen_args` are added to the listen command line (e.g. {"--status", "500"}).
    explicit Stack(std::vector<std::string> listen_args = {});
    ~Stack();

    const std::filesystem::path& dir() const { return tmp_.path(); }
    std::filesystem::path config() const { return tmp_ / "paybridge.dev.json"; }
    std::filesystem::path keys() const { return tmp_ / "keys"; }
    std::uint16_t daemon_port() const { return daemon_port_; }
    std::uint16_t listen_port() const { return listen_port_; }

    /// `paybridge <args...> --config <config>`.
    Run run(std::vector<std::string> args);

    /// Everything the stand-in logged so far (JSON lines only).
    std::vector<Received> received() const;
    /// Waits until `pred(received())` holds (or the limit passes); returns the last value of pred.
    bool wait_received(const std::function<bool(const std::vector<Received>&)>& pred,
                       std::chrono::milliseconds limit = std::chrono::seconds(30)) const;
    /// Verified events for `bill`, in arrival order, first deliveries only.
    std::vector<Received> events_for(const std::string& bill) const;

    /// `paybridge bills get ID --json` parsed (REQUIREs success).
    rapidjson::Document bill(const std::string& id);

    std::string daemon_log() const { return daemon_ ? daemon_->log() : std::string(); }
    std::string listen_log() const { return listen_ ? listen_->log() : std::string(); }
    /// Both logs, for failure messages.
    std::string logs() const { return "--- listen:\n" + listen_log() + "--- paybridged:\n" + daemon_log(); }

private:
    TempDir tmp_;
    RedisTestServer redis_;
    std::uint16_t daemon_port_{0};
    std::uint16_t listen_port_{0};
    std::unique_ptr<Process> daemon_;
    std::unique_ptr<Process> listen_;
};

}  // namespace paybridge::test::cli
