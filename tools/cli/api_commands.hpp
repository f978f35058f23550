#pragma once

// `paybridge bills create|get|list`, `paybridge events`, `paybridge anomalies`: thin clients of the
// /v1 API. Readable tables by default, the API's JSON with --json.

#include "tools/cli/common.hpp"

#include <string>
#include <vector>

namespace paybridge::cli {

/// `paybridge bills ...` (argv after "bills").
int cmd_bills(const std::vector<std::string>& argv, const Io& io);
/// `paybridge events [--after C] [--limit N]`.
int cmd_events(const std::vector<std::string>& argv, const Io& io);
/// `paybridge anomalies [--after C] [--limit N]`.
int cmd_anomalies(const std::vector<std::string>& argv, const Io& io);

}  // namespace paybridge::cli
