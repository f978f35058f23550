#include "config/detail/addresses.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstdint>
#include <optional>

namespace paybridge::config::detail {

namespace {

std::optional<std::uint16_t> parse_port(std::string_view text)
{
    if (text.empty() || text.size() > 5) {
        return std::nullopt;
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value < 1 || value > 65535) {
        return std::nullopt;
    }
    return static_cast<std::uint16_t>(value);
}

struct HostPort {
    std::string host;
    std::optional<std::uint16_t> port;
};

// "host", "host:port", "[v6]", "[v6]:port". Returns a reason on failure.
std::string split_host_port(std::string_view text, bool port_required, HostPort& out)
{
    std::string_view host;
    std::string_view rest;
    if (text.starts_with('[')) {
        const auto close = text.find(']');
        if (close == std::string_view::npos) {
            return "unterminated [IPv6 address]";
        }
        host = text.substr(1, close - 1);
        rest = text.substr(close + 1);
        if (!rest.empty() && !rest.starts_with(':')) {
            return "unexpected characters after the [IPv6 address]";
        }
    } else {
        const auto colon = text.rfind(':');
        host = colon == std::string_view::npos ? text : text.substr(0, colon);
        rest = colon == std::string_view::npos ? std::string_view{} : text.substr(colon);
        if (host.find(':') != std::string_view::npos) {
            return "an IPv6 address must be written in brackets, e.g. [::1]:8080";
        }
    }
    if (host.empty()) {
        return "the host is empty";
    }
    if (host.find_first_of(" \t/?#@") != std::string_view::npos) {
        return "the host \"" + std::string(host) + "\" contains invalid characters";
    }
    out.host = std::string(host);
    if (rest.empty()) {
        if (port_required) {
            return "the port is missing";
        }
        return {};
    }
    out.port = parse_port(rest.substr(1));
    if (!out.port) {
        return "the port must be a number from 1 to 65535";
    }
    return {};
}

}  // namespace

std::string parse_endpoint(std::string_view text, Endpoint& out)
{
    HostPort hp;
    std::string why = split_host_port(text, true, hp);
    if (why.empty()) {
        out.host = hp.host;
        out.port = *hp.port;
    }
    return why;
}

bool is_ip_literal(const std::string& host)
{
    unsigned char buf[sizeof(in6_addr)];
    if (inet_pton(AF_INET, host.c_str(), buf) == 1) {
        return true;
    }
    // A link-local IPv6 address may name its interface: fe80::1%eth0 (as the daemon binds it).
    const std::string address = host.substr(0, host.find('%'));
    if (address.size() + 1 == host.size()) {
        return false;  // an empty scope
    }
    return inet_pton(AF_INET6, address.c_str(), buf) == 1;
}

std::string parse_redis_url(std::string_view url, RedisConfig& out)
{
    constexpr std::string_view scheme = "redis://";
    if (!url.starts_with(scheme)) {
        return "must start with redis://";
    }
    std::string_view rest = url.substr(scheme.size());
    if (rest.find_first_of("?#") != std::string_view::npos) {
        return "query strings and fragments are not supported";
    }
    const auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    const std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    const auto at = authority.rfind('@');
    if (at != std::string_view::npos) {
        const std::string_view userinfo = authority.substr(0, at);
        if (userinfo.find(':') != std::string_view::npos) {
            return "a password must not be written in the URL; set \"password\" to a secret reference "
                   "(env:NAME, file:PATH or cred:NAME)";
        }
        if (userinfo.empty()) {
            return "the user name before @ is empty";
        }
        out.username = std::string(userinfo);
        authority = authority.substr(at + 1);
    }
    HostPort hp;
    if (std::string why = split_host_port(authority, false, hp); !why.empty()) {
        return why;
    }
    out.host = hp.host;
    out.port = hp.port.value_or(6379);
    out.db = 0;
    if (!path.empty()) {
        int db = 0;
        auto [end, ec] = std::from_chars(path.data(), path.data() + path.size(), db);
        if (ec != std::errc{} || end != path.data() + path.size() || db < 0 || path.size() > 6) {
            return "the database after / must be a number from 0 to 999999";
        }
        out.db = db;
    }
    return {};
}

std::string check_http_url(std::string_view url)
{
    std::string_view rest;
    if (url.starts_with("https://")) {
        rest = url.substr(8);
    } else if (url.starts_with("http://")) {
        rest = url.substr(7);
    } else {
        return "must start with http:// or https://";
    }
    if (rest.find('#') != std::string_view::npos) {
        return "must not contain a #fragment";
    }
    const std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
    if (authority.find('@') != std::string_view::npos) {
        return "must not contain credentials (user:password@)";
    }
    HostPort hp;
    return split_host_port(authority, false, hp);
}

}  // namespace paybridge::config::detail
