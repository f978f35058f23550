#pragma once

// application/x-www-form-urlencoded, as payment providers send it (Alipay notifications) and as
// Java's URLEncoder writes it (our simulator). Bytes are never transcoded here: a GBK form stays
// GBK, because providers sign the decoded bytes in the form's own charset.

#include "core/result.hpp"

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace paybridge::gateways {

/// Decoded form fields in the order they appeared.
using FormFields = std::vector<std::pair<std::string, std::string>>;

/// Parses a raw form body. Splits on '&', splits each pair on its FIRST '=' (so base64 padding in
/// a value survives), and percent-decodes key and value exactly once: '+' → 0x20, %XX → the byte
/// (either hex case), every other byte kept as is. Empty segments ("a=1&&b=2", a trailing '&')
/// are skipped; an empty body gives no fields.
/// Errors: errc::malformed_request for a malformed escape (%G1, "%4", trailing '%'), a segment
/// without '=', an empty key, or a key that appears twice.
Result<FormFields> parse_form(std::string_view raw);

/// Percent-decodes one form or query component exactly once ('+' → space, %XX → the byte).
/// False on a malformed escape.
bool percent_decode(std::string_view in, std::string& out);

/// Encodes one key or value like java.net.URLEncoder: A-Z a-z 0-9 . - * _ are kept, space becomes
/// '+', every other byte becomes %XX with upper-case hex. Bytes are encoded as given (no charset
/// conversion), so GBK input yields a GBK form.
std::string form_encode(std::string_view bytes);

}  // namespace paybridge::gateways
