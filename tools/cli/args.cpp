#include "tools/cli/args.hpp"

#include <algorithm>
#include <charconv>
#include <ostream>

namespace paybridge::cli {

int report(const Io& io, const Failure& failure)
{
    io.err << "paybridge: " << failure.message << '\n';
    io.err.flush();
    return code(failure.exit);
}

std::optional<std::int64_t> parse_integer(std::string_view text, std::int64_t min, std::int64_t max)
{
    if (text.empty() || text.front() == '+' || text.front() == '-') {
        return std::nullopt;
    }
    std::int64_t v = 0;
    const char* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, v);
    if (ec != std::errc{} || p != end || v < min || v > max) {
        return std::nullopt;
    }
    return v;
}

Failure Args::usage(std::string message) const
{
    return usage_error(message + " (see 'paybridge " + command_ + " --help')");
}

Expected<Args> Args::parse(std::string_view command, const std::vector<std::string>& argv,
                           const std::vector<OptionSpec>& specs)
{
    Args args;
    args.command_ = std::string(command);
    bool options_done = false;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& arg = argv[i];
        if (options_done || arg.size() < 2 || arg[0] != '-') {
            args.positional_.push_back(arg);
            continue;
        }
        if (arg == "--") {
            options_done = true;
            continue;
        }
        if (arg == "--help" || arg == "-h") {
            args.help_ = true;
            continue;
        }
        if (arg.rfind("--", 0) != 0) {
            return args.usage("unknown option '" + arg + "'");
        }
        std::string name = arg.substr(2);
        std::optional<std::string> inline_value;
        if (const auto eq = name.find('='); eq != std::string::npos) {
            inline_value = name.substr(eq + 1);
            name.resize(eq);
        }
        const auto spec =
            std::find_if(specs.begin(), specs.end(), [&](const OptionSpec& s) { return s.name == name; });
        if (spec == specs.end()) {
            return args.usage("unknown option '--" + name + "'");
        }
        if (args.values_.count(name) != 0) {
            return args.usage("--" + name + " is given twice");
        }
        if (!spec->takes_value) {
            if (inline_value) {
                return args.usage("--" + name + " takes no value");
            }
            args.values_[name] = "";
            continue;
        }
        if (inline_value) {
            args.values_[name] = *inline_value;
        } else if (i + 1 < argv.size()) {
            args.values_[name] = argv[++i];
        } else {
            return args.usage("--" + name + " needs a value");
        }
    }
    return args;
}

bool Args::flag(std::string_view name) const { return values_.find(name) != values_.end(); }

std::optional<std::string> Args::value(std::string_view name) const
{
    const auto it = values_.find(name);
    if (it == values_.end()) {
        return std::nullopt;
    }
    return it->second;
}

Expected<std::optional<std::int64_t>> Args::integer(std::string_view name, std::int64_t min,
                                                    std::int64_t max) const
{
    const auto text = value(name);
    if (!text) {
        return std::optional<std::int64_t>{};
    }
    const auto v = parse_integer(*text, min, max);
    if (!v) {
        return usage("--" + std::string(name) + " must be a whole number from " + std::to_string(min) +
                     " to " + std::to_string(max) + ", not '" + *text + "'");
    }
    return std::optional<std::int64_t>{*v};
}

}  // namespace paybridge::cli
