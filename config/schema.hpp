#pragma once

// The JSON Schema (draft-04, the dialect RapidJSON 1.1's rapidjson/schema.h implements) that a
// paybridge configuration file must satisfy before it is parsed into config::Config.
//
// Conventions the loader relies on (config/load.cpp):
// - every object has "additionalProperties": false and lists its required keys;
// - shared shapes live under "definitions" and are used through local "$ref"s;
// - a "pattern" has a "description" that completes the sentence "<pointer>: must be ...";
// - RapidJSON 1.1 silently ignores a pattern its regex engine cannot compile, so every pattern
//   uses only its documented subset (no \d, no escapes inside [...]); a unit test compiles them all.
// Ranges (ports, durations, sizes) are checked here; cross-field rules (one Alipay key mode,
// 32-byte WeChat keys, unique ids, URL and host:port syntax beyond the pattern) are checked by the
// loader after validation.

#include <string_view>

namespace paybridge::config {

/// The schema text (JSON).
extern const std::string_view kConfigSchema;

}  // namespace paybridge::config
