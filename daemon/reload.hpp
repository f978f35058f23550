#pragma once

#include "config/config.hpp"
#include "webhooks/runtime.hpp"

#include <string>
#include <vector>

namespace paybridge::gateways {
struct ProviderBooks;
}

namespace paybridge::daemon {

/// Loads a configuration file and builds its Runtime (gateways, keys). Problems are reported
/// with their JSON pointers; the runtime is null when there is any.
struct ReloadResult {
    webhooks::RuntimePtr runtime;
    std::vector<std::string> problems;
    std::vector<std::string> notes;  ///< settings that changed but need a restart (listen, redis, workers)
    std::vector<std::string> warnings;  ///< the loader's warnings (config::LoadReport::warnings)
};

ReloadResult load_runtime(const std::string& path, gateways::ProviderBooks* books = nullptr);

/// Re-reads the file the running configuration came from (SIGHUP).
ReloadResult reload_runtime(const config::Config& running, gateways::ProviderBooks* books = nullptr);

}  // namespace paybridge::daemon
