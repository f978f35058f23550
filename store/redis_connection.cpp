#include "store/redis_connection.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/resolve.hpp"
#include "store/layout.hpp"
#include "store/redis_cluster.hpp"
#include "store/resp.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <exception>
#include <random>
#include <variant>

namespace paybridge::store {

namespace asio = boost::asio;
using boost::system::error_code;
using asio::ip::tcp;

boost::system::error_code unexpected_reply(std::string_view what, const Reply& reply)
{
    if (reply.is_error()) {
        log::error("store.redis_error", {{"op", what}, {"error", reply.str}});
    } else {
        log::error("store.unexpected_reply", {{"op", what}, {"type", static_cast<int>(reply.type)}});
    }
    return make_error_code(errc::store_unavailable);
}

namespace {

constexpr std::size_t kReadBufferSize = 64 * 1024;
// Requests are bounded in time by request_timeout; this bounds them in memory too, so a stalled
// Redis turns into fast 503s instead of an ever-growing queue.
constexpr std::size_t kMaxPending = 200'000;
// Bytes waiting to be written: while Redis is slow, the count above could hold hundreds of MB of
// large commands (bill registrations carry their metadata).
constexpr std::size_t kMaxUnsent = 64u << 20;
// Wire bytes of one reply still incomplete: far above any reply paybridge asks for (a page of
// events, a bill's history), far below what would exhaust memory. A server that goes past it is
// broken or hostile; the connection is dropped and made again.
constexpr std::size_t kMaxReplyBytes = 32u << 20;
// All the replies of a handshake or of a question to a sentinel: a few hundred bytes in practice.
constexpr std::size_t kMaxHandshakeBytes = 1u << 20;
// A session shorter than this does not reset the backoff: a peer that completes the handshake
// and then drops the connection (a proxy, a flapping node) is not reconnected to every 100 ms.
constexpr std::chrono::seconds kStableSession{1};
constexpr std::chrono::milliseconds kBackoffMin{100};
constexpr std::chrono::milliseconds kBackoffMax{5'000};
// How often, in Sentinel mode, a connected RedisConnection asks whether the master has moved.
constexpr std::chrono::milliseconds kSentinelWatch{1'000};
// How often a connection with ConnectionChecks::master asks its node for its role (HELLO).
constexpr std::chrono::milliseconds kRoleWatch{1'000};
// How often a key layout that did not match is checked again.
constexpr std::chrono::milliseconds kLayoutRecheck{5'000};

// hiredis parses, and the objects it builds are paybridge's Reply, made in place (no redisReply
// tree to copy and free) and counted: a reply's wire bytes are bounded (kMaxReplyBytes) but not the
// objects they expand to. "*8000000\r\n" and eight million ":1\r\n" are 31 MiB on the wire and
// eight million objects in memory. Past kMaxReplyObjects the reader fails (hiredis reports "Out of
// memory") and the connection is made again. Far above any reply paybridge asks for (a page of
// events is a few thousand objects).
constexpr std::size_t kMaxReplyObjects = 1u << 20;

struct ReaderState {
    std::size_t objects{0};  ///< in the reply being read: the root and every element declared
    bool too_many{false};    ///< the last failure was kMaxReplyObjects
};

// hiredis hands each object its parent's (an array made by reply_array, its elements already in
// place and counted) and frees only the root, through reply_free.
Reply* reply_object(const redisReadTask* task, Reply::Type type) noexcept
{
    if (task->parent == nullptr) {
        auto* state = static_cast<ReaderState*>(task->privdata);
        state->objects = 1;
        state->too_many = false;
    }
    Reply* r = task->parent == nullptr
                   ? new (std::nothrow) Reply
                   : &static_cast<Reply*>(task->parent->obj)->elements[static_cast<std::size_t>(task->idx)];
    if (r != nullptr) {
        r->type = type;
    }
    return r;
}

// An object that could not be completed: a root is ours to free (hiredis never saw it), an element
// belongs to its root, which hiredis frees.
void* reply_failed(const redisReadTask* task, Reply* r) noexcept
{
    if (task->parent == nullptr) {
        delete r;
    }
    return nullptr;
}

void* reply_string(const redisReadTask* task, char* str, std::size_t len)
{
    const Reply::Type type = task->type == REDIS_REPLY_STATUS  ? Reply::Type::status
                             : task->type == REDIS_REPLY_ERROR ? Reply::Type::error
                                                               : Reply::Type::string;
    Reply* r = reply_object(task, type);
    if (r == nullptr) {
        return nullptr;
    }
    try {
        r->str.assign(str, len);
    } catch (...) {
        return reply_failed(task, r);
    }
    return r;
}

void* reply_array(const redisReadTask* task, int elements)
{
    Reply* r = reply_object(task, Reply::Type::array);
    if (r == nullptr) {
        return nullptr;
    }
    // Counted as declared, before they are made: "*100000000\r\n" is 13 bytes on the wire.
    const auto declared = static_cast<std::size_t>(std::max(elements, 0));
    auto* state = static_cast<ReaderState*>(task->privdata);
    if (declared > kMaxReplyObjects - state->objects) {
        state->too_many = true;
        return reply_failed(task, r);
    }
    state->objects += declared;
    try {
        r->elements.resize(declared);
    } catch (...) {
        return reply_failed(task, r);
    }
    return r;
}

void* reply_integer(const redisReadTask* task, long long value)
{
    Reply* r = reply_object(task, Reply::Type::integer);
    if (r != nullptr) {
        r->integer = value;
    }
    return r;
}

void* reply_nil(const redisReadTask* task) { return reply_object(task, Reply::Type::nil); }

void reply_free(void* root) { delete static_cast<Reply*>(root); }

redisReplyObjectFunctions reply_functions{
    .createString = reply_string,
    .createArray = reply_array,
    .createInteger = reply_integer,
    .createNil = reply_nil,
    .freeObject = reply_free,
};

using ReplyPtr = std::unique_ptr<Reply>;

/// A reader that builds Reply objects (see reply_functions), for RedisConnection::ReaderFree to
/// free; nullptr when out of memory.
redisReader* make_reader()
{
    auto state = std::make_unique<ReaderState>();
    redisReader* reader = redisReaderCreateWithFunctions(&reply_functions);
    if (reader != nullptr) {
        reader->privdata = state.release();
    }
    return reader;
}

/// The reader's error, naming the object limit when that was the cause.
std::string reader_error(const redisReader& reader)
{
    if (static_cast<const ReaderState*>(reader.privdata)->too_many) {
        return "a reply of more than " + std::to_string(kMaxReplyObjects) + " objects";
    }
    return reader.errstr;
}

std::string sha1_hex(std::string_view data)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(data.data(), data.size(), md, &md_len, EVP_sha1(), nullptr) != 1) {
        throw std::runtime_error("EVP_Digest(sha1) failed");
    }
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(md_len * 2);
    for (unsigned int i = 0; i < md_len; ++i) {
        out += kHex[md[i] >> 4];
        out += kHex[md[i] & 0x0f];
    }
    return out;
}

// Reads from `socket` into `buf` and feeds `reader` until it has produced `n` replies, which are
// appended to `out` (more, if more arrived in the same read). Errors: the socket's, or
// store_unavailable for a protocol error or more than kMaxHandshakeBytes in all (logged).
asio::awaitable<error_code> read_replies(tcp::socket& socket, redisReader& reader, asio::mutable_buffer buf,
                                         std::size_t n, std::vector<Reply>& out)
{
    const std::size_t want = out.size() + n;
    std::size_t fed = 0;
    while (out.size() < want) {
        auto [ec, got] = co_await socket.async_read_some(buf, kUseTuple);
        if (ec) {
            co_return ec;
        }
        fed += got;
        if (fed > kMaxHandshakeBytes) {
            log::error("redis.reply_too_large", {{"bytes", fed}, {"limit", kMaxHandshakeBytes}, {"during", "handshake"}});
            co_return make_error_code(errc::store_unavailable);
        }
        if (redisReaderFeed(&reader, static_cast<const char*>(buf.data()), got) != REDIS_OK) {
            co_return make_error_code(errc::store_unavailable);
        }
        for (;;) {
            void* raw = nullptr;
            if (redisReaderGetReply(&reader, &raw) != REDIS_OK) {
                log::error("redis.protocol_error", {{"error", reader_error(reader)}});
                co_return make_error_code(errc::store_unavailable);
            }
            if (raw == nullptr) {
                break;
            }
            ReplyPtr owned(static_cast<Reply*>(raw));
            out.push_back(std::move(*owned));
        }
    }
    co_return error_code{};
}

/// The "role" of a HELLO reply ("master", "replica"), or the error reply's text.
std::string hello_role(const Reply& reply)
{
    if (reply.is_error()) {
        return reply.str;
    }
    std::string role;
    for (std::size_t i = 0; reply.is_array() && i + 1 < reply.elements.size(); i += 2) {
        if (reply.elements[i].str == "role") {
            role = reply.elements[i + 1].str;
        }
    }
    return role;
}

std::string address(const config::Endpoint& node)
{
    return node.host + ":" + std::to_string(node.port);
}

/// Connections of this process whose key layout is refused now. Every connection of every worker
/// finds the same mismatch: only the first to be refused logs it.
std::atomic<int> g_layout_refusals{0};

void log_layout_mismatch(const LayoutVerdict& verdict)
{
    log::error("redis.layout_mismatch",
               {{"key", verdict.key},
                {"configured", verdict.expected},
                {"found", verdict.found},
                {"why", verdict.why.empty() ? "another instance recorded another redis.shards for this key_prefix"
                                            : verdict.why},
                {"action", "not ready and every command refused (checked again every 5 s): give every instance of "
                           "the deployment the same redis.shards (config/README.md)"}});
}

std::chrono::milliseconds jittered(std::chrono::milliseconds base, std::minstd_rand& rng)
{
    // "Equal jitter": half fixed, half random, so reconnecting clients spread out but still back off.
    std::uniform_int_distribution<std::int64_t> dist(base.count() / 2, base.count());
    return std::chrono::milliseconds(dist(rng));
}

}  // namespace

void RedisConnection::ReaderFree::operator()(redisReader* r) const noexcept
{
    std::unique_ptr<ReaderState> state(static_cast<ReaderState*>(r->privdata));
    redisReaderFree(r);
}

// One caller's wait: lives in the caller's coroutine frame while its commands are in flight. Its
// timer is both the deadline and the completion signal (cancel() wakes the caller early), so a
// request costs no allocation beyond the timer's wait operation.
struct RedisConnection::Waiter {
    Waiter(RedisConnection& c, std::uint64_t first, std::size_t n, Reply* out, bool is_counted)
        : conn(c),
          timer(c.executor_, c.cfg_.request_timeout),
          first_seq(first),
          count(n),
          remaining(n),
          replies(out),
          counted(is_counted)
    {
    }
    Waiter(const Waiter&) = delete;
    Waiter& operator=(const Waiter&) = delete;

    // A frame destroyed while suspended (io_context torn down) must not leave its slots dangling.
    // (A waiter finished early abandons its slots where it is finished: deliver_front.)
    ~Waiter()
    {
        if (!done) {
            conn.abandon(first_seq, count);
        }
    }

    void finish(error_code ec) noexcept
    {
        error = ec;
        done = true;
        timer.cancel();
    }

    RedisConnection& conn;
    asio::steady_timer timer;
    std::uint64_t first_seq;
    std::size_t count;
    std::size_t remaining;
    Reply* replies;
    bool counted;  ///< its failures count in RedisStats::errors
    error_code error;
    bool done{false};
};

RedisConnection::RedisConnection(asio::any_io_executor executor, const config::RedisConfig& cfg)
    : executor_(std::move(executor)),
      cfg_(cfg),
      socket_(executor_),
      write_signal_(executor_),
      backoff_timer_(executor_),
      connect_timer_(executor_),
      watch_timer_(executor_),
      sentinel_timer_(executor_),
      probe_timer_(executor_),
      role_timer_(executor_),
      layout_timer_(executor_),
      current_{cfg.host, cfg.port},
      sentinels_(cfg.sentinel.nodes),
      read_buf_(std::make_unique<char[]>(kReadBufferSize)),
      stats_(&own_stats_)
{
    if (!cfg_.cluster.nodes.empty()) {
        read_buf_.reset();  // the node connections read
        cluster_ = std::make_unique<ClusterRouter>(executor_, cfg_, own_stats_);
    }
}

RedisConnection::RedisConnection(asio::any_io_executor executor, const config::RedisConfig& cfg, RedisStats& shared)
    : RedisConnection(std::move(executor), cfg)
{
    if (cluster_) {
        throw std::logic_error("RedisConnection: a node connection cannot itself be a cluster");
    }
    stats_ = &shared;
    // A cluster's node: the slot map says which nodes are masters, the router's owner checks the layout.
    checks_ = ConnectionChecks{.master = false, .layout = false};
}

void RedisConnection::set_checks(ConnectionChecks checks) noexcept
{
    if (!started_) {
        checks_ = checks;
    }
}

RedisConnection::~RedisConnection()
{
    cluster_.reset();
    uncount_refusal();
    stopped_ = true;
    fail_pending(make_error_code(errc::shutting_down));
    error_code ignored;
    socket_.close(ignored);
}

std::string RedisConnection::add_script(std::string body)
{
    std::string sha = sha1_hex(body);
    if (find_script(sha) == nullptr) {
        if (cluster_) {
            cluster_->add_script(body);
        }
        scripts_.push_back(Script{.sha = sha, .body = std::move(body)});
    }
    return sha;
}

const RedisConnection::Script* RedisConnection::find_script(std::string_view sha) const noexcept
{
    for (const Script& s : scripts_) {
        if (s.sha == sha) {
            return &s;
        }
    }
    return nullptr;
}

void RedisConnection::start()
{
    if (started_ || stopped_) {
        return;
    }
    started_ = true;
    if (checks_.layout) {
        if (cluster_) {
            cluster_->set_open(false);
            cluster_->set_on_change([this] { layout_timer_.cancel(); });
        }
        asio::co_spawn(executor_, layout_loop(), LogFailure("redis.layout_loop_failed"));
    }
    if (cluster_) {
        cluster_->start();
        return;
    }
    asio::co_spawn(executor_, run(), LogFailure("redis.run_loop_failed"));
}

void RedisConnection::stop()
{
    if (stopped_) {
        return;
    }
    stopped_ = true;
    if (cluster_) {
        cluster_->stop();
    }
    backoff_timer_.cancel();
    connect_timer_.cancel();
    sentinel_timer_.cancel();
    probe_timer_.cancel();
    layout_timer_.cancel();
    uncount_refusal();
    close_io();
    fail_pending(make_error_code(errc::shutting_down));
}

void RedisConnection::uncount_refusal() noexcept
{
    if (refusal_counted_) {
        refusal_counted_ = false;
        g_layout_refusals.fetch_sub(1, std::memory_order_relaxed);
    }
}

void RedisConnection::close_io() noexcept
{
    const bool was_ready = ready_.exchange(false, std::memory_order_relaxed);
    if (was_ready && router_ != nullptr) {
        router_->node_changed();
    }
    error_code ignored;
    socket_.close(ignored);
    write_signal_.cancel();
    watch_timer_.cancel();
    role_timer_.cancel();
}

void RedisConnection::wake_writer() noexcept
{
    if (writer_idle_) {
        writer_idle_ = false;
        write_signal_.cancel();
    }
}

bool RedisConnection::ready() const noexcept
{
    return (cluster_ ? cluster_->ready() : node_ready()) && layout_open();
}

bool RedisConnection::usable() const noexcept
{
    return (cluster_ ? cluster_->usable() : node_ready()) && layout_open();
}

error_code RedisConnection::refused(std::size_t n) noexcept
{
    stats_->errors.fetch_add(n, std::memory_order_relaxed);
    return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
}

std::string RedisConnection::node_of(std::string_view key) const
{
    return cluster_ ? cluster_->node_of(key) : std::string();
}

asio::awaitable<bool> RedisConnection::wait_ready(std::chrono::milliseconds limit)
{
    const auto until = std::chrono::steady_clock::now() + limit;
    asio::steady_timer timer(executor_);
    while (!ready() && !stopped_ && std::chrono::steady_clock::now() < until) {
        timer.expires_after(std::chrono::milliseconds(10));
        co_await timer.async_wait(kUseTuple);
    }
    co_return ready();
}

void RedisConnection::update_in_flight() noexcept
{
    // As a difference: a cluster's node connections share one counter.
    const std::size_t now = pending_.size();
    stats_->in_flight.fetch_add(now - reported_in_flight_, std::memory_order_relaxed);  // modulo 2^64
    reported_in_flight_ = now;
}

void RedisConnection::abandon(std::uint64_t first_seq, std::size_t n) noexcept
{
    // Replies for abandoned commands still arrive in order; their slots stay and are skipped.
    for (std::uint64_t seq = first_seq; seq < first_seq + n; ++seq) {
        if (seq >= head_seq_ && seq - head_seq_ < pending_.size()) {
            pending_[static_cast<std::size_t>(seq - head_seq_)].waiter = nullptr;
        }
    }
}

void RedisConnection::fail_pending(error_code ec) noexcept
{
    for (Slot& slot : pending_) {
        if (slot.waiter != nullptr && !slot.waiter->done) {
            if (slot.waiter->counted) {
                stats_->errors.fetch_add(1, std::memory_order_relaxed);
            }
            slot.waiter->finish(ec);
        }
    }
    head_seq_ += pending_.size();
    pending_.clear();
    out_buf_.clear();
    counted_unsent_ = 0;
    update_in_flight();
}

void RedisConnection::deliver_front(void* hiredis_reply)
{
    ReplyPtr reply(static_cast<Reply*>(hiredis_reply));
    if ((checks_.master || !sentinels_.empty()) && reply->is_error() && reply->str.starts_with("READONLY")) {
        demoted_ = true;  // read_loop closes the connection once this batch is delivered
    }
    const Slot slot = pending_.front();
    pending_.pop_front();
    ++head_seq_;
    Waiter* w = slot.waiter;
    if (w == nullptr || w->done) {
        return;
    }
    Reply& dst = w->replies[slot.index];
    dst = std::move(*reply);
    if (dst.is_error() && w->counted && (router_ == nullptr || !ClusterRouter::redirection(dst))) {
        stats_->errors.fetch_add(1, std::memory_order_relaxed);  // a redirection is followed, not failed
    }
    if (--w->remaining == 0) {
        w->finish({});
    }
}

asio::awaitable<error_code> RedisConnection::submit(const std::vector<std::string>* commands,
                                                    std::size_t n,
                                                    Reply* out,
                                                    std::optional<std::chrono::steady_clock::time_point> deadline,
                                                    bool counted)
{
    if (!node_ready()) {
        stats_->errors.fetch_add(n, std::memory_order_relaxed);
        co_return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
    }
    if (pending_.size() + n > kMaxPending || out_buf_.size() + write_buf_.size() > kMaxUnsent) {
        stats_->errors.fetch_add(n, std::memory_order_relaxed);
        log::warning("redis.overloaded",
                     {{"in_flight", pending_.size()}, {"unsent_bytes", out_buf_.size() + write_buf_.size()}});
        co_return make_error_code(errc::store_unavailable);
    }
    if (deadline && *deadline <= std::chrono::steady_clock::now()) {
        // The routed request's time is up (a redirection or a wait used it): not sent at all,
        // rather than sent with its reply thrown away (an XREADGROUP's entries would be lost
        // into this consumer's pending list).
        stats_->errors.fetch_add(n, std::memory_order_relaxed);
        co_return make_error_code(errc::timeout);
    }
    // The waiter first: its slots do not exist yet, so an early return abandons nothing.
    Waiter waiter(*this, head_seq_ + pending_.size(), n, out, counted);
    const std::size_t mark = out_buf_.size();
    const std::size_t queued = pending_.size();
    try {
        for (std::size_t i = 0; i < n; ++i) {
            if (!append_command(out_buf_, commands[i])) {
                out_buf_.resize(mark);
                co_return make_error_code(errc::invalid_argument);
            }
        }
        for (std::size_t i = 0; i < n; ++i) {
            pending_.push_back(Slot{.waiter = &waiter, .index = static_cast<std::uint32_t>(i)});
        }
    } catch (...) {
        // Only allocation throws here. A command left in out_buf_ without its slot, or a slot
        // without its command, would hand every later reply to the wrong request.
        out_buf_.resize(mark);
        while (pending_.size() > queued) {
            pending_.pop_back();
        }
        throw;
    }
    if (queued == 0) {
        waiting_since_ = std::chrono::steady_clock::now();
    }
    const bool caller_deadline = deadline && *deadline < waiter.timer.expiry();
    if (caller_deadline) {
        waiter.timer.expires_at(*deadline);
    }
    if (counted) {
        stats_->commands.fetch_add(n, std::memory_order_relaxed);
        counted_unsent_ += n;
    }
    update_in_flight();
    wake_writer();

    auto [ec] = co_await waiter.timer.async_wait(kUseTuple);
    if (waiter.done) {
        co_return waiter.error;
    }
    abandon(waiter.first_seq, n);
    waiter.done = true;
    if (counted) {
        stats_->errors.fetch_add(1, std::memory_order_relaxed);
    }
    const bool stuck = !pending_.empty() && std::chrono::steady_clock::now() - waiting_since_ >= cfg_.request_timeout;
    if (ec || (caller_deadline && !stuck)) {
        // The caller cancelled the wait, or its own deadline came first: the connection itself
        // is fine.
        co_return make_error_code(errc::timeout);
    }
    // No reply within request_timeout: Redis or the network is stuck. Everything queued behind
    // this request would wait just as long, so drop the connection and let the run loop reconnect.
    stats_->timeouts.fetch_add(1, std::memory_order_relaxed);
    log::warning("redis.timeout",
                 {{"timeout_ms", static_cast<std::int64_t>(cfg_.request_timeout.count())},
                  {"in_flight", pending_.size()}});
    close_io();
    fail_pending(make_error_code(errc::store_unavailable));
    co_return make_error_code(errc::timeout);
}

asio::awaitable<Result<Reply>> RedisConnection::exec(std::vector<std::string> argv)
{
    if (argv.empty()) {
        co_return make_error_code(errc::invalid_argument);
    }
    if (!layout_open()) {
        co_return refused(1);
    }
    if (cluster_) {
        Result<Reply> routed = co_await cluster_->exec(std::move(argv));
        co_return routed;
    }
    Reply reply;
    const error_code ec = co_await submit(&argv, 1, &reply);
    if (ec) {
        co_return ec;
    }
    co_return std::move(reply);
}

asio::awaitable<Result<std::vector<Reply>>> RedisConnection::exec_many(std::vector<std::vector<std::string>> commands)
{
    if (!commands.empty() && !layout_open()) {
        co_return refused(commands.size());
    }
    Result<std::vector<Reply>> replies = co_await exec_many_unguarded(std::move(commands));
    co_return replies;
}

asio::awaitable<Result<std::vector<Reply>>> RedisConnection::exec_many_unguarded(
    std::vector<std::vector<std::string>> commands)
{
    std::vector<Reply> replies(commands.size());
    if (commands.empty()) {
        co_return std::move(replies);
    }
    if (cluster_) {
        Result<std::vector<Reply>> routed = co_await cluster_->exec_many(std::move(commands));
        co_return routed;
    }
    const error_code ec = co_await submit(commands.data(), commands.size(), replies.data());
    if (ec) {
        co_return ec;
    }
    co_return std::move(replies);
}

asio::awaitable<std::vector<Result<Reply>>> RedisConnection::exec_each(std::vector<std::vector<std::string>> commands)
{
    if (!commands.empty() && !layout_open()) {
        const error_code ec = refused(commands.size());
        std::vector<Result<Reply>> each(commands.size(), Result<Reply>(ec));
        co_return each;
    }
    std::vector<Result<Reply>> each = co_await exec_each_unguarded(std::move(commands));
    co_return each;
}

asio::awaitable<std::vector<Result<Reply>>> RedisConnection::exec_each_unguarded(
    std::vector<std::vector<std::string>> commands)
{
    if (cluster_) {
        std::vector<Result<Reply>> routed = co_await cluster_->exec_each(std::move(commands));
        co_return routed;
    }
    const std::size_t n = commands.size();
    Result<std::vector<Reply>> all = co_await exec_many_unguarded(std::move(commands));
    std::vector<Result<Reply>> each;
    each.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        if (all) {
            each.emplace_back(std::move((*all)[i]));
        } else {
            each.emplace_back(all.error());
        }
    }
    co_return each;
}

asio::awaitable<Result<Reply>> RedisConnection::eval(std::string sha,
                                                     std::vector<std::string> keys,
                                                     std::vector<std::string> args)
{
    if (!layout_open()) {
        co_return refused(1);
    }
    std::vector<std::string> argv = evalsha_command(sha, std::move(keys), std::move(args));

    Reply reply;
    if (cluster_) {
        // Routed by the first key; the EVAL after a NOSCRIPT reply is routed the same way (by the
        // slot map, or through the same ASK during a migration).
        Result<Reply> routed = co_await cluster_->exec(argv);
        if (!routed) {
            co_return routed.error();
        }
        reply = std::move(*routed);
    } else {
        const error_code ec = co_await submit(&argv, 1, &reply);
        if (ec) {
            co_return ec;
        }
    }
    if (reply.is_error() && reply.str.starts_with("NOSCRIPT")) {
        // Redis restarted without persistence or someone ran SCRIPT FLUSH. EVAL also puts the
        // script back into the cache, so the next EVALSHA succeeds again.
        const Script* script = find_script(sha);
        if (script != nullptr) {
            log::warning("redis.noscript", {{"sha", sha}});
            argv[0] = "EVAL";
            argv[1] = script->body;
            if (cluster_) {
                Result<Reply> routed = co_await cluster_->exec(std::move(argv));
                co_return routed;
            }
            const error_code ec = co_await submit(&argv, 1, &reply);
            if (ec) {
                co_return ec;
            }
        }
    }
    co_return std::move(reply);
}

asio::awaitable<void> RedisConnection::run()
{
    std::minstd_rand rng{std::random_device{}()};
    std::chrono::milliseconds backoff = kBackoffMin;
    bool first = true;
    while (!stopped_) {
        if (!first) {
            stats_->reconnects.fetch_add(1, std::memory_order_relaxed);
        }
        first = false;

        // An exception (an allocation failing in the reply copy, say) ends this connection, not
        // the loop: without the barrier, nothing would ever reconnect.
        error_code ec;
        bool logged = false;  // with Sentinel, each attempt's failure is logged where it happens
        try {
            if (!sentinels_.empty()) {
                ec = co_await connect_via_sentinels();
                logged = true;
            } else {
                ec = co_await connect_and_handshake();
            }
            attempted_ = true;
        } catch (const std::exception& e) {
            attempted_ = true;
            log::error("redis.handshake_failed", {{"what", e.what()}});
            ec = make_error_code(errc::internal);
        }
        if (stopped_) {
            break;
        }
        if (!ec) {
            ++session_;
            ready_.store(true, std::memory_order_relaxed);
            layout_timer_.cancel();  // a new session: the layout loop checks it
            if (router_ != nullptr) {
                router_->node_changed();
            }
            log::info("redis.ready",
                      {{"host", current_.host}, {"port", static_cast<int>(current_.port)}, {"db", cfg_.db}});
            const auto served_from = std::chrono::steady_clock::now();
            try {
                co_await serve();
            } catch (const std::exception& e) {
                log::error("redis.connection_failed", {{"what", e.what()}});
            }
            if (std::chrono::steady_clock::now() - served_from >= kStableSession) {
                backoff = kBackoffMin;
            }
            if (!stopped_) {
                log::warning("redis.connection_lost",
                             {{"host", current_.host}, {"port", static_cast<int>(current_.port)}});
            }
        } else if (!logged) {
            log::warning("redis.connect_failed",
                         {{"host", current_.host}, {"port", static_cast<int>(current_.port)}, {"error", ec.message()}});
        }
        close_io();
        fail_pending(make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable));
        if (stopped_) {
            break;
        }
        backoff_timer_.expires_after(jittered(backoff, rng));
        backoff = std::min(backoff * 2, kBackoffMax);
        co_await backoff_timer_.async_wait(kUseTuple);
    }
    close_io();
    run_done_ = true;
}

asio::awaitable<void> RedisConnection::serve()
{
    using namespace asio::experimental::awaitable_operators;
    demoted_ = false;
    // Each loop closes the socket when it ends, which ends the other one too. The watches close it
    // when the node is no master (any more); they are cancelled when the loops end.
    if (sentinels_.empty() && !checks_.master) {
        auto both = read_loop() && write_loop();
        co_await std::move(both);
        co_return;
    }
    if (sentinels_.empty()) {
        auto watched = (read_loop() && write_loop()) || role_watch();
        co_await std::move(watched);
        co_return;
    }
    if (!checks_.master) {
        auto watched = (read_loop() && write_loop()) || watch_master();
        co_await std::move(watched);
        co_return;
    }
    auto watched = (read_loop() && write_loop()) || watch_master() || role_watch();
    co_await std::move(watched);
}

asio::awaitable<void> RedisConnection::role_watch()
{
    // In band, on the connection itself: it asks the node this connection writes to, costs no
    // connection of its own, and a node that stopped answering is the request timeout's to find.
    const std::vector<std::string> hello{"HELLO", "2"};
    while (socket_.is_open()) {
        role_timer_.expires_after(kRoleWatch);
        auto [ec] = co_await role_timer_.async_wait(kUseTuple);
        if (ec || !socket_.is_open() || stopped_) {
            co_return;
        }
        Reply reply;
        const error_code sent = co_await submit(&hello, 1, &reply, std::nullopt, false);
        if (!socket_.is_open() || stopped_) {
            co_return;
        }
        if (sent) {
            continue;  // a timeout that left the connection up (a caller's cancellation): ask again
        }
        const std::string role = hello_role(reply);
        if (role != "master") {
            log::warning("redis.demoted", {{"host", current_.host},
                                           {"port", static_cast<int>(current_.port)},
                                           {"role", role},
                                           {"why", "the node is no master any more: connecting again"}});
            close_io();
            co_return;
        }
    }
}

asio::awaitable<error_code> RedisConnection::connect_via_sentinels()
{
    error_code last = make_error_code(errc::store_unavailable);
    bool named = false;
    // Nodes named in this round that failed: another sentinel naming one is not tried again.
    std::vector<config::Endpoint> failed;
    // Over a copy: the order changes below.
    const std::vector<config::Endpoint> order = sentinels_;
    for (const config::Endpoint& sentinel : order) {
        if (stopped_) {
            co_return make_error_code(errc::shutting_down);
        }
        Result<config::Endpoint> master = co_await ask_sentinel_within(sentinel, false);
        if (stopped_) {
            co_return make_error_code(errc::shutting_down);
        }
        if (!master) {
            last = master.error();
            continue;
        }
        named = true;
        if (std::find(failed.begin(), failed.end(), *master) != failed.end()) {
            continue;
        }
        if (*master != current_) {
            log::info("redis.master", {{"master", cfg_.sentinel.master},
                                       {"sentinel", address(sentinel)},
                                       {"host", master->host},
                                       {"port", static_cast<int>(master->port)}});
        }
        current_ = std::move(*master);
        const error_code ec = co_await connect_and_handshake();
        if (stopped_) {
            co_return make_error_code(errc::shutting_down);
        }
        if (!ec) {
            // Asked first next time: its answer is the one that held. A sentinel that merely
            // answered first (a stale one) would otherwise stay in front of the right one.
            auto it = std::find(sentinels_.begin(), sentinels_.end(), sentinel);
            if (it != sentinels_.end() && it != sentinels_.begin()) {
                std::rotate(sentinels_.begin(), it, it + 1);
            }
            co_return error_code{};
        }
        // A replica (a sentinel that has not seen the failover) or a node that is down: the next
        // sentinel may know better, so it is asked now rather than after the backoff.
        log::warning("redis.connect_failed", {{"host", current_.host},
                                              {"port", static_cast<int>(current_.port)},
                                              {"sentinel", address(sentinel)},
                                              {"error", ec.message()}});
        close_io();
        failed.push_back(current_);
        last = ec;
    }
    if (!named) {
        log::warning("redis.no_master", {{"master", cfg_.sentinel.master},
                                         {"error", "no sentinel named it; each one's reason is logged above"}});
    }
    co_return last;
}

asio::awaitable<void> RedisConnection::watch_master()
{
    // Asked every second by every connection: a failure is logged when it starts and when it
    // ends, not at every turn; so is a sentinel's answer that is not followed.
    bool failing = false;
    std::optional<config::Endpoint> disagreed;
    while (socket_.is_open()) {
        watch_timer_.expires_after(kSentinelWatch);
        auto [ec] = co_await watch_timer_.async_wait(kUseTuple);
        if (ec || !socket_.is_open() || stopped_) {
            co_return;
        }
        Result<SentinelAnswer> answer = co_await ask_sentinels();
        if (!socket_.is_open() || stopped_) {
            co_return;
        }
        if (!answer && !failing) {
            failing = true;
            log::warning("redis.sentinels_unreachable",
                         {{"master", cfg_.sentinel.master},
                          {"error", answer.error().message()},
                          {"why", "no sentinel answers; staying on the current master and asking every second"}});
        } else if (answer && failing) {
            failing = false;
            log::info("redis.sentinels_reachable", {{"master", cfg_.sentinel.master}});
        }
        if (!answer) {
            continue;
        }
        if (answer->master == current_) {
            disagreed.reset();
            continue;
        }
        // One sentinel's view can be stale (partitioned, restarted, monitoring another set): the
        // working connection is dropped only when the named node is a master, or the current
        // one no longer is. In a real failover the promoted replica reports master before the
        // sentinels name it, and the old master is demoted (or down) soon after.
        const config::Endpoint named = answer->master;
        const config::Endpoint serving = current_;
        Result<std::string> named_role = co_await probe_role_within(named);
        if (!socket_.is_open() || stopped_) {
            co_return;
        }
        std::string why;
        if (named_role && *named_role == "master") {
            why = "the node named reports role master";
        } else {
            Result<std::string> serving_role = co_await probe_role_within(serving);
            if (!socket_.is_open() || stopped_) {
                co_return;
            }
            if (!serving_role) {
                why = "the current node cannot be reached: " + serving_role.error().message();
            } else if (*serving_role != "master") {
                why = "the current node reports role " + *serving_role;
            }
        }
        if (!why.empty()) {
            log::warning("redis.master_moved", {{"master", cfg_.sentinel.master},
                                                {"sentinel", address(answer->sentinel)},
                                                {"from", address(serving)},
                                                {"to", address(named)},
                                                {"why", why}});
            close_io();
            co_return;
        }
        if (disagreed != named) {
            disagreed = named;
            log::warning("redis.sentinel_disagrees",
                         {{"master", cfg_.sentinel.master},
                          {"sentinel", address(answer->sentinel)},
                          {"named", address(named)},
                          {"named_role", named_role ? *named_role : named_role.error().message()},
                          {"current", address(serving)},
                          {"why", "the current node still reports role master and the one named does not: staying"}});
        }
    }
}

asio::awaitable<Result<RedisConnection::SentinelAnswer>> RedisConnection::ask_sentinels()
{
    error_code last = make_error_code(errc::store_unavailable);
    const std::vector<config::Endpoint> order = sentinels_;  // a copy: nothing held across co_await
    for (const config::Endpoint& node : order) {
        if (stopped_) {
            co_return make_error_code(errc::shutting_down);
        }
        Result<config::Endpoint> master = co_await ask_sentinel_within(node, true);
        if (stopped_) {
            co_return make_error_code(errc::shutting_down);
        }
        if (!master) {
            last = master.error();
            continue;
        }
        SentinelAnswer answer{.sentinel = node, .master = std::move(*master)};
        co_return answer;
    }
    co_return last;
}

asio::awaitable<Result<config::Endpoint>> RedisConnection::ask_sentinel_within(config::Endpoint node, bool quiet)
{
    using namespace asio::experimental::awaitable_operators;
    // A member timer, so that stop() ends the wait (and with it the attempt) at once.
    sentinel_timer_.expires_after(cfg_.connect_timeout);
    auto attempt = ask_sentinel(node, quiet) || sentinel_timer_.async_wait(kUseTuple);
    auto winner = co_await std::move(attempt);
    if (stopped_) {
        co_return make_error_code(errc::shutting_down);
    }
    if (winner.index() == 1) {
        if (!quiet) {
            log::warning("redis.sentinel_failed",
                         {{"sentinel", address(node)}, {"error", "no answer within connect_timeout"}});
        }
        co_return make_error_code(errc::timeout);
    }
    Result<config::Endpoint> master = std::move(std::get<0>(winner));
    co_return master;
}

asio::awaitable<Result<std::string>> RedisConnection::probe_role_within(config::Endpoint node)
{
    using namespace asio::experimental::awaitable_operators;
    probe_timer_.expires_after(cfg_.connect_timeout);
    auto attempt = probe_role(node) || probe_timer_.async_wait(kUseTuple);
    auto winner = co_await std::move(attempt);
    if (stopped_) {
        co_return make_error_code(errc::shutting_down);
    }
    if (winner.index() == 1) {
        co_return make_error_code(errc::timeout);
    }
    Result<std::string> role = std::move(std::get<0>(winner));
    co_return role;
}

asio::awaitable<Result<std::string>> RedisConnection::probe_role(config::Endpoint node)
{
    const auto deadline = std::chrono::steady_clock::now() + cfg_.connect_timeout;
    Resolved resolved = co_await resolve_until(executor_, node.host, node.port, deadline);
    if (resolved.error) {
        co_return resolved.error;
    }
    tcp::socket socket(executor_);
    auto [cec, endpoint] = co_await asio::async_connect(socket, resolved.endpoints, kUseTuple);
    if (cec) {
        co_return cec;
    }
    std::string request;
    const bool auth = !cfg_.password.empty();
    if (auth) {
        std::vector<std::string> command{"AUTH"};
        if (!cfg_.username.empty()) {
            command.push_back(cfg_.username);
        }
        command.push_back(cfg_.password);
        append_command(request, command);
    }
    const std::vector<std::string> hello{"HELLO", "2"};
    append_command(request, hello);
    auto [wec, written] = co_await asio::async_write(socket, asio::buffer(request), kUseTuple);
    if (wec) {
        co_return wec;
    }
    std::unique_ptr<redisReader, ReaderFree> reader(make_reader());
    if (reader == nullptr) {
        co_return make_error_code(errc::internal);
    }
    std::vector<Reply> replies;
    const std::size_t expected = auth ? 2 : 1;
    std::array<char, 1024> buf{};
    const asio::mutable_buffer into = asio::buffer(buf);  // named: STYLE.md §3
    if (error_code rec = co_await read_replies(socket, *reader, into, expected, replies)) {
        co_return rec;
    }
    // A refused AUTH: its error text (no secret in it) stands for the role, which is no master.
    std::string role = auth && !replies[0].is_status("OK") ? replies[0].str : hello_role(replies[expected - 1]);
    co_return role;
}

asio::awaitable<Result<config::Endpoint>> RedisConnection::ask_sentinel(config::Endpoint node, bool quiet)
{
    const std::string where = node.host + ":" + std::to_string(node.port);
    // Failures are logged here unless the caller logs them (the watch), or the attempt was
    // cancelled (its deadline, or stop()): then nothing went wrong with the sentinel yet.
    const asio::cancellation_state cancel = co_await asio::this_coro::cancellation_state;
    const auto failed = [&](std::string_view error) {
        if (!quiet && cancel.cancelled() == asio::cancellation_type::none) {
            log::warning("redis.sentinel_failed", {{"sentinel", where}, {"error", error}});
        }
    };
    const auto deadline = std::chrono::steady_clock::now() + cfg_.connect_timeout;
    Resolved resolved = co_await resolve_until(executor_, node.host, node.port, deadline);
    if (resolved.error) {
        failed(resolved.error.message());
        co_return resolved.error;
    }
    tcp::socket socket(executor_);
    auto [cec, endpoint] = co_await asio::async_connect(socket, resolved.endpoints, kUseTuple);
    if (cec) {
        failed(cec.message());
        co_return cec;
    }
    std::string request;
    const bool auth = !cfg_.sentinel.password.empty();
    if (auth) {
        std::vector<std::string> command{"AUTH"};
        if (!cfg_.sentinel.username.empty()) {
            command.push_back(cfg_.sentinel.username);
        }
        command.push_back(cfg_.sentinel.password);
        append_command(request, command);
    }
    const std::vector<std::string> ask{"SENTINEL", "get-master-addr-by-name", cfg_.sentinel.master};
    append_command(request, ask);
    auto [wec, written] = co_await asio::async_write(socket, asio::buffer(request), kUseTuple);
    if (wec) {
        failed(wec.message());
        co_return wec;
    }

    std::unique_ptr<redisReader, ReaderFree> reader(make_reader());
    if (reader == nullptr) {
        co_return make_error_code(errc::internal);
    }
    std::vector<Reply> replies;
    const std::size_t expected = auth ? 2 : 1;
    std::array<char, 1024> buf{};
    const asio::mutable_buffer into = asio::buffer(buf);  // named: STYLE.md §3
    if (error_code rec = co_await read_replies(socket, *reader, into, expected, replies)) {
        failed(rec.message());
        co_return rec;
    }
    if (auth && !replies[0].is_status("OK")) {
        // Never log the credentials; the sentinel's message names no secret.
        if (!quiet) {
            log::error("redis.sentinel_auth_failed", {{"sentinel", where}, {"reply", replies[0].str}});
        }
        co_return make_error_code(errc::store_unavailable);
    }
    const Reply& answer = replies[expected - 1];
    std::uint16_t port = 0;
    if (answer.is_array() && answer.elements.size() == 2 && answer.elements[0].is_string() &&
        !answer.elements[0].str.empty() && answer.elements[1].is_string()) {
        const std::string& text = answer.elements[1].str;
        const auto [end, perr] = std::from_chars(text.data(), text.data() + text.size(), port);
        if (perr != std::errc{} || end != text.data() + text.size() || port == 0) {
            port = 0;
        }
    }
    if (port == 0) {
        // nil: the sentinel does not monitor a master of that name.
        if (!quiet) {
            log::error("redis.sentinel_no_master", {{"sentinel", where},
                                                    {"master", cfg_.sentinel.master},
                                                    {"reply", answer.is_error() ? answer.str : std::string()}});
        }
        co_return make_error_code(errc::store_unavailable);
    }
    config::Endpoint master{answer.elements[0].str, port};  // named: STYLE.md §3
    co_return master;
}

asio::awaitable<void> RedisConnection::layout_loop()
{
    using Clock = std::chrono::steady_clock;
    // The session (one node) or router generation (Cluster) the verdict holds for; none checked yet.
    std::optional<std::uint64_t> checked;
    Clock::time_point recheck_at = Clock::time_point::max();
    // With Cluster, the first check waits (at most connect_timeout once usable) for every master's
    // connection: one check at start, not one per master as they come up.
    std::optional<Clock::time_point> usable_since;
    std::chrono::milliseconds retry = kBackoffMin;
    const LayoutExec exec = [this](std::vector<std::vector<std::string>> commands) {
        return exec_each_unguarded(std::move(commands));
    };
    while (!stopped_) {
        const bool up = cluster_ ? cluster_->usable() : node_ready();
        const std::uint64_t generation = cluster_ ? cluster_->generation() : session_;
        Clock::time_point until = recheck_at;
        if (cluster_ && up && !checked && !cluster_->ready()) {
            if (!usable_since) {
                usable_since = Clock::now();
            }
            if (Clock::now() < *usable_since + cfg_.connect_timeout) {
                layout_timer_.expires_at(*usable_since + cfg_.connect_timeout);  // the router wakes it when ready
                co_await layout_timer_.async_wait(kUseTuple);
                continue;
            }
        }
        if (up && (checked != generation || Clock::now() >= recheck_at)) {
            Result<LayoutVerdict> verdict = make_error_code(errc::internal);
            try {
                verdict = co_await check_layout(exec, cfg_.key_prefix, cfg_.shards);
            } catch (const std::exception& e) {
                log::error("redis.layout_check_failed", {{"what", e.what()}});
            }
            if (stopped_) {
                break;
            }
            if (!verdict) {
                // Could not tell (the connection was lost, a timeout): the verdict stays as it was.
                until = Clock::now() + retry;
                retry = std::min(retry * 2, kBackoffMax);
            } else {
                retry = kBackoffMin;
                checked = generation;
                const int before = layout_.load(std::memory_order_relaxed);
                if (verdict->kind == LayoutVerdict::Kind::mismatch) {
                    if (!refusal_counted_) {
                        refusal_counted_ = true;
                        if (g_layout_refusals.fetch_add(1, std::memory_order_relaxed) == 0) {
                            log_layout_mismatch(*verdict);
                        }
                    }
                    layout_.store(kLayoutRefused, std::memory_order_relaxed);
                    recheck_at = Clock::now() + kLayoutRecheck;
                } else {
                    uncount_refusal();
                    if (verdict->kind == LayoutVerdict::Kind::recorded) {
                        log::info("redis.layout_recorded",
                                  {{"key", verdict->key}, {"layout", verdict->expected}, {"data", verdict->why}});
                    } else if (before == kLayoutRefused) {
                        log::info("redis.layout_matches", {{"key", verdict->key}, {"layout", verdict->expected}});
                    }
                    layout_.store(kLayoutOk, std::memory_order_relaxed);
                    recheck_at = Clock::time_point::max();
                }
                if (cluster_) {
                    cluster_->set_open(layout_open());
                }
                continue;  // whatever changed during the check is looked at before waiting
            }
        } else if (!up) {
            until = Clock::time_point::max();  // run() or the router wakes the loop
        }
        if (stopped_) {
            break;
        }
        layout_timer_.expires_at(until);
        co_await layout_timer_.async_wait(kUseTuple);
    }
}

asio::awaitable<error_code> RedisConnection::connect_and_handshake()
{
    using namespace asio::experimental::awaitable_operators;
    reader_.reset(make_reader());
    partial_bytes_ = 0;
    if (reader_ == nullptr) {
        co_return make_error_code(errc::internal);
    }
    connect_timer_.expires_after(cfg_.connect_timeout);
    auto attempt = handshake() || connect_timer_.async_wait(kUseTuple);
    auto winner = co_await std::move(attempt);
    if (winner.index() == 1) {
        co_return make_error_code(errc::timeout);
    }
    connect_timer_.cancel();
    co_return std::get<0>(winner);
}

asio::awaitable<error_code> RedisConnection::handshake()
{
    error_code ec;
    close_io();
    // Bounded by the connect timeout like the rest of the handshake: Asio's resolver would not
    // stop for the timer this coroutine races against (connect_and_handshake()).
    const auto deadline = std::chrono::steady_clock::now() + cfg_.connect_timeout;
    Resolved resolved = co_await resolve_until(executor_, current_.host, current_.port, deadline);
    if (resolved.error) {
        co_return resolved.error;
    }
    auto [cec, endpoint] = co_await asio::async_connect(socket_, resolved.endpoints, kUseTuple);
    if (cec) {
        co_return cec;
    }
    socket_.set_option(tcp::no_delay(true), ec);
    // An idle connection whose peer vanished (no RST) is otherwise only noticed by the next
    // request's timeout.
    socket_.set_option(asio::socket_base::keep_alive(true), ec);

    // AUTH, SELECT and every SCRIPT LOAD go out in one write; the replies are checked in order.
    enum class Step { auth, select, role, script };  // role: HELLO's
    struct Expect {
        Step step;
        std::size_t script;
    };
    std::string request;
    std::vector<Expect> expects;
    if (!cfg_.password.empty()) {
        std::vector<std::string> auth{"AUTH"};
        if (!cfg_.username.empty()) {
            auth.push_back(cfg_.username);
        }
        auth.push_back(cfg_.password);
        append_command(request, auth);
        expects.push_back(Expect{.step = Step::auth, .script = 0});
    }
    if (cfg_.db != 0) {
        const std::vector<std::string> select{"SELECT", std::to_string(cfg_.db)};
        append_command(request, select);
        expects.push_back(Expect{.step = Step::select, .script = 0});
    }
    if (!sentinels_.empty() || checks_.master) {
        // Only a master will do: the sentinels' answer may be stale (a failover under way), and one
        // address (managed Redis) may lead to a node demoted by a failover. HELLO (protocol 2,
        // unchanged) tells the role and, unlike ROLE and INFO, needs no @dangerous.
        const std::vector<std::string> hello{"HELLO", "2"};
        append_command(request, hello);
        expects.push_back(Expect{.step = Step::role, .script = 0});
    }
    for (std::size_t i = 0; i < scripts_.size(); ++i) {
        const std::vector<std::string> load{"SCRIPT", "LOAD", scripts_[i].body};
        append_command(request, load);
        expects.push_back(Expect{.step = Step::script, .script = i});
    }
    if (expects.empty()) {
        co_return error_code{};
    }
    auto [wec, written] = co_await asio::async_write(socket_, asio::buffer(request), kUseTuple);
    if (wec) {
        co_return wec;
    }

    std::vector<Reply> replies;
    const asio::mutable_buffer into = asio::buffer(read_buf_.get(), kReadBufferSize);  // named: STYLE.md §3
    if (error_code rec = co_await read_replies(socket_, *reader_, into, expects.size(), replies)) {
        co_return rec;
    }
    if (replies.size() != expects.size()) {
        co_return make_error_code(errc::store_unavailable);  // a reply nothing asked for
    }
    for (std::size_t next = 0; next < expects.size(); ++next) {
        const Reply& reply = replies[next];
        const Expect expect = expects[next];
        switch (expect.step) {
            case Step::auth:
                if (!reply.is_status("OK")) {
                    // Never log the credentials; Redis's message names no secret.
                    log::error("redis.auth_failed", {{"user", cfg_.username}, {"reply", reply.str}});
                    co_return make_error_code(errc::store_unavailable);
                }
                break;
            case Step::select:
                if (!reply.is_status("OK")) {
                    log::error("redis.select_failed", {{"db", cfg_.db}, {"reply", reply.str}});
                    co_return make_error_code(errc::store_unavailable);
                }
                break;
            case Step::role: {
                const std::string role = hello_role(reply);
                if (role != "master") {
                    log::warning("redis.not_master", {{"host", current_.host},
                                                      {"port", static_cast<int>(current_.port)},
                                                      {"role", role}});
                    co_return make_error_code(errc::store_unavailable);
                }
                break;
            }
            case Step::script:
                if (!reply.is_string() || reply.str != scripts_[expect.script].sha) {
                    log::error("redis.script_load_failed",
                               {{"sha", scripts_[expect.script].sha}, {"reply", reply.str}});
                    co_return make_error_code(errc::store_unavailable);
                }
                break;
        }
    }
    co_return error_code{};
}

asio::awaitable<void> RedisConnection::read_loop()
{
    for (;;) {
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(read_buf_.get(), kReadBufferSize), kUseTuple);
        if (ec) {
            if (socket_.is_open() && ec != asio::error::operation_aborted) {
                log::warning("redis.read_failed", {{"error", ec.message()}});
            }
            break;
        }
        if (!socket_.is_open()) {
            break;  // closed (stop, a timeout) while this read's completion was queued
        }
        if (pending_.empty()) {
            // Every reply answers a request in pending_ (one that timed out stays there, abandoned,
            // until its reply is read): bytes now are a reply nothing asked for.
            log::error("redis.unexpected_reply", {{"bytes", n}});
            break;
        }
        if (redisReaderFeed(reader_.get(), read_buf_.get(), n) != REDIS_OK) {
            log::error("redis.protocol_error", {{"error", reader_->errstr}});
            break;
        }
        partial_bytes_ += n;
        bool ok = true;
        bool replied = false;
        for (;;) {
            void* raw = nullptr;
            if (redisReaderGetReply(reader_.get(), &raw) != REDIS_OK) {
                log::error("redis.protocol_error", {{"error", reader_error(*reader_)}});
                ok = false;
                break;
            }
            if (raw == nullptr) {
                break;
            }
            if (pending_.empty()) {
                ReplyPtr stray(static_cast<Reply*>(raw));
                log::error("redis.unexpected_reply", {});
                ok = false;
                break;
            }
            deliver_front(raw);
            replied = true;
        }
        if (replied) {
            // A reply came: not stuck. Only bytes of a reply the reader has not finished remain
            // (an aggregate's elements already parsed are not counted: at most one read's worth).
            waiting_since_ = std::chrono::steady_clock::now();
            partial_bytes_ = reader_->len - reader_->pos;
        }
        update_in_flight();
        if (!ok) {
            break;
        }
        if (partial_bytes_ > kMaxReplyBytes) {
            log::error("redis.reply_too_large",
                       {{"bytes", partial_bytes_}, {"limit", kMaxReplyBytes}, {"host", current_.host},
                        {"port", static_cast<int>(current_.port)}});
            break;
        }
        if (demoted_) {
            log::warning("redis.readonly",
                         {{"host", current_.host},
                          {"port", static_cast<int>(current_.port)},
                          {"why", sentinels_.empty() ? "the node refused a write as a replica: connecting again"
                                                     : "the node refused a write as a replica: asking the sentinels again"}});
            break;
        }
    }
    close_io();
}

asio::awaitable<void> RedisConnection::write_loop()
{
    while (socket_.is_open()) {
        if (out_buf_.empty()) {
            writer_idle_ = true;
            write_signal_.expires_at(asio::steady_timer::time_point::max());
            co_await write_signal_.async_wait(kUseTuple);
            writer_idle_ = false;
            continue;
        }
        // Everything queued since the last write goes out in one write; callers arriving while it
        // is in flight accumulate in out_buf_ for the next one.
        write_buf_.swap(out_buf_);
        if (counted_unsent_ > 0) {  // not a write of the role check alone
            stats_->writes.fetch_add(1, std::memory_order_relaxed);
        }
        counted_unsent_ = 0;
        auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(write_buf_), kUseTuple);
        write_buf_.clear();
        if (ec) {
            if (socket_.is_open()) {
                log::warning("redis.write_failed", {{"error", ec.message()}});
            }
            break;
        }
    }
    close_io();
}

}  // namespace paybridge::store
