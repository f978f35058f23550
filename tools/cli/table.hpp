#pragma once

// Plain-text tables for terminal output: left-aligned columns separated by two spaces, widths
// measured in terminal columns (CJK characters take two), and "-" for empty cells.

#include <iosfwd>
#include <string>
#include <vector>

namespace paybridge::cli {

class Table {
public:
    explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

    /// A row with one cell per header (missing cells print as "-", extra ones are dropped).
    void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
    std::size_t size() const noexcept { return rows_.size(); }

    /// Writes the header line and every row; `indent` spaces before each line.
    void print(std::ostream& out, std::size_t indent = 0) const;

private:
    std::vector<std::string> headers_;
    std::vector<std::vector<std::string>> rows_;
};

/// Terminal columns `text` takes: one per UTF-8 code point, two for East Asian wide characters.
std::size_t display_width(const std::string& text);

}  // namespace paybridge::cli
