#include "core/log.hpp"

#include "core/time.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace paybridge::log {
namespace {

std::atomic<Level> g_level{Level::info};

Sink& sink_ref()
{
    // Under systemd, with stderr going to the journal, each line starts with its priority, so
    // `journalctl -p err` and priority-based alerts see errors as errors.
    static const bool journal = is_journal_stream(2, std::getenv("JOURNAL_STREAM"));
    static Sink sink = [](Level l, std::string_view line) {
        std::string prefixed;
        if (journal) {
            prefixed.reserve(line.size() + 3);
            prefixed.append(priority_prefix(l)).append(line);
            line = prefixed;
        }
        // One write(2) per line so concurrent threads never interleave inside a line.
        const char* p = line.data();
        std::size_t left = line.size();
        while (left > 0) {
            const ssize_t n = ::write(2, p, left);
            if (n <= 0) {
                return;
            }
            p += n;
            left -= static_cast<std::size_t>(n);
        }
    };
    return sink;
}

std::string_view level_name(Level l)
{
    switch (l) {
        case Level::debug: return "debug";
        case Level::info: return "info";
        case Level::warning: return "warning";
        case Level::error: return "error";
    }
    return "info";
}

}  // namespace

std::string_view priority_prefix(Level l) noexcept
{
    switch (l) {
        case Level::debug: return "<7>";
        case Level::info: return "<6>";
        case Level::warning: return "<4>";
        case Level::error: return "<3>";
    }
    return "<6>";
}

bool is_journal_stream(int fd, const char* journal_stream) noexcept
{
    if (journal_stream == nullptr || *journal_stream == '\0') {
        return false;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        return false;
    }
    unsigned long long dev = 0;
    unsigned long long ino = 0;
    char tail = 0;
    if (std::sscanf(journal_stream, "%llu:%llu%c", &dev, &ino, &tail) != 2) {
        return false;
    }
    return dev == static_cast<unsigned long long>(st.st_dev) && ino == static_cast<unsigned long long>(st.st_ino);
}

bool parse_level(std::string_view text, Level& out) noexcept
{
    for (Level l : {Level::debug, Level::info, Level::warning, Level::error}) {
        if (text == level_name(l)) {
            out = l;
            return true;
        }
    }
    return false;
}

void set_level(Level l) noexcept { g_level.store(l, std::memory_order_relaxed); }
Level level() noexcept { return g_level.load(std::memory_order_relaxed); }
void set_sink(Sink sink) { sink_ref() = std::move(sink); }

void write(Level l, std::string_view event, std::initializer_list<Field> fields)
{
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    const std::string now = format_rfc3339(unix_ms(std::chrono::system_clock::now()));
    w.StartObject();
    w.Key("time");
    w.String(now.data(), static_cast<rapidjson::SizeType>(now.size()));
    w.Key("level");
    const auto ln = level_name(l);
    w.String(ln.data(), static_cast<rapidjson::SizeType>(ln.size()));
    w.Key("event");
    w.String(event.data(), static_cast<rapidjson::SizeType>(event.size()));
    for (const Field& f : fields) {
        w.Key(f.key.data(), static_cast<rapidjson::SizeType>(f.key.size()));
        std::visit(
            [&w](const auto& v) {
                using V = std::decay_t<decltype(v)>;
                if constexpr (std::is_same_v<V, std::string_view>) {
                    w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
                } else if constexpr (std::is_same_v<V, std::int64_t>) {
                    w.Int64(v);
                } else if constexpr (std::is_same_v<V, double>) {
                    w.Double(v);
                } else {
                    w.Bool(v);
                }
            },
            f.value);
    }
    w.EndObject();
    std::string line(buf.GetString(), buf.GetSize());
    line += '\n';
    sink_ref()(l, line);
}

}  // namespace paybridge::log
