#pragma once

// Syntax of the network addresses in the configuration (config-internal). Each function returns ""
// on success, or the reason, worded to follow "<pointer>: ".

#include "config/config.hpp"

#include <string>
#include <string_view>

namespace paybridge::config::detail {

/// "host:port" or "[IPv6]:port"; port 1..65535. Sets `out` only on success.
std::string parse_endpoint(std::string_view text, Endpoint& out);

/// True for an IPv4 address in dotted-quad form or an IPv6 address (without brackets).
bool is_ip_literal(const std::string& host);

/// "redis://[user@]host[:port][/db]" (port 6379, db 0 by default) into out.host/port/db/username.
/// A password in the URL is refused: it would be a secret written inline in the file.
std::string parse_redis_url(std::string_view url, RedisConfig& out);

/// "http(s)://host[:port][/path][?query]": no credentials, no fragment, port 1..65535.
std::string check_http_url(std::string_view url);

}  // namespace paybridge::config::detail
