#include "store/cluster_slot.hpp"

#include <algorithm>
#include <array>
#include <charconv>

namespace paybridge::store {

namespace {

constexpr std::array<std::uint16_t, 256> make_table() noexcept
{
    std::array<std::uint16_t, 256> table{};
    for (unsigned i = 0; i < 256; ++i) {
        std::uint16_t crc = static_cast<std::uint16_t>(i << 8);
        for (int bit = 0; bit < 8; ++bit) {
            crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
        }
        table[i] = crc;
    }
    return table;
}

constexpr std::array<std::uint16_t, 256> kTable = make_table();

}  // namespace

std::uint16_t crc16_xmodem(std::string_view bytes) noexcept
{
    std::uint16_t crc = 0;
    for (unsigned char c : bytes) {
        crc = static_cast<std::uint16_t>((crc << 8) ^ kTable[((crc >> 8) ^ c) & 0xff]);
    }
    return crc;
}

int key_slot(std::string_view key) noexcept
{
    const std::size_t open = key.find('{');
    if (open != std::string_view::npos) {
        const std::size_t close = key.find('}', open + 1);
        if (close != std::string_view::npos && close > open + 1) {
            key = key.substr(open + 1, close - open - 1);
        }
    }
    return crc16_xmodem(key) % kClusterSlots;
}

namespace {

bool same_word(std::string_view a, std::string_view b) noexcept
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
               return lower(x) == lower(y);
           });
}

constexpr std::array<std::string_view, 16> kKeyless{
    "ping", "wait", "script", "cluster", "info", "hello", "auth", "select",
    "asking", "readonly", "time", "dbsize", "config", "client", "command", "echo"};

}  // namespace

std::optional<std::string_view> command_key(const std::vector<std::string>& argv) noexcept
{
    if (argv.size() < 2) {
        return std::nullopt;
    }
    const std::string_view name = argv[0];
    for (std::string_view keyless : kKeyless) {
        if (same_word(name, keyless)) {
            return std::nullopt;
        }
    }
    if (same_word(name, "evalsha") || same_word(name, "eval") || same_word(name, "evalsha_ro") ||
        same_word(name, "eval_ro") || same_word(name, "fcall") || same_word(name, "fcall_ro")) {
        if (argv.size() < 4) {
            return std::nullopt;
        }
        long long numkeys = 0;
        const std::string& text = argv[2];
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), numkeys);
        if (ec != std::errc{} || end != text.data() + text.size() || numkeys < 1) {
            return std::nullopt;
        }
        return std::string_view(argv[3]);
    }
    if (same_word(name, "xgroup") || same_word(name, "xinfo") || same_word(name, "object") ||
        same_word(name, "memory")) {
        // A subcommand first: XGROUP CREATE <key> ..., XINFO STREAM <key>, MEMORY USAGE <key>.
        if (argv.size() < 3) {
            return std::nullopt;
        }
        return std::string_view(argv[2]);
    }
    if (same_word(name, "xreadgroup") || same_word(name, "xread")) {
        for (std::size_t i = 1; i + 1 < argv.size(); ++i) {
            if (same_word(argv[i], "streams")) {
                return std::string_view(argv[i + 1]);
            }
        }
        return std::nullopt;
    }
    return std::string_view(argv[1]);
}

}  // namespace paybridge::store
