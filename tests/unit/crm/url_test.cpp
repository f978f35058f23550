#include "crm/http_client.hpp"

#include "core/error.hpp"

#include <doctest/doctest.h>

using namespace paybridge;
using namespace paybridge::crm;

TEST_CASE("parse_url splits http and https URLs")
{
    Result<Url> u = parse_url("http://127.0.0.1:9000/paybridge/events");
    REQUIRE(u.has_value());
    CHECK_FALSE(u->tls);
    CHECK(u->host == "127.0.0.1");
    CHECK(u->port == 9000);
    CHECK(u->target == "/paybridge/events");
    CHECK(u->host_header == "127.0.0.1:9000");

    u = parse_url("HTTPS://crm.example.com/hooks?x=1");
    REQUIRE(u.has_value());
    CHECK(u->tls);
    CHECK(u->host == "crm.example.com");
    CHECK(u->port == 443);
    CHECK(u->target == "/hooks?x=1");
    CHECK(u->host_header == "crm.example.com");

    u = parse_url("https://[::1]:8443");
    REQUIRE(u.has_value());
    CHECK(u->host == "::1");
    CHECK(u->port == 8443);
    CHECK(u->target == "/");
    CHECK(u->host_header == "[::1]:8443");

    u = parse_url("http://example.com?q");
    REQUIRE(u.has_value());
    CHECK(u->target == "/?q");
    CHECK(u->port == 80);
}

TEST_CASE("parse_url rejects what it cannot send to")
{
    for (const char* bad : {"", "ftp://x/", "http://", "http:///path", "http://user:pw@host/", "http://host:0/",
                            "http://host:65536/", "http://host:/", "http://host:12a/", "http://[::1/",
                            "http://[zz]/", "http://ho st/", "http://host/#frag", "127.0.0.1:80"}) {
        CAPTURE(bad);
        CHECK(parse_url(bad).error() == errc::invalid_argument);
    }
}
