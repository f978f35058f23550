#include "gateways/wechatpay/wechatpay_certificates.hpp"

#include "core/error.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/gateway.hpp"
#include "gateways/wechatpay/v3_api_detail.hpp"
#include "gateways/wechatpay/v3_detail.hpp"

#include <openssl/evp.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <utility>

namespace paybridge::gateways::wechatpay {
namespace {

using detail::authenticate_response;
using detail::error_code_of;
using detail::has_header;
using detail::member;
using detail::string_member;

boost::system::error_code error(errc e) { return make_error_code(e); }

bool is_rsa(EVP_PKEY* key) { return key != nullptr && EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA; }

/// One entry of "data", decrypted and checked. `where` is "200 data[i]" for `why`.
Result<PlatformCertificate> read_entry(const V3Merchant& merchant, const rapidjson::Value& entry,
                                       const std::string& where, std::string& why)
{
    const auto malformed = [&why, &where](const std::string& what) {
        why = where + " " + what;
        return error(errc::malformed_request);
    };
    if (!entry.IsObject()) {
        return malformed("is not an object");
    }
    const auto serial_no = string_member(entry, "serial_no");
    if (!serial_no || serial_no->empty()) {
        return malformed("has no serial_no");
    }
    const rapidjson::Value* sealed = member(entry, "encrypt_certificate");
    if (sealed == nullptr || !sealed->IsObject()) {
        return malformed("has no encrypt_certificate object");
    }
    const auto algorithm = string_member(*sealed, "algorithm");
    const auto nonce = string_member(*sealed, "nonce");
    const auto associated_data = string_member(*sealed, "associated_data");
    const auto ciphertext = string_member(*sealed, "ciphertext");
    if (!algorithm) {
        return malformed("encrypt_certificate has no algorithm");
    }
    if (*algorithm != kV3ResourceAlgorithm) {
        return malformed("algorithm " + quoted_excerpt(*algorithm) + " is not " + std::string(kV3ResourceAlgorithm));
    }
    if (!nonce || nonce->empty()) {
        return malformed("encrypt_certificate has no nonce");
    }
    if (!associated_data) {
        return malformed("encrypt_certificate has no associated_data");
    }
    // WeChat Pay seals certificates with associated data "certificate" (§2.13): a ciphertext
    // sealed under the same APIv3 key for another purpose (a notification's resource) is not one.
    if (*associated_data != "certificate") {
        return malformed("associated_data is not \"certificate\"");
    }
    if (!ciphertext || ciphertext->empty()) {
        return malformed("encrypt_certificate has no ciphertext");
    }

    auto pem = decrypt_resource(merchant.apiv3_key, *nonce, *associated_data, *ciphertext);
    if (!pem) {
        // The tag failing means our APIv3 key is wrong or the data was damaged; the caller can
        // only tell the two apart by trying again.
        why = where + " decrypt failed: " + std::string(error_name(pem.error()));
        return pem.error();
    }
    // Authenticated by the GCM tag under the APIv3 key from here on.
    auto certs = crypto::load_certificates(*pem);
    if (!certs || certs->size() != 1) {
        return malformed("does not decrypt to one PEM certificate");
    }
    X509* cert = certs->front().get();
    PlatformCertificate pc;
    pc.serial = normalize_serial(crypto::certificate_serial_hex(cert));
    pc.key = crypto::certificate_key(cert);
    pc.not_before = crypto::certificate_not_before(cert);
    pc.not_after = crypto::certificate_not_after(cert);
    if (normalize_serial(*serial_no) != pc.serial) {
        return malformed("serial_no " + quoted_excerpt(*serial_no) + " is not the certificate's serial " + pc.serial);
    }
    if (!is_rsa(pc.key.get())) {
        return malformed("certificate " + pc.serial + " does not hold an RSA key");
    }
    return pc;
}

std::string count_of(std::size_t n, const char* what)
{
    return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

}  // namespace

Result<QueryRequest> build_certificates_request(const V3Merchant& merchant, const V3QuerySigner& signer,
                                                std::string_view base_path, std::int64_t now_unix,
                                                std::string_view nonce)
{
    return detail::signed_v3_get(merchant, signer, base_path, "/v3/certificates", now_unix, nonce);
}

Result<std::vector<PlatformCertificate>> read_certificates_response(const V3Merchant& merchant,
                                                                    const QueryResponse& response,
                                                                    std::int64_t now_unix, std::string* detail)
{
    std::string ignored;
    std::string& why = detail != nullptr ? *detail : ignored;
    const unsigned status = response.status;
    std::string what = std::to_string(status);

    if (status >= 200 && status < 300) {
        if (!has_header(response, "Wechatpay-Signature")) {
            why = what + " unsigned";
            return error(errc::bad_signature);
        }
        // Not authenticated yet: the certificates are (by their GCM tags), and they may hold the
        // key the answer is signed with, so they are read first.
        rapidjson::Document doc;
        doc.Parse<rapidjson::kParseValidateEncodingFlag>(response.body.data(), response.body.size());
        if (doc.HasParseError() || !doc.IsObject()) {
            why = what + " body is not a JSON object";
            return error(errc::malformed_request);
        }
        const rapidjson::Value* data = member(doc, "data");
        if (data == nullptr || !data->IsArray()) {
            why = what + " has no data array";
            return error(errc::malformed_request);
        }
        std::vector<PlatformCertificate> downloaded;
        std::vector<std::string> serials;
        std::size_t expired = 0;
        for (rapidjson::SizeType i = 0; i < data->Size(); ++i) {
            auto pc = read_entry(merchant, (*data)[i], what + " data[" + std::to_string(i) + "]", why);
            if (!pc) {
                return pc.error();
            }
            if (std::find(serials.begin(), serials.end(), pc->serial) != serials.end()) {
                why = what + " serial " + pc->serial + " is listed twice";
                return error(errc::malformed_request);
            }
            serials.push_back(pc->serial);
            if (pc->not_after < now_unix) {
                ++expired;  // kept until they expire (§2.13), so not an anomaly
                continue;
            }
            downloaded.push_back(std::move(*pc));
        }

        // The merchant's keys: configured, downloaded before (the book, flattened into this copy
        // so that an unknown serial here does not ask the book's hook for another download), and
        // the ones just read. The first certificate with the serial asked is the one used.
        V3Merchant with_downloaded = merchant;
        with_downloaded.downloaded = nullptr;
        if (merchant.downloaded) {
            const auto earlier = merchant.downloaded->certificates();
            with_downloaded.certificates.insert(with_downloaded.certificates.end(), earlier->begin(), earlier->end());
        }
        with_downloaded.certificates.insert(with_downloaded.certificates.end(), downloaded.begin(), downloaded.end());
        auto checked = authenticate_response(with_downloaded, response, now_unix, what, why);
        if (!checked) {
            return checked.error();
        }
        why = what + " " + count_of(downloaded.size(), "certificate");
        if (expired != 0) {
            why += ", " + std::to_string(expired) + " expired dropped";
        }
        why += " " + checked->note;
        return downloaded;
    }

    const std::string code = error_code_of(response.body);
    if (!code.empty()) {
        what += " " + code;
    }
    why = what;
    if (status == 429 || status >= 500) {
        return error(errc::provider_unavailable);
    }
    if (status == 404) {
        // NOT_FOUND: in public-key mode there are no platform certificates to list (§2.13).
        return error(errc::not_found);
    }
    return error(errc::provider_rejected);
}

}  // namespace paybridge::gateways::wechatpay
