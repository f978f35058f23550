#include "daemon/reload.hpp"

#include "config/load.hpp"
#include "config/secrets.hpp"
#include "daemon/app.hpp"

#include <algorithm>
#include <string_view>

namespace paybridge::daemon {

ReloadResult load_runtime(const std::string& path, gateways::ProviderBooks* books)
{
    ReloadResult r;
    config::SecretSource secrets;
    config::LoadReport report = config::load_config(path, secrets);
    r.problems = std::move(report.problems);
    r.warnings = std::move(report.warnings);
    if (!report.config || !r.problems.empty()) {
        if (r.problems.empty()) {
            r.problems.push_back("configuration could not be loaded");
        }
        if (report.partial) {
            // Every problem in one run: the keys and certificates of the accounts (and the TLS
            // listener) that have none of their own are loaded too, as a start would.
            const auto has_problem = [&](std::string_view pointer) {
                return std::any_of(r.problems.begin(), r.problems.end(), [&](const std::string& p) {
                    return p.starts_with(pointer) &&
                           (p.size() == pointer.size() || p[pointer.size()] == '/' || p[pointer.size()] == ':');
                });
            };
            config::Config& partial = *report.partial;
            std::erase_if(partial.alipay_apps, [&](const config::AlipayApp& a) { return has_problem(a.pointer); });
            std::erase_if(partial.wechat_merchants,
                          [&](const config::WechatMerchant& m) { return has_problem(m.pointer); });
            if (has_problem("/tls")) {
                partial.tls.reset();
            }
            auto checked = std::make_shared<const config::Config>(std::move(partial));
            (void)build_runtime(checked, r.problems);
        }
        return r;
    }
    auto cfg = std::make_shared<const config::Config>(std::move(*report.config));
    r.runtime = build_runtime(cfg, r.problems, books);
    return r;
}

ReloadResult reload_runtime(const config::Config& running, gateways::ProviderBooks* books)
{
    ReloadResult r = load_runtime(running.path, books);
    if (!r.runtime) {
        return r;
    }
    const config::Config& next = *r.runtime->config;
    if (next.listen.host != running.listen.host || next.listen.port != running.listen.port) {
        r.notes.push_back("listen changed: takes effect after a restart");
    }
    if (next.redis != running.redis) {
        // Each worker's connection keeps every setting it started with (a rotated password too).
        r.notes.push_back("redis changed: takes effect after a restart");
    }
    config::HttpLimits limits = next.limits;
    limits.shutdown_grace = running.limits.shutdown_grace;  // read at stop time: applies at once
    if (limits != running.limits) {
        r.notes.push_back("limits changed: takes effect after a restart (shutdown_grace_ms at once)");
    }
    if (next.workers != running.workers) {
        r.notes.push_back("workers changed: takes effect after a restart");
    }
    if (next.tls.has_value() != running.tls.has_value()) {
        r.notes.push_back("tls listener added or removed: takes effect after a restart");
    } else if (next.tls && (next.tls->routes != running.tls->routes || next.tls->listen != running.tls->listen)) {
        r.notes.push_back("tls listen or routes changed: takes effect after a restart");
    }
    return r;
}

}  // namespace paybridge::daemon
