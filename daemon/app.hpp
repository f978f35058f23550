#pragma once

#include "config/config.hpp"
#include "webhooks/runtime.hpp"

#include <memory>
#include <string>
#include <vector>

namespace paybridge::gateways {
struct ProviderBooks;
}

namespace paybridge::daemon {

/// Builds the gateways (keys, certificates) of a configuration. Every problem is appended to
/// `problems`; the Runtime is null when there is any. `books`: where the merchants with
/// download_certificates keep what is downloaded (the process's; null for --check).
webhooks::RuntimePtr build_runtime(std::shared_ptr<const config::Config> cfg, std::vector<std::string>& problems,
                                   gateways::ProviderBooks* books = nullptr);

/// The composition root: worker threads (one io_context each, share-nothing: own acceptor via
/// SO_REUSEPORT, own Redis connection), the CRM dispatcher, signals (SIGTERM/SIGINT stop,
/// SIGHUP reload), systemd notifications and the watchdog.
class App {
public:
    /// `books`: the ones `runtime` was built with (reloads build with them too).
    App(std::shared_ptr<const config::Config> cfg, webhooks::RuntimePtr runtime,
        std::shared_ptr<gateways::ProviderBooks> books);
    ~App();

    /// Runs until SIGTERM/SIGINT (or stop()). Returns the process exit code.
    int run();

    class Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace paybridge::daemon
