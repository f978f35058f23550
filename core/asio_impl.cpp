// The one translation unit that instantiates Asio, Beast and Asio.SSL (separate-compilation mode),
// so that no other file pays for their implementation.
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
