#pragma once

// The problem list that the loader's phases share, and JSON-pointer helpers (config-internal).

#include <cstddef>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::config::detail {

/// `key` as a JSON-pointer reference token (RFC 6901: "~" → "~0", "/" → "~1").
inline std::string escape_token(std::string_view key)
{
    std::string out;
    out.reserve(key.size());
    for (char c : key) {
        if (c == '~') {
            out += "~0";
        } else if (c == '/') {
            out += "~1";
        } else {
            out += c;
        }
    }
    return out;
}

/// The pointer of member `key` / element `index` of the value at `ptr` ("" is the root).
inline std::string child(const std::string& ptr, std::string_view key) { return ptr + "/" + escape_token(key); }
inline std::string child(const std::string& ptr, std::size_t index) { return ptr + "/" + std::to_string(index); }

/// Problems in the order found, each line once. Phases 2 and 3 also *mark* the pointer they report,
/// so that phase 4 skips the value (and everything under it) instead of reporting it again.
class Problems {
public:
    /// Records "<ptr>: <what>" and marks `ptr`.
    void add(const std::string& ptr, std::string_view what)
    {
        note(ptr, what);
        bad_.insert(ptr);
    }

    /// Records "<ptr>: <what>" without marking `ptr`: for the semantic checks of phase 4, which visit
    /// each value once and must not hide the problems of its siblings and children.
    void note(const std::string& ptr, std::string_view what)
    {
        std::string line = (ptr.empty() ? std::string("(root)") : ptr) + ": " + std::string(what);
        if (seen_.insert(line).second) {
            lines_.push_back(std::move(line));
        }
    }

    /// True when `ptr` or one of its ancestors is marked.
    bool is_bad(const std::string& ptr) const
    {
        for (const std::string& b : bad_) {
            if (ptr == b || (ptr.size() > b.size() && ptr.compare(0, b.size(), b) == 0 && ptr[b.size()] == '/')) {
                return true;
            }
        }
        return false;
    }

    /// Records "<ptr>: <what>" as a warning: reported, but the configuration still loads.
    void warn(const std::string& ptr, std::string_view what) { warnings_.push_back(ptr + ": " + std::string(what)); }

    bool empty() const noexcept { return lines_.empty(); }
    std::vector<std::string> take() { return std::move(lines_); }
    std::vector<std::string> take_warnings() { return std::move(warnings_); }

private:
    std::vector<std::string> lines_;
    std::vector<std::string> warnings_;
    std::set<std::string> seen_;
    std::set<std::string> bad_;
};

}  // namespace paybridge::config::detail
