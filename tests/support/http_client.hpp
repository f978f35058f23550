#pragma once

// A blocking HTTP/1.1 client for tests: one keep-alive connection to 127.0.0.1:port.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace paybridge::test {

struct HttpResult {
    int status{0};               ///< 0 when the connection failed or closed without an answer
    std::string body;
    std::map<std::string, std::string> headers;  ///< lower-case names
    std::string error;           ///< transport error, if any
    std::string header(const std::string& lower_name) const
    {
        auto it = headers.find(lower_name);
        return it == headers.end() ? std::string() : it->second;
    }
};

using Headers = std::vector<std::pair<std::string, std::string>>;

class HttpClient {
public:
    explicit HttpClient(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10));
    ~HttpClient();
    HttpClient(const HttpClient&) = delete;
    HttpClient& operator=(const HttpClient&) = delete;

    HttpResult request(const std::string& method, const std::string& target, const std::string& body = {},
                       const Headers& headers = {});
    HttpResult get(const std::string& target, const Headers& headers = {}) { return request("GET", target, {}, headers); }
    HttpResult post(const std::string& target, const std::string& body, const Headers& headers = {})
    {
        return request("POST", target, body, headers);
    }

    /// TCP connections opened so far: a request retried on a new connection after the server
    /// closed the previous one makes it grow (a keep-alive test checks it stays at 1).
    std::size_t connections() const noexcept;

    /// Writes raw bytes on the connection and reads whatever comes back until the peer closes
    /// or `wait` passes (for malformed and slow-client tests).
    std::string raw(const std::string& bytes, std::chrono::milliseconds wait);

    /// Connects, sends `bytes`, then waits: returns how long until the server closed the connection.
    static std::chrono::milliseconds time_until_closed(std::uint16_t port, const std::string& bytes,
                                                       std::chrono::milliseconds max_wait);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// Convenience: one request on a fresh connection.
HttpResult http_request(std::uint16_t port, const std::string& method, const std::string& target,
                        const std::string& body = {}, const Headers& headers = {});

}  // namespace paybridge::test
