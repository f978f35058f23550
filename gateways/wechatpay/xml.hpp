#pragma once

// The only XML WeChat Pay v2 ever sends us is flat: one root element holding <name>value</name>
// children, values usually in CDATA (PROTOCOLS.md §3). This reader accepts exactly that shape and
// nothing more, so that the classic XML attacks (XXE, billion laughs; WeChat's own advisory,
// PROTOCOLS.md §3.1 [V8]) have nothing to work with: a DOCTYPE aborts the parse before any
// declaration in it is read, so no DTD, entity declaration or external entity is ever processed.

#include "core/result.hpp"

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways::wechatpay {

/// Child element name → text (CDATA sections, the five predefined entities and character
/// references decoded), ordered by byte-wise name comparison, which is the order the v2
/// signature string needs.
using XmlFields = std::map<std::string, std::string, std::less<>>;

/// Largest document accepted, in bytes. Real notifications are under 4 KiB.
inline constexpr std::size_t kMaxXmlBytes = 64 * 1024;
/// Most child elements accepted.
inline constexpr std::size_t kMaxXmlFields = 256;

/// Parses `<root_name><k1>v1</k1><k2><![CDATA[v2]]></k2>…</root_name>` with expat, forced to
/// UTF-8 whatever the XML declaration says. An empty element gives an empty value.
/// Rejected with errc::malformed_request, without expanding anything: a DOCTYPE (aborted on sight,
/// so an XXE or billion-laughs payload is never expanded), entity declarations, references to
/// undeclared entities, processing instructions, attributes, nested elements, non-blank text
/// directly inside the root, duplicate children, another root name, more than kMaxXmlBytes bytes
/// or kMaxXmlFields children, and anything that is not well-formed UTF-8 XML.
/// `why`, when given, receives a short reason ("doctype", "duplicate element") for logs and tests.
Result<XmlFields> parse_flat_xml(std::string_view doc, std::string_view root_name, std::string* why = nullptr);

/// The value of a field, or nullptr when absent.
const std::string* find_field(const XmlFields& fields, std::string_view name) noexcept;

/// One child element for build_flat_xml.
struct XmlField {
    std::string name;  ///< a plain XML name chosen by us (never untrusted input)
    std::string value;
    bool cdata{true};  ///< false: escaped text, as WeChat writes integers like <total_fee>1</total_fee>
};

/// Writes `<root><name><![CDATA[value]]></name>…</root>` with the fields in the given order and
/// no whitespace. A value containing "]]>" is split across two CDATA sections, so any value
/// round-trips through parse_flat_xml unchanged.
std::string build_flat_xml(std::string_view root_name, const std::vector<XmlField>& fields);

}  // namespace paybridge::gateways::wechatpay
