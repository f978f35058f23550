#pragma once

// `paybridge listen`: a CRM stand-in. An HTTP/1.1 server that takes the events paybridged pushes,
// verifies their Standard Webhooks signature (crm/webhook_signer.hpp), prints each one readably (or
// as JSON lines), and answers 2xx, or failures on request so that the daemon's retries show.

#include "tools/cli/common.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace paybridge::cli {

struct ListenOptions {
    std::string host{"127.0.0.1"};
    std::uint16_t port{9000};          ///< 0: any free port (printed on start)
    std::vector<std::string> secrets;  ///< "whsec_..."; an event verifies with any of them
    int status{200};                   ///< the answer to every verified event that fail_rate does not pick
    double fail_rate{0.0};             ///< this fraction of verified events, picked at random, gets fail_status
    int fail_status{500};              ///< the answer to the events fail_rate picks
    bool json{false};                  ///< one JSON object per request instead of readable lines
    std::int64_t tolerance_s{300};     ///< allowed webhook-timestamp skew
    std::optional<std::uint64_t> seed;  ///< seeds fail_rate's draws (tests); empty: a random seed
};

/// The options of `paybridge listen ARGV` (argv after "listen"; --help is not handled here), with
/// the secret and port taken from the configuration when not given. --status S with --fail-rate R
/// becomes: fail_status S and status 200 when S is a failure code, else status S and fail_status 500.
/// Errors: Exit::usage for the command line (including a --secret that is not "whsec_" + base64);
/// Exit::local when the configuration is needed and missing or unreadable, or its CRM secret is
/// unresolvable or malformed (named with the configuration file).
Expected<ListenOptions> listen_options(const std::vector<std::string>& argv);

/// What verified events are answered, for the start banner: "200", or
/// "a fraction 0.3 with 503, else 200".
std::string describe_answers(const ListenOptions& options);

/// What the stand-in decided about one request (also the --json line).
struct Delivery {
    std::string webhook_id;
    int delivery{1};  ///< how many times this webhook-id has arrived (retries)
    bool verified{false};
    std::string reason;  ///< why it was rejected (when !verified)
    int answered{0};     ///< the status sent back
};

/// The server. Single-threaded: run it on one io_context; output goes to `out` from that thread,
/// and the errors that cost a connection (bugs) to `err` (std::cerr by default).
class CrmListener {
public:
    CrmListener(boost::asio::io_context& ioc, ListenOptions options, std::ostream& out);
    CrmListener(boost::asio::io_context& ioc, ListenOptions options, std::ostream& out, std::ostream& err);
    ~CrmListener();
    CrmListener(const CrmListener&) = delete;
    CrmListener& operator=(const CrmListener&) = delete;

    /// Binds and starts accepting. Errors (Exit::local): the address is in use or not local, with
    /// a hint to pick another --port.
    Expected<std::uint16_t> start();

    /// Stops accepting and closes the listener; open connections finish their current request.
    void stop();

    /// Judges one request: verifies its signature, picks the answer, and prints it.
    /// `headers` are the webhook-* headers by lower-case name. `reply_body` is left empty for the
    /// statuses that cannot carry a body (1xx, 204, 304).
    Delivery handle(const std::string& method, const std::string& target,
                    const std::map<std::string, std::string>& headers, const std::string& body,
                    std::string& reply_body);

private:
    boost::asio::awaitable<void> accept_loop();
    boost::asio::awaitable<void> session(boost::asio::ip::tcp::socket socket);

    boost::asio::io_context& ioc_;
    ListenOptions options_;
    std::ostream& out_;
    std::ostream& err_;
    boost::asio::ip::tcp::acceptor acceptor_;
    std::map<std::string, int> seen_;  ///< webhook-id → deliveries so far
    std::mt19937_64 rng_;
};

/// `paybridge listen ...` (argv after "listen"). Runs until SIGINT/SIGTERM.
int cmd_listen(const std::vector<std::string>& argv, const Io& io);

}  // namespace paybridge::cli
