#pragma once

// A fake CRM for tests: an HTTP/1.1 (or HTTPS) server on 127.0.0.1 that records every request,
// checks its Standard Webhooks signature against each configured secret (with its own, independent
// implementation of the check, so a symmetric bug in crm/webhook_signer cannot hide), and answers with
// scripted statuses. It runs on its own thread and io_context; every member function is thread-safe.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::test {

struct ReceivedRequest {
    std::uint64_t connection{0};   ///< which TCP connection carried it (1, 2, ...)
    std::string method;
    std::string target;
    std::string content_type;
    std::string webhook_id;
    std::string webhook_timestamp;
    std::string webhook_signature;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  ///< every request header, in order
    std::vector<bool> verified_by;  ///< per configured secret, in order: a v1 entry matched it
    bool signature_ok{false};       ///< verified by at least one secret, timestamp within 300 s
    unsigned status{0};             ///< the status the receiver chose to answer
    bool answered{false};           ///< the response was written
    std::chrono::steady_clock::time_point at{};
};

/// An answer a handler makes up (a fake provider API): status, headers, body.
struct ScriptedResponse {
    unsigned status{200};
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::string content_type{"application/json"};
};

/// Called on the receiver's thread for every request once set, instead of the scripted statuses.
using RequestHandler = std::function<ScriptedResponse(const ReceivedRequest&)>;

struct HttpReceiverOptions {
    std::vector<std::string> secrets;  ///< "whsec_..." secrets every request is checked against
    std::string tls_cert_pem;          ///< set both for HTTPS (certificate chain, leaf first)
    std::string tls_key_pem;
    unsigned default_status{200};
};

class HttpReceiver {
public:
    explicit HttpReceiver(HttpReceiverOptions options);
    ~HttpReceiver();
    HttpReceiver(const HttpReceiver&) = delete;
    HttpReceiver& operator=(const HttpReceiver&) = delete;

    std::uint16_t port() const;
    /// "http://127.0.0.1:<port><path>" (https when TLS is on). `host` lets a test address the same
    /// listener by another name (e.g. "localhost").
    std::string url(std::string_view path = "/events", std::string_view host = "127.0.0.1") const;

    /// The next requests are answered with these statuses, in order; then default_status.
    void push_statuses(std::vector<unsigned> statuses);
    void set_default_status(unsigned status);
    /// Sent as Retry-After with 429 and 503 answers ("" for none).
    void set_retry_after(std::string value);
    /// Every response body (default "{}").
    void set_response_body(std::string body);
    /// Every request is answered by `handler` from now on (status, headers, body); the
    /// statuses, body and Retry-After set above no longer apply.
    void set_handler(RequestHandler handler);
    /// Hold every response this long after the request was read.
    void set_response_delay(std::chrono::milliseconds delay);

    /// Closes the listener and every open connection: the receiver is "down" (connection refused).
    void stop();
    /// Listens again on the same port (a free_port() one, outside the ephemeral range), retrying
    /// for up to 5 s while something else holds it. False if it could not: REQUIRE it.
    [[nodiscard]] bool start();

    std::vector<ReceivedRequest> requests() const;
    std::size_t count() const;
    /// Ids of the events answered with a 2xx.
    std::set<std::string> acknowledged_ids() const;
    /// Blocks until `pred(requests)` holds or the timeout passes; returns the last pred value.
    bool wait_for(const std::function<bool(const std::vector<ReceivedRequest>&)>& pred,
                  std::chrono::milliseconds timeout) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace paybridge::test
