#include "gateways/wechatpay/v2_sign.hpp"

#include "gateways/crypto/crypto.hpp"

namespace paybridge::gateways::wechatpay {

std::string_view sign_type_name(V2SignType type) noexcept
{
    return type == V2SignType::md5 ? "MD5" : "HMAC-SHA256";
}

std::optional<V2SignType> parse_sign_type(std::string_view text) noexcept
{
    if (text == "MD5") {
        return V2SignType::md5;
    }
    if (text == "HMAC-SHA256") {
        return V2SignType::hmac_sha256;
    }
    return std::nullopt;
}

std::string v2_sign_string(const XmlFields& fields)
{
    std::string out;
    for (const auto& [name, value] : fields) {  // XmlFields is already in byte order
        if (name == "sign" || value.empty()) {
            continue;
        }
        if (!out.empty()) {
            out += '&';
        }
        out.append(name).append("=").append(value);
    }
    return out;
}

std::string v2_sign(const XmlFields& fields, std::string_view apiv2_key, V2SignType type)
{
    std::string message = v2_sign_string(fields);
    message.append("&key=").append(apiv2_key);
    // The HMAC variant still appends &key=…: the key is both the MAC key and part of the message.
    return crypto::hex_upper(type == V2SignType::md5 ? crypto::md5(message)
                                                     : crypto::hmac_sha256(apiv2_key, message));
}

std::string v2_req_info_key(std::string_view apiv2_key)
{
    return crypto::hex_lower(crypto::md5(apiv2_key));
}

}  // namespace paybridge::gateways::wechatpay
