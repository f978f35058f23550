#pragma once

// Every Redis key paybridge uses is built here and nowhere else.
//
// Layout (P = config key_prefix, default "pb:"; S = shard of the bill id; T = "{" S "}"):
//   P T ":bill:"     id   hash    the bill (fields listed in store/bill.lua) and the markers of the
//                                 notifications applied to it ("n:<channel>:<notification id>")
//   P T ":hist:"     id   list    the bill's events, oldest first (event JSON)
//   P T ":seen:"     id   hash    the other dedupe markers (anomaly and orphan fingerprints), and
//                                 "ledger": the bill's other transactions (JSON, store/bill.lua)
//   P T ":refunds:"  id   hash    refund_id -> fen, of the payment the bill holds
//   P T ":orphans:"  id   list    notifications for a bill not registered yet (PaymentEvent JSON)
//   P T ":outbox"         stream  every bill event, for CRM delivery (fields id, bill_id, type, event)
//   P T ":anomalies"      stream  every anomaly (fields id, kind, bill_id, anomaly)
//   P T ":updated"        zset    bill id -> updated_at (Unix ms)
//   P T ":created"        zset    bill id -> created_at (Unix ms)
//   P T ":replicated"     string  written by each replica confirmation before its WAIT (wait_replicas;
//                                 shard 0, with Cluster the shard of each bill confirmed)
//   P T ":layout"         string  the key-layout marker, "paybridge-keys/1 shards=<n>", in every shard
//                                 (store/layout.hpp)
//   P T ":query_due"      zset    bill id -> when to ask the providers about it next (Unix ms), for
//                                 bills not settled yet (store/query_queue.hpp; provider_query only)
//   P T ":query_intake"   string  the created-index score up to which bills were taken into query_due
//   P T ":query_lease"    string  the instance sweeping the shard's query_due now (expires)
//   P T ":alipay_certs:" app_id  hash  SN -> "<not_after> <base64 of the PEM>": the Alipay certificates
//                                 instances downloaded, for every instance (store/certificate_shelf.hpp;
//                                 T is the shard of the app_id)
//
// Every key one script touches carries the same hash tag T, so the whole layout runs unchanged on
// Redis Cluster. The shard count is fixed for the life of a deployment: changing it moves bills
// to other keys (the ":layout" markers make an instance configured otherwise refuse to serve).

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::store {

/// FNV-1a, 32 bit (offset basis 2166136261, prime 16777619).
constexpr std::uint32_t fnv1a_32(std::string_view data) noexcept
{
    std::uint32_t h = 2166136261u;
    for (const char c : data) {
        h ^= static_cast<std::uint8_t>(c);
        h *= 16777619u;
    }
    return h;
}

/// The nine keys of one bill, in the order store/bill.lua expects them as KEYS[1..9].
struct BillKeys {
    std::string bill;
    std::string hist;
    std::string seen;
    std::string refunds;
    std::string orphans;
    std::string outbox;
    std::string anomalies;
    std::string updated;
    std::string created;

    /// KEYS for the bill script: bill, hist, seen, refunds, orphans, outbox, anomalies, updated, created.
    std::vector<std::string> script_keys() const&
    {
        return {bill, hist, seen, refunds, orphans, outbox, anomalies, updated, created};
    }
    /// The same, moving the names (the per-notification path: no copies).
    std::vector<std::string> script_keys() &&
    {
        std::vector<std::string> keys;
        keys.reserve(9);
        for (std::string* k : {&bill, &hist, &seen, &refunds, &orphans, &outbox, &anomalies, &updated, &created}) {
            keys.push_back(std::move(*k));
        }
        return keys;
    }
};

/// Builds key names for one prefix and shard count. Cheap to copy; immutable.
class Keys {
public:
    /// shards < 1 is treated as 1.
    Keys(std::string prefix, int shards) : prefix_(std::move(prefix)), shards_(shards < 1 ? 1 : shards) {}

    int shards() const noexcept { return shards_; }
    const std::string& prefix() const noexcept { return prefix_; }

    /// FNV-1a-32(bill_id) % shards.
    int shard_of(std::string_view bill_id) const noexcept
    {
        return static_cast<int>(fnv1a_32(bill_id) % static_cast<std::uint32_t>(shards_));
    }

    /// "s07" (printf "s%02d").
    static std::string shard_name(int shard)
    {
        char buf[16];
        std::snprintf(buf, sizeof buf, "s%02d", shard);
        return buf;
    }

    /// "{s07}", the hash tag of a shard.
    static std::string tag(int shard) { return "{" + shard_name(shard) + "}"; }

    std::string bill(std::string_view id) const { return per_bill(id, ":bill:"); }
    std::string hist(std::string_view id) const { return per_bill(id, ":hist:"); }
    std::string seen(std::string_view id) const { return per_bill(id, ":seen:"); }
    std::string refunds(std::string_view id) const { return per_bill(id, ":refunds:"); }
    std::string orphans(std::string_view id) const { return per_bill(id, ":orphans:"); }
    std::string alipay_certificates(std::string_view app_id) const { return per_bill(app_id, ":alipay_certs:"); }

    std::string outbox(int shard) const { return per_shard(shard, ":outbox"); }
    std::string anomalies(int shard) const { return per_shard(shard, ":anomalies"); }
    std::string updated(int shard) const { return per_shard(shard, ":updated"); }
    std::string created(int shard) const { return per_shard(shard, ":created"); }
    std::string replicated(int shard) const { return per_shard(shard, ":replicated"); }
    std::string layout(int shard) const { return per_shard(shard, ":layout"); }
    std::string query_due(int shard) const { return per_shard(shard, ":query_due"); }
    std::string query_intake(int shard) const { return per_shard(shard, ":query_intake"); }
    std::string query_lease(int shard) const { return per_shard(shard, ":query_lease"); }

    BillKeys for_bill(std::string_view id) const
    {
        // One shard computation and one "prefix{sNN}" for all nine names (once per notification).
        std::string base = prefix_;
        base += tag(shard_of(id));
        auto name = [&base](std::string_view kind, std::string_view rest) {
            std::string key;
            key.reserve(base.size() + kind.size() + rest.size());
            key += base;
            key += kind;
            key += rest;
            return key;
        };
        return BillKeys{
            .bill = name(":bill:", id),
            .hist = name(":hist:", id),
            .seen = name(":seen:", id),
            .refunds = name(":refunds:", id),
            .orphans = name(":orphans:", id),
            .outbox = name(":outbox", {}),
            .anomalies = name(":anomalies", {}),
            .updated = name(":updated", {}),
            .created = name(":created", {}),
        };
    }

private:
    std::string per_bill(std::string_view id, std::string_view kind) const
    {
        std::string key = prefix_;
        key += tag(shard_of(id));
        key += kind;
        key += id;
        return key;
    }

    std::string per_shard(int shard, std::string_view kind) const
    {
        std::string key = prefix_;
        key += tag(shard);
        key += kind;
        return key;
    }

    std::string prefix_;
    int shards_;
};

}  // namespace paybridge::store
