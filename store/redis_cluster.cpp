#include "store/redis_cluster.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "store/cluster_slot.hpp"

#include <boost/asio/co_spawn.hpp>

#include <algorithm>
#include <charconv>
#include <exception>

namespace paybridge::store {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr std::chrono::milliseconds kRefreshReady{5'000};
constexpr std::chrono::milliseconds kRefreshNotReady{1'000};
// At least this long between two slot-map questions, so a burst of MOVED replies costs one.
constexpr std::chrono::milliseconds kRefreshGap{100};
constexpr int kMaxRedirects = 5;
constexpr std::chrono::milliseconds kRetryPauseMin{20};

std::string where(const config::Endpoint& at) { return at.host + ":" + std::to_string(at.port); }

bool parse_port(std::string_view text, std::uint16_t& port) noexcept
{
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
    return ec == std::errc{} && end == text.data() + text.size() && port != 0;
}

// "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>". An empty host (Redis 7: the node's
// endpoint is unknown) means the host of the node that replied.
struct Redirect {
    bool ask{false};
    int slot{0};
    config::Endpoint to;
};

std::optional<Redirect> parse_redirect(std::string_view error, const config::Endpoint& from)
{
    Redirect r;
    if (error.starts_with("MOVED ")) {
        error.remove_prefix(6);
    } else if (error.starts_with("ASK ")) {
        error.remove_prefix(4);
        r.ask = true;
    } else {
        return std::nullopt;
    }
    const std::size_t space = error.find(' ');
    if (space == std::string_view::npos) {
        return std::nullopt;
    }
    const std::string_view slot = error.substr(0, space);
    const std::string_view address = error.substr(space + 1);
    const auto [end, ec] = std::from_chars(slot.data(), slot.data() + slot.size(), r.slot);
    if (ec != std::errc{} || end != slot.data() + slot.size() || r.slot < 0 || r.slot >= kClusterSlots) {
        return std::nullopt;
    }
    const std::size_t colon = address.rfind(':');  // an IPv6 address has colons of its own
    if (colon == std::string_view::npos || !parse_port(address.substr(colon + 1), r.to.port)) {
        return std::nullopt;
    }
    r.to.host = colon == 0 ? from.host : std::string(address.substr(0, colon));
    return r;
}

bool retry_later(const Reply& reply) noexcept
{
    // TRYAGAIN: a multi-key command during a slot's migration; CLUSTERDOWN: the cluster is
    // reconfiguring (a failover under way, a slot without a master).
    return reply.is_error() && (reply.str.starts_with("TRYAGAIN") || reply.str.starts_with("CLUSTERDOWN"));
}

bool redirected(const Reply& reply) noexcept
{
    return reply.is_error() && (reply.str.starts_with("MOVED ") || reply.str.starts_with("ASK ") || retry_later(reply));
}

}  // namespace

ClusterRouter::ClusterRouter(asio::any_io_executor executor, const config::RedisConfig& cfg, RedisStats& stats)
    : executor_(std::move(executor)),
      node_cfg_(cfg),
      seeds_(cfg.cluster.nodes),
      stats_(stats),
      owner_(kClusterSlots, kNoNode),
      refresh_timer_(executor_),
      gap_timer_(executor_)
{
    node_cfg_.cluster = {};
    node_cfg_.sentinel = {};
    node_cfg_.db = 0;
}

ClusterRouter::~ClusterRouter() = default;

void ClusterRouter::add_script(const std::string& body)
{
    scripts_.push_back(body);
    for (const std::unique_ptr<Node>& node : nodes_) {
        node->conn->add_script(body);
    }
}

void ClusterRouter::start()
{
    if (started_ || stopped_) {
        return;
    }
    started_ = true;
    for (const config::Endpoint& seed : seeds_) {
        node_for(seed);
    }
    asio::co_spawn(executor_, topology_loop(), [](std::exception_ptr e) {
        if (!e) {
            return;
        }
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log::error("redis.cluster_loop_failed", {{"error", ex.what()}});
        }
    });
}

void ClusterRouter::stop()
{
    if (stopped_) {
        return;
    }
    stopped_ = true;
    refresh_timer_.cancel();
    gap_timer_.cancel();
    for (const std::unique_ptr<Node>& node : nodes_) {
        node->conn->stop();
    }
}

bool ClusterRouter::ready() const noexcept
{
    if (masters_.empty() || unowned_ != 0) {
        return false;
    }
    for (std::uint16_t m : masters_) {
        if (!nodes_[m]->conn->node_ready()) {
            return false;
        }
    }
    return true;
}

std::string ClusterRouter::owner_of(int slot) const
{
    if (slot < 0 || slot >= kClusterSlots || owner_[static_cast<std::size_t>(slot)] == kNoNode) {
        return {};
    }
    return where(nodes_[owner_[static_cast<std::size_t>(slot)]]->at);
}

std::uint16_t ClusterRouter::node_for(const config::Endpoint& at)
{
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
        if (!nodes_[i]->retired && nodes_[i]->at == at) {
            return static_cast<std::uint16_t>(i);
        }
    }
    if (nodes_.size() >= kNoNode) {
        throw std::runtime_error("redis cluster: too many node connections");
    }
    config::RedisConfig cfg = node_cfg_;
    cfg.host = at.host;
    cfg.port = at.port;
    auto node = std::make_unique<Node>();
    node->at = at;
    node->conn = std::make_unique<RedisConnection>(executor_, cfg, stats_);
    for (const std::string& body : scripts_) {
        node->conn->add_script(body);
    }
    if (started_ && !stopped_) {
        node->conn->start();
    }
    nodes_.push_back(std::move(node));
    return static_cast<std::uint16_t>(nodes_.size() - 1);
}

std::uint16_t ClusterRouter::any_ready_master() const noexcept
{
    for (std::uint16_t m : masters_) {
        if (nodes_[m]->conn->node_ready()) {
            return m;
        }
    }
    return masters_.empty() ? kNoNode : masters_.front();
}

std::uint16_t ClusterRouter::route(const std::vector<std::string>& argv) const noexcept
{
    const std::optional<std::string_view> key = command_key(argv);
    if (!key) {
        return any_ready_master();
    }
    return owner_[static_cast<std::size_t>(key_slot(*key))];
}

void ClusterRouter::refresh_soon() noexcept
{
    refresh_wanted_ = true;
    refresh_timer_.cancel();
}

void ClusterRouter::set_owner(int slot, std::uint16_t node)
{
    if (owner_[static_cast<std::size_t>(slot)] == kNoNode) {
        --unowned_;
    }
    owner_[static_cast<std::size_t>(slot)] = node;
    if (std::find(masters_.begin(), masters_.end(), node) == masters_.end()) {
        masters_.push_back(node);
    }
}

asio::awaitable<void> ClusterRouter::topology_loop()
{
    while (!stopped_) {
        refresh_wanted_ = false;
        co_await refresh();
        if (stopped_) {
            break;
        }
        gap_timer_.expires_after(kRefreshGap);
        co_await gap_timer_.async_wait(kUseTuple);
        if (stopped_) {
            break;
        }
        if (refresh_wanted_) {
            continue;
        }
        refresh_timer_.expires_after((ready() ? kRefreshReady : kRefreshNotReady) - kRefreshGap);
        co_await refresh_timer_.async_wait(kUseTuple);  // cancelled by refresh_soon() and stop()
    }
}

asio::awaitable<bool> ClusterRouter::refresh()
{
    for (int pass = 0; pass < 2 && !stopped_; ++pass) {
        // By index: a request may add a node while this waits for an answer.
        for (std::size_t i = 0; i < nodes_.size() && !stopped_; ++i) {
            if (nodes_[i]->retired || !nodes_[i]->conn->node_ready()) {
                continue;
            }
            const config::Endpoint asked = nodes_[i]->at;
            std::vector<std::string> question{"CLUSTER", "SLOTS"};
            Result<Reply> answer = co_await nodes_[i]->conn->exec(std::move(question));
            if (stopped_) {
                co_return false;
            }
            if (answer && apply_slots(*answer, asked)) {
                co_return true;
            }
            if (answer) {
                log::warning("redis.cluster_slots_refused",
                             {{"node", where(asked)}, {"reply", answer->is_error() ? answer->str : "malformed"}});
            }
        }
        if (pass == 1) {
            break;
        }
        // No node answered: go back to the configured ones (the whole cluster may have moved),
        // and give the connections made for them the connect timeout to come up.
        for (const config::Endpoint& seed : seeds_) {
            node_for(seed);
        }
        const auto until = std::chrono::steady_clock::now() + node_cfg_.connect_timeout;
        for (;;) {
            const bool any = std::any_of(nodes_.begin(), nodes_.end(), [](const std::unique_ptr<Node>& n) {
                return !n->retired && n->conn->node_ready();
            });
            if (any || stopped_ || std::chrono::steady_clock::now() >= until) {
                break;
            }
            gap_timer_.expires_after(std::chrono::milliseconds(10));
            co_await gap_timer_.async_wait(kUseTuple);
        }
    }
    if (!stopped_) {
        log::warning("redis.cluster_unreachable",
                     {{"why", "no node answered CLUSTER SLOTS; each connection's failure is logged above"}});
    }
    co_return false;
}

bool ClusterRouter::apply_slots(const Reply& reply, const config::Endpoint& asked)
{
    // [[start, end, [host, port, id, ...], replicas...], ...]
    struct Range {
        int start;
        int end;
        config::Endpoint master;
    };
    if (!reply.is_array()) {
        return false;
    }
    std::vector<Range> ranges;
    for (const Reply& r : reply.elements) {
        if (!r.is_array() || r.elements.size() < 3 || !r.elements[0].is_integer() || !r.elements[1].is_integer() ||
            !r.elements[2].is_array() || r.elements[2].elements.size() < 2 || !r.elements[2].elements[1].is_integer()) {
            return false;
        }
        const std::int64_t start = r.elements[0].integer;
        const std::int64_t end = r.elements[1].integer;
        const std::int64_t port = r.elements[2].elements[1].integer;
        if (start < 0 || end < start || end >= kClusterSlots || port <= 0 || port > 65535) {
            return false;
        }
        // A null, empty or "?" host: the node's endpoint is unknown; it is the host that answered.
        const Reply& host = r.elements[2].elements[0];
        config::Endpoint master{(host.str.empty() || host.str == "?") ? asked.host : host.str,
                                static_cast<std::uint16_t>(port)};
        ranges.push_back(Range{static_cast<int>(start), static_cast<int>(end), std::move(master)});
    }

    std::vector<std::uint16_t> owner(kClusterSlots, kNoNode);
    std::vector<std::uint16_t> masters;
    for (const Range& range : ranges) {
        const std::uint16_t node = node_for(range.master);
        std::fill(owner.begin() + range.start, owner.begin() + range.end + 1, node);
        if (std::find(masters.begin(), masters.end(), node) == masters.end()) {
            masters.push_back(node);
        }
    }
    const bool changed = owner != owner_;
    owner_ = std::move(owner);
    masters_ = std::move(masters);
    unowned_ = static_cast<int>(std::count(owner_.begin(), owner_.end(), kNoNode));
    // Connections to nodes that own no slot now (replicas, seeds, former masters) are closed;
    // requests still on them fail (store_unavailable) and the provider retries.
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
        Node& node = *nodes_[i];
        if (!node.retired && std::find(masters_.begin(), masters_.end(), i) == masters_.end()) {
            node.retired = true;
            node.conn->stop();
        }
    }
    if (changed) {
        std::string names;
        for (std::uint16_t m : masters_) {
            names += (names.empty() ? "" : " ") + where(nodes_[m]->at);
        }
        log::info("redis.cluster_map", {{"masters", names}, {"slots_covered", kClusterSlots - unowned_}});
    }
    return true;
}

asio::awaitable<Result<Reply>> ClusterRouter::exec(std::vector<std::string> argv)
{
    const std::uint16_t node = route(argv);
    Result<Reply> reply = co_await run_routed(std::move(argv), node, std::nullopt);
    co_return reply;
}

asio::awaitable<Result<Reply>> ClusterRouter::run_routed(std::vector<std::string> argv, std::uint16_t node,
                                                         std::optional<Reply> first)
{
    const auto deadline = std::chrono::steady_clock::now() + node_cfg_.request_timeout;
    bool asking = false;
    int redirects = 0;
    std::chrono::milliseconds pause = kRetryPauseMin;
    for (;;) {
        Reply reply;
        if (first) {
            reply = std::move(*first);
            first.reset();
        } else {
            if (node == kNoNode || stopped_) {
                refresh_soon();
                co_return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
            }
            RedisConnection& conn = *nodes_[node]->conn;
            if (!conn.node_ready()) {
                // A node first named by a redirection, or one reconnecting.
                const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
                const bool up = co_await conn.wait_ready(std::max(std::chrono::milliseconds(0), left));
                if (!up) {
                    refresh_soon();
                    co_return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
                }
            }
            error_code ec;
            if (asking) {
                std::vector<std::vector<std::string>> both{{"ASKING"}, argv};
                std::vector<Reply> replies(2);
                ec = co_await conn.submit(both.data(), both.size(), replies.data());
                reply = std::move(replies[1]);
            } else {
                ec = co_await conn.submit(&argv, 1, &reply);
            }
            if (ec) {
                if (ec != errc::timeout && ec != errc::invalid_argument) {
                    refresh_soon();  // the node may have failed over
                }
                // A retired node's connection says shutting_down; this router is not shutting down.
                if (ec == errc::shutting_down && !stopped_) {
                    ec = make_error_code(errc::store_unavailable);
                }
                co_return ec;
            }
        }
        if (!redirected(reply)) {
            co_return reply;
        }
        const config::Endpoint from = node == kNoNode ? config::Endpoint{} : nodes_[node]->at;
        if (std::optional<Redirect> to = parse_redirect(reply.str, from)) {
            if (++redirects > kMaxRedirects) {
                log::warning("redis.cluster_redirect_loop", {{"slot", to->slot}, {"reply", reply.str}});
                co_return reply;
            }
            stats_.redirects.fetch_add(1, std::memory_order_relaxed);
            node = node_for(to->to);
            asking = to->ask;
            if (!to->ask) {
                // The slot has moved for good: this and later commands go to its new master, and
                // the rest of the map is read again (a resharding moves more than one slot).
                set_owner(to->slot, node);
                refresh_soon();
            }
            continue;
        }
        if (retry_later(reply)) {
            if (std::chrono::steady_clock::now() + pause >= deadline || stopped_) {
                co_return reply;
            }
            // In slices, so that stop() is not kept waiting for a whole pause.
            asio::steady_timer timer(executor_);
            for (const auto until = std::chrono::steady_clock::now() + pause;
                 !stopped_ && std::chrono::steady_clock::now() < until;) {
                timer.expires_after(std::min<std::chrono::steady_clock::duration>(
                    std::chrono::milliseconds(10), until - std::chrono::steady_clock::now()));
                co_await timer.async_wait(kUseTuple);
            }
            pause *= 2;
            asking = false;
            node = route(argv);
            continue;
        }
        co_return reply;  // a MOVED/ASK reply that does not parse: given to the caller as it is
    }
}

asio::awaitable<Result<std::vector<Reply>>> ClusterRouter::exec_many(std::vector<std::vector<std::string>> commands)
{
    const std::size_t n = commands.size();
    std::vector<Reply> replies(n);
    // Each command's node; a keyless one goes with the command before it, else the one after it.
    std::vector<std::uint16_t> target(n, kNoNode);
    std::vector<bool> keyless(n, false);
    for (std::size_t i = 0; i < n; ++i) {
        const std::optional<std::string_view> key = command_key(commands[i]);
        if (key) {
            target[i] = owner_[static_cast<std::size_t>(key_slot(*key))];
            if (target[i] == kNoNode) {
                refresh_soon();
                co_return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
            }
        } else {
            keyless[i] = true;
        }
    }
    for (std::size_t i = 0; i < n; ++i) {
        if (!keyless[i]) {
            continue;
        }
        for (std::size_t j = i; j-- > 0;) {
            if (!keyless[j]) {
                target[i] = target[j];
                break;
            }
        }
        for (std::size_t j = i + 1; target[i] == kNoNode && j < n; ++j) {
            if (!keyless[j]) {
                target[i] = target[j];
            }
        }
        if (target[i] == kNoNode) {
            target[i] = any_ready_master();
        }
    }

    std::vector<bool> sent(n, false);
    for (std::size_t first = 0; first < n; ++first) {
        if (sent[first]) {
            continue;
        }
        const std::uint16_t node = target[first];
        std::vector<std::size_t> index;
        std::vector<std::vector<std::string>> part;
        for (std::size_t i = first; i < n; ++i) {
            if (!sent[i] && target[i] == node) {
                sent[i] = true;
                index.push_back(i);
                part.push_back(std::move(commands[i]));
            }
        }
        if (node == kNoNode || stopped_) {
            refresh_soon();
            co_return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
        }
        RedisConnection& conn = *nodes_[node]->conn;
        if (!conn.node_ready()) {
            const bool up = co_await conn.wait_ready(node_cfg_.connect_timeout);
            if (!up) {
                refresh_soon();
                co_return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
            }
        }
        std::vector<Reply> got(part.size());
        error_code ec = co_await conn.submit(part.data(), part.size(), got.data());
        if (ec) {
            if (ec != errc::timeout && ec != errc::invalid_argument) {
                refresh_soon();
            }
            if (ec == errc::shutting_down && !stopped_) {
                ec = make_error_code(errc::store_unavailable);
            }
            co_return ec;
        }
        bool moved = false;
        for (std::size_t k = 0; k < part.size(); ++k) {
            if (moved && !command_key(part[k])) {
                log::warning("redis.cluster_batch_redirected",
                             {{"why", "a keyless command followed a redirected one on the same node"}});
                co_return make_error_code(errc::store_unavailable);
            }
            if (redirected(got[k])) {
                moved = true;
                Result<Reply> again = co_await run_routed(std::move(part[k]), node, std::move(got[k]));
                if (!again) {
                    co_return again.error();
                }
                got[k] = std::move(*again);
            }
            replies[index[k]] = std::move(got[k]);
        }
    }
    co_return std::move(replies);
}

}  // namespace paybridge::store
