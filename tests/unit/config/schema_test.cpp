#include "config/schema.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/schema.h>

#include <string>
#include <vector>

using namespace paybridge;

namespace {

// Visits every schema object in the tree (properties, items, definitions), with its pointer.
template <class F>
void each_schema(const rapidjson::Value& node, const std::string& ptr, F&& f)
{
    if (!node.IsObject()) {
        return;
    }
    f(node, ptr);
    for (const char* container : {"properties", "definitions"}) {
        auto it = node.FindMember(container);
        if (it != node.MemberEnd() && it->value.IsObject()) {
            for (const auto& m : it->value.GetObject()) {
                each_schema(m.value, ptr + "/" + container + "/" + m.name.GetString(), f);
            }
        }
    }
    auto items = node.FindMember("items");
    if (items != node.MemberEnd()) {
        each_schema(items->value, ptr + "/items", f);
    }
}

rapidjson::Document parsed_schema()
{
    rapidjson::Document doc;
    doc.Parse(config::kConfigSchema.data(), config::kConfigSchema.size());
    REQUIRE_FALSE(doc.HasParseError());
    return doc;
}

}  // namespace

TEST_CASE("config schema: valid JSON that RapidJSON accepts as a schema")
{
    rapidjson::Document doc = parsed_schema();
    rapidjson::SchemaDocument schema(doc);
    rapidjson::Document empty;
    empty.Parse("{}");
    rapidjson::SchemaValidator validator(schema);
    CHECK(empty.Accept(validator));
    rapidjson::Document not_object;
    not_object.Parse("[]");
    rapidjson::SchemaValidator validator2(schema);
    CHECK_FALSE(not_object.Accept(validator2));
}

TEST_CASE("config schema: every pattern compiles in RapidJSON's regex engine and is described")
{
    // RapidJSON 1.1 silently drops a pattern it cannot compile (e.g. "[a-z\\-]"): the check would
    // vanish without an error, so each one is compiled here.
    rapidjson::Document doc = parsed_schema();
    int patterns = 0;
    each_schema(doc, "", [&](const rapidjson::Value& node, const std::string& ptr) {
        auto pattern = node.FindMember("pattern");
        if (pattern == node.MemberEnd()) {
            return;
        }
        ++patterns;
        CAPTURE(ptr);
        REQUIRE(pattern->value.IsString());
        rapidjson::internal::Regex regex(pattern->value.GetString());
        CHECK(regex.IsValid());
        CHECK(node.HasMember("description"));
    });
    CHECK(patterns >= 6);
}

TEST_CASE("config schema: every object forbids unknown keys")
{
    rapidjson::Document doc = parsed_schema();
    int objects = 0;
    each_schema(doc, "", [&](const rapidjson::Value& node, const std::string& ptr) {
        auto type = node.FindMember("type");
        if (type == node.MemberEnd() || !type->value.IsString() || std::string(type->value.GetString()) != "object") {
            return;
        }
        ++objects;
        CAPTURE(ptr);
        auto additional = node.FindMember("additionalProperties");
        REQUIRE(additional != node.MemberEnd());
        CHECK(additional->value.IsFalse());
        CHECK(node.HasMember("properties"));
    });
    CHECK(objects >= 10);
}

TEST_CASE("config schema: the patterns accept and reject what they describe")
{
    struct Case {
        const char* pattern;
        const char* text;
        bool matches;
    };
    const std::vector<Case> cases = {
        {"^(env|file|cred):.+$", "env:PAYBRIDGE_CRM_SECRET", true},
        {"^(env|file|cred):.+$", "cred:crm", true},
        {"^(env|file|cred):.+$", "env:", false},
        {"^(env|file|cred):.+$", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", false},
        {"^(env|file|cred):.+$", "xenv:A", false},
        {"^[0-9]+$", "1900000001", true},
        {"^[0-9]+$", "19000a0001", false},
        {"^https?://[^/]", "https://crm.example.com/hook", true},
        {"^https?://[^/]", "ftp://crm.example.com/hook", false},
        {"^https?://[^/]", "http:///path", false},
        {"^[^{}]*$", "pb:", true},
        {"^[^{}]*$", "pb:{x}:", false},
        {"^[-A-Za-z0-9_.]+$", "crm-prod_1.a", true},
        {"^[-A-Za-z0-9_.]+$", "crm prod", false},
        {"^.+:[0-9]+$", "[::1]:8080", true},
        {"^.+:[0-9]+$", "127.0.0.1", false},
    };
    for (const Case& c : cases) {
        CAPTURE(c.pattern);
        CAPTURE(c.text);
        // Keep this table in step with the schema: each pattern must occur in it verbatim.
        CHECK(config::kConfigSchema.find(std::string("\"") + c.pattern + "\"") != std::string_view::npos);
        rapidjson::internal::Regex regex(c.pattern);
        REQUIRE(regex.IsValid());
        CHECK(regex.Search(c.text) == c.matches);
    }
}
