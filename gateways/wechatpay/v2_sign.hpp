#pragma once

// WeChat Pay API v2 signatures and req_info key (PROTOCOLS.md §3.2, §3.3). Shared by the v2
// gateway (verification) and the simulator (signing).

#include "gateways/wechatpay/xml.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace paybridge::gateways::wechatpay {

enum class V2SignType { md5, hmac_sha256 };

/// "MD5" / "HMAC-SHA256": the values of the sign_type field.
std::string_view sign_type_name(V2SignType type) noexcept;
/// Inverse of sign_type_name (exact match); nullopt for anything else.
std::optional<V2SignType> parse_sign_type(std::string_view text) noexcept;

/// stringA of §3.2: every field except `sign` whose value is non-empty, in byte order of the
/// names, joined as "k1=v1&k2=v2". Values are used as decoded from the XML, not URL-encoded.
/// `sign_type`, when present, is signed like any other field.
std::string v2_sign_string(const XmlFields& fields);

/// upper(hex(MD5(stringA + "&key=" + key))) or upper(hex(HMAC-SHA256(key, stringA + "&key=" + key))).
std::string v2_sign(const XmlFields& fields, std::string_view apiv2_key, V2SignType type);

/// The AES-256-ECB key for refund req_info: the lower-case hex MD5 of the APIv2 key (32 ASCII bytes).
std::string v2_req_info_key(std::string_view apiv2_key);

}  // namespace paybridge::gateways::wechatpay
