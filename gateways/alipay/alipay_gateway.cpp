#include "gateways/alipay/alipay_gateway.hpp"

#include "core/error.hpp"
#include "gateways/alipay/alipay_detail.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/charset.hpp"

#include <boost/algorithm/string/predicate.hpp>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <unordered_set>

namespace paybridge::gateways::alipay {
namespace {

template <auto Fn>
struct FreeWith {
    template <class T>
    void operator()(T* p) const noexcept { Fn(p); }
};
using StorePtr = std::unique_ptr<X509_STORE, FreeWith<X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, FreeWith<X509_STORE_CTX_free>>;

void free_x509_stack(STACK_OF(X509) * s) noexcept { sk_X509_free(s); }
using X509StackPtr = std::unique_ptr<STACK_OF(X509), FreeWith<free_x509_stack>>;

const std::string* find_field(const FormFields& fields, std::string_view key) noexcept
{
    for (const auto& [k, v] : fields) {
        if (k == key) {
            return &v;
        }
    }
    return nullptr;
}

bool present(const std::string* value) noexcept { return value != nullptr && !value->empty(); }

bool is_rsa(EVP_PKEY* key) noexcept { return key != nullptr && EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA; }

// "application/x-www-form-urlencoded; charset=\"GBK\"" → "GBK"; "" when absent.
std::string_view content_type_charset(std::string_view content_type) noexcept
{
    std::size_t pos = content_type.find(';');
    while (pos != std::string_view::npos) {
        std::string_view param = content_type.substr(pos + 1);
        const std::size_t next = param.find(';');
        pos = next == std::string_view::npos ? std::string_view::npos : pos + 1 + next;
        param = param.substr(0, next);
        while (!param.empty() && (param.front() == ' ' || param.front() == '\t')) {
            param.remove_prefix(1);
        }
        while (!param.empty() && (param.back() == ' ' || param.back() == '\t')) {
            param.remove_suffix(1);
        }
        if (param.size() > 8 && boost::algorithm::istarts_with(param, "charset=")) {
            std::string_view value = param.substr(8);
            if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
                value = value.substr(1, value.size() - 2);
            }
            return value;
        }
    }
    return {};
}

// The fields paybridge acts on (to_payment_event, the seller check): these must be readable in
// the notification's charset. Every other field (subject, body, passback_params, fund_bill_list…)
// is description, and one that is not is dropped with a note instead of refusing a payment whose
// signature verified: refused, it would be retried for a day and then lost (PROTOCOLS.md §1.1: a
// notification's charset follows the pay request's, and a mis-declared one makes GBK arrive).
bool acted_on(std::string_view key) noexcept
{
    static constexpr std::string_view kFields[] = {
        "app_id",     "notify_id",  "out_trade_no", "trade_status", "trade_no",    "total_amount", "refund_fee",
        "out_biz_no", "gmt_refund", "gmt_payment",  "gmt_close",    "notify_time", "seller_id",    "charset"};
    for (std::string_view f : kFields) {
        if (f == key) {
            return true;
        }
    }
    return false;
}

// One way of rebuilding the signed string (§1.5 plus its fallbacks).
struct Variant {
    bool exclude_cert_sn{false};
    bool skip_empty{false};
    bool unescape_quot{false};
};

void append_unescaped_quot(std::string& out, std::string_view value)
{
    constexpr std::string_view kQuot = "&quot;";
    std::size_t pos = 0;
    for (std::size_t hit = value.find(kQuot); hit != std::string_view::npos; hit = value.find(kQuot, pos)) {
        out.append(value.substr(pos, hit - pos));
        out += '"';
        pos = hit + kQuot.size();
    }
    out.append(value.substr(pos));
}

// `sorted` holds the signable fields (sign and sign_type already dropped) in key byte order.
std::string build_content(const std::vector<const std::pair<std::string, std::string>*>& sorted, Variant v)
{
    std::string out;
    for (const auto* field : sorted) {
        if (v.exclude_cert_sn && field->first == "alipay_cert_sn") {
            continue;
        }
        if (v.skip_empty && field->second.empty()) {
            continue;
        }
        if (!out.empty()) {
            out += '&';
        }
        out += field->first;
        out += '=';
        if (v.unescape_quot) {
            append_unescaped_quot(out, field->second);
        } else {
            out += field->second;
        }
    }
    return out;
}

std::vector<const std::pair<std::string, std::string>*> signable_sorted(const FormFields& fields)
{
    std::vector<const std::pair<std::string, std::string>*> sorted;
    sorted.reserve(fields.size());
    for (const auto& field : fields) {
        if (field.first != "sign" && field.first != "sign_type") {
            sorted.push_back(&field);
        }
    }
    // std::string compares through char_traits<char>, i.e. as unsigned bytes (memcmp order).
    std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
    return sorted;
}

constexpr char kNotYuan[] = " is not an amount in yuan (digits, at most two decimals)";

// -1 when absent or empty (Alipay sends empty values, §1.5 step 7: "refund_fee=" is no refund).
Result<std::int64_t> optional_amount(const std::string* text)
{
    if (!present(text)) {
        return std::int64_t{-1};
    }
    return parse_yuan(*text);
}

// The first of `names` that is present and reads as Beijing time, as RFC 3339 UTC; "" if none.
// Times only describe the event: an authentic notification is not refused over one.
std::string first_valid_time(const FormFields& fields, std::initializer_list<std::string_view> names)
{
    for (std::string_view name : names) {
        const std::string* text = find_field(fields, name);
        if (!present(text)) {
            continue;
        }
        if (const auto ms = parse_beijing_time(*text)) {
            return format_rfc3339(*ms);
        }
    }
    return {};
}

}  // namespace

namespace detail {

void add_note(std::string& notes, std::string_view note)
{
    if (!notes.empty()) {
        notes += "; ";
    }
    notes += note;
}

void set_detail(std::string* detail, std::string text)
{
    if (detail != nullptr) {
        *detail = std::move(text);
    }
}


std::int64_t now_or_clock(std::int64_t now_unix)
{
    return now_unix != 0 ? now_unix : unix_ms(std::chrono::system_clock::now()) / 1000;
}

std::size_t leaf_index(const std::vector<crypto::X509Ptr>& certs)
{
    for (std::size_t i = 0; i < certs.size(); ++i) {
        bool issued_another = false;
        for (std::size_t j = 0; j < certs.size(); ++j) {
            if (i != j && X509_check_issued(certs[i].get(), certs[j].get()) == X509_V_OK) {
                issued_another = true;
            }
        }
        if (!issued_another) {
            return i;
        }
    }
    return 0;
}

std::string name_der(const X509_NAME* name)
{
    unsigned char* der = nullptr;
    const int n = i2d_X509_NAME(name, &der);
    if (n <= 0 || der == nullptr) {
        return {};
    }
    std::string out(reinterpret_cast<const char*>(der), static_cast<std::size_t>(n));
    OPENSSL_free(der);
    return out;
}

// crypto::certificate_chains_to takes no untrusted intermediates, which a multi-certificate
// Alipay file needs.
bool chains_to_roots(const std::vector<crypto::X509Ptr>& file, std::size_t leaf,
                     const std::vector<crypto::X509Ptr>& roots, bool check_time, std::int64_t at_unix)
{
    StorePtr store(X509_STORE_new());
    X509StackPtr untrusted(sk_X509_new_null());
    StoreCtxPtr ctx(X509_STORE_CTX_new());
    if (!store || !untrusted || !ctx || leaf >= file.size()) {
        return false;
    }
    for (const auto& root : roots) {
        X509_STORE_add_cert(store.get(), root.get());
    }
    for (std::size_t i = 0; i < file.size(); ++i) {
        if (i != leaf) {
            sk_X509_push(untrusted.get(), file[i].get());
        }
    }
    if (X509_STORE_CTX_init(ctx.get(), store.get(), file[leaf].get(), untrusted.get()) != 1) {
        return false;
    }
    if (!check_time) {
        X509_STORE_CTX_set_flags(ctx.get(), X509_V_FLAG_NO_CHECK_TIME);
    } else if (at_unix != 0) {
        X509_STORE_CTX_set_time(ctx.get(), 0, static_cast<time_t>(at_unix));
    }
    return X509_verify_cert(ctx.get()) == 1;
}

std::vector<AlipayKey> downloaded_keys(const AlipayAppKeys& app, std::int64_t now_unix)
{
    std::vector<AlipayKey> keys;
    if (!app.downloaded) {
        return keys;
    }
    now_unix = now_or_clock(now_unix);
    const auto certificates = app.downloaded->certificates();
    for (const ProviderCertificate& cert : *certificates) {
        if (cert.key && now_unix >= cert.not_before && now_unix <= cert.not_after && !configured_sn(app, cert.serial)) {
            keys.push_back(AlipayKey{.key = cert.key, .cert_sn = cert.serial});
        }
    }
    return keys;
}

std::optional<ProviderCertificate> downloaded_certificate(const AlipayAppKeys& app, std::string_view sn)
{
    if (!app.downloaded) {
        return std::nullopt;
    }
    const auto certificates = app.downloaded->certificates();
    for (const ProviderCertificate& cert : *certificates) {
        if (cert.serial == sn && cert.key) {
            return cert;
        }
    }
    return std::nullopt;
}

bool sn_form(std::string_view sn) noexcept
{
    return sn.size() == 32 && std::all_of(sn.begin(), sn.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

}  // namespace detail

bool configured_sn(const AlipayAppKeys& app, std::string_view sn) noexcept
{
    return std::any_of(app.keys.begin(), app.keys.end(),
                       [sn](const AlipayKey& key) { return !key.cert_sn.empty() && key.cert_sn == sn; });
}

std::string sign_content(const FormFields& fields, bool exclude_cert_sn, bool skip_empty)
{
    return build_content(signable_sorted(fields), Variant{exclude_cert_sn, skip_empty, false});
}

Result<AlipayAppKeys> load_alipay_app(const config::AlipayApp& app, std::string_view where,
                                      std::vector<std::string>& problems, gateways::CertificateBooks* books)
{
    const std::size_t problems_before = problems.size();
    auto problem = [&](std::string_view text) { problems.push_back(config_problem(where, text)); };

    AlipayAppKeys keys;
    keys.app_id = app.app_id;
    keys.seller_id = app.seller_id;
    keys.sign_type = app.sign_type;
    if (app.app_id.empty()) {
        problem("app_id is empty");
    }
    if (app.sign_type == "RSA2") {
        keys.digest = crypto::Digest::sha256;
    } else if (app.sign_type == "RSA") {
        keys.digest = crypto::Digest::sha1;
    } else {
        problem("sign_type must be \"RSA2\" or \"RSA\"");
    }

    const bool key_mode = !app.public_key_pem.empty();
    const bool cert_mode = !app.public_cert_pem.empty();
    if (!key_mode && !cert_mode) {
        problem("neither alipay_public_key_file nor alipay_public_cert_file is set");
    }

    const auto public_key = [&](const std::string& pem, std::string_view field, bool previous) {
        auto key = crypto::load_public_key(pem);
        if (!key) {
            problem(std::string(field) + " is not a PEM or base64 SubjectPublicKeyInfo public key");
        } else if (!is_rsa(key->get())) {
            problem(std::string(field) + " is not an RSA public key");
        } else {
            keys.keys.push_back(AlipayKey{.key = *key, .previous = previous});
        }
    };
    if (key_mode) {
        public_key(app.public_key_pem, "alipay_public_key_file", false);
    }

    if (cert_mode && app.root_cert_pem.empty()) {
        problem("alipay_public_cert_file is set but alipay_root_cert_file is not");
    } else if (!cert_mode && !app.root_cert_pem.empty()) {
        problem("alipay_root_cert_file is set but alipay_public_cert_file is not");
    } else if (cert_mode) {
        auto certs = crypto::load_certificates(app.public_cert_pem);
        auto roots = crypto::load_certificates(app.root_cert_pem);
        if (!certs) {
            problem("alipay_public_cert_file holds no PEM certificate, or one that does not read");
        }
        if (!roots) {
            problem("alipay_root_cert_file holds no PEM certificate, or one that does not read");
        }
        if (certs && roots) {
            const std::size_t leaf = detail::leaf_index(*certs);
            X509* cert = (*certs)[leaf].get();
            crypto::SharedKey key = crypto::certificate_key(cert);
            if (!detail::chains_to_roots(*certs, leaf, *roots)) {
                problem("alipay_public_cert_file does not chain to alipay_root_cert_file");
            } else if (!is_rsa(key.get())) {
                problem("alipay_public_cert_file does not hold an RSA public key");
            } else {
                keys.alipay_cert_sn = crypto::alipay_cert_sn(cert);
                keys.alipay_cert_issuer_der = detail::name_der(X509_get_issuer_name(cert));
                keys.alipay_cert_subject_der = detail::name_der(X509_get_subject_name(cert));
                keys.alipay_cert_not_before = crypto::certificate_not_before(cert);
                keys.keys.push_back(AlipayKey{.key = std::move(key), .cert_sn = keys.alipay_cert_sn});
                keys.alipay_root_cert_sn = crypto::alipay_root_cert_sn(*roots);
            }
        }
        // The certificate being replaced: it may already have expired (a restart late in the
        // overlap must not fail for it); verify() stops using it after its notAfter.
        if (roots && !app.previous_public_cert_pem.empty()) {
            auto previous = crypto::load_certificates(app.previous_public_cert_pem);
            if (!previous) {
                problem("previous_alipay_public_cert_file holds no PEM certificate, or one that does not read");
            } else {
                const std::size_t leaf = detail::leaf_index(*previous);
                X509* cert = (*previous)[leaf].get();
                crypto::SharedKey key = crypto::certificate_key(cert);
                const std::int64_t not_after = crypto::certificate_not_after(cert);
                if (!detail::chains_to_roots(*previous, leaf, *roots, false)) {
                    problem("previous_alipay_public_cert_file does not chain to alipay_root_cert_file");
                } else if (!is_rsa(key.get())) {
                    problem("previous_alipay_public_cert_file does not hold an RSA public key");
                } else if (not_after <= 0) {
                    problem("previous_alipay_public_cert_file has no readable notAfter");
                } else {
                    keys.keys.push_back(AlipayKey{.key = std::move(key),
                                                  .previous = true,
                                                  .not_after = not_after,
                                                  .cert_sn = crypto::alipay_cert_sn(cert)});
                }
            }
        }
        // What a downloaded certificate must chain to (read_cert_download).
        if (roots) {
            keys.roots = std::make_shared<const std::vector<crypto::X509Ptr>>(std::move(*roots));
        }
    }
    if (!app.previous_public_cert_pem.empty() && !cert_mode) {
        problem("previous_alipay_public_cert_file is set but alipay_public_cert_file is not");
    }
    // The previous keys go last: tried only when the current ones do not verify.
    if (!app.previous_public_key_pem.empty()) {
        public_key(app.previous_public_key_pem, "previous_alipay_public_key_file", true);
    }

    if (problems.size() != problems_before) {
        return make_error_code(errc::invalid_argument);
    }
    if (keys.roots && app.download_certificates && books != nullptr) {
        keys.downloaded = books->book(app.app_id);
    }
    return keys;
}

Result<std::unique_ptr<Gateway>> make_alipay_gateway(const std::vector<config::AlipayApp>& apps,
                                                     std::vector<std::string>& problems,
                                                     gateways::CertificateBooks* books)
{
    const std::size_t problems_before = problems.size();
    std::vector<AlipayAppKeys> loaded;
    std::unordered_set<std::string> seen;
    for (std::size_t i = 0; i < apps.size(); ++i) {
        const std::string where = account_pointer(apps[i].pointer, "/alipay/apps", i);
        if (!apps[i].app_id.empty() && !seen.insert(apps[i].app_id).second) {
            problems.push_back(config_problem(where, "app_id " + apps[i].app_id + " is configured twice"));
        }
        auto app = load_alipay_app(apps[i], where, problems, books);
        if (app) {
            loaded.push_back(std::move(*app));
        }
    }
    if (!apps.empty()) {
        // Alipay notifications may be GBK / GB18030: decoded after verification.
        for (std::string& missing : missing_decoders()) {
            problems.push_back("alipay: " + std::move(missing));
        }
    }
    if (problems.size() != problems_before) {
        return make_error_code(errc::invalid_argument);
    }
    return std::unique_ptr<Gateway>(std::make_unique<AlipayGateway>(std::move(loaded)));
}

AlipayGateway::AlipayGateway(std::vector<AlipayAppKeys> apps) : apps_(std::move(apps)) {}

const AlipayAppKeys* AlipayGateway::find_app(std::string_view app_id) const noexcept
{
    for (const auto& app : apps_) {
        if (app.app_id == app_id) {
            return &app;
        }
    }
    return nullptr;
}

Result<VerifiedNotice> AlipayGateway::verify(std::string_view body, std::string_view header_charset,
                                             std::int64_t now) const
{
    auto parsed = parse_form(body);
    if (!parsed) {
        return parsed.error();
    }
    const FormFields& fields = *parsed;
    const std::string* sign = find_field(fields, "sign");
    const std::string* app_id = find_field(fields, "app_id");
    for (const std::string* required : {sign, app_id, find_field(fields, "trade_status"),
                                        find_field(fields, "out_trade_no"), find_field(fields, "notify_id")}) {
        if (!present(required)) {
            return make_error_code(errc::malformed_request);
        }
    }
    const AlipayAppKeys* app = find_app(*app_id);
    if (app == nullptr) {
        return make_error_code(errc::unknown_account);
    }
    // A notification may not choose a weaker algorithm than the app is configured for.
    const std::string* sign_type = find_field(fields, "sign_type");
    if ((sign_type != nullptr ? std::string_view(*sign_type) : std::string_view("RSA2")) != app->sign_type) {
        return make_error_code(errc::bad_signature);
    }

    VerifiedNotice notice;
    std::string sign_text = *sign;
    if (sign_text.find(' ') != std::string::npos) {
        // Base64 has no spaces: they are '+' characters that were sent unencoded and became spaces
        // in form decoding.
        std::replace(sign_text.begin(), sign_text.end(), ' ', '+');
        detail::add_note(notice.notes, "spaces in sign read as '+'");
    }
    const auto signature = crypto::base64_decode(sign_text);
    if (!signature) {
        return make_error_code(errc::bad_signature);
    }

    // §1.5: verify over the raw decoded bytes. The first variant is the documented rule; the others
    // are fallbacks for known SDK/Alipay disagreements, tried only when the data makes them differ.
    const auto sorted = signable_sorted(fields);
    const bool has_cert_sn = find_field(fields, "alipay_cert_sn") != nullptr;
    bool has_empty = false;
    bool has_quot = false;
    for (const auto* field : sorted) {
        has_empty = has_empty || field->second.empty();
        has_quot = has_quot || field->second.find("&quot;") != std::string::npos;
    }
    std::vector<Variant> variants;
    for (const bool skip_empty : {false, true}) {
        for (const bool unescape_quot : {false, true}) {
            for (const bool exclude_cert_sn : {true, false}) {
                const bool applicable =
                    (!skip_empty || has_empty) && (!unescape_quot || has_quot) && (exclude_cert_sn || has_cert_sn);
                if (applicable) {
                    variants.push_back(Variant{exclude_cert_sn, skip_empty, unescape_quot});
                }
            }
        }
    }
    // One RSA operation per key tried, whatever the number of variants: the digest the signature
    // carries is recovered once, and each variant costs only its hash. (Every fallback is switched
    // on by the body, so a forgery could otherwise buy eight RSA verifications for one.) The keys
    // are tried in turn, so the previous key of a rotation costs nothing while the current one
    // verifies; each variant's string is built once, when first needed.
    std::vector<std::string> contents(variants.size());
    std::vector<bool> built(variants.size(), false);
    const Variant* verified = nullptr;
    const auto verifies = [&](const AlipayKey& key) {
        const auto digest = crypto::rsa_recover_digest(key.key.get(), app->digest, *signature);
        if (!digest) {
            return false;
        }
        for (std::size_t i = 0; i < variants.size(); ++i) {
            if (!built[i]) {
                contents[i] = build_content(sorted, variants[i]);
                built[i] = true;
            }
            if (crypto::digest_matches(*digest, app->digest, contents[i])) {
                verified = &variants[i];
                return true;
            }
        }
        return false;
    };
    const AlipayKey* verified_by = nullptr;
    for (const AlipayKey& key : app->keys) {
        if (key.not_after != 0) {
            now = detail::now_or_clock(now);
            if (now > key.not_after) {
                continue;
            }
        }
        if (verifies(key)) {
            verified_by = &key;
            break;
        }
    }
    // Then what was downloaded since the configuration was loaded (Alipay re-issued its
    // certificate): only once the configured keys failed, so that they cost the book nothing.
    std::string downloaded_sn;
    if (verified_by == nullptr && app->downloaded) {
        for (const AlipayKey& key : detail::downloaded_keys(*app, now)) {
            if (verifies(key)) {
                downloaded_sn = key.cert_sn;
                break;
            }
        }
    }
    if (verified == nullptr) {
        return make_error_code(errc::bad_signature);
    }
    if (verified_by != nullptr && verified_by->previous) {
        detail::add_note(notice.notes, "verified with the previous Alipay key (rotation not finished)");
    }
    if (!downloaded_sn.empty()) {
        detail::add_note(notice.notes, "verified with the downloaded Alipay certificate " + downloaded_sn);
    }
    if (verified->skip_empty) {
        detail::add_note(notice.notes, "verified without the empty-valued fields");
    }
    if (verified->unescape_quot) {
        detail::add_note(notice.notes, "verified with &quot; read as '\"'");
    }
    if (has_cert_sn) {
        detail::add_note(notice.notes, verified->exclude_cert_sn ? "verified with alipay_cert_sn excluded"
                                                         : "verified with alipay_cert_sn included");
    }

    // Only now are the bytes trusted enough to interpret: the signed charset field decides, the
    // unsigned Content-Type parameter is a fallback, and UTF-8 is Alipay's default.
    const std::string* charset_field = find_field(fields, "charset");
    std::string_view label = charset_field != nullptr ? std::string_view(*charset_field) : header_charset;
    if (label.empty()) {
        label = "utf-8";
    }
    auto charset = parse_charset(label);
    if (!charset && charset_field == nullptr) {
        // An unsigned label paybridge cannot use does not make a verified notification unreadable:
        // Alipay's default applies, as without a label (fields that do not read are handled below).
        detail::add_note(notice.notes, "Content-Type charset not used (not one Alipay sends); read as utf-8");
        charset = parse_charset("utf-8");
    }
    if (!charset) {
        return make_error_code(errc::malformed_request);
    }
    notice.fields.reserve(fields.size());
    for (const auto& [key, value] : fields) {
        if (key == "sign" || key == "sign_type") {
            continue;
        }
        auto utf8_key = to_utf8(key, *charset);
        auto utf8_value = to_utf8(value, *charset);
        if (!utf8_key || !utf8_value) {
            if (acted_on(key)) {
                return make_error_code(errc::malformed_request);
            }
            // Named only when the name itself is readable; the value is never logged.
            detail::add_note(notice.notes, "dropped field " + (utf8_key ? *utf8_key : std::string("(unreadable name)")) +
                                       ": not valid " + std::string(to_string(*charset)));
            continue;
        }
        notice.fields.emplace_back(std::move(*utf8_key), std::move(*utf8_value));
    }

    if (!app->seller_id.empty()) {
        const std::string* seller_id = find_field(notice.fields, "seller_id");
        if (seller_id == nullptr || *seller_id != app->seller_id) {
            return make_error_code(errc::unknown_account);
        }
    }
    notice.app = app;
    return notice;
}

Result<PaymentEvent> to_payment_event(const FormFields& fields)
{
    const std::string* app_id = find_field(fields, "app_id");
    const std::string* notify_id = find_field(fields, "notify_id");
    const std::string* out_trade_no = find_field(fields, "out_trade_no");
    const std::string* trade_status = find_field(fields, "trade_status");
    const std::string* trade_no = find_field(fields, "trade_no");
    if (!present(app_id) || !present(notify_id) || !present(out_trade_no) || !present(trade_status)) {
        return make_error_code(errc::malformed_request);
    }
    PaymentEvent event;
    event.provider = "alipay";
    event.channel = "alipay";
    event.account = *app_id;
    event.notification_id = *notify_id;
    event.bill_id = *out_trade_no;
    event.provider_txn_id = trade_no != nullptr ? *trade_no : std::string();
    event.currency = "CNY";
    event.provider_status = *trade_status;
    // Authentic, and naming its bill and notification: what does not read from here on is kept
    // as an anomaly, not only logged (the store records it; Alipay is still told to retry).
    auto unusable_event = [&event, &fields](std::string problem) -> Result<PaymentEvent> {
        event.kind = EventKind::unusable;
        event.problem = std::move(problem);
        event.occurred_at = first_valid_time(fields, {"gmt_refund", "gmt_payment", "gmt_close", "notify_time"});
        return std::move(event);
    };

    const std::string* total_text = find_field(fields, "total_amount");
    const std::string* refund_text = find_field(fields, "refund_fee");
    const auto total_fen = optional_amount(total_text);
    const auto refund_fee = optional_amount(refund_text);
    if (!total_fen) {
        return unusable_event("total_amount " + quoted_excerpt(*total_text) + kNotYuan);
    }
    event.total_fen = *total_fen;  // recorded with the anomaly if refund_fee does not read
    if (!refund_fee) {
        return unusable_event("refund_fee " + quoted_excerpt(*refund_text) + kNotYuan);
    }

    // §1.4: a partial refund arrives as TRADE_SUCCESS and a full refund as TRADE_CLOSED, both with
    // gmt_refund and refund_fee (the cumulative total); a timeout close carries neither, and a
    // plain payment may carry refund_fee=0.00.
    const std::string* gmt_refund = find_field(fields, "gmt_refund");
    const bool is_refund = present(gmt_refund) || *refund_fee > 0;
    if (is_refund) {
        event.kind = EventKind::refund;
        if (*refund_fee >= 0) {
            event.refund_fen = *refund_fee;
        } else if (*trade_status == "TRADE_CLOSED" && *total_fen >= 0) {
            event.refund_fen = *total_fen;  // full refund reported without refund_fee
        } else {
            return unusable_event("a refund (gmt_refund is present) without refund_fee");
        }
        if (event.refund_fen <= 0) {
            return unusable_event("a refund (gmt_refund is present) of 0.00");
        }
        // Which payment it returns: a bill paid twice holds two trades, and Alipay always names it.
        if (event.provider_txn_id.empty()) {
            return unusable_event("a refund without trade_no");
        }
        event.refund_cumulative = true;
        const std::string* out_biz_no = find_field(fields, "out_biz_no");
        // Without out_biz_no, the cumulative amount still identifies this refund state uniquely
        // (store/bill.lua knows this prefix: SYNTHETIC_ALIPAY_REFUND).
        event.refund_id =
            present(out_biz_no) ? *out_biz_no : "alipay-refund-" + std::to_string(event.refund_fen);
    } else if (*trade_status == "TRADE_SUCCESS" || *trade_status == "TRADE_FINISHED") {
        if (event.total_fen < 0) {
            return unusable_event("a " + *trade_status + " payment without total_amount");
        }
        if (event.provider_txn_id.empty()) {
            return unusable_event("a " + *trade_status + " payment without trade_no");
        }
        event.kind = EventKind::payment;
    } else if (*trade_status == "TRADE_CLOSED") {
        event.kind = EventKind::close;
    } else {
        event.kind = EventKind::none;  // WAIT_BUYER_PAY and statuses Alipay may add later
    }

    event.occurred_at = is_refund
                            ? first_valid_time(fields, {"gmt_refund", "gmt_payment", "gmt_close", "notify_time"})
                            : first_valid_time(fields, {"gmt_payment", "gmt_close", "notify_time"});
    // A refund can reach us before its payment (which it then applies first): the bill's paid_at
    // is the payment's time, not the refund's.
    event.paid_at = first_valid_time(fields, {"gmt_payment"});
    return event;
}

Result<Verified> AlipayGateway::verify_and_parse(const InboundRequest& req) const
{
    std::string_view content_type;
    req.header("Content-Type", content_type);
    auto notice = verify(req.body, content_type_charset(content_type), req.now_unix);
    if (!notice) {
        return notice.error();
    }
    auto event = to_payment_event(notice->fields);
    if (!event) {
        return event.error();
    }
    Verified verified;
    verified.event = std::move(*event);
    verified.notes = std::move(notice->notes);
    return verified;
}

Reply AlipayGateway::success() const
{
    Reply reply;
    reply.status = 200;
    reply.content_type = "text/plain";
    reply.body = "success";
    return reply;
}

Reply AlipayGateway::failure(const boost::system::error_code& ec) const
{
    // Alipay retries on any reply but "success"; the status says why (API.md): 400 for what it
    // sent, 503 when we could not persist, 500 for our own bug.
    Reply reply;
    if (ec == errc::malformed_request || ec == errc::bad_signature || ec == errc::unknown_account ||
        ec == errc::unsupported_event) {
        reply.status = 400;
    } else if (is_transient(ec)) {
        reply.status = 503;
    } else {
        reply.status = 500;
    }
    reply.content_type = "text/plain";
    reply.body = "fail";
    return reply;
}

}  // namespace paybridge::gateways::alipay
