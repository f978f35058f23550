// paybridged: argv → configuration → App → exit code. The only file outside a library.
#include "core/log.hpp"
#include "daemon/app.hpp"
#include "daemon/reload.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

namespace {

constexpr int kExitConfig = 78;  // EX_CONFIG

void usage(std::FILE* out)
{
    std::fputs(
        "usage: paybridged --config FILE [--check]\n"
        "\n"
        "  --config FILE   the JSON configuration (see config/README.md)\n"
        "  --check         load the configuration and every key and certificate, report every\n"
        "                  problem, and exit: 0 when valid, 78 otherwise\n"
        "  --version       print the version\n"
        "\n"
        "exit codes: 0 clean shutdown (SIGTERM/SIGINT), 78 configuration, key or argument error, 1 other fatal error\n"
        "signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the configuration and keys\n",
        out);
}

}  // namespace

int main(int argc, char** argv)
{
    std::string config_path;
    bool check = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--config" && i + 1 < argc) {
            config_path = argv[++i];
        } else if (arg.starts_with("--config=")) {
            config_path = std::string(arg.substr(9));
        } else if (arg == "--check" || arg == "--check-config") {
            check = true;
        } else if (arg == "--version") {
            std::printf("paybridged %s\n", PAYBRIDGE_VERSION);
            return 0;
        } else if (arg == "--help" || arg == "-h") {
            usage(stdout);
            return 0;
        } else {
            // A mistake in how the service is started is a configuration error (API.md's exit codes
            // are 0, 78 and 1), and under systemd 78 stops a restart loop (RestartPreventExitStatus).
            std::fprintf(stderr, "paybridged: unknown argument '%s'\n\n", argv[i]);
            usage(stderr);
            return kExitConfig;
        }
    }
    if (config_path.empty()) {
        std::fputs("paybridged: --config FILE is required\n\n", stderr);
        usage(stderr);
        return kExitConfig;
    }
    auto books = std::make_shared<paybridge::gateways::ProviderBooks>();
    paybridge::daemon::ReloadResult loaded;
    try {
        // Only a daemon that runs downloads platform certificates: --check builds without books.
        loaded = paybridge::daemon::load_runtime(config_path, check ? nullptr : books.get());
    } catch (const std::exception& e) {
        loaded.problems.push_back(std::string("unexpected error while loading: ") + e.what());
    }
    for (const auto& w : loaded.warnings) {
        if (check) {
            std::fprintf(stderr, "paybridged: %s: warning: %s\n", config_path.c_str(), w.c_str());
        } else {
            paybridge::log::warning("config.warning", {{"warning", w}});
        }
    }
    if (!loaded.runtime) {
        std::fprintf(stderr, "paybridged: %s: %zu configuration problem(s)\n", config_path.c_str(),
                     loaded.problems.size());
        for (const auto& p : loaded.problems) {
            std::fprintf(stderr, "  - %s\n", p.c_str());
        }
        return kExitConfig;
    }
    if (check) {
        std::printf("paybridged: %s: configuration and keys OK\n", config_path.c_str());
        return 0;
    }
    try {
        paybridge::daemon::App app(loaded.runtime->config, loaded.runtime, books);
        return app.run();
    } catch (const std::exception& e) {
        paybridge::log::error("daemon.fatal", {{"what", e.what()}});
        return 1;
    }
}
