#include "tests/support/redis_cluster.hpp"

#include "tests/support/process.hpp"

#include <hiredis/hiredis.h>

#include <sys/time.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace paybridge::test {
namespace {

constexpr int kSlots = 16384;
constexpr auto kWaitLimit = std::chrono::seconds(20);
constexpr auto kPollInterval = std::chrono::milliseconds(50);
constexpr const char* kLoopback = "127.0.0.1";

struct ContextDeleter {
    void operator()(redisContext* c) const noexcept { redisFree(c); }
};
struct ReplyDeleter {
    void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

std::string describe(const std::vector<std::string>& argv)
{
    std::string out;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        if (i == 6) {
            out += " ...";
            break;
        }
        if (i > 0) {
            out += ' ';
        }
        out += argv[i].empty() ? "\"\"" : argv[i];
    }
    return out;
}

Context connect_to(std::uint16_t port, const std::string& label)
{
    Context c(redisConnectWithTimeout(kLoopback, port, timeval{.tv_sec = 2, .tv_usec = 0}));
    if (!c) {
        throw std::runtime_error("RedisTestCluster: cannot allocate a hiredis context for " + label);
    }
    if (c->err != 0) {
        throw std::runtime_error("RedisTestCluster: cannot connect to " + label + ": " + c->errstr);
    }
    // MIGRATE is given 5 s; leave it room.
    if (redisSetTimeout(c.get(), timeval{.tv_sec = 10, .tv_usec = 0}) != REDIS_OK) {
        throw std::runtime_error("RedisTestCluster: cannot set the socket timeout for " + label);
    }
    return c;
}

std::vector<const char*> arg_pointers(const std::vector<std::string>& argv, std::vector<std::size_t>& lengths)
{
    std::vector<const char*> ptrs;
    lengths.clear();
    for (const std::string& a : argv) {
        ptrs.push_back(a.data());
        lengths.push_back(a.size());
    }
    return ptrs;
}

Reply run(redisContext* c, const std::string& label, const std::vector<std::string>& argv)
{
    if (argv.empty()) {
        throw std::runtime_error("RedisTestCluster: empty command for " + label);
    }
    std::vector<std::size_t> lengths;
    std::vector<const char*> ptrs = arg_pointers(argv, lengths);
    Reply r(static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lengths.data())));
    if (!r) {
        throw std::runtime_error("RedisTestCluster: " + describe(argv) + " on " + label + " failed: " +
                                 (c->err != 0 ? c->errstr : "no reply"));
    }
    return r;
}

Reply run_once(std::uint16_t port, const std::string& label, const std::vector<std::string>& argv)
{
    Context c = connect_to(port, label);
    return run(c.get(), label, argv);
}

std::string text(const redisReply* r)
{
    return std::string(r->str != nullptr ? r->str : "", r->len);
}

std::string flatten(const redisReply* r)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        return text(r);
    case REDIS_REPLY_INTEGER:
        return std::to_string(r->integer);
    case REDIS_REPLY_NIL:
        return "(nil)";
    case REDIS_REPLY_ERROR:
        return "(error) " + text(r);
    case REDIS_REPLY_ARRAY: {
        std::string out;
        for (std::size_t i = 0; i < r->elements; ++i) {
            if (i > 0) {
                out += '\n';
            }
            out += flatten(r->element[i]);
        }
        return out;
    }
    default:
        return "(unknown reply type " + std::to_string(r->type) + ")";
    }
}

std::vector<std::string> split(const std::string& s, char sep)
{
    std::vector<std::string> out;
    std::string item;
    std::istringstream in(s);
    while (std::getline(in, item, sep)) {
        if (!item.empty() && item.back() == '\r') {
            item.pop_back();
        }
        if (!item.empty()) {
            out.push_back(item);
        }
    }
    return out;
}

bool has_flag(const std::string& flags, const std::string& flag)
{
    for (const std::string& f : split(flags, ',')) {
        if (f == flag) {
            return true;
        }
    }
    return false;
}

int parse_int(const std::string& s, const std::string& what)
{
    try {
        std::size_t used = 0;
        const int v = std::stoi(s, &used);
        if (used == s.size()) {
            return v;
        }
    } catch (const std::exception&) {
    }
    throw std::runtime_error("RedisTestCluster: cannot read " + what + " from '" + s + "'");
}

}  // namespace

RedisTestCluster::RedisTestCluster(int masters, std::vector<std::string> extra_args)
{
    if (masters < 1 || masters > kSlots) {
        throw std::runtime_error("RedisTestCluster: masters must be 1.." + std::to_string(kSlots) + ", not " +
                                 std::to_string(masters));
    }
    // Start the nodes. Each gets its own cluster bus port: the default (port + 10000) may be in use
    // or above 65535. If the bus port is taken meanwhile, RedisTestServer's own retries (which only
    // change the client port) fail; then try another bus port.
    std::set<std::uint16_t> taken;
    for (int i = 0; i < masters; ++i) {
        for (int attempt = 1;; ++attempt) {
            std::uint16_t bus = free_port();
            for (int tries = 0; taken.count(bus) != 0 && tries < 100; ++tries) {
                bus = free_port();
            }
            std::vector<std::string> args{"--cluster-enabled", "yes",
                                          "--cluster-config-file", "nodes.conf",
                                          "--cluster-node-timeout", "2000",
                                          "--cluster-port", std::to_string(bus),
                                          "--cluster-announce-ip", kLoopback,
                                          "--cluster-allow-replica-migration", "no"};
            args.insert(args.end(), extra_args.begin(), extra_args.end());
            try {
                servers_.push_back(std::make_unique<RedisTestServer>(std::move(args)));
                bus_ports_.push_back(bus);
                taken.insert(bus);
                taken.insert(servers_.back()->port());
                break;
            } catch (const std::runtime_error& e) {
                const bool port_taken = std::string(e.what()).find("Address already in use") != std::string::npos;
                if (!port_taken || attempt == 3) {
                    throw std::runtime_error("RedisTestCluster: node " + std::to_string(i) +
                                             " did not start: " + e.what());
                }
            }
        }
    }
    for (int i = 0; i < masters; ++i) {
        const std::string label = "node " + std::to_string(i) + " (127.0.0.1:" + std::to_string(port(i)) + ")";
        Reply id = run_once(port(i), label, {"CLUSTER", "MYID"});
        if (id->type != REDIS_REPLY_STRING || id->len == 0) {
            throw std::runtime_error("RedisTestCluster: CLUSTER MYID on " + label + " answered " + flatten(id.get()));
        }
        ids_.push_back(text(id.get()));
    }
    auto expect_ok = [this](int node, const std::vector<std::string>& argv) {
        const std::string reply = command(node, argv);
        if (reply != "OK") {
            throw std::runtime_error("RedisTestCluster: " + describe(argv) + " on node " + std::to_string(node) +
                                     " answered: " + reply);
        }
    };
    for (int i = 0; i < masters; ++i) {
        // Distinct config epochs up front (as redis-cli --cluster create does): all-zero epochs
        // would be resolved by the collision algorithm one bump at a time, and a later
        // SETSLOT NODE relies on the new owner's epoch being the unique highest.
        expect_ok(i, {"CLUSTER", "SET-CONFIG-EPOCH", std::to_string(i + 1)});
        const int first = static_cast<int>(static_cast<long>(i) * kSlots / masters);
        const int last = static_cast<int>(static_cast<long>(i + 1) * kSlots / masters) - 1;
        expect_ok(i, {"CLUSTER", "ADDSLOTSRANGE", std::to_string(first), std::to_string(last)});
    }
    for (int i = 1; i < masters; ++i) {
        expect_ok(0, {"CLUSTER", "MEET", kLoopback, std::to_string(port(i)), std::to_string(bus_port(i))});
    }
    wait_for_agreement("forming a cluster of " + std::to_string(masters) + " masters");
}

RedisTestCluster::~RedisTestCluster() = default;

int RedisTestCluster::size() const
{
    return static_cast<int>(servers_.size());
}

void RedisTestCluster::check_node(int node, const char* what) const
{
    if (node < 0 || node >= size()) {
        throw std::runtime_error(std::string("RedisTestCluster::") + what + ": no node " + std::to_string(node) +
                                 " (the cluster has " + std::to_string(size()) + ")");
    }
}

std::uint16_t RedisTestCluster::port(int node) const
{
    check_node(node, "port");
    return servers_[static_cast<std::size_t>(node)]->port();
}

std::uint16_t RedisTestCluster::bus_port(int node) const
{
    check_node(node, "bus_port");
    return bus_ports_[static_cast<std::size_t>(node)];
}

RedisTestServer& RedisTestCluster::server(int node)
{
    check_node(node, "server");
    return *servers_[static_cast<std::size_t>(node)];
}

int RedisTestCluster::node_at(std::uint16_t p) const
{
    for (int i = 0; i < size(); ++i) {
        if (port(i) == p) {
            return i;
        }
    }
    return -1;
}

std::string RedisTestCluster::node_id(int node) const
{
    check_node(node, "node_id");
    return ids_[static_cast<std::size_t>(node)];
}

namespace {

// CLUSTER SLOTS: [[start, end, [ip, port, id, ...], replicas...], ...] -> owner index per slot.
std::vector<int> owners_from_slots(const redisReply* r, const std::vector<std::string>& ids, const std::string& label)
{
    if (r->type != REDIS_REPLY_ARRAY) {
        throw std::runtime_error("RedisTestCluster: CLUSTER SLOTS on " + label + " answered " + flatten(r));
    }
    std::vector<int> owners(kSlots, -1);
    for (std::size_t i = 0; i < r->elements; ++i) {
        const redisReply* range = r->element[i];
        if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 || range->element[0]->type != REDIS_REPLY_INTEGER ||
            range->element[1]->type != REDIS_REPLY_INTEGER || range->element[2]->type != REDIS_REPLY_ARRAY ||
            range->element[2]->elements < 3 || range->element[2]->element[2]->type != REDIS_REPLY_STRING) {
            throw std::runtime_error("RedisTestCluster: unexpected CLUSTER SLOTS entry from " + label + ": " +
                                     flatten(range));
        }
        const std::string id = text(range->element[2]->element[2]);
        const auto it = std::find(ids.begin(), ids.end(), id);
        if (it == ids.end()) {
            throw std::runtime_error("RedisTestCluster: CLUSTER SLOTS on " + label + " names an unknown node " + id);
        }
        const long long first = range->element[0]->integer;
        const long long last = range->element[1]->integer;
        if (first < 0 || last >= kSlots || first > last) {
            throw std::runtime_error("RedisTestCluster: CLUSTER SLOTS on " + label + " gives the range " +
                                     std::to_string(first) + "-" + std::to_string(last));
        }
        for (long long s = first; s <= last; ++s) {
            owners[static_cast<std::size_t>(s)] = static_cast<int>(it - ids.begin());
        }
    }
    return owners;
}

}  // namespace

std::vector<int> RedisTestCluster::slot_owners() const
{
    for (int i = 0; i < size(); ++i) {
        if (!servers_[static_cast<std::size_t>(i)]->running()) {
            continue;
        }
        const std::string label = "node " + std::to_string(i) + " (127.0.0.1:" + std::to_string(port(i)) + ")";
        Reply r = run_once(port(i), label, {"CLUSTER", "SLOTS"});
        return owners_from_slots(r.get(), ids_, label);
    }
    throw std::runtime_error("RedisTestCluster: no node is running to ask CLUSTER SLOTS");
}

int RedisTestCluster::owner(int slot) const
{
    if (slot < 0 || slot >= kSlots) {
        throw std::runtime_error("RedisTestCluster::owner: no slot " + std::to_string(slot));
    }
    return slot_owners()[static_cast<std::size_t>(slot)];
}

std::string RedisTestCluster::command(int node, const std::vector<std::string>& argv) const
{
    check_node(node, "command");
    const std::string label = "node " + std::to_string(node) + " (127.0.0.1:" + std::to_string(port(node)) + ")";
    return flatten(run_once(port(node), label, argv).get());
}

std::vector<std::string> RedisTestCluster::pipeline(int node, std::vector<std::vector<std::string>> cmds) const
{
    check_node(node, "pipeline");
    const std::string label = "node " + std::to_string(node) + " (127.0.0.1:" + std::to_string(port(node)) + ")";
    Context c = connect_to(port(node), label);
    for (const std::vector<std::string>& argv : cmds) {
        if (argv.empty()) {
            throw std::runtime_error("RedisTestCluster::pipeline: empty command for " + label);
        }
        std::vector<std::size_t> lengths;
        std::vector<const char*> ptrs = arg_pointers(argv, lengths);
        if (redisAppendCommandArgv(c.get(), static_cast<int>(argv.size()), ptrs.data(), lengths.data()) != REDIS_OK) {
            throw std::runtime_error("RedisTestCluster::pipeline: cannot queue " + describe(argv) + " for " + label);
        }
    }
    std::vector<std::string> out;
    for (const std::vector<std::string>& argv : cmds) {
        void* raw = nullptr;
        if (redisGetReply(c.get(), &raw) != REDIS_OK || raw == nullptr) {
            throw std::runtime_error("RedisTestCluster::pipeline: no reply to " + describe(argv) + " from " + label +
                                     ": " + (c->err != 0 ? c->errstr : "no reply"));
        }
        Reply r(static_cast<redisReply*>(raw));
        out.push_back(flatten(r.get()));
    }
    return out;
}

void RedisTestCluster::begin_migration(int slot, int to)
{
    check_node(to, "begin_migration");
    const int from = owner(slot);
    if (from < 0) {
        throw std::runtime_error("RedisTestCluster::begin_migration: slot " + std::to_string(slot) + " has no owner");
    }
    if (from == to) {
        throw std::runtime_error("RedisTestCluster::begin_migration: slot " + std::to_string(slot) +
                                 " is already served by node " + std::to_string(to));
    }
    // The target first: once the source answers ASK, the target must already accept ASKING.
    const std::vector<std::vector<std::string>> steps{
        {"CLUSTER", "SETSLOT", std::to_string(slot), "IMPORTING", node_id(from)},
        {"CLUSTER", "SETSLOT", std::to_string(slot), "MIGRATING", node_id(to)}};
    const int nodes[] = {to, from};
    for (std::size_t i = 0; i < steps.size(); ++i) {
        const std::string reply = command(nodes[i], steps[i]);
        if (reply != "OK") {
            throw std::runtime_error("RedisTestCluster::begin_migration: " + describe(steps[i]) + " on node " +
                                     std::to_string(nodes[i]) + " answered: " + reply);
        }
    }
}

void RedisTestCluster::migrate_keys(int slot, int to)
{
    check_node(to, "migrate_keys");
    const int from = owner(slot);
    if (from < 0 || from == to) {
        throw std::runtime_error("RedisTestCluster::migrate_keys: slot " + std::to_string(slot) +
                                 (from < 0 ? " has no owner" : " is already served by node " + std::to_string(to)));
    }
    const std::string label = "node " + std::to_string(from) + " (127.0.0.1:" + std::to_string(port(from)) + ")";
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    for (;;) {
        Reply keys = run_once(port(from), label, {"CLUSTER", "GETKEYSINSLOT", std::to_string(slot), "100"});
        if (keys->type != REDIS_REPLY_ARRAY) {
            throw std::runtime_error("RedisTestCluster::migrate_keys: CLUSTER GETKEYSINSLOT on " + label +
                                     " answered " + flatten(keys.get()));
        }
        if (keys->elements == 0) {
            return;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            throw std::runtime_error("RedisTestCluster::migrate_keys: " + label + " still holds keys of slot " +
                                     std::to_string(slot) + " after 20 s");
        }
        // MIGRATE host port "" db timeout KEYS k...: the key argument is empty when KEYS is used.
        std::vector<std::string> argv{"MIGRATE", kLoopback, std::to_string(port(to)), "", "0", "5000", "KEYS"};
        for (std::size_t i = 0; i < keys->elements; ++i) {
            argv.push_back(text(keys->element[i]));
        }
        Reply r = run_once(port(from), label, argv);
        const std::string reply = flatten(r.get());
        if (r->type == REDIS_REPLY_ERROR || (reply != "OK" && reply != "NOKEY")) {
            throw std::runtime_error("RedisTestCluster::migrate_keys: " + describe(argv) + " on " + label +
                                     " answered: " + reply);
        }
    }
}

void RedisTestCluster::finish_migration(int slot, int to)
{
    check_node(to, "finish_migration");
    const int from = owner(slot);
    if (from < 0) {
        throw std::runtime_error("RedisTestCluster::finish_migration: slot " + std::to_string(slot) + " has no owner");
    }
    if (from != to) {
        // The old owner refuses SETSLOT NODE while it holds keys of the slot; say so before changing anything.
        const std::string left = command(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)});
        if (left != "0") {
            throw std::runtime_error("RedisTestCluster::finish_migration: node " + std::to_string(from) +
                                     " still holds " + left + " keys of slot " + std::to_string(slot) +
                                     " (call migrate_keys first)");
        }
    }
    // The new owner first (it bumps its config epoch, so its claim wins everywhere), then the old
    // owner (it stops MIGRATING and redirects with MOVED at once), then everyone else.
    std::vector<int> order{to};
    if (from != to) {
        order.push_back(from);
    }
    for (int i = 0; i < size(); ++i) {
        if (i != to && i != from) {
            order.push_back(i);
        }
    }
    const std::vector<std::string> argv{"CLUSTER", "SETSLOT", std::to_string(slot), "NODE", node_id(to)};
    for (const int node : order) {
        const std::string reply = command(node, argv);
        if (reply != "OK") {
            throw std::runtime_error("RedisTestCluster::finish_migration: " + describe(argv) + " on node " +
                                     std::to_string(node) + " answered: " + reply);
        }
    }
    wait_for_agreement("moving slot " + std::to_string(slot) + " to node " + std::to_string(to), slot, to);
}

void RedisTestCluster::move_slot(int slot, int to)
{
    begin_migration(slot, to);
    migrate_keys(slot, to);
    finish_migration(slot, to);
}

void RedisTestCluster::wait_for_agreement(const std::string& what, int slot, int slot_owner) const
{
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    for (;;) {
        std::string problem;
        try {
            problem = agreement_problem(slot, slot_owner);
        } catch (const std::runtime_error& e) {
            problem = e.what();
        }
        if (problem.empty()) {
            return;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            throw std::runtime_error("RedisTestCluster: " + what + ": the nodes did not agree within 20 s: " + problem);
        }
        std::this_thread::sleep_for(kPollInterval);
    }
}

std::string RedisTestCluster::agreement_problem(int slot, int slot_owner) const
{
    const int n = size();
    std::vector<int> reference;
    for (int i = 0; i < n; ++i) {
        const std::string label = "node " + std::to_string(i) + " (127.0.0.1:" + std::to_string(port(i)) + ")";
        if (!servers_[static_cast<std::size_t>(i)]->running()) {
            return label + " is not running";
        }
        Context c = connect_to(port(i), label);

        const std::string info = flatten(run(c.get(), label, {"CLUSTER", "INFO"}).get());
        if (info.find("cluster_state:ok") == std::string::npos) {
            return label + " does not report cluster_state:ok";
        }
        if (info.find("cluster_known_nodes:" + std::to_string(n) + "\r\n") == std::string::npos) {
            return label + " does not report cluster_known_nodes:" + std::to_string(n);
        }

        // CLUSTER NODES: <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        Reply nodes_reply = run(c.get(), label, {"CLUSTER", "NODES"});
        if (nodes_reply->type != REDIS_REPLY_STRING) {
            return label + " answered CLUSTER NODES with " + flatten(nodes_reply.get());
        }
        std::vector<int> from_nodes(kSlots, -1);
        std::set<int> seen;
        for (const std::string& line : split(text(nodes_reply.get()), '\n')) {
            const std::vector<std::string> f = split(line, ' ');
            if (f.size() < 8) {
                return label + " lists an odd CLUSTER NODES line: " + line;
            }
            const auto it = std::find(ids_.begin(), ids_.end(), f[0]);
            if (it == ids_.end()) {
                return label + " knows a node that is not ours: " + line;
            }
            const int idx = static_cast<int>(it - ids_.begin());
            seen.insert(idx);
            const std::string expected_addr = std::string(kLoopback) + ":" + std::to_string(port(idx)) + "@" +
                                              std::to_string(bus_port(idx));
            if (f[1].substr(0, f[1].find(',')) != expected_addr) {
                return label + " sees node " + std::to_string(idx) + " at " + f[1] + ", not " + expected_addr;
            }
            for (const char* bad : {"fail", "fail?", "handshake", "noaddr"}) {
                if (has_flag(f[2], bad)) {
                    return label + " flags node " + std::to_string(idx) + " " + f[2];
                }
            }
            if (!has_flag(f[2], "master")) {
                return label + " does not see node " + std::to_string(idx) + " as a master: " + f[2];
            }
            if (f[7] != "connected") {
                return label + " is not connected to node " + std::to_string(idx) + " (" + f[7] + ")";
            }
            for (std::size_t k = 8; k < f.size(); ++k) {
                const std::string& s = f[k];
                if (s.front() == '[') {
                    // A migration mark on the node's own line: [slot->-id] or [slot-<-id].
                    if (slot >= 0 && s.rfind("[" + std::to_string(slot) + "-", 0) == 0) {
                        return label + " still marks slot " + std::to_string(slot) + " as in migration: " + s;
                    }
                    continue;
                }
                const std::size_t dash = s.find('-');
                const int first = parse_int(s.substr(0, dash), "a slot range");
                const int last = dash == std::string::npos ? first : parse_int(s.substr(dash + 1), "a slot range");
                if (first < 0 || last >= kSlots || first > last) {
                    return label + " lists the slot range " + s;
                }
                for (int x = first; x <= last; ++x) {
                    from_nodes[static_cast<std::size_t>(x)] = idx;
                }
            }
        }
        if (static_cast<int>(seen.size()) != n) {
            return label + " knows " + std::to_string(seen.size()) + " of the " + std::to_string(n) + " nodes";
        }

        Reply slots_reply = run(c.get(), label, {"CLUSTER", "SLOTS"});
        const std::vector<int> from_slots = owners_from_slots(slots_reply.get(), ids_, label);
        for (int x = 0; x < kSlots; ++x) {
            const auto ux = static_cast<std::size_t>(x);
            if (from_slots[ux] < 0) {
                return label + " has no owner for slot " + std::to_string(x);
            }
            if (from_slots[ux] != from_nodes[ux]) {
                return label + ": CLUSTER SLOTS gives slot " + std::to_string(x) + " to node " +
                       std::to_string(from_slots[ux]) + ", CLUSTER NODES to node " + std::to_string(from_nodes[ux]);
            }
            if (!reference.empty() && from_slots[ux] != reference[ux]) {
                return label + " gives slot " + std::to_string(x) + " to node " + std::to_string(from_slots[ux]) +
                       ", node 0 to node " + std::to_string(reference[ux]);
            }
        }
        if (slot >= 0 && from_slots[static_cast<std::size_t>(slot)] != slot_owner) {
            return label + " gives slot " + std::to_string(slot) + " to node " +
                   std::to_string(from_slots[static_cast<std::size_t>(slot)]) + ", not node " +
                   std::to_string(slot_owner);
        }
        if (reference.empty()) {
            reference = from_slots;
        }
    }
    return {};
}

}  // namespace paybridge::test
