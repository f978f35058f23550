#include "daemon/tls.hpp"

#include <boost/asio/ssl/context.hpp>
#include <openssl/ssl.h>

namespace paybridge::daemon {

std::shared_ptr<boost::asio::ssl::context> make_server_tls_context(const config::TlsListenConfig& tls,
                                                                   std::string& problem)
{
    namespace ssl = boost::asio::ssl;
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                     ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
    SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);  // idle TLS connections hold no record buffers
    SSL_CTX_set_cipher_list(ctx->native_handle(), "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!SHA1");
    boost::system::error_code ec;
    ctx->use_certificate_chain_file(tls.cert_file, ec);
    if (ec) {
        problem = "cannot load certificate chain " + tls.cert_file + ": " + ec.message();
        return nullptr;
    }
    ctx->use_private_key_file(tls.key_file, ssl::context::pem, ec);
    if (ec) {
        problem = "cannot load private key " + tls.key_file + ": " + ec.message();
        return nullptr;
    }
    if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
        problem = "the private key does not match the certificate";
        return nullptr;
    }
    return ctx;
}

}  // namespace paybridge::daemon
