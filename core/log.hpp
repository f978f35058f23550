#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

namespace paybridge::log {

enum class Level { debug = 0, info = 1, warning = 2, error = 3 };

/// Parses "debug" / "info" / "warning" / "error".
bool parse_level(std::string_view text, Level& out) noexcept;

/// One key/value of a log line. Values are data, never trusted text: they are JSON-escaped.
struct Field {
    std::string_view key;
    std::variant<std::string_view, std::int64_t, double, bool> value;
    Field(std::string_view k, std::string_view v) : key(k), value(v) {}
    Field(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
    Field(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
    Field(std::string_view k, std::int64_t v) : key(k), value(v) {}
    Field(std::string_view k, int v) : key(k), value(static_cast<std::int64_t>(v)) {}
    Field(std::string_view k, std::size_t v) : key(k), value(static_cast<std::int64_t>(v)) {}
    Field(std::string_view k, double v) : key(k), value(v) {}
    Field(std::string_view k, bool v) : key(k), value(v) {}
};

/// Where finished lines go. The default writes each line to stderr with one write(2).
using Sink = std::function<void(Level, std::string_view line)>;

/// Process-wide logger configuration. Thread-safe: level is atomic, the sink is set at start-up.
void set_level(Level level) noexcept;
Level level() noexcept;
void set_sink(Sink sink);

/// Writes one JSON object per line: {"time","level","event",...fields}. Never pass secrets,
/// signatures, bodies or personal data as fields.
void write(Level level, std::string_view event, std::initializer_list<Field> fields);

/// The sd-daemon priority prefix journald reads at the start of a line ("<3>" error, "<4>"
/// warning, "<6>" info, "<7>" debug).
std::string_view priority_prefix(Level level) noexcept;

/// True when `fd` is the stream systemd connected to the journal: $JOURNAL_STREAM (passed here as
/// `journal_stream`, "device:inode") names the same file. A child whose stderr was redirected
/// elsewhere inherits the variable but not the stream, so it is compared, not just tested.
bool is_journal_stream(int fd, const char* journal_stream) noexcept;

inline bool enabled(Level l) noexcept { return l >= level(); }
inline void debug(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::debug)) write(Level::debug, e, f); }
inline void info(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::info)) write(Level::info, e, f); }
inline void warning(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::warning)) write(Level::warning, e, f); }
inline void error(std::string_view e, std::initializer_list<Field> f = {}) { if (enabled(Level::error)) write(Level::error, e, f); }

}  // namespace paybridge::log
