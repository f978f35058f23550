#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <string_view>

namespace paybridge::webhooks {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;

/// A response with a body and its content type; keep-alive and the version follow the request.
Response make_response(const Request& req, unsigned status, std::string_view content_type, std::string body);

}  // namespace paybridge::webhooks
