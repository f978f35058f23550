#include "store/replica_confirm.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "store/redis_cluster.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

namespace paybridge::store {

namespace asio = boost::asio;

/// One SET + WAIT and the callers it answers. They wait on `done`, which never expires: the round
/// cancels it when the result is in.
struct ReplicaConfirmer::Round {
    explicit Round(const asio::any_io_executor& ex) : done(ex, asio::steady_timer::time_point::max()) {}
    asio::steady_timer done;
    Result<void> result{make_error_code(errc::internal)};  ///< until the round has its answer
    config::Endpoint endpoint;  ///< the primary the round's SET and WAIT ran on, in one session
    bool finished{false};
    std::vector<std::string> keys;  ///< Cluster: the callers' keys, each SET once
    std::vector<bool> key_set;      ///< Cluster: keys[i]'s SET was accepted (before the WAIT)
};

ReplicaConfirmer::ReplicaConfirmer(RedisConnection& conn, std::string key, int replicas,
                                   std::chrono::milliseconds timeout)
    : conn_(&conn), key_(std::move(key)), replicas_(replicas), timeout_(timeout)
{
}

ReplicaConfirmer::ReplicaConfirmer(ClusterRouter& router, config::Endpoint node, int replicas,
                                   std::chrono::milliseconds timeout)
    : router_(&router), node_(std::move(node)), replicas_(replicas), timeout_(timeout)
{
}

ReplicaConfirmer::~ReplicaConfirmer() = default;

asio::awaitable<std::shared_ptr<ReplicaConfirmer::Round>> ReplicaConfirmer::join(std::string key)
{
    const asio::any_io_executor ex = co_await asio::this_coro::executor;
    if (!next_) {
        next_ = std::make_shared<Round>(ex);
    }
    std::shared_ptr<Round> round = next_;
    if (!key.empty() && std::find(round->keys.begin(), round->keys.end(), key) == round->keys.end()) {
        round->keys.push_back(std::move(key));  // the round has not started: drive() takes next_ first
    }
    if (!driving_) {
        driving_ = true;
        asio::co_spawn(ex, drive(), asio::detached);
    }
    if (!round->finished) {
        // Cancelled when the round has its result (the timer itself never expires).
        const std::tuple<boost::system::error_code> woken = co_await round->done.async_wait(kUseTuple);
        (void)woken;
    }
    co_return round;
}

asio::awaitable<Result<void>> ReplicaConfirmer::confirm(const config::Endpoint* written_at)
{
    std::string no_key;
    const std::shared_ptr<Round> round = co_await join(std::move(no_key));
    if (!round->finished) {
        co_return make_error_code(errc::internal);  // woken otherwise: never "confirmed" by default
    }
    if (round->result && written_at != nullptr && round->endpoint != *written_at) {
        log::warning("store.replicas_other_primary",
                     {{"written_at", written_at->host + ":" + std::to_string(written_at->port)},
                      {"confirmed_at", round->endpoint.host + ":" + std::to_string(round->endpoint.port)}});
        co_return make_error_code(errc::store_unavailable);
    }
    co_return round->result;
}

asio::awaitable<Result<void>> ReplicaConfirmer::confirm_on_node(std::string key)
{
    std::string mine = key;
    const std::shared_ptr<Round> round = co_await join(std::move(mine));
    if (!round->finished) {
        co_return make_error_code(errc::internal);  // woken otherwise: never "confirmed" by default
    }
    if (!round->result) {
        co_return round->result;
    }
    const auto it = std::find(round->keys.begin(), round->keys.end(), key);
    const auto i = static_cast<std::size_t>(it - round->keys.begin());
    if (it == round->keys.end() || i >= round->key_set.size() || !round->key_set[i]) {
        co_return make_error_code(errc::store_unavailable);  // this caller's slot has left the node
    }
    co_return Result<void>{};
}

asio::awaitable<void> ReplicaConfirmer::drive()
{
    // A round's callers all arrived before its SET was sent, so its offset covers their writes;
    // whoever arrives meanwhile joins the next round.
    while (next_) {
        const std::shared_ptr<Round> round = std::exchange(next_, nullptr);
        try {
            if (router_ != nullptr) {
                round->result = co_await run_node_round(*round);
            } else {
                round->result = co_await run_round(*round);
            }
        } catch (const std::exception& e) {
            // Its callers are answered, and the next round still runs: a throw must not leave
            // driving_ set and every later caller waiting for a round that never comes.
            log::error("store.replica_confirm_failed", {{"what", e.what()}});
            round->result = make_error_code(errc::internal);
        }
        round->finished = true;
        round->done.cancel();
    }
    driving_ = false;
}

asio::awaitable<Result<void>> ReplicaConfirmer::run_round(Round& round)
{
    std::vector<std::vector<std::string>> commands{
        {"SET", key_, "1"}, {"WAIT", std::to_string(replicas_), std::to_string(timeout_.count())}};
    const std::uint64_t session = conn_->session();
    Result<std::vector<Reply>> replies = co_await conn_->exec_many(std::move(commands));
    if (!replies) {
        co_return replies.error();
    }
    if (conn_->session() != session) {
        co_return make_error_code(errc::store_unavailable);  // served by which primary? say no
    }
    round.endpoint = conn_->endpoint();
    const Reply& set = (*replies)[0];
    const Reply& wait = (*replies)[1];
    // A refused SET (NOREPLICAS, OOM, MISCONF) leaves the connection's replication offset where
    // an older write put it: WAIT would then confirm that one, not what the callers wrote.
    if (!set.is_status("OK")) {
        co_return unexpected_reply("replicated", set);
    }
    if (!wait.is_integer()) {
        co_return unexpected_reply("wait", wait);
    }
    if (wait.integer < replicas_) {
        log::error("store.replicas_missing", {{"wanted", replicas_}, {"acked", wait.integer}});
        co_return make_error_code(errc::store_unavailable);
    }
    co_return Result<void>{};
}

asio::awaitable<Result<void>> ReplicaConfirmer::run_node_round(Round& round)
{
    // All on the one connection to node_, pipelined: ASKING + SET for each caller's key, then the
    // WAIT. The replies come in one session of that connection (a lost connection fails them
    // all), so the WAIT counts the replicas of the node whose SETs it follows. ASKING lets a SET
    // through on a master importing the slot (a caller's script reached it through ASK); on the
    // slot's owner it changes nothing; a master the slot has left answers MOVED or ASK.
    std::vector<std::vector<std::string>> commands;
    commands.reserve(2 * round.keys.size() + 1);
    for (const std::string& key : round.keys) {
        commands.push_back({"ASKING"});
        commands.push_back({"SET", key, "1"});
    }
    commands.push_back({"WAIT", std::to_string(replicas_), std::to_string(timeout_.count())});
    Result<std::vector<Reply>> replies = co_await router_->exec_at(node_, std::move(commands));
    if (!replies) {
        co_return replies.error();
    }
    round.endpoint = node_;
    round.key_set.assign(round.keys.size(), false);
    bool any = false;
    for (std::size_t i = 0; i < round.keys.size(); ++i) {
        const Reply& set = (*replies)[2 * i + 1];
        if (set.is_status("OK")) {
            round.key_set[i] = true;
            any = true;
        } else {
            // MOVED/ASK: the slot has left the node; NOREPLICAS, OOM ...: the node refuses writes.
            log::warning("store.replicas_not_confirmed",
                         {{"node", node_.host + ":" + std::to_string(node_.port)},
                          {"key", round.keys[i]},
                          {"reply", set.is_error() ? set.str : "not OK"}});
        }
    }
    const Reply& wait = replies->back();
    // With no SET accepted the connection's replication offset is an older write's: the WAIT
    // would confirm that one, not the callers'.
    if (!any) {
        co_return make_error_code(errc::store_unavailable);
    }
    if (!wait.is_integer()) {
        co_return unexpected_reply("wait", wait);
    }
    if (wait.integer < replicas_) {
        log::error("store.replicas_missing",
                   {{"wanted", replicas_}, {"acked", wait.integer}, {"node", node_.host + ":" + std::to_string(node_.port)}});
        co_return make_error_code(errc::store_unavailable);
    }
    co_return Result<void>{};
}

}  // namespace paybridge::store
