#include "store/replica_confirm.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>

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
};

ReplicaConfirmer::ReplicaConfirmer(RedisConnection& conn, std::string key, int replicas,
                                   std::chrono::milliseconds timeout)
    : conn_(conn), key_(std::move(key)), replicas_(replicas), timeout_(timeout)
{
}

ReplicaConfirmer::~ReplicaConfirmer() = default;

asio::awaitable<Result<void>> ReplicaConfirmer::confirm(const config::Endpoint* written_at)
{
    const asio::any_io_executor ex = co_await asio::this_coro::executor;
    if (!next_) {
        next_ = std::make_shared<Round>(ex);
    }
    const std::shared_ptr<Round> round = next_;
    if (!driving_) {
        driving_ = true;
        asio::co_spawn(ex, drive(), asio::detached);
    }
    if (!round->finished) {
        // Cancelled when the round has its result (the timer itself never expires).
        const std::tuple<boost::system::error_code> woken = co_await round->done.async_wait(kUseTuple);
        (void)woken;
    }
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

asio::awaitable<void> ReplicaConfirmer::drive()
{
    // A round's callers all arrived before its SET was sent, so its offset covers their writes;
    // whoever arrives meanwhile joins the next round.
    while (next_) {
        const std::shared_ptr<Round> round = std::exchange(next_, nullptr);
        try {
            round->result = co_await run_round(*round);
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
    const std::uint64_t session = conn_.session();
    Result<std::vector<Reply>> replies = co_await conn_.exec_many(std::move(commands));
    if (!replies) {
        co_return replies.error();
    }
    if (conn_.session() != session) {
        co_return make_error_code(errc::store_unavailable);  // served by which primary? say no
    }
    round.endpoint = conn_.endpoint();
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

}  // namespace paybridge::store
