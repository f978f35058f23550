#include "store/resp.hpp"

#include <charconv>

namespace paybridge::store {
namespace {

void append_header(std::string& out, char type, std::size_t n)
{
    char buf[24];
    buf[0] = type;
    const auto [end, ec] = std::to_chars(buf + 1, buf + sizeof buf - 2, n);
    (void)ec;  // 21 characters always hold a size_t
    end[0] = '\r';
    end[1] = '\n';
    out.append(buf, static_cast<std::size_t>(end + 2 - buf));
}

}  // namespace

bool append_command(std::string& out, const std::vector<std::string>& argv)
{
    if (argv.empty()) {
        return false;
    }
    std::size_t size = 16;
    for (const std::string& a : argv) {
        size += a.size() + 16;
    }
    out.reserve(out.size() + size);
    append_header(out, '*', argv.size());
    for (const std::string& a : argv) {
        append_header(out, '$', a.size());
        out.append(a);
        out.append("\r\n", 2);
    }
    return true;
}

std::vector<std::string> evalsha_command(const std::string& sha, std::vector<std::string> keys,
                                         std::vector<std::string> args)
{
    std::vector<std::string> argv;
    argv.reserve(3 + keys.size() + args.size());
    argv.emplace_back("EVALSHA");
    argv.push_back(sha);
    argv.push_back(std::to_string(keys.size()));
    for (std::string& k : keys) {
        argv.push_back(std::move(k));
    }
    for (std::string& a : args) {
        argv.push_back(std::move(a));
    }
    return argv;
}

}  // namespace paybridge::store
