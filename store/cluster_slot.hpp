#pragma once

// Redis Cluster's key -> hash slot mapping (the Redis Cluster specification, "Keys distribution
// model"): CRC16 (XMODEM: polynomial 0x1021, initial value 0, no reflection) of the key, or of
// its hash tag, modulo 16384. The hash tag is what lies between the first '{' and the first '}'
// after it, when that is not empty; otherwise the whole key is hashed.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::store {

inline constexpr int kClusterSlots = 16384;

/// CRC16/XMODEM of the bytes.
std::uint16_t crc16_xmodem(std::string_view bytes) noexcept;

/// The hash slot of a key, 0..16383.
int key_slot(std::string_view key) noexcept;

/// The key a command is routed by in a cluster: for EVAL/EVALSHA/FCALL (and their _RO forms) the
/// first of their numkeys keys, for XREAD/XREADGROUP the first stream after STREAMS, for XGROUP,
/// XINFO, OBJECT and MEMORY the argument after their subcommand, for commands
/// that take no key (PING, WAIT, SCRIPT, CLUSTER, INFO, ...) none, and for every other command
/// its first argument. Command names are matched without regard to case.
std::optional<std::string_view> command_key(const std::vector<std::string>& argv) noexcept;

}  // namespace paybridge::store
