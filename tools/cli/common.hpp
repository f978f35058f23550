#pragma once

// Vocabulary shared by every `paybridge` subcommand: exit codes, the error value a subcommand
// returns, and the streams it writes to.

#include <boost/assert/source_location.hpp>
#include <boost/system/result.hpp>

#include <iosfwd>
#include <stdexcept>
#include <string>
#include <utility>

namespace paybridge::cli {

/// Process exit codes (documented in docs/cli.md and every --help).
enum class Exit : int {
    ok = 0,       ///< done; for trigger/API commands the remote side answered 2xx
    remote = 1,   ///< the remote side refused or failed (non-2xx, bad reply)
    usage = 2,    ///< the command line is wrong
    connect = 3,  ///< cannot connect (refused, unresolvable, timed out)
    local = 4,    ///< a local file, key or configuration problem
};

inline int code(Exit e) noexcept { return static_cast<int>(e); }

/// Why a step failed: the exit code it maps to and a message that says what is wrong and how to
/// fix it (printed as "paybridge: <message>").
struct Failure {
    Exit exit{Exit::local};
    std::string message;
};

inline Failure usage_error(std::string message) { return Failure{Exit::usage, std::move(message)}; }
inline Failure local_error(std::string message) { return Failure{Exit::local, std::move(message)}; }

/// boost::system::result needs this to throw on value() of an error; reaching it is a bug.
[[noreturn]] inline void throw_exception_from_error(const Failure& f, const boost::source_location&)
{
    throw std::logic_error("paybridge cli: unchecked failure: " + f.message);
}

/// A value or a Failure.
template <class T>
using Expected = boost::system::result<T, Failure>;

/// Where a subcommand writes: results to `out` (stdout), diagnostics to `err` (stderr).
struct Io {
    std::ostream& out;
    std::ostream& err;
};

/// Prints "paybridge: <message>" to io.err and returns the failure's exit code.
int report(const Io& io, const Failure& failure);

}  // namespace paybridge::cli
