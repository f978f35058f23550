// How the server frames requests it must not guess at (RFC 9112): transfer codings other than one
// final chunked, an HTTP/1.1 request without Host, a target in absolute form, and a client that
// waits for "100 Continue" before it sends its body.

#include "tests/unit/daemon/server_fixture.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace paybridge;
namespace asio = boost::asio;
using test::Server;

namespace {

/// Sends `bytes` and returns everything the server sent until it closed the connection.
std::string until_closed(Server& s, const std::string& bytes)
{
    asio::write(s.client, asio::buffer(bytes));
    return s.answer("\x01 never sent");
}

std::size_t count(const std::string& text, std::string_view what)
{
    std::size_t n = 0;
    for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
        ++n;
    }
    return n;
}

}  // namespace

TEST_CASE("a transfer coding other than chunked is refused and what follows is not read as a request")
{
    // Read as a request without a body, its body would be the next request on the connection
    // (request smuggling behind a proxy that frames it otherwise): here a GET /metrics.
    for (const char* coding : {"gzip", "identity", "gzip, chunked", "chunked, gzip"}) {
        CAPTURE(coding);
        Server s;
        const std::string got = until_closed(s, std::string("POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ") +
                                                    coding + "\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK_MESSAGE(got.starts_with("HTTP/1.1 501"), got);
        CHECK(got.find("Connection: close") != std::string::npos);
        CHECK(count(got, "HTTP/1.1 ") == 1);
    }
}

TEST_CASE("chunked applied twice is a bad request")
{
    Server s;
    const std::string got = until_closed(
        s, "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
           "0\r\n\r\n0\r\n\r\n");
    CHECK_MESSAGE(got.starts_with("HTTP/1.1 400"), got);
    CHECK(count(got, "HTTP/1.1 ") == 1);
}

TEST_CASE("one final chunked in any case is read as before")
{
    Server s;
    asio::write(s.client, asio::buffer(std::string(
                              "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                              "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")));
    std::string got = s.answer("ok\n");
    if (count(got, "ok\n") < 2) {
        got += s.answer("ok\n");
    }
    CHECK_MESSAGE(count(got, "HTTP/1.1 200 OK") == 2, got);
}

TEST_CASE("an HTTP/1.1 request without Host is a bad request and HTTP/1.0 needs none")
{
    {
        Server s;
        const std::string got = until_closed(s, "GET /healthz HTTP/1.1\r\n\r\n");
        CHECK_MESSAGE(got.starts_with("HTTP/1.1 400"), got);
        CHECK(got.find("Host") != std::string::npos);
    }
    Server s;
    const std::string got = until_closed(s, "GET /healthz HTTP/1.0\r\n\r\n");
    CHECK_MESSAGE(got.find(" 200 OK\r\n") != std::string::npos, got);
}

TEST_CASE("a target in absolute form is routed by its path")
{
    Server s;
    asio::write(s.client, asio::buffer(std::string("GET http://paybridge.example:8080/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                                   "GET HTTPS://paybridge.example HTTP/1.1\r\nHost: x\r\n\r\n")));
    std::string got = s.answer("ok\n");
    if (got.find("not found") == std::string::npos) {
        got += s.answer("not found");
    }
    CHECK_MESSAGE(got.starts_with("HTTP/1.1 200 OK"), got);
    const std::size_t second = got.find("HTTP/1.1 ", 1);
    REQUIRE(second != std::string::npos);
    CHECK_MESSAGE(got.compare(second, 12, "HTTP/1.1 404") == 0, got);  // "/", not a 400
}

TEST_CASE("Expect 100-continue: the server says go on before it reads the body")
{
    Server s;
    asio::write(s.client, asio::buffer(std::string(
                              "POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")));
    const std::string interim = s.answer("\r\n\r\n");
    CHECK(interim == "HTTP/1.1 100 Continue\r\n\r\n");
    asio::write(s.client, asio::buffer(std::string("hello")));
    const std::string final_answer = s.answer("ok\n");
    CHECK_MESSAGE(final_answer.starts_with("HTTP/1.1 200 OK"), final_answer);

    // A client that sent its body anyway gets no interim answer.
    asio::write(s.client, asio::buffer(std::string(
                              "POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")));
    const std::string direct = s.answer("ok\n");
    CHECK_MESSAGE(direct.starts_with("HTTP/1.1 200 OK"), direct);
}

TEST_CASE("a request to the API refused before it was read gets the API's error shape")
{
    Server s;
    const std::string got = until_closed(s, "POST /v1/bills HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n");
    CHECK_MESSAGE(got.starts_with("HTTP/1.1 413"), got);
    CHECK(got.find("Content-Type: application/json") != std::string::npos);
    CHECK(got.find(R"({"error":{"code":"payload_too_large","message":"payload too large"}})") != std::string::npos);
}

TEST_CASE("a request line or header over the limit is refused in the API's error shape when it is for the API")
{
    const std::string long_query(9000, 'a');  // over the 8 KiB header limit alone
    struct Case {
        std::string bytes;
        std::string status;
        std::string body;
    };
    const std::vector<Case> cases{
        // The request line did not fit: from what was read, a method and a /v1/ target.
        {"GET /v1/events?after=" + long_query + " HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 414",
         R"({"error":{"code":"uri_too_long","message":"uri too long"}})"},
        {"GET http://paybridge.example:8080/v1/bills?cursor=" + long_query + " HTTP/1.1\r\nHost: x\r\n\r\n",
         "HTTP/1.1 414", R"({"error":{"code":"uri_too_long","message":"uri too long"}})"},
        // The request line fitted, the header did not.
        {"GET /v1/bills HTTP/1.1\r\nHost: x\r\nX-Big: " + long_query + "\r\n\r\n", "HTTP/1.1 431",
         R"({"error":{"code":"request_header_fields_too_large","message":"request header fields too large"}})"},
        // Anything else stays plain text.
        {"GET /healthz?" + long_query + " HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 414", "uri too long\n"},
        {"GET /v1" + long_query + " HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 414", "uri too long\n"},
        {"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + long_query + "\r\n\r\n", "HTTP/1.1 431",
         "request header fields too large\n"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.bytes.substr(0, 60));
        Server s;
        const std::string got = until_closed(s, c.bytes);
        CHECK_MESSAGE(got.starts_with(c.status), got.substr(0, 200));
        const std::size_t body = got.find("\r\n\r\n");
        REQUIRE(body != std::string::npos);
        CHECK(got.substr(body + 4) == c.body);
        const bool json = c.body.starts_with("{");
        CHECK((got.find("Content-Type: application/json") != std::string::npos) == json);
    }
}
