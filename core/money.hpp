#pragma once

#include "core/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace paybridge {

/// Largest amount paybridge accepts, in fen (10^12 fen = 10 billion yuan). Keeps every amount
/// exact in Redis Lua numbers (doubles) and in JSON.
inline constexpr std::int64_t kMaxAmountFen = 1'000'000'000'000;

/// Parses a decimal yuan string as Alipay sends it ("20", "0.5", "12.34") into fen, exactly.
/// Rejects signs, exponents, spaces, empty parts ("1.", ".5"), more than two decimals, leading
/// zeros beyond one ("007"), and amounts above kMaxAmountFen. Errors: errc::malformed_request.
Result<std::int64_t> parse_yuan(std::string_view text);

/// Parses a non-negative integer fen string ("1234") as WeChat Pay sends it.
/// Errors: errc::malformed_request.
Result<std::int64_t> parse_fen(std::string_view text);

/// 1234 → "12.34"; 5 → "0.05". For building provider-format amounts (simulator, tests).
std::string format_yuan(std::int64_t fen);

}  // namespace paybridge
