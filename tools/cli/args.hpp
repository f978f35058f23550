#pragma once

// A small command-line parser for the subcommands: "--name VALUE", "--name=VALUE", flags, and
// positional arguments. Every subcommand declares the options it knows; anything else is a usage
// error that names the subcommand's --help.

#include "tools/cli/common.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::cli {

/// One option a subcommand accepts. `takes_value` options need "--name VALUE" or "--name=VALUE".
struct OptionSpec {
    std::string_view name;  ///< without the leading "--"
    bool takes_value{true};
};

/// Parsed arguments. "--help"/"-h" is always accepted and sets help().
class Args {
public:
    /// `command` names the subcommand in messages ("trigger" → "see 'paybridge trigger --help'").
    /// Errors (Exit::usage): unknown option, missing value, a flag given a value, an option given
    /// twice. A lone "--" ends option parsing.
    static Expected<Args> parse(std::string_view command, const std::vector<std::string>& argv,
                                const std::vector<OptionSpec>& specs);

    bool help() const noexcept { return help_; }
    const std::vector<std::string>& positional() const noexcept { return positional_; }
    bool flag(std::string_view name) const;
    std::optional<std::string> value(std::string_view name) const;

    /// The value as a decimal integer in [min, max], or nullopt when absent.
    /// Errors (Exit::usage): not an integer, or out of range, naming the option.
    Expected<std::optional<std::int64_t>> integer(std::string_view name, std::int64_t min,
                                                  std::int64_t max) const;

    /// A usage failure: "<message> (see 'paybridge <command> --help')".
    Failure usage(std::string message) const;

private:
    std::string command_;
    bool help_{false};
    std::vector<std::string> positional_;
    std::map<std::string, std::string, std::less<>> values_;
};

/// Parses a decimal integer (no sign, no spaces) into [min, max].
std::optional<std::int64_t> parse_integer(std::string_view text, std::int64_t min, std::int64_t max);

}  // namespace paybridge::cli
