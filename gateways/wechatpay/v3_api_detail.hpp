#pragma once

// Internals of the v3 API client shared by the transaction query (wechatpay_query.cpp) and the
// platform certificate download (wechatpay_certificates.cpp): one way to sign a request (§2.12)
// and one way to authenticate an answer (§2.13). For the wechatpay library's own .cpp files only.

#include "core/result.hpp"
#include "gateways/query.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace paybridge::gateways::wechatpay::detail {

/// GET <base_path><path_and_query>, signed with the merchant's API key as build_transaction_query
/// documents (Authorization, Accept: application/json, Wechatpay-Serial in public-key mode).
/// `path_and_query` starts with '/' and is already escaped: it is sent and signed as given.
/// Errors: invalid_argument (a nonce that is not 1–64 letters or digits, a base_path that does
/// not start with '/' or holds '?', '#', '"', a space or a control character, no private key, an
/// empty or unquotable serial or mchid, now_unix <= 0); internal (signing failed).
Result<QueryRequest> signed_v3_get(const V3Merchant& merchant, const V3QuerySigner& signer,
                                   std::string_view base_path, std::string_view path_and_query,
                                   std::int64_t now_unix, std::string_view nonce);

/// Whether the response has a header of that name (compared case-insensitively).
bool has_header(const QueryResponse& response, std::string_view name);

/// WeChat's error code from an error body ({"code":"ORDER_NOT_EXIST","message":…}), only when it
/// is a plain [A-Z0-9_] code of at most 64 characters: the body is unauthenticated and goes to
/// the logs. "" otherwise.
std::string error_code_of(std::string_view body);

/// Authenticates an answer with verify_v3_signature. The official rule for 2xx answers (§2.11)
/// is that one without a valid signature is forged, so whatever keeps it from verifying (a header
/// missing, a timestamp that is not a number) is bad_signature here, where a notification would
/// be malformed; only a stale timestamp keeps its own error, since a clock off by minutes is
/// worth telling apart. On failure `why` = what + " not verified: <error name>".
Result<V3SignatureCheck> authenticate_response(const V3Merchant& merchant, const QueryResponse& response,
                                               std::int64_t now_unix, const std::string& what, std::string& why);

}  // namespace paybridge::gateways::wechatpay::detail
