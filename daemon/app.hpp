#pragma once

#include "config/config.hpp"
#include "webhooks/runtime.hpp"

#include <memory>
#include <string>
#include <vector>

namespace paybridge::daemon {

/// Builds the gateways (keys, certificates) of a configuration. Every problem is appended to
/// `problems`; the Runtime is null when there is any.
webhooks::RuntimePtr build_runtime(std::shared_ptr<const config::Config> cfg, std::vector<std::string>& problems);

/// The composition root: worker threads (one io_context each, share-nothing: own acceptor via
/// SO_REUSEPORT, own Redis connection), the CRM dispatcher, signals (SIGTERM/SIGINT stop,
/// SIGHUP reload), systemd notifications and the watchdog.
class App {
public:
    App(std::shared_ptr<const config::Config> cfg, webhooks::RuntimePtr runtime);
    ~App();

    /// Runs until SIGTERM/SIGINT (or stop()). Returns the process exit code.
    int run();

    class Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace paybridge::daemon
