#include "tools/cli/table.hpp"

#include <algorithm>
#include <ostream>

namespace paybridge::cli {

std::size_t display_width(const std::string& text)
{
    return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
        return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    }));
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
