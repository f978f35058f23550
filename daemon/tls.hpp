#pragma once

#include "config/config.hpp"

#include <memory>
#include <string>

namespace boost::asio::ssl {
class context;
}

namespace paybridge::daemon {

/// A server TLS context (TLS 1.2 and 1.3 only, modern ciphers) from the certificate chain and
/// key files. Null with `problem` set when the files cannot be loaded or do not match.
std::shared_ptr<boost::asio::ssl::context> make_server_tls_context(const config::TlsListenConfig& tls,
                                                                   std::string& problem);

}  // namespace paybridge::daemon
