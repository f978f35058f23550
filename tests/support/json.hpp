#pragma once

// JSON in tests: a document parsed from a reply, or the test stops there, showing the text.

#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <string_view>

namespace paybridge::test {

inline rapidjson::Document parse_json(std::string_view text)
{
    rapidjson::Document doc;
    doc.Parse(text.data(), text.size());
    REQUIRE_MESSAGE(!doc.HasParseError(), "invalid JSON: " << text);
    return doc;
}

}  // namespace paybridge::test
