#include "tools/cli/table.hpp"

#include <algorithm>
#include <ostream>

namespace paybridge::cli {

namespace {

// East Asian Wide and Fullwidth ranges (UAX #11): CJK, Hangul, fullwidth forms take two columns.
bool wide(char32_t cp)
{
    return (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) ||
           (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
           (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
           (cp >= 0xFFE0 && cp <= 0xFFE6) || (cp >= 0x20000 && cp <= 0x3FFFD);
}

}  // namespace

std::size_t display_width(const std::string& text)
{
    std::size_t width = 0;
    for (std::size_t i = 0; i < text.size();) {
        const auto b = static_cast<unsigned char>(text[i]);
        const std::size_t len = b < 0x80           ? 1
                                : (b >> 5) == 0x6  ? 2
                                : (b >> 4) == 0xE  ? 3
                                : (b >> 3) == 0x1E ? 4
                                                   : 1;
        char32_t cp = len == 1 ? b : (b & (0x7F >> len));
        for (std::size_t k = 1; k < len && i + k < text.size(); ++k) {
            cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
        }
        width += wide(cp) ? 2 : 1;
        i += len;
    }
    return width;
}

void Table::print(std::ostream& out, std::size_t indent) const
{
    auto cell = [](const std::vector<std::string>& row, std::size_t i) -> std::string {
        return i < row.size() && !row[i].empty() ? row[i] : std::string("-");
    };
    std::vector<std::size_t> widths(headers_.size());
    for (std::size_t i = 0; i < headers_.size(); ++i) {
        widths[i] = display_width(headers_[i]);
        for (const auto& row : rows_) {
            widths[i] = std::max(widths[i], display_width(cell(row, i)));
        }
    }
    auto line = [&](const std::vector<std::string>& row, bool header) {
        std::string text(indent, ' ');
        for (std::size_t i = 0; i < headers_.size(); ++i) {
            const std::string value = header ? headers_[i] : cell(row, i);
            text += value;
            if (i + 1 < headers_.size()) {
                text.append(widths[i] - display_width(value) + 2, ' ');
            }
        }
        out << text << '\n';
    };
    line(headers_, true);
    for (const auto& row : rows_) {
        line(row, false);
    }
}

}  // namespace paybridge::cli
