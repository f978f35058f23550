#pragma once

// Shared pieces of the CRM integration tests: a real redis-server, a connection for test setup,
// outbox entries written the way the bill script writes them, and a dispatcher run on the
// test's io_context.

#include "config/config.hpp"
#include "core/log.hpp"
#include "core/time.hpp"
#include "crm/delivery_admin.hpp"
#include "crm/dispatcher.hpp"
#include "gateways/crypto/crypto.hpp"
#include "tools/keygen/keygen.hpp"
#include "store/keys.hpp"
#include "store/redis_connection.hpp"
#include "tests/support/http_receiver.hpp"
#include "tests/support/log_capture.hpp"
#include "tests/support/redis_server.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace paybridge::test {

using namespace std::chrono_literals;

inline constexpr int kShards = 4;
inline const std::string kPrefix = "t:";

/// Writes `content` to a fresh file under the system temp directory; returns its path.
inline std::string write_temp_file(const std::string& name, const std::string& content)
{
    const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                      ("paybridge-crm-" + crypto::hex_lower(crypto::random_bytes(6)));
    std::filesystem::create_directories(dir);
    const std::filesystem::path path = dir / name;
    std::ofstream(path) << content;
    return path.string();
}

inline std::string new_secret()
{
    return "whsec_" + crypto::base64_encode(crypto::random_bytes(32));
}

/// redis-server + an io_context + a ready connection for setup and DeliveryAdmin.
struct RedisEnv {
    RedisTestServer server;
    config::RedisConfig cfg;
    boost::asio::io_context ioc;
    std::unique_ptr<store::RedisConnection> conn;
    store::Keys keys{kPrefix, kShards};

    RedisEnv()
    {
        cfg.host = "127.0.0.1";
        cfg.port = server.port();
        cfg.key_prefix = kPrefix;
        cfg.shards = kShards;
        conn = std::make_unique<store::RedisConnection>(ioc.get_executor(), cfg);
        conn->start();
        REQUIRE(run_until(ioc, [this] { return conn->ready(); }, 5s));
    }

    ~RedisEnv()
    {
        conn->stop();
        run_for(ioc, 20ms);
    }

    store::Reply exec(std::vector<std::string> argv)
    {
        Result<store::Reply> r = run_awaitable(ioc, conn->exec(std::move(argv)));
        REQUIRE(r.has_value());
        REQUIRE_FALSE(r->is_error());
        return std::move(*r);
    }

    /// Appends an event to the bill's shard stream exactly as store/bill.lua does; returns its id.
    /// An event as the bill script writes it: into the bill's history at position sequence - 1
    /// (earlier positions padded) and the shard's outbox. created_ms: its created_at (default now).
    std::string add_event(const std::string& bill_id, int sequence, const std::string& type = "bill.paid",
                          std::optional<std::int64_t> created_ms = std::nullopt)
    {
        const std::string id = "evt_" + bill_id + "_" + std::to_string(sequence);
        const std::string created =
            format_rfc3339(created_ms.value_or(unix_ms(std::chrono::system_clock::now())));
        const std::string body = R"({"id":")" + id + R"(","type":")" + type + R"(","created_at":")" + created +
                                 R"(","bill_id":")" + bill_id + R"(","sequence":)" + std::to_string(sequence) +
                                 R"(,"bill":{},"data":{}})";
        std::vector<std::string> hist{"EVAL",
                                      "local n = redis.call('LLEN', KEYS[1]) "
                                      "while n < tonumber(ARGV[1]) do redis.call('RPUSH', KEYS[1], '{}') n = n + 1 end "
                                      "return redis.call('LSET', KEYS[1], tonumber(ARGV[1]) - 1, ARGV[2])",
                                      "1", keys.hist(bill_id), std::to_string(sequence), body};
        exec(std::move(hist));
        std::vector<std::string> argv{"XADD", keys.outbox(keys.shard_of(bill_id)), "*", "id", id, "bill_id", bill_id,
                                      "type", type, "event", body};
        exec(std::move(argv));
        return id;
    }

    /// The delivery hash of an event as a map (empty when absent), whatever its shard.
    std::map<std::string, std::string> delivery(const std::string& event_id)
    {
        for (int s = 0; s < kShards; ++s) {
            std::vector<std::string> argv{"HGETALL", kPrefix + store::Keys::tag(s) + ":crm:delivery:" + event_id};
            store::Reply r = exec(std::move(argv));
            if (!r.elements.empty()) {
                std::map<std::string, std::string> m;
                for (std::size_t i = 0; i + 1 < r.elements.size(); i += 2) {
                    m[r.elements[i].str] = r.elements[i + 1].str;
                }
                return m;
            }
        }
        return {};
    }

    std::string state_of(const std::string& event_id) { return delivery(event_id)["state"]; }

    /// Entries pending in the "crm" group, summed over shards.
    std::int64_t pending_total()
    {
        std::int64_t total = 0;
        for (int s = 0; s < kShards; ++s) {
            std::vector<std::string> argv{"XPENDING", keys.outbox(s), "crm"};
            Result<store::Reply> r = run_awaitable(ioc, conn->exec(std::move(argv)));
            REQUIRE(r.has_value());
            if (r->is_array() && !r->elements.empty()) {
                total += r->elements[0].integer;
            }
        }
        return total;
    }
};

/// Options tuned for tests: small shards, fast polling, a short lease, no jitter.
inline crm::DispatcherOptions test_options(const std::string& url, std::vector<std::string> secrets)
{
    crm::DispatcherOptions o;
    o.key_prefix = kPrefix;
    o.shards = kShards;
    o.secrets = std::move(secrets);
    o.retry_schedule = {100ms, 200ms, 400ms, 800ms, 1600ms, 3200ms};
    o.jitter = 0.0;
    o.lease = 1500ms;
    o.concurrency = 8;
    o.block = 200ms;
    o.retry_poll = 50ms;
    o.reclaim_interval = 200ms;
    o.stats_interval = 100ms;
    o.http.url = url;
    o.http.timeout = 1000ms;
    return o;
}

/// A dispatcher running on an io_context; the destructor stops it and waits for run() to return.
class RunningDispatcher {
public:
    RunningDispatcher(boost::asio::io_context& ioc, const config::RedisConfig& cfg, crm::DispatcherOptions options)
        : ioc_(ioc)
    {
        Result<std::unique_ptr<crm::Dispatcher>> d = crm::Dispatcher::create(ioc.get_executor(), cfg, std::move(options));
        REQUIRE(d.has_value());
        dispatcher_ = std::move(*d);
        auto state = state_;
        boost::asio::co_spawn(ioc, dispatcher_->run(), [state](std::exception_ptr e) {
            state->error = e;
            state->done = true;
        });
    }

    ~RunningDispatcher()
    {
        if (dispatcher_ && !state_->done) {
            stop();
        }
    }

    void stop()
    {
        dispatcher_->stop();
        const bool finished = run_until(ioc_, [this] { return state_->done; }, 15s);
        CHECK(finished);
        CHECK_FALSE(state_->error);
    }

    crm::Dispatcher& operator*() { return *dispatcher_; }
    crm::Dispatcher* operator->() { return dispatcher_.get(); }
    bool done() const { return state_->done; }

private:
    struct State {
        bool done{false};
        std::exception_ptr error;
    };
    boost::asio::io_context& ioc_;
    std::unique_ptr<crm::Dispatcher> dispatcher_;
    std::shared_ptr<State> state_ = std::make_shared<State>();
};

/// Every request the receiver got carried a valid signature (checked independently).
inline void check_all_signed(const HttpReceiver& receiver)
{
    for (const ReceivedRequest& r : receiver.requests()) {
        CAPTURE(r.webhook_id);
        CHECK(r.signature_ok);
        CHECK(r.method == "POST");
        CHECK(r.content_type == "application/json");
        rapidjson::Document doc;
        doc.Parse(r.body.c_str());
        REQUIRE_FALSE(doc.HasParseError());
        REQUIRE(doc.HasMember("id"));
        CHECK(r.webhook_id == doc["id"].GetString());  // webhook-id is the event id
    }
}

/// How many requests per webhook-id were answered with a 2xx.
inline std::map<std::string, int> acknowledged_counts(const HttpReceiver& receiver)
{
    std::map<std::string, int> counts;
    for (const ReceivedRequest& r : receiver.requests()) {
        if (r.answered && r.status >= 200 && r.status < 300) {
            ++counts[r.webhook_id];
        }
    }
    return counts;
}

}  // namespace paybridge::test
