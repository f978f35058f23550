#include "gateways/alipay/alipay_cert_download.hpp"

#include "core/error.hpp"
#include "gateways/alipay/alipay_detail.hpp"

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace paybridge::gateways::alipay {
namespace {

using detail::set_detail;
using detail::text_member;

constexpr std::string_view kDownloadMethod = "alipay.open.app.alipaycert.download";
constexpr std::string_view kDownloadNode = "alipay_open_app_alipaycert_download_response";
constexpr unsigned kParseFlags = detail::kAnswerParseFlags;

boost::system::error_code error(errc e) { return make_error_code(e); }

std::string without_whitespace(std::string_view text)
{
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            out += c;
        }
    }
    return out;
}

// The certificate alipay_cert_content carries, checked as one of the configured files is at load
// (§1.6): a leaf chaining to the configured roots at `now`, with an RSA key and the SN asked for.
// The reason it is refused goes to `why`.
std::optional<ProviderCertificate> check_certificate(const AlipayAppKeys& app, std::string_view wanted_sn,
                                                     std::string_view content_base64, std::int64_t now,
                                                     std::string& why)
{
    const auto pem = crypto::base64_decode(without_whitespace(content_base64));
    if (!pem) {
        why = "alipay_cert_content is not base64";
        return std::nullopt;
    }
    auto certs = crypto::load_certificates(*pem);
    if (!certs || certs->empty()) {
        why = "alipay_cert_content holds no PEM certificate, or one that does not read";
        return std::nullopt;
    }
    const std::size_t leaf = detail::leaf_index(*certs);
    X509* cert = (*certs)[leaf].get();
    ProviderCertificate out;
    out.serial = crypto::alipay_cert_sn(cert);
    out.key = crypto::certificate_key(cert);
    out.not_before = crypto::certificate_not_before(cert);
    out.not_after = crypto::certificate_not_after(cert);
    // The reason names the certificate by its SN (computed by us, so safe to log).
    const std::string named = "the downloaded certificate " + out.serial;
    if (now > out.not_after) {
        why = named + " has expired";
        return std::nullopt;
    }
    if (now < out.not_before) {
        why = named + " is not valid yet";
        return std::nullopt;
    }
    if (!detail::chains_to_roots(*certs, leaf, *app.roots, true, now)) {
        why = named + " does not chain to alipay_root_cert_file";
        return std::nullopt;
    }
    if (!out.key || EVP_PKEY_get_base_id(out.key.get()) != EVP_PKEY_RSA) {
        why = named + " does not hold an RSA public key";
        return std::nullopt;
    }
    // The root also issues every merchant's app certificate (whose holder has its private key):
    // only a certificate of the same issuer and subject as the configured Alipay certificate, and
    // no CA, is Alipay's re-issued one.
    const std::string issuer = detail::name_der(X509_get_issuer_name(cert));
    const std::string subject = detail::name_der(X509_get_subject_name(cert));
    if (issuer.empty() || issuer != app.alipay_cert_issuer_der) {
        why = named + " is not issued by the issuer of alipay_public_cert_file";
        return std::nullopt;
    }
    if (subject.empty() || subject != app.alipay_cert_subject_der) {
        why = named + " does not name the subject of alipay_public_cert_file";
        return std::nullopt;
    }
    if (X509_check_ca(cert) != 0) {
        why = named + " is a CA certificate";
        return std::nullopt;
    }
    if (out.serial != wanted_sn) {
        why = named + " is not the one asked for (" + detail::excerpt(wanted_sn) + ")";
        return std::nullopt;
    }
    return out;
}

}  // namespace

Result<QueryRequest> build_cert_download(const AlipayAppKeys& app, const AlipayQuerySigner& signer,
                                         std::string_view gateway_target, std::string_view alipay_cert_sn,
                                         std::int64_t now_unix)
{
    if (alipay_cert_sn.empty() || signer.app_cert_sn.empty()) {
        return error(errc::invalid_argument);
    }
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    writer.StartObject();
    writer.Key("alipay_cert_sn");
    writer.String(alipay_cert_sn.data(), static_cast<rapidjson::SizeType>(alipay_cert_sn.size()));
    writer.EndObject();
    return detail::build_request(app, signer, gateway_target, kDownloadMethod,
                                 std::string_view(buffer.GetString(), buffer.GetSize()), now_unix);
}

Result<ProviderCertificate> read_cert_download(const AlipayAppKeys& app, std::string_view alipay_cert_sn,
                                               const QueryResponse& response, std::int64_t now_unix,
                                               std::string* detail, std::string* content_out)
{
    set_detail(detail, {});
    if (!app.roots || alipay_cert_sn.empty()) {
        set_detail(detail, "the app is not in certificate mode");
        return error(errc::invalid_argument);
    }
    auto located = detail::locate_answer(response, kDownloadNode, detail);
    if (!located) {
        return located.error();
    }
    const std::string_view content = located->content;
    const std::optional<std::string>& cert_sn = located->cert_sn;
    const std::int64_t now = detail::now_or_clock(now_unix);

    // The certificate first: the answer may be signed with it, and it is trusted by its chain to
    // the configured roots, whatever the (still unverified) answer around it says.
    std::optional<ProviderCertificate> fetched;
    std::string fetched_content;
    {
        rapidjson::Document doc;
        doc.Parse<kParseFlags>(content.data(), content.size());
        const bool success = !doc.HasParseError() && doc.IsObject() && text_member(doc, "code") == "10000";
        if (const auto cert_content = success ? text_member(doc, "alipay_cert_content") : std::nullopt) {
            std::string why;
            fetched_content = without_whitespace(*cert_content);
            fetched = check_certificate(app, alipay_cert_sn, fetched_content, now, why);
            if (!fetched) {
                set_detail(detail, std::move(why));
                return error(errc::bad_signature);
            }
        }
    }

    // The keys the answer may be signed with (never reporting an unknown SN to the book's hook:
    // this is the download that such a report asks for).
    std::vector<AlipayKey> extra;  // the fetched certificate's and the book's; filled before pointers are taken
    const bool names_sn = cert_sn && !cert_sn->empty();
    bool sn_known = true;
    auto keys = detail::candidate_keys(app, cert_sn, now, sn_known);
    if (!names_sn) {
        if (fetched) {
            extra.push_back(AlipayKey{.key = fetched->key, .cert_sn = fetched->serial});
        }
        for (AlipayKey& key : detail::downloaded_keys(app, now)) {
            extra.push_back(std::move(key));
        }
    } else if (fetched && *cert_sn == fetched->serial) {
        keys.clear();  // a configured certificate of the same SN is the same certificate
        extra.push_back(AlipayKey{.key = fetched->key, .cert_sn = fetched->serial});
    } else if (!sn_known) {
        const auto held = detail::downloaded_certificate(app, *cert_sn);
        if (!held || now < held->not_before || now > held->not_after) {
            set_detail(detail, "alipay_cert_sn " + detail::excerpt(*cert_sn) +
                                   " is neither the downloaded certificate nor one held");
            return error(errc::bad_signature);
        }
        extra.push_back(AlipayKey{.key = held->key, .cert_sn = held->serial});
    }
    for (const AlipayKey& key : extra) {
        keys.push_back(&key);
    }
    bool via_unescaped = false;
    const AlipayKey* verified_by = detail::verify_content(app, content, located->signature, keys, via_unescaped);
    if (verified_by == nullptr) {
        set_detail(detail, "no key verifies the sign");
        return error(errc::bad_signature);
    }
    // A certificate held before (not the one being fetched) is worth a note.
    const bool by_extra = std::any_of(extra.begin(), extra.end(),
                                      [verified_by](const AlipayKey& key) { return &key == verified_by; });
    std::string notes = detail::verification_notes(
        *verified_by, by_extra && !(fetched && verified_by->cert_sn == fetched->serial), via_unescaped);

    // Authentic from here on.
    rapidjson::Document doc;
    const Result<std::string_view> code = detail::parse_verified(doc, content, detail);
    if (!code) {
        return code.error();
    }
    if (*code != "10000") {
        set_detail(detail, detail::code_detail(*code, text_member(doc, "sub_code")));
        return error(*code == "20000" ? errc::provider_unavailable : errc::provider_rejected);
    }
    if (!fetched) {
        set_detail(detail, "no alipay_cert_content");
        return error(errc::malformed_request);
    }
    set_detail(detail, std::move(notes));
    if (content_out != nullptr) {
        *content_out = std::move(fetched_content);
    }
    return std::move(*fetched);
}

bool newer_than_configured(const AlipayAppKeys& app, const ProviderCertificate& cert) noexcept
{
    return cert.not_before > app.alipay_cert_not_before;
}

Result<ProviderCertificate> check_kept_certificate(const AlipayAppKeys& app, std::string_view alipay_cert_sn,
                                                   std::string_view content, std::int64_t now_unix, std::string* detail)
{
    set_detail(detail, {});
    if (!app.roots || alipay_cert_sn.empty()) {
        set_detail(detail, "the app is not in certificate mode");
        return error(errc::invalid_argument);
    }
    std::string why;
    std::optional<ProviderCertificate> kept =
        check_certificate(app, alipay_cert_sn, content, detail::now_or_clock(now_unix), why);
    if (!kept) {
        set_detail(detail, std::move(why));
        return error(errc::bad_signature);
    }
    if (!newer_than_configured(app, *kept)) {
        set_detail(detail, "the downloaded certificate " + kept->serial +
                               " is not newer than alipay_public_cert_file (an older certificate is not brought back)");
        return error(errc::bad_signature);
    }
    return std::move(*kept);
}

}  // namespace paybridge::gateways::alipay
