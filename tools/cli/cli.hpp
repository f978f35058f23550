#pragma once

// `paybridge`: the developer and operator command line (issue 6). Subcommands:
//   keys init    development key material and configuration      (tools/cli/keys_init.hpp)
//   trigger      signed provider notifications, sent to paybridged  (tools/cli/trigger.hpp)
//   listen       a CRM stand-in that verifies pushed events          (tools/cli/listen.hpp)
//   bills, events, anomalies   thin clients of the /v1 API           (tools/cli/api_commands.hpp)
// Exit codes: see Exit in tools/cli/common.hpp.

#include "tools/cli/common.hpp"

#include <string>
#include <vector>

namespace paybridge::cli {

/// Runs one command line (argv without the program name), writing to io. Returns the exit code.
/// Never throws: an unexpected exception is reported as a local failure (exit 4).
int run(const std::vector<std::string>& argv, const Io& io);

}  // namespace paybridge::cli
