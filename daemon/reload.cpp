#include "daemon/reload.hpp"

#include "config/load.hpp"
#include "config/secrets.hpp"
#include "daemon/app.hpp"

namespace paybridge::daemon {

ReloadResult load_runtime(const std::string& path)
{
    ReloadResult r;
    config::SecretSource secrets;
    config::LoadReport report = config::load_config(path, secrets);
    r.problems = std::move(report.problems);
    if (!report.config || !r.problems.empty()) {
        if (r.problems.empty()) {
            r.problems.push_back("configuration could not be loaded");
        }
        return r;
    }
    auto cfg = std::make_shared<const config::Config>(std::move(*report.config));
    r.runtime = build_runtime(cfg, r.problems);
    return r;
}

ReloadResult reload_runtime(const config::Config& running)
{
    ReloadResult r = load_runtime(running.path);
    if (!r.runtime) {
        return r;
    }
    const config::Config& next = *r.runtime->config;
    if (next.listen.host != running.listen.host || next.listen.port != running.listen.port) {
        r.notes.push_back("listen changed: takes effect after a restart");
    }
    const config::RedisConfig& a = running.redis;
    const config::RedisConfig& b = next.redis;
    if (a.host != b.host || a.port != b.port || a.db != b.db || a.username != b.username ||
        a.password != b.password || a.key_prefix != b.key_prefix || a.shards != b.shards ||
        a.request_timeout != b.request_timeout || a.connect_timeout != b.connect_timeout ||
        a.wait_replicas != b.wait_replicas || a.wait_timeout != b.wait_timeout) {
        // Each worker's connection keeps the settings it started with (a rotated password too).
        r.notes.push_back("redis changed: takes effect after a restart");
    }
    const config::HttpLimits& la = running.limits;
    const config::HttpLimits& lb = next.limits;
    if (la.max_header_bytes != lb.max_header_bytes || la.max_body_bytes != lb.max_body_bytes ||
        la.read_timeout != lb.read_timeout || la.idle_timeout != lb.idle_timeout ||
        la.write_timeout != lb.write_timeout || la.max_connections != lb.max_connections) {
        r.notes.push_back("limits changed: takes effect after a restart (shutdown_grace_ms at once)");
    }
    if (next.workers != running.workers) {
        r.notes.push_back("workers changed: takes effect after a restart");
    }
    if (next.tls.has_value() != running.tls.has_value()) {
        r.notes.push_back("tls listener added or removed: takes effect after a restart");
    }
    return r;
}

}  // namespace paybridge::daemon
