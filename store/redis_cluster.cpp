#include "store/redis_cluster.hpp"

#include "core/async.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "store/cluster_slot.hpp"
#include "store/resp.hpp"

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
// After a failed node (rather than a MOVED): at least this long since the last question, so an
// outage seen by many requests costs one question a second, not one per request.
constexpr std::chrono::milliseconds kRefreshAfterFailure{1'000};
constexpr int kMaxRedirects = 5;
// Redis Cluster is designed for up to 1,000 nodes. A slot map or a redirection that would take
// paybridge past that many node connections (each a socket, a 64 KiB buffer and the credentials
// sent to it) comes from a broken or hostile node and is not followed.
constexpr std::size_t kMaxNodes = 1'000;
// TRYAGAIN and CLUSTERDOWN: retried after 25, 50, 100, 200, 250, 250 ... ms, until the request's
// deadline.
constexpr std::chrono::milliseconds kRetryPauseMin{25};
constexpr std::chrono::milliseconds kRetryPauseMax{250};

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
    // An empty or "?" host: the node's endpoint is unknown; it is the host that replied.
    const std::string_view host = address.substr(0, colon);
    r.to.host = (host.empty() || host == "?") ? from.host : std::string(host);
    return r;
}

bool retry_later(const Reply& reply) noexcept
{
    // TRYAGAIN: a multi-key command during a slot's migration; CLUSTERDOWN: the cluster is
    // reconfiguring (a failover under way, a slot without a master).
    return reply.is_error() && (reply.str.starts_with("TRYAGAIN") || reply.str.starts_with("CLUSTERDOWN"));
}


}  // namespace


// Keeps a node's connection from being freed while a request uses it.
class ClusterRouter::Use {
public:
    Use(ClusterRouter& router, std::uint16_t index) : node_(*router.nodes_[index]) { ++node_.users; }
    ~Use() { --node_.users; }
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;
    RedisConnection& conn() const noexcept { return *node_.conn; }

private:
    Node& node_;
};

bool ClusterRouter::redirection(const Reply& reply) noexcept
{
    return reply.is_error() && (reply.str.starts_with("MOVED ") || reply.str.starts_with("ASK ") || retry_later(reply));
}

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
        if (node->conn) {
            node->conn->add_script(body);
        }
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
    asio::co_spawn(executor_, topology_loop(), LogFailure("redis.cluster_loop_failed"));
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
        if (node->conn) {
            node->conn->stop();
        }
    }
    update_ready();
}

void ClusterRouter::node_changed() noexcept
{
    update_ready();
    if (!ready()) {
        refresh_soon(false);  // a master lost: a failover may follow
    }
}

void ClusterRouter::set_on_change(std::function<void()> f) { on_change_ = std::move(f); }

void ClusterRouter::update_ready() noexcept
{
    bool all = !stopped_ && unowned_ == 0 && !masters_.empty();
    bool any = false;
    for (std::uint16_t m : masters_) {
        const bool up = nodes_[m]->conn && nodes_[m]->conn->node_ready();
        any = any || up;
        all = all && up;
    }
    const bool was_ready = ready_.exchange(all, std::memory_order_relaxed);
    const bool usable = !stopped_ && unowned_ == 0 && any;
    const bool was_usable = usable_.exchange(usable, std::memory_order_relaxed);
    if ((all && !was_ready) || (usable && !was_usable)) {
        ++generation_;
        if (on_change_) {
            on_change_();  // the owner's key-layout check runs again
        }
    }
}

std::string ClusterRouter::node_of(std::string_view key) const
{
    const std::uint16_t owner = owner_[static_cast<std::size_t>(key_slot(key))];
    return owner == kNoNode ? std::string() : where(nodes_[owner]->at);
}

bool ClusterRouter::knows(const config::Endpoint& at) const
{
    return std::any_of(nodes_.begin(), nodes_.end(),
                       [&at](const std::unique_ptr<Node>& n) { return n->conn && !n->retired && n->at == at; });
}

std::size_t ClusterRouter::live_nodes() const
{
    return static_cast<std::size_t>(
        std::count_if(nodes_.begin(), nodes_.end(), [](const std::unique_ptr<Node>& n) { return n->conn != nullptr; }));
}

std::uint16_t ClusterRouter::node_for(const config::Endpoint& at)
{
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
        if (nodes_[i]->conn && !nodes_[i]->retired && nodes_[i]->at == at) {
            return static_cast<std::uint16_t>(i);
        }
    }
    config::RedisConfig cfg = node_cfg_;
    cfg.host = at.host;
    cfg.port = at.port;
    auto conn = std::make_unique<RedisConnection>(executor_, cfg, stats_);
    conn->router_ = this;
    for (const std::string& body : scripts_) {
        conn->add_script(body);
    }
    // An entry whose connection was freed is reused, so the table does not grow with every
    // node that comes and goes.
    std::size_t index = nodes_.size();
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
        if (!nodes_[i]->conn && nodes_[i]->users == 0) {
            index = i;
            break;
        }
    }
    if (index == nodes_.size()) {
        if (nodes_.size() >= kNoNode) {
            throw std::runtime_error("redis cluster: too many node connections");
        }
        nodes_.push_back(std::make_unique<Node>());
    }
    Node& node = *nodes_[index];
    node.at = at;
    node.conn = std::move(conn);
    node.retired = false;
    node.serial = ++last_serial_;
    if (started_ && !stopped_) {
        node.conn->start();
    }
    return static_cast<std::uint16_t>(index);
}

void ClusterRouter::free_idle_nodes() noexcept
{
    for (const std::unique_ptr<Node>& node : nodes_) {
        if (node->retired && node->conn && node->users == 0 && (node->conn->run_done_ || !node->conn->started_)) {
            node->conn.reset();
        }
    }
}

std::uint16_t ClusterRouter::any_ready_master() const noexcept
{
    for (std::uint16_t m : masters_) {
        if (nodes_[m]->conn && nodes_[m]->conn->node_ready()) {
            return m;
        }
    }
    return masters_.empty() ? kNoNode : masters_.front();
}

std::uint16_t ClusterRouter::slot_owner(const std::vector<std::string>& argv, bool& keyless) const noexcept
{
    const std::optional<std::string_view> key = command_key(argv);
    keyless = !key;
    return key ? owner_[static_cast<std::size_t>(key_slot(*key))] : kNoNode;
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
    update_ready();
}

void ClusterRouter::refresh_soon(bool moved) noexcept
{
    if (stopped_ || !started_) {
        return;
    }
    const Clock::time_point at = last_refresh_ + (moved ? kRefreshGap : kRefreshAfterFailure);
    if (at < next_refresh_) {
        next_refresh_ = at;
        refresh_timer_.cancel();  // the loop waits again, until the new time
    }
}

error_code ClusterRouter::failed(std::size_t n) noexcept
{
    stats_.errors.fetch_add(n, std::memory_order_relaxed);
    return make_error_code(stopped_ ? errc::shutting_down : errc::store_unavailable);
}

asio::awaitable<void> ClusterRouter::topology_loop()
{
    while (!stopped_) {
        // An exception (an allocation failing, too many nodes) ends one round, not the loop:
        // without the barrier the map would never be read again.
        bool broke = false;
        try {
            last_refresh_ = Clock::now();
            next_refresh_ = Clock::time_point::max();
            co_await refresh();
            free_idle_nodes();
            const Clock::time_point due = last_refresh_ + (ready() ? kRefreshReady : kRefreshNotReady);
            next_refresh_ = std::min(next_refresh_, due);
            while (!stopped_ && Clock::now() < next_refresh_) {
                refresh_timer_.expires_at(next_refresh_);
                co_await refresh_timer_.async_wait(kUseTuple);  // cancelled by refresh_soon() and stop()
            }
        } catch (const std::exception& e) {
            log::error("redis.cluster_refresh_failed", {{"error", e.what()}});
            broke = true;
        }
        if (broke && !stopped_) {
            gap_timer_.expires_after(kRefreshAfterFailure);
            co_await gap_timer_.async_wait(kUseTuple);
        }
    }
}

asio::awaitable<bool> ClusterRouter::refresh()
{
    for (int pass = 0; pass < 2 && !stopped_; ++pass) {
        // The last MOVED's target first (it knows the newest map), then every node in turn,
        // starting one further each time, so a node with a stale view is not the only one asked.
        std::vector<std::uint16_t> order;
        if (prefer_ != kNoNode) {
            order.push_back(prefer_);
        }
        prefer_ = kNoNode;
        const std::size_t n = nodes_.size();
        for (std::size_t k = 0; k < n; ++k) {
            const auto i = static_cast<std::uint16_t>((next_asked_ + k) % n);
            if (order.empty() || order.front() != i) {
                order.push_back(i);
            }
        }
        ++next_asked_;
        for (std::uint16_t i : order) {
            if (stopped_) {
                co_return false;
            }
            if (i >= nodes_.size() || !nodes_[i]->conn || nodes_[i]->retired || !nodes_[i]->conn->node_ready()) {
                continue;
            }
            const config::Endpoint asked = nodes_[i]->at;
            Use use(*this, i);
            std::vector<std::string> question{"CLUSTER", "SLOTS"};
            Result<Reply> answer = co_await use.conn().exec(std::move(question));
            if (stopped_) {
                co_return false;
            }
            if (answer && apply_slots(*answer, asked)) {
                if (map_failing_) {
                    map_failing_ = false;
                    log::info("redis.cluster_map_read", {{"node", where(asked)}});
                }
                co_return true;
            }
            if (answer && !map_failing_) {
                log::warning("redis.cluster_slots_refused",
                             {{"node", where(asked)},
                              {"reply", answer->is_error() ? answer->str : "malformed, or covering no slot"}});
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
        const Clock::time_point until = Clock::now() + node_cfg_.connect_timeout;
        for (;;) {
            const bool any = std::any_of(nodes_.begin(), nodes_.end(), [](const std::unique_ptr<Node>& node) {
                return node->conn && !node->retired && node->conn->node_ready();
            });
            if (any || stopped_ || Clock::now() >= until) {
                break;
            }
            gap_timer_.expires_after(std::chrono::milliseconds(10));
            co_await gap_timer_.async_wait(kUseTuple);
        }
    }
    if (!stopped_ && !map_failing_) {
        map_failing_ = true;
        log::warning("redis.cluster_unreachable",
                     {{"why", "no node answered CLUSTER SLOTS with a map; asking again every second"}});
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
    if (!reply.is_array() || reply.elements.empty()) {
        return false;  // an empty map: a node just added or reset knows nothing yet
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

    // Counted with the node connections that exist already (a connection that is up is kept even
    // when a new map leaves it out), so maps naming other masters each time cannot add up.
    std::vector<config::Endpoint> fresh;
    for (const Range& range : ranges) {
        if (!knows(range.master) && std::find(fresh.begin(), fresh.end(), range.master) == fresh.end()) {
            fresh.push_back(range.master);
        }
    }
    if (live_nodes() + fresh.size() > kMaxNodes) {
        log::error("redis.cluster_map_refused",
                   {{"from", where(asked)},
                    {"why", "it would take paybridge past 1000 node connections"},
                    {"new_masters", fresh.size()},
                    {"connections", live_nodes()}});
        return false;
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
    // A connection to a node that owns no slot now and could not be reached (a failed master, a
    // seed that is gone) is stopped, and freed once no request uses it. One that is up, or still
    // making its first attempt, stays (a replica, a master that will receive slots, an ASK target).
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
        Node& node = *nodes_[i];
        if (node.conn && !node.retired && node.conn->attempted_ && !node.conn->node_ready() &&
            std::find(masters_.begin(), masters_.end(), i) == masters_.end()) {
            node.retired = true;
            node.conn->stop();
        }
    }
    update_ready();
    if (changed) {
        std::string names;
        for (std::uint16_t m : masters_) {
            names += (names.empty() ? "" : " ") + where(nodes_[m]->at);
        }
        log::info("redis.cluster_map", {{"masters", names}, {"slots_covered", kClusterSlots - unowned_}});
    }
    return true;
}

std::uint16_t ClusterRouter::route(const std::vector<std::string>& argv) const noexcept
{
    bool keyless = false;
    const std::uint16_t node = slot_owner(argv, keyless);
    return keyless ? any_ready_master() : node;
}

asio::awaitable<Result<Reply>> ClusterRouter::exec(std::vector<std::string> argv)
{
    const std::uint16_t node = route(argv);
    const Clock::time_point deadline = Clock::now() + node_cfg_.request_timeout;
    Result<Reply> reply = co_await run_routed(std::move(argv), node, std::nullopt, deadline);
    co_return reply;
}

ClusterRouter* ClusterRouter::of(RedisConnection& conn) noexcept
{
    return conn.cluster_.get();
}

bool ClusterRouter::still(const NodeSession& ran) const noexcept
{
    for (const std::unique_ptr<Node>& node : nodes_) {
        if (node->serial == ran.connection) {
            return node->conn && !node->retired && node->conn->node_ready() && node->conn->session() == ran.session;
        }
    }
    return false;  // the entry has been freed (and maybe reused for another connection)
}

asio::awaitable<Result<Reply>> ClusterRouter::eval(std::string sha, std::vector<std::string> keys,
                                                   std::vector<std::string> args, NodeSession& ran)
{
    if (!open_.load(std::memory_order_relaxed)) {
        co_return failed(1);
    }
    std::vector<std::string> argv = evalsha_command(sha, std::move(keys), std::move(args));
    // As RedisConnection::eval: routed by the first key, and after a NOSCRIPT reply (the node
    // lost its script cache) once more as EVAL with the body, routed the same way.
    const std::uint16_t node = route(argv);
    const Clock::time_point deadline = Clock::now() + node_cfg_.request_timeout;
    Result<Reply> reply = co_await run_routed(argv, node, std::nullopt, deadline, &ran);
    if (!reply || !reply->is_error() || !reply->str.starts_with("NOSCRIPT")) {
        co_return reply;
    }
    const RedisConnection::Script* script = nullptr;
    for (const std::unique_ptr<Node>& n : nodes_) {
        if (n->conn && (script = n->conn->find_script(sha)) != nullptr) {
            break;
        }
    }
    if (script == nullptr) {
        co_return reply;
    }
    log::warning("redis.noscript", {{"sha", sha}});
    argv[0] = "EVAL";
    argv[1] = script->body;
    const std::uint16_t again = route(argv);
    const Clock::time_point again_deadline = Clock::now() + node_cfg_.request_timeout;
    Result<Reply> evaluated = co_await run_routed(std::move(argv), again, std::nullopt, again_deadline, &ran);
    co_return evaluated;
}

asio::awaitable<Result<std::vector<Reply>>> ClusterRouter::exec_at(config::Endpoint at,
                                                                   std::vector<std::vector<std::string>> commands)
{
    const std::size_t n = commands.size();
    const Clock::time_point deadline = Clock::now() + node_cfg_.request_timeout;
    if (stopped_ || !started_ || !open_.load(std::memory_order_relaxed)) {
        co_return failed(n);
    }
    if (!knows(at) && live_nodes() >= kMaxNodes) {
        log::error("redis.cluster_redirect_refused", {{"to", where(at)}, {"why", "already connected to 1000 nodes"}});
        co_return failed(n);
    }
    const std::uint16_t node = node_for(at);
    Use use(*this, node);
    RedisConnection& conn = use.conn();
    if (const bool up = co_await usable(conn, deadline); !up) {
        co_return failed(n);
    }
    std::vector<Reply> replies(n);
    error_code ec = co_await conn.submit(commands.data(), n, replies.data(), deadline);
    if (ec) {
        if (ec == errc::store_unavailable || ec == errc::shutting_down) {
            refresh_soon(false);
        }
        if (ec == errc::shutting_down && !stopped_) {
            ec = make_error_code(errc::store_unavailable);
        }
        co_return ec;
    }
    co_return std::move(replies);
}

asio::awaitable<bool> ClusterRouter::usable(RedisConnection& conn, Clock::time_point deadline)
{
    if (conn.node_ready()) {
        co_return true;
    }
    // A master whose connection was lost, or could not be made, fails at once (the provider
    // retries; the map is asked again). Only a connection still making its first attempt (a node
    // just named by a redirection) is waited for.
    bool up = false;
    if (!conn.attempted_ && !conn.stopped_) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        up = co_await conn.wait_ready(std::max(std::chrono::milliseconds(0), left));
    }
    if (!up) {
        refresh_soon(false);
    }
    co_return up;
}

asio::awaitable<Result<Reply>> ClusterRouter::run_routed(std::vector<std::string> argv, std::uint16_t node,
                                                         std::optional<Reply> first, Clock::time_point deadline,
                                                         NodeSession* ran)
{
    bool asking = false;
    int redirects = 0;
    std::chrono::milliseconds pause = kRetryPauseMin;
    for (;;) {
        Reply reply;
        if (first) {
            reply = std::move(*first);
            first.reset();
        } else {
            if (node == kNoNode || stopped_ || !nodes_[node]->conn) {
                refresh_soon(false);
                co_return failed(1);
            }
            Use use(*this, node);
            RedisConnection& conn = use.conn();
            if (const bool up = co_await usable(conn, deadline); !up) {
                co_return failed(1);
            }
            // The session the command is sent in: its reply comes in that one or not at all (a
            // lost connection fails whatever it had pending).
            const std::uint64_t session = conn.session();
            error_code ec;
            if (asking) {
                std::vector<std::vector<std::string>> both{{"ASKING"}, argv};
                std::vector<Reply> replies(2);
                ec = co_await conn.submit(both.data(), both.size(), replies.data(), deadline);
                reply = std::move(replies[1]);
            } else {
                ec = co_await conn.submit(&argv, 1, &reply, deadline);
            }
            if (ec) {
                if (ec == errc::store_unavailable || ec == errc::shutting_down) {
                    refresh_soon(false);  // the node may have failed over
                }
                // A retired node's connection says shutting_down; this router is not shutting down.
                if (ec == errc::shutting_down && !stopped_) {
                    ec = make_error_code(errc::store_unavailable);
                }
                co_return ec;
            }
            if (ran != nullptr) {
                *ran = NodeSession{.at = nodes_[node]->at, .connection = nodes_[node]->serial, .session = session};
            }
        }
        if (!redirection(reply)) {
            co_return reply;
        }
        const config::Endpoint from = node == kNoNode ? config::Endpoint{} : nodes_[node]->at;
        if (std::optional<Redirect> to = parse_redirect(reply.str, from)) {
            if (++redirects > kMaxRedirects) {
                log::warning("redis.cluster_redirect_loop", {{"slot", to->slot}, {"reply", reply.str}});
                stats_.errors.fetch_add(1, std::memory_order_relaxed);
                co_return reply;
            }
            if (!knows(to->to) && live_nodes() >= kMaxNodes) {
                log::error("redis.cluster_redirect_refused",
                           {{"to", where(to->to)}, {"why", "already connected to 1000 nodes"}});
                stats_.errors.fetch_add(1, std::memory_order_relaxed);
                co_return reply;
            }
            stats_.redirects.fetch_add(1, std::memory_order_relaxed);
            node = node_for(to->to);
            asking = to->ask;
            if (!to->ask) {
                // The slot has moved for good: this and later commands go to its new master, and
                // the rest of the map is read again (a resharding moves more than one slot).
                set_owner(to->slot, node);
                prefer_ = node;
                refresh_soon(true);
            }
            continue;
        }
        if (retry_later(reply)) {
            if (Clock::now() + pause >= deadline || stopped_) {
                stats_.errors.fetch_add(1, std::memory_order_relaxed);
                co_return reply;
            }
            // In slices, so that stop() is not kept waiting for a whole pause.
            asio::steady_timer timer(executor_);
            for (const Clock::time_point until = Clock::now() + pause; !stopped_ && Clock::now() < until;) {
                timer.expires_after(std::min<Clock::duration>(std::chrono::milliseconds(10), until - Clock::now()));
                co_await timer.async_wait(kUseTuple);
            }
            pause = std::min(pause * 2, kRetryPauseMax);
            asking = false;
            node = route(argv);
            // The redirections so far led to a node that asks to be asked again: not a loop. A
            // multi-key command (every bill script) on a slot being migrated goes ASK (from the
            // source, once the keys it names are not all there) then TRYAGAIN (from the target,
            // until it holds them all) for as long as the migration lasts; counted against
            // kMaxRedirects it failed after the fifth pause, 0.6 s into the migration.
            redirects = 0;
            continue;
        }
        stats_.errors.fetch_add(1, std::memory_order_relaxed);
        co_return reply;  // a MOVED/ASK reply that does not parse: given to the caller as it is
    }
}

asio::awaitable<Result<std::vector<Reply>>> ClusterRouter::exec_many(std::vector<std::vector<std::string>> commands)
{
    std::vector<Result<Reply>> each = co_await run_batch(std::move(commands), false);
    std::vector<Reply> replies;
    replies.reserve(each.size());
    for (Result<Reply>& r : each) {
        if (!r) {
            co_return r.error();
        }
        replies.push_back(std::move(*r));
    }
    co_return std::move(replies);
}

asio::awaitable<std::vector<Result<Reply>>> ClusterRouter::exec_each(std::vector<std::vector<std::string>> commands)
{
    std::vector<Result<Reply>> each = co_await run_batch(std::move(commands), true);
    co_return each;
}

asio::awaitable<std::vector<Result<Reply>>> ClusterRouter::run_batch(std::vector<std::vector<std::string>> commands,
                                                                     bool isolate)
{
    const std::size_t n = commands.size();
    const Clock::time_point deadline = Clock::now() + node_cfg_.request_timeout;
    std::vector<Result<Reply>> results(n, Result<Reply>(make_error_code(errc::store_unavailable)));
    // Without `isolate` the first failure is the whole batch's.
    const auto fail_all = [&](error_code ec) {
        for (Result<Reply>& r : results) {
            r = ec;
        }
        return results;
    };

    // Each command's node; a keyless one goes with the command before it, else the one after it.
    std::vector<std::uint16_t> target(n, kNoNode);
    std::vector<bool> keyless(n, false);
    for (std::size_t i = 0; i < n; ++i) {
        bool no_key = false;
        target[i] = slot_owner(commands[i], no_key);
        keyless[i] = no_key;
        if (!no_key && target[i] == kNoNode && !isolate) {
            refresh_soon(false);
            co_return fail_all(failed(n));
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

    // Every target's entry is held for the whole batch: a part waits while the others run, and
    // an entry freed and reused for another node meanwhile would send it elsewhere.
    std::vector<std::uint16_t> distinct;
    std::vector<std::unique_ptr<Use>> held;
    for (std::uint16_t t : target) {
        if (t != kNoNode && nodes_[t]->conn && std::find(distinct.begin(), distinct.end(), t) == distinct.end()) {
            distinct.push_back(t);
            held.push_back(std::make_unique<Use>(*this, t));
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
        // This part's failure: its commands' (isolate) or the batch's.
        error_code part_error;
        if (node == kNoNode || stopped_ || !nodes_[node]->conn) {
            refresh_soon(false);
            part_error = failed(part.size());
        }
        std::vector<Reply> got(part.size());
        if (!part_error) {
            Use use(*this, node);
            RedisConnection& conn = use.conn();
            if (const bool up = co_await usable(conn, deadline); !up) {
                part_error = failed(part.size());
            }
            if (!part_error) {
                part_error = co_await conn.submit(part.data(), part.size(), got.data(), deadline);
                if (part_error == errc::store_unavailable || part_error == errc::shutting_down) {
                    refresh_soon(false);
                }
                if (part_error == errc::shutting_down && !stopped_) {
                    part_error = make_error_code(errc::store_unavailable);
                }
            }
        }
        if (part_error) {
            if (!isolate) {
                co_return fail_all(part_error);
            }
            for (std::size_t i : index) {
                results[i] = part_error;
            }
            continue;
        }
        bool moved = false;
        for (std::size_t k = 0; k < part.size(); ++k) {
            if (moved && !command_key(part[k])) {
                log::warning("redis.cluster_batch_redirected",
                             {{"why", "a keyless command followed a redirected one on the same node"}});
                const error_code ec = failed(part.size() - k);
                if (!isolate) {
                    co_return fail_all(ec);
                }
                for (std::size_t rest = k; rest < part.size(); ++rest) {
                    results[index[rest]] = ec;
                }
                break;
            }
            if (redirection(got[k])) {
                moved = true;
                Result<Reply> again = co_await run_routed(std::move(part[k]), node, std::move(got[k]), deadline);
                if (!again && !isolate) {
                    co_return fail_all(again.error());
                }
                results[index[k]] = std::move(again);
                continue;
            }
            results[index[k]] = std::move(got[k]);
        }
    }
    co_return results;
}

}  // namespace paybridge::store
