#pragma once

// Phases 2 and 3 of config/load.hpp: structural checks of the parsed JSON (config-internal).

#include "config/detail/problems.hpp"

#include <rapidjson/document.h>

namespace paybridge::config::detail {

/// Adds "<ptr>: duplicate key" for every repeated key of every object under `value` (RapidJSON keeps
/// duplicates in the DOM and FindMember returns the first, so a repeated key would be silently ignored).
void find_duplicate_keys(const rapidjson::Value& value, Problems& problems);

/// Validates `document` against kConfigSchema (config/schema.hpp) and adds one problem per violation,
/// ALL of them, each naming the JSON pointer of the offending value:
///   required → "<object>/<key>: required property missing" (one line per missing key)
///   additionalProperties → "<object>/<key>: unknown property" (one line per unknown key)
///   type → "must be an integer, not a string"; minimum → "must be >= 1"; enum → "must be one of ...";
///   pattern → "must be <the schema's description>"; min/maxLength, min/maxItems likewise.
/// Throws std::logic_error only if the schema itself is broken (a bug, caught by the unit tests).
void check_schema(const rapidjson::Document& document, Problems& problems);

}  // namespace paybridge::config::detail
