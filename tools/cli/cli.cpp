#include "tools/cli/cli.hpp"

#include "tools/cli/api_commands.hpp"
#include "tools/cli/keys_init.hpp"
#include "tools/cli/listen.hpp"
#include "tools/cli/trigger.hpp"

#include <exception>
#include <ostream>

namespace paybridge::cli {

namespace {

constexpr const char* kHelp =
    R"(usage: paybridge COMMAND [options]          (paybridge COMMAND --help for details)

development
  keys init DIR        write development keys and a development configuration
  trigger PROVIDER EVENT --bill ID
                       send a signed provider notification to paybridged, byte for byte as the
                       provider does (alipay paid|refund|closed; wechatpay paid|refund|
                       refund-closed|refund-abnormal; wechatpay-v2 paid|refund)
  listen               a CRM stand-in: verifies pushed events' signatures and prints them

API client (token from --token, $PAYBRIDGE_TOKEN or the configuration)
  bills create|get|list
  events               the ordered feed of bill events
  anomalies            verified notifications that could not be applied

The configuration is --config FILE, else $PAYBRIDGE_CONFIG, else ./paybridge.dev.json, else
./.dev/paybridge.dev.json.

exit codes: 0 ok, 1 the remote side refused or failed, 2 usage error, 3 cannot connect,
            4 local files/keys/configuration problem
)";

}  // namespace

int run(const std::vector<std::string>& argv, const Io& io)
{
    try {
        if (argv.empty()) {
            io.err << kHelp;
            return code(Exit::usage);
        }
        const std::string& command = argv.front();
        const std::vector<std::string> rest(argv.begin() + 1, argv.end());
        if (command == "--help" || command == "-h" || command == "help") {
            io.out << kHelp;
            return code(Exit::ok);
        }
        if (command == "--version") {
            io.out << "paybridge " << PAYBRIDGE_VERSION << "\n";
            return code(Exit::ok);
        }
        if (command == "keys") {
            return cmd_keys(rest, io);
        }
        if (command == "trigger") {
            return cmd_trigger(rest, io);
        }
        if (command == "listen") {
            return cmd_listen(rest, io);
        }
        if (command == "bills") {
            return cmd_bills(rest, io);
        }
        if (command == "events") {
            return cmd_events(rest, io);
        }
        if (command == "anomalies") {
            return cmd_anomalies(rest, io);
        }
        return report(io, usage_error("unknown command '" + command + "' (see 'paybridge --help')"));
    } catch (const std::exception& e) {
        return report(io, local_error(std::string("unexpected error: ") + e.what()));
    }
}

}  // namespace paybridge::cli
