#pragma once

// The key-layout marker: what tells an instance that the data in Redis was written with the key
// layout it is configured with (store/keys.hpp: key_prefix and shards).
//
// A bill's keys are in shard fnv1a(bill id) % shards. An instance configured with another shard
// count than the one that wrote the data looks for each bill in the wrong shard, finds nothing, and
// keeps the provider's notification as an orphan of an unknown bill while answering `success`:
// the payment is silently lost. So the layout is written to Redis on the first start of a
// deployment and compared on every connection:
//
//   key    P T ":layout"   in every shard (P = key_prefix, T = the shard's hash tag "{s07}")
//   value  "paybridge-keys/1 shards=<n>"   (1: the version of the layout in store/keys.hpp)
//
// One marker per shard, each in its shard's slot: with Cluster each lives with its shard's data
// (a resharding moves it along), and a master that is down hides only its own shards' markers, so
// an instance (re)started meanwhile still checks against the others and serves the shards that
// can be served. Any two shard counts share shard 0, so an instance with another count always
// reads at least one marker of the deployment's, whichever masters answer.
//
// The marker cannot tell two key prefixes apart: a prefix is the name of a deployment, and two
// deployments may share one Redis. An instance with another prefix simply sees its own markers.
//
// A deployment that predates the marker (data, no marker anywhere) gets it written, but only after
// its data has been looked at: each shard's bill indexes (`:created`, `:updated`) must hold bills
// of that shard only, and no shard beyond the configured count may hold keys. An instance whose
// shard count contradicts the data does not write its own (it would lock out the instances that
// are right).

#include "core/result.hpp"
#include "store/redis_connection.hpp"

#include <boost/asio/awaitable.hpp>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::store {

/// Version of the key layout of store/keys.hpp; part of the marker's value.
inline constexpr int kKeyLayoutVersion = 1;

/// A shard's marker: key_prefix + "{sNN}:layout" (Keys::layout).
std::string layout_key(std::string_view key_prefix, int shard = 0);

/// The marker's value for a shard count: "paybridge-keys/1 shards=16".
std::string layout_value(int shards);

struct LayoutVerdict {
    enum class Kind {
        matches,   ///< every marker that answered holds this layout
        recorded,  ///< markers were missing and the deployment agrees: this layout was written there
        mismatch,  ///< a marker holds another layout, or (no marker at all) the data contradicts this one
    };
    Kind kind{Kind::matches};
    std::string key;       ///< mismatch: the marker that holds another layout (shard 0's when none does)
    std::string expected;  ///< layout_value() of the configured shard count
    std::string found;     ///< mismatch: that marker's value, or "no marker" when the data contradicts
    std::string why;       ///< mismatch found in the data: what was found; recorded: where, and what data
    bool had_data{false};  ///< recorded with no marker anywhere: keys of an earlier version were there
};

/// Sends a batch of commands; each has a result of its own (RedisConnection::exec_each's contract:
/// with Cluster, a master that cannot be reached fails only its commands).
using LayoutExec = std::function<boost::asio::awaitable<std::vector<Result<Reply>>>(std::vector<std::vector<std::string>>)>;

/// Reads every shard's marker and compares what answers; where markers are missing, writes them
/// (SET NX, then read back: of two instances starting together, the second compares with the
/// first's) once the deployment agrees: the other markers, or with none at all, the data. Errors:
/// no marker could be read (the commands' error: store_unavailable, timeout, shutting_down), or
/// store_unavailable for an error reply (logged). A mismatch is a verdict, not an error.
boost::asio::awaitable<Result<LayoutVerdict>> check_layout(const LayoutExec& exec, std::string key_prefix, int shards);

}  // namespace paybridge::store
