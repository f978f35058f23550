#include "store/cluster_slot.hpp"
#include "tests/support/redis_cluster.hpp"

#include <doctest/doctest.h>

#include <set>
#include <stdexcept>
#include <string>
#include <vector>

using paybridge::store::key_slot;
using paybridge::test::RedisTestCluster;

namespace {

std::string redirect(const char* kind, int slot, const RedisTestCluster& cluster, int node)
{
    return std::string("(error) ") + kind + " " + std::to_string(slot) + " 127.0.0.1:" +
           std::to_string(cluster.port(node));
}

}  // namespace

TEST_SUITE("integration/store/cluster_fixture")
{
    TEST_CASE("RedisTestCluster of 3 masters owns every slot and redirects with MOVED before and after a resharding")
    {
        RedisTestCluster cluster(3);
        REQUIRE(cluster.size() == 3);

        // Every slot owned, in three contiguous ranges.
        const std::vector<int> owners = cluster.slot_owners();
        REQUIRE(owners.size() == 16384);
        std::set<int> seen;
        int unowned = 0;
        int changes = 0;
        for (std::size_t s = 0; s < owners.size(); ++s) {
            unowned += owners[s] < 0 ? 1 : 0;
            changes += s > 0 && owners[s] != owners[s - 1] ? 1 : 0;
            seen.insert(owners[s]);
        }
        CHECK(unowned == 0);
        CHECK(changes == 2);
        CHECK(seen == std::set<int>{0, 1, 2});
        CHECK(cluster.owner(0) == 0);
        CHECK(cluster.owner(16383) == 2);
        for (int node = 0; node < 3; ++node) {
            const std::string info = cluster.command(node, {"CLUSTER", "INFO"});
            CHECK(info.find("cluster_state:ok") != std::string::npos);
            CHECK(info.find("cluster_slots_assigned:16384") != std::string::npos);
            CHECK(info.find("cluster_known_nodes:3") != std::string::npos);
            CHECK(cluster.command(node, {"CLUSTER", "MYID"}) == cluster.node_id(node));
            CHECK(cluster.node_at(cluster.port(node)) == node);
        }

        const std::vector<std::pair<std::string, std::string>> keys{{"{s00}a", "value-a"}, {"{s07}b", "value-b"}};
        REQUIRE(key_slot(keys[0].first) != key_slot(keys[1].first));
        for (const auto& [key, value] : keys) {
            CAPTURE(key);
            const int slot = key_slot(key);
            // Our CRC16 agrees with the server's.
            CHECK(cluster.command(0, {"CLUSTER", "KEYSLOT", key}) == std::to_string(slot));
            const int owner = cluster.owner(slot);
            REQUIRE(owner >= 0);
            CHECK(cluster.command(owner, {"SET", key, value}) == "OK");
            CHECK(cluster.command(owner, {"GET", key}) == value);
            for (int other = 0; other < 3; ++other) {
                if (other != owner) {
                    CHECK(cluster.command(other, {"GET", key}) == redirect("MOVED", slot, cluster, owner));
                }
            }
        }

        // Reshard the slot of {s07} to another node.
        const std::string& key = keys[1].first;
        const int slot = key_slot(key);
        const int from = cluster.owner(slot);
        const int to = (from + 1) % 3;
        cluster.move_slot(slot, to);
        CHECK(cluster.owner(slot) == to);
        CHECK(cluster.command(to, {"GET", key}) == "value-b");
        CHECK(cluster.command(from, {"GET", key}) == redirect("MOVED", slot, cluster, to));
        CHECK(cluster.command(3 - from - to, {"GET", key}) == redirect("MOVED", slot, cluster, to));
        CHECK(cluster.command(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "0");
        CHECK(cluster.command(to, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "1");
        // The other key stayed where it was.
        const int slot_a = key_slot(keys[0].first);
        CHECK(cluster.command(cluster.owner(slot_a), {"GET", keys[0].first}) == "value-a");
        // The neighbours of the moved slot did not move.
        if (slot > 0) {
            CHECK(cluster.owner(slot - 1) == owners[static_cast<std::size_t>(slot - 1)]);
        }
        if (slot < 16383) {
            CHECK(cluster.owner(slot + 1) == owners[static_cast<std::size_t>(slot + 1)]);
        }
    }

    TEST_CASE("RedisTestCluster migration in steps answers ASK and serves ASKING on the new owner until finished")
    {
        RedisTestCluster cluster(3);
        const std::string key = "{s07}b";
        const std::string missing = "{s07}missing";
        const int slot = key_slot(key);
        const int from = cluster.owner(slot);
        REQUIRE(from >= 0);
        const int to = (from + 1) % 3;
        REQUIRE(cluster.command(from, {"SET", key, "value-b"}) == "OK");

        cluster.begin_migration(slot, to);
        // Keys still on the old owner are served there; a missing one is asked of the new owner.
        CHECK(cluster.command(from, {"GET", key}) == "value-b");
        CHECK(cluster.command(from, {"GET", missing}) == redirect("ASK", slot, cluster, to));
        // Finishing while the old owner still holds keys is refused, and changes nothing.
        CHECK_THROWS_AS(cluster.finish_migration(slot, to), std::runtime_error);
        CHECK(cluster.owner(slot) == from);

        cluster.migrate_keys(slot, to);
        CHECK(cluster.command(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "0");
        CHECK(cluster.command(to, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "1");
        CHECK(cluster.owner(slot) == from);
        CHECK(cluster.command(from, {"GET", key}) == redirect("ASK", slot, cluster, to));
        // Without ASKING the importing node sends the client back to the owner.
        CHECK(cluster.command(to, {"GET", key}) == redirect("MOVED", slot, cluster, from));
        CHECK(cluster.pipeline(to, {{"ASKING"}, {"GET", key}}) == std::vector<std::string>{"OK", "value-b"});
        // ASKING covers the next command only.
        CHECK(cluster.pipeline(to, {{"ASKING"}, {"GET", key}, {"GET", key}}) ==
              std::vector<std::string>{"OK", "value-b", redirect("MOVED", slot, cluster, from)});

        cluster.finish_migration(slot, to);
        CHECK(cluster.owner(slot) == to);
        for (int node = 0; node < 3; ++node) {
            if (node != to) {
                CHECK(cluster.command(node, {"GET", key}) == redirect("MOVED", slot, cluster, to));
            }
        }
        CHECK(cluster.command(to, {"GET", key}) == "value-b");
        CHECK(cluster.command(to, {"GET", missing}) == "(nil)");
    }
}
