#include "crm/webhook_signer.hpp"

#include "core/error.hpp"
#include "gateways/crypto/crypto.hpp"

#include <charconv>
#include <stdexcept>

namespace paybridge::crm {
namespace {

std::string signed_content(std::string_view id, std::int64_t timestamp, std::string_view body)
{
    std::string content;
    content.reserve(id.size() + body.size() + 24);
    content.append(id);
    content.push_back('.');
    content.append(std::to_string(timestamp));
    content.push_back('.');
    content.append(body);
    return content;
}

}  // namespace

Result<std::string> decode_secret(std::string_view secret)
{
    if (secret.starts_with(kSecretPrefix)) {
        secret.remove_prefix(kSecretPrefix.size());
    }
    std::optional<std::string> key = crypto::base64_decode(secret);
    if (!key || key->empty()) {
        return make_error_code(errc::invalid_argument);
    }
    return std::move(*key);
}

std::string signature(std::string_view key, std::string_view id, std::int64_t timestamp, std::string_view body)
{
    return crypto::base64_encode(crypto::hmac_sha256(key, signed_content(id, timestamp, body)));
}

Result<WebhookSigner> WebhookSigner::create(const std::vector<std::string>& secrets)
{
    if (secrets.empty()) {
        return make_error_code(errc::invalid_argument);
    }
    std::vector<std::string> keys;
    keys.reserve(secrets.size());
    for (const std::string& secret : secrets) {
        Result<std::string> key = decode_secret(secret);
        if (!key) {
            return key.error();
        }
        keys.push_back(std::move(*key));
    }
    return WebhookSigner(std::move(keys));
}

std::string WebhookSigner::sign(std::string_view id, std::int64_t timestamp, std::string_view body) const
{
    // One HMAC input for all keys: the content can be large (a whole bill event).
    const std::string content = signed_content(id, timestamp, body);
    std::string header;
    for (const std::string& key : keys_) {
        if (!header.empty()) {
            header.push_back(' ');
        }
        header.append("v1,");
        header.append(crypto::base64_encode(crypto::hmac_sha256(key, content)));
    }
    return header;
}

std::string sign(const std::vector<std::string>& secrets, std::string_view id, std::int64_t timestamp,
                 std::string_view body)
{
    Result<WebhookSigner> signer = WebhookSigner::create(secrets);
    if (!signer) {
        throw std::invalid_argument("crm: a webhook secret is not whsec_ + base64");
    }
    return signer->sign(id, timestamp, body);
}

Result<void> check(std::string_view secret, std::string_view id, std::string_view timestamp,
                   std::string_view signature_header, std::string_view body, std::int64_t now_unix,
                   std::chrono::seconds tolerance)
{
    if (id.empty() || timestamp.empty()) {
        return make_error_code(errc::malformed_request);
    }
    std::int64_t ts = 0;
    const auto [end, ec] = std::from_chars(timestamp.data(), timestamp.data() + timestamp.size(), ts);
    if (ec != std::errc{} || end != timestamp.data() + timestamp.size() || ts < 0) {
        return make_error_code(errc::malformed_request);
    }
    const std::int64_t skew = now_unix > ts ? now_unix - ts : ts - now_unix;
    if (skew > tolerance.count()) {
        return make_error_code(errc::stale_timestamp);
    }
    Result<std::string> key = decode_secret(secret);
    if (!key) {
        return make_error_code(errc::bad_signature);
    }
    const std::string expected = signature(*key, id, ts, body);

    bool any_v1 = false;
    bool matched = false;
    std::size_t pos = 0;
    while (pos <= signature_header.size()) {
        std::size_t next = signature_header.find(' ', pos);
        if (next == std::string_view::npos) {
            next = signature_header.size();
        }
        std::string_view entry = signature_header.substr(pos, next - pos);
        pos = next + 1;
        if (!entry.starts_with("v1,")) {
            continue;
        }
        any_v1 = true;
        entry.remove_prefix(3);
        // No early exit: every entry is compared, so timing does not reveal which one matched.
        matched = crypto::constant_time_equal(entry, expected) || matched;
    }
    if (!any_v1) {
        return make_error_code(errc::malformed_request);
    }
    if (!matched) {
        return make_error_code(errc::bad_signature);
    }
    return {};
}

bool verify(std::string_view secret, std::string_view id, std::string_view timestamp,
            std::string_view signature_header, std::string_view body, std::int64_t now_unix,
            std::chrono::seconds tolerance)
{
    return check(secret, id, timestamp, signature_header, body, now_unix, tolerance).has_value();
}

}  // namespace paybridge::crm
