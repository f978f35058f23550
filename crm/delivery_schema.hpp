#pragma once

// The Redis layout of CRM delivery, shared by the Dispatcher and DeliveryAdmin.
//
// Per shard s (P = key_prefix, T = "{sNN}", the shard's hash tag; the stream comes from store/keys.hpp):
//   P T ":outbox"                  stream  bill events written by the bill script (fields id, bill_id,
//                                          type, event); consumer group "crm" reads it
//   P T ":crm:retry"               zset    stream entry id -> due time (Unix ms). While an instance
//                                          delivers a member, its score is pushed to now + lease, so
//                                          no other instance takes it unless that instance dies
//   P T ":crm:tries"               hash    stream entry id -> failed attempts in the current schedule
//   P T ":crm:dead"                zset    event id -> dead-lettered at (Unix ms)
//   P T ":crm:idx:pending"         zset    event id -> updated at, for listing by state
//   P T ":crm:idx:retrying"        zset    (idem)
//   P T ":crm:idx:delivered"       zset    (idem; trimmed to record_ttl)
//   P T ":crm:delivery:" event_id  hash    state (pending|retrying|delivered|dead), attempts (all
//                                          attempts ever), next_at, last_error, last_status, entry_id,
//                                          bill_id, type, first_seen_at, updated_at, delivered_at, dead_at
//   P T ":crm:attempts:" event_id  list    one JSON object per attempt (capped), oldest first
//   P T ":crm:sweep"               hash    kSweepLost's cursor: offset into the old part of
//                                          idx:pending (field "pending") and idx:retrying ("retrying")
//
// An entry stays pending in the group's PEL until it is delivered or dead-lettered (XACK). While it
// waits for a retry it is also in the retry zset and its PEL entry belongs to the pseudo-consumer
// kRetryHolder, not to an instance: the PEL entries of instances are then only what they hold in
// flight, so the reclaim pass that finds a dead instance's entries does not wade through the retry
// backlog first (after a long CRM outage, tens of thousands per shard). Every state change is one
// Lua script, so a crash between two commands cannot leave them disagreeing.
// Every key a script touches carries the shard's tag (Redis Cluster safe) and is passed in KEYS, with
// two exceptions: kSweepLost and kTrimOutbox find the event ids they work on inside the script, so
// they get the delivery (and attempts) key *prefixes* in KEYS and append each event id to them.
// Those keys hash to the same slot as the declared ones (the tag decides the slot), so the script
// only ever touches keys of the node it was routed to.
//
// Entries deleted from the stream (XDEL, XTRIM) while outstanding: on Redis 7.0 XCLAIM of such an id
// drops it from the PEL and returns nothing, and kPopDue returns no fields for it, so no delivery
// path can settle its record. The dispatcher's sweep (kSweepLost, off the delivery path) dead-letters
// those records with kEntryDeletedError instead of leaving them pending or retrying for ever.

#include "store/keys.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace paybridge::crm {

inline constexpr std::string_view kStatePending = "pending";
inline constexpr std::string_view kStateRetrying = "retrying";
inline constexpr std::string_view kStateDelivered = "delivered";
inline constexpr std::string_view kStateDead = "dead";

/// The consumer name that holds, in the group's PEL, the entries waiting in the retry zset. Not a
/// name an instance takes (those are "<hostname>-<pid>-<hex>").
inline constexpr std::string_view kRetryHolder = "paybridge.retrying";

/// The last_error of a record dead-lettered by kSweepLost: its outbox entry was deleted from the
/// stream (XDEL, XTRIM) before it was delivered, so there is nothing left to send.
inline constexpr std::string_view kEntryDeletedError = "outbox entry deleted from the stream before delivery";

/// The keys of one shard.
struct ShardKeys {
    int shard{0};
    std::string stream;
    std::string retry;
    std::string tries;
    std::string dead;
    std::string idx_pending;
    std::string idx_retrying;
    std::string idx_delivered;
    std::string sweep;            ///< kSweepLost's cursor
    std::string delivery_prefix;  ///< + event id
    std::string attempts_prefix;  ///< + event id

    std::string delivery(std::string_view event_id) const { return delivery_prefix + std::string(event_id); }
    std::string attempts(std::string_view event_id) const { return attempts_prefix + std::string(event_id); }
    /// The listing index of a state ("dead" is the dead-letter zset itself); empty for an unknown state.
    std::string index(std::string_view state) const;
};

class DeliveryKeys {
public:
    DeliveryKeys(std::string prefix, int shards);
    int shards() const noexcept { return static_cast<int>(shards_.size()); }
    const ShardKeys& shard(int s) const { return shards_.at(static_cast<std::size_t>(s)); }
    const std::vector<ShardKeys>& all() const noexcept { return shards_; }

private:
    std::vector<ShardKeys> shards_;
};

namespace scripts {

/// KEYS: stream retry tries dead idx_pending idx_retrying idx_delivered delivery attempts
/// ARGV: outcome(delivered|retry|dead) group entry_id event_id now_ms next_at_ms attempt_json
///       last_error last_status ttl_ms max_records bill_id type retry_holder consumer lease_token
/// retry: into the retry zset, its PEL entry (if any) handed to retry_holder (kRetryHolder).
/// A success is always recorded. A failure only while the attempt still holds the entry, as in
/// kRenew: lease_token "" (read or reclaimed entry): pending for `consumer` and not in the retry
/// zset; otherwise (popped retry) the member's score is still lease_token. Returns the event's total
/// attempt count, or -1 when a failure arrived for an entry the attempt no longer holds (another
/// instance delivered it or took it over meanwhile): then nothing changes.
extern const std::string kRecord;

/// KEYS: stream retry tries      ARGV: now_ms lease_ms count
/// Takes up to `count` due retry members, pushes their due time to now + lease, and returns
/// [[entry_id, fields|nil, tries], ...].
extern const std::string_view kPopDue;

/// KEYS: stream retry            ARGV: group consumer entry_id lease_token now_ms lease_ms
/// Renews this instance's lease on an entry just before it is POSTed, so that time spent queued
/// behind the bill's earlier events does not count. lease_token "" (read or reclaimed entry): the
/// entry must be pending for `consumer` and not in the retry zset; its idle time is reset (XCLAIM
/// JUSTID). Otherwise (popped retry) the member's score must still be lease_token; it becomes now +
/// lease. Returns 1 when renewed, 0 when the entry is no longer ours (then it must not be sent).
extern const std::string kRenew;

/// KEYS: stream retry tries      ARGV: group consumer min_idle_ms count scan_limit retry_holder
/// Claims (XCLAIM, min-idle) up to `count` entries idle >= min_idle from the PEL of every consumer
/// but retry_holder, looking at up to scan_limit per consumer. An entry found there that waits in
/// the retry zset (left by a version before retry_holder) is handed to retry_holder instead.
/// Returns [[entry_id, fields, tries], ...].
extern const std::string kReclaim;

/// KEYS: stream retry tries dead idx_pending idx_retrying idx_delivered delivery attempts
/// ARGV: event_id now_ms required_state ("" for any) group [entry_id]
/// Makes the event due now. A delivered or dead event starts a fresh schedule. An event being
/// attempted is left alone (in_flight): pending in the group and not waiting for a retry, or a retry
/// member leased by a dispatcher (its score is in the future and differs from the delivery's next_at).
/// entry_id (from kFindEntry) stands in for a delivery record that does not exist: an entry the group
/// has not read yet is left as it is (its first delivery is still to come: requeued, previous state
/// pending); one read and acknowledged (its record expired) gets a new record and is due now.
/// Returns [result, previous_state]: result = requeued | not_found | skipped | gone | in_flight.
extern const std::string kRequeue;

/// KEYS: stream retry            ARGV: event_id group start count
/// Looks for the outbox entry of an event that has no delivery record, newest first, `count` entries
/// per call from `start` ("+" first, then the next_start returned). Returns ["found", [field, value,
/// ...]] (state, event_id, entry_id, bill_id, type, as the delivery hash holds them; state pending
/// while unread or pending in the group, retrying in the retry zset, else delivered), ["more",
/// next_start] or ["none", ""].
extern const std::string kFindEntry;

/// KEYS: stream retry tries dead idx_pending idx_retrying idx_delivered sweep delivery_prefix
///       attempts_prefix
/// ARGV: group now_ms min_age_ms limit last_error
/// Dead-letters the records whose outbox entry is gone from the stream. Looks at up to `limit`
/// members of idx:pending and of idx:retrying whose score is older than now - min_age, from the
/// offsets kept in `sweep`; each call moves on, and wraps to the start of an index once it reaches
/// the end of its old part, so successive calls walk all of it. A member is dead-lettered when its
/// record (delivery_prefix .. event id) is pending or retrying, has an entry_id, and XRANGE finds no
/// such entry: XACK (errors ignored), ZREM from retry, HDEL from tries, then the writes of kRecord's
/// dead outcome without an attempt (state dead, dead_at, updated_at, next_at "", last_error; into
/// the dead zset, out of the listing indexes; record and attempts made persistent). Records whose
/// entry is still in the stream are never touched.
/// Returns [[entry_id, event_id], ...], the records dead-lettered.
extern const std::string kSweepLost;

/// KEYS: stream retry dead       ARGV: group
/// Returns [pending, lag, oldest_undelivered_ms (0: none), retrying, dead].
extern const std::string kStats;

/// KEYS: stream retry dead delivery_prefix      ARGV: cutoff_ms max_scan
/// Trims the outbox (XTRIM MINID ~ floor LIMIT 10000) below the oldest entry that is still needed:
/// newer than cutoff_ms, not yet read or still pending in any consumer group, waiting in the retry
/// zset, or the entry of a dead letter (its record, delivery_prefix .. event id, names it) that is
/// still in the stream. Approximate and bounded: one call removes at most 10,000 entries, whole
/// stream nodes only (entries below the floor that share a node with an entry at or above it stay
/// until a later floor passes that node); never an entry at or above the floor. Call it again while
/// it removes something to work off a backlog.
/// Returns [trimmed, "trimmed", floor id], [0, "busy", n] when the retry zset and the dead letters
/// together hold more than max_scan members (nothing is trimmed then), [0, "no_stream"] or
/// [0, "no_group"] (a stream without a consumer group is left alone: a group created later reads it
/// from the start).
extern const std::string kTrimOutbox;

/// KEYS: stream                   ARGV: group self min_idle_ms
/// Deletes consumers (other than self) with no pending entries, idle >= min_idle. Returns the count.
extern const std::string kCleanupConsumers;

}  // namespace scripts

}  // namespace paybridge::crm
