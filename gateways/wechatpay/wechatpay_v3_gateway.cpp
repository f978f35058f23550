#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "gateways/wechatpay/v3_detail.hpp"

#include <algorithm>
#include <openssl/evp.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <charconv>
#include <optional>
#include <set>
#include <utility>

namespace paybridge::gateways::wechatpay {
namespace {

using detail::member;
using detail::required_string;
using detail::string_member;
using detail::utc_time;
using rapidjson::Value;

constexpr std::string_view kProvider = "wechatpay";
constexpr std::string_view kChannel = "wechatpay_v3";

boost::system::error_code error(errc e) { return make_error_code(e); }

/// An amount in fen: a JSON integer in [0, kMaxAmountFen]. absent → nullopt; wrong → error.
Result<std::optional<std::int64_t>> amount_member(const Value& object, const char* name)
{
    const Value* v = member(object, name);
    if (v == nullptr) {
        return std::optional<std::int64_t>{};
    }
    if (!v->IsInt64() || v->GetInt64() < 0 || v->GetInt64() > kMaxAmountFen) {
        return error(errc::malformed_request);
    }
    return std::optional<std::int64_t>(v->GetInt64());
}

void add_note(std::string& notes, std::string_view note)
{
    if (!notes.empty()) {
        notes += "; ";
    }
    notes += note;
}

Result<std::int64_t> parse_timestamp(std::string_view text)
{
    // Digits only: from_chars would accept a sign, and 18 digits cannot overflow the subtraction.
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string_view::npos) {
        return error(errc::malformed_request);
    }
    std::int64_t value = 0;
    std::from_chars(text.data(), text.data() + text.size(), value);
    return value;
}

/// errc::malformed_request for a decrypted resource that lacks what paybridge needs, with why.
boost::system::error_code unreadable(std::string& problem, std::string why)
{
    problem = std::move(why);
    return error(errc::malformed_request);
}

/// The decrypted object of a notification, normalised into `out`. A field missing or unreadable:
/// errc::malformed_request, and `problem` says which.
Result<void> read_transaction(const Value& tx, const V3Merchant& merchant, PaymentEvent& out, std::string& notes,
                              std::string& problem)
{
    if (auto owner = detail::check_transaction_owner(tx, merchant); !owner) {
        return owner.error();
    }
    if (auto paid = detail::read_transaction_payment(tx, out, problem); !paid) {
        return paid.error();
    }
    const auto state = string_member(tx, "trade_state");
    if (state && *state == "SUCCESS") {
        out.kind = EventKind::payment;
    } else {
        // TRANSACTION.SUCCESS is only sent for paid orders (§2.1); a disagreeing trade_state is
        // acknowledged without moving money rather than trusted.
        add_note(notes, "trade_state is not SUCCESS: no payment recorded");
    }
    return {};
}

Result<void> read_refund(const Value& refund, const V3Merchant& merchant, std::string_view event_type,
                         PaymentEvent& out, std::string& notes, std::string& problem)
{
    const auto mchid = string_member(refund, "mchid");
    if (!mchid) {
        return error(errc::malformed_request);  // whose object? (partner mode sends sp_mchid/sub_mchid)
    }
    if (*mchid != merchant.mchid) {
        return error(errc::unknown_account);
    }
    auto bill_id = required_string(refund, "out_trade_no");
    auto refund_id = required_string(refund, "out_refund_no");
    if (!bill_id) {
        return unreadable(problem, "the resource has no out_trade_no");
    }
    if (!refund_id) {
        return unreadable(problem, "the resource has no out_refund_no");
    }
    out.bill_id = std::move(*bill_id);
    out.refund_id = std::move(*refund_id);
    out.provider_txn_id = std::string(string_member(refund, "transaction_id").value_or(""));
    std::optional<std::int64_t> total;
    std::optional<std::int64_t> refunded;
    if (const Value* amount = member(refund, "amount"); amount != nullptr) {
        auto t = amount_member(*amount, "total");
        auto r = amount_member(*amount, "refund");
        if (!amount->IsObject() || !t || !r) {
            return unreadable(problem, "amount.total or amount.refund is not an amount in fen");
        }
        total = *t;
        refunded = *r;
    }
    if (total) {
        out.total_fen = *total;
    }
    if (refunded) {
        out.refund_fen = *refunded;
    }
    out.refund_cumulative = false;  // WeChat's amount.refund is this refund only
    if (auto when = utc_time(string_member(refund, "success_time")); !when.empty()) {
        out.occurred_at = std::move(when);
    }
    const auto status = string_member(refund, "refund_status").value_or("");
    if (event_type == "REFUND.SUCCESS") {
        // Money moves: everything the bill state machine needs must be there (a refund may arrive
        // before the payment, and then pays the bill first with total_fen and provider_txn_id).
        if (out.provider_txn_id.empty()) {
            return unreadable(problem, "a REFUND.SUCCESS resource without transaction_id");
        }
        if (!total || !refunded) {
            return unreadable(problem, "a REFUND.SUCCESS resource without amount.total and amount.refund");
        }
        if (status == "SUCCESS") {
            out.kind = EventKind::refund;
        } else {
            add_note(notes, "refund_status is not SUCCESS: no refund recorded");
        }
    } else if (event_type == "REFUND.CLOSED") {
        out.kind = EventKind::refund_closed;
    } else {
        out.kind = EventKind::refund_abnormal;
    }
    return {};
}

struct ChosenKey {
    EVP_PKEY* key{nullptr};
    std::string note;
    /// A downloaded certificate's key: held here, since the book may be replaced meanwhile.
    crypto::SharedKey owned;
};

/// The certificate with serial `wanted`, or null.
const PlatformCertificate* find_certificate(const std::vector<PlatformCertificate>& certificates, std::string_view wanted)
{
    const auto found = std::find_if(certificates.begin(), certificates.end(),
                                    [wanted](const PlatformCertificate& c) { return c.serial == wanted; });
    return found == certificates.end() ? nullptr : &*found;
}

Result<ChosenKey> choose_key(const V3Merchant& merchant, std::string_view serial, std::int64_t now)
{
    if (merchant.public_key && serial == merchant.public_key_id) {
        return ChosenKey{merchant.public_key.get(), "key=public_key", nullptr};
    }
    const std::string wanted = normalize_serial(serial);
    const PlatformCertificate* cert = find_certificate(merchant.certificates, wanted);
    std::shared_ptr<const std::vector<PlatformCertificate>> downloaded;
    if (cert == nullptr && merchant.downloaded) {
        downloaded = merchant.downloaded->certificates();
        cert = find_certificate(*downloaded, wanted);
    }
    if (cert == nullptr) {
        // The serial is untrusted input: logged escaped (log.hpp) and cut to a serial's length.
        log::warning("wechatpay.v3.unknown_serial",
                     {{"mchid", merchant.mchid}, {"serial", std::string_view(wanted).substr(0, 64)}});
        if (merchant.downloaded) {
            // WeChat Pay may have started signing with a certificate issued since the last
            // download: ask for a download now; WeChat retries the notification.
            merchant.downloaded->unknown_serial(std::string(std::string_view(wanted).substr(0, 64)));
        }
        return error(errc::bad_signature);
    }
    if (now < cert->not_before || now > cert->not_after) {
        log::warning("wechatpay.v3.certificate_not_valid",
                     {{"mchid", merchant.mchid}, {"serial", cert->serial}, {"not_after", cert->not_after}});
        return error(errc::bad_signature);
    }
    const char* origin = downloaded ? "key=downloaded_certificate:" : "key=platform_certificate:";
    return ChosenKey{cert->key.get(), origin + cert->serial, downloaded ? cert->key : nullptr};
}

std::string fail_body(std::string_view message)
{
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    writer.StartObject();
    writer.Key("code");
    writer.String("FAIL");
    writer.Key("message");
    writer.String(message.data(), static_cast<rapidjson::SizeType>(message.size()));
    writer.EndObject();
    return std::string(buffer.GetString(), buffer.GetSize());
}

bool is_rsa(EVP_PKEY* key) { return key != nullptr && EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA; }

}  // namespace

namespace detail {

using rapidjson::Value;

const Value* member(const Value& object, const char* name)
{
    if (!object.IsObject()) {
        return nullptr;
    }
    const auto it = object.FindMember(name);
    return it == object.MemberEnd() ? nullptr : &it->value;
}

std::optional<std::string_view> string_member(const Value& object, const char* name)
{
    const Value* v = member(object, name);
    if (v == nullptr || !v->IsString()) {
        return std::nullopt;
    }
    return std::string_view(v->GetString(), v->GetStringLength());
}

std::optional<std::string> required_string(const Value& object, const char* name)
{
    auto v = string_member(object, name);
    if (!v || v->empty()) {
        return std::nullopt;
    }
    return std::string(*v);
}

std::string utc_time(std::optional<std::string_view> text)
{
    if (!text) {
        return {};
    }
    const auto ms = parse_rfc3339(*text);
    return ms ? format_rfc3339(*ms) : std::string{};
}

Result<void> check_transaction_owner(const Value& tx, const V3Merchant& merchant)
{
    const auto mchid = string_member(tx, "mchid");
    if (!mchid) {
        return error(errc::malformed_request);  // whose object? (partner mode sends sp_mchid/sub_mchid)
    }
    if (*mchid != merchant.mchid) {
        return error(errc::unknown_account);
    }
    const auto appid = string_member(tx, "appid");
    if (!appid) {
        return error(errc::malformed_request);
    }
    if (*appid != merchant.appid &&
        std::find(merchant.other_appids.begin(), merchant.other_appids.end(), *appid) == merchant.other_appids.end()) {
        return error(errc::unknown_account);
    }
    return {};
}

Result<void> read_transaction_payment(const Value& tx, PaymentEvent& out, std::string& problem)
{
    auto bill_id = required_string(tx, "out_trade_no");
    auto txn_id = required_string(tx, "transaction_id");
    const Value* amount = member(tx, "amount");
    if (!bill_id) {
        return unreadable(problem, "the resource has no out_trade_no");
    }
    if (!txn_id) {
        return unreadable(problem, "the resource has no transaction_id");
    }
    if (amount == nullptr || !amount->IsObject()) {
        return unreadable(problem, "the resource has no amount object");
    }
    auto total = amount_member(*amount, "total");
    if (!total || !*total) {
        return unreadable(problem, "amount.total is missing or not an amount in fen");
    }
    if (const auto currency = string_member(*amount, "currency"); currency && !currency->empty()) {
        out.currency = std::string(*currency);
    }
    out.bill_id = std::move(*bill_id);
    out.provider_txn_id = std::move(*txn_id);
    out.total_fen = **total;
    if (auto when = utc_time(string_member(tx, "success_time")); !when.empty()) {
        out.occurred_at = std::move(when);
    }
    return {};
}

}  // namespace detail

std::string normalize_serial(std::string_view serial)
{
    std::string out;
    out.reserve(serial.size());
    for (char c : serial) {
        out += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
    }
    const auto first = out.find_first_not_of('0');
    if (first == std::string::npos) {
        return out.empty() ? out : std::string("0");
    }
    return out.substr(first);
}

Result<std::string> decrypt_resource(std::string_view apiv3_key, std::string_view nonce,
                                     std::string_view associated_data, std::string_view ciphertext_b64)
{
    const auto ciphertext = crypto::base64_decode(ciphertext_b64);
    if (!ciphertext) {
        return error(errc::malformed_request);
    }
    return crypto::aes256gcm_decrypt(apiv3_key, nonce, associated_data, *ciphertext);
}

WechatV3Gateway::WechatV3Gateway(std::vector<V3Merchant> merchants)
{
    for (auto& m : merchants) {
        std::string id = m.mchid;
        merchants_.emplace(std::move(id), std::move(m));
    }
}

Result<V3SignatureCheck> verify_v3_signature(const V3Merchant& merchant, const V3HeaderLookup& header,
                                             std::string_view body, std::int64_t now_unix)
{
    std::string_view timestamp;
    std::string_view nonce;
    std::string_view signature;
    std::string_view serial;
    // Present and not empty (an empty one is present to the header lookup): a signature over an
    // empty nonce is not something WeChat Pay sends.
    if (!header("Wechatpay-Timestamp", timestamp) || !header("Wechatpay-Nonce", nonce) ||
        !header("Wechatpay-Signature", signature) || !header("Wechatpay-Serial", serial) || nonce.empty()) {
        return error(errc::malformed_request);
    }
    std::string_view signature_type;
    if (header("Wechatpay-Signature-Type", signature_type) && signature_type != kV3SignatureType) {
        return error(errc::bad_signature);
    }
    const auto ts = parse_timestamp(timestamp);
    if (!ts) {
        return ts.error();
    }
    const std::int64_t skew = now_unix - *ts;
    if (skew >= kV3TimestampWindowSeconds || skew <= -kV3TimestampWindowSeconds) {
        return error(errc::stale_timestamp);
    }

    auto chosen = choose_key(merchant, serial, now_unix);
    if (!chosen) {
        return chosen.error();
    }
    // Probe signatures ("WECHATPAY/SIGNTEST/…") are not base64: a plain verification failure.
    const auto raw_signature = crypto::base64_decode(signature);
    if (!raw_signature) {
        return error(errc::bad_signature);
    }
    std::string message;
    message.reserve(timestamp.size() + nonce.size() + body.size() + 3);
    message.append(timestamp).append("\n").append(nonce).append("\n").append(body).append("\n");
    if (!crypto::rsa_verify(chosen->key, crypto::Digest::sha256, message, *raw_signature)) {
        return error(errc::bad_signature);
    }
    return V3SignatureCheck{std::move(chosen->note)};
}

Result<Verified> WechatV3Gateway::verify_and_parse(const InboundRequest& req) const
{
    const auto found = merchants_.find(req.route_param);
    if (found == merchants_.end()) {
        return error(errc::unknown_account);
    }
    const V3Merchant& merchant = found->second;

    auto checked = verify_v3_signature(
        merchant, [&req](std::string_view name, std::string_view& value) { return req.header(name, value); }, req.body,
        req.now_unix);
    if (!checked) {
        return checked.error();
    }

    // Authenticated from here on.
    rapidjson::Document envelope;
    envelope.Parse<rapidjson::kParseValidateEncodingFlag>(req.body.data(), req.body.size());
    if (envelope.HasParseError() || !envelope.IsObject()) {
        return error(errc::malformed_request);
    }
    auto id = required_string(envelope, "id");
    auto event_type = required_string(envelope, "event_type");
    const Value* resource = member(envelope, "resource");
    if (!id || !event_type || resource == nullptr || !resource->IsObject()) {
        return error(errc::malformed_request);
    }
    const auto algorithm = string_member(*resource, "algorithm");
    const auto ciphertext = string_member(*resource, "ciphertext");
    const auto resource_nonce = string_member(*resource, "nonce");
    const Value* aad = member(*resource, "associated_data");
    if (!algorithm || *algorithm != kV3ResourceAlgorithm || !ciphertext || !resource_nonce ||
        (aad != nullptr && !aad->IsString() && !aad->IsNull())) {
        return error(errc::malformed_request);
    }
    const std::string_view aad_bytes =
        aad != nullptr && aad->IsString() ? std::string_view(aad->GetString(), aad->GetStringLength()) : "";
    auto plaintext = decrypt_resource(merchant.apiv3_key, *resource_nonce, aad_bytes, *ciphertext);
    if (!plaintext) {
        if (plaintext.error() == errc::bad_signature) {
            // See the header: a verified body we cannot decrypt is our key's fault → 400.
            log::warning("wechatpay.v3.decrypt_failed", {{"mchid", merchant.mchid}, {"notification_id", *id}});
            return error(errc::malformed_request);
        }
        return plaintext.error();
    }
    rapidjson::Document inner;
    inner.Parse<rapidjson::kParseValidateEncodingFlag>(plaintext->data(), plaintext->size());
    if (inner.HasParseError() || !inner.IsObject()) {
        return error(errc::malformed_request);
    }

    Verified verified;
    PaymentEvent& ev = verified.event;
    ev.provider = kProvider;
    ev.channel = kChannel;
    ev.kind = EventKind::none;
    ev.notification_id = std::move(*id);
    ev.account = merchant.mchid;
    ev.provider_status = *event_type;
    ev.occurred_at = utc_time(string_member(envelope, "create_time"));
    verified.notes = std::move(checked->note);

    if (*event_type == "TRANSACTION.SUCCESS" || *event_type == "REFUND.SUCCESS" ||
        *event_type == "REFUND.CLOSED" || *event_type == "REFUND.ABNORMAL") {
        std::string problem;
        auto r = *event_type == "TRANSACTION.SUCCESS"
                     ? read_transaction(inner, merchant, ev, verified.notes, problem)
                     : read_refund(inner, merchant, *event_type, ev, verified.notes, problem);
        if (!r) {
            if (problem.empty()) {
                return r.error();
            }
            // Authentic and ours: recorded as an anomaly when it names its bill.
            ev.bill_id = std::string(string_member(inner, "out_trade_no").value_or(""));
            return unusable(std::move(verified), *event_type + ": " + problem);
        }
    } else {
        // Verified but not ours to act on; still refuse another merchant's object.
        if (const auto mchid = string_member(inner, "mchid"); mchid && *mchid != merchant.mchid) {
            return error(errc::unknown_account);
        }
        ev.bill_id = std::string(string_member(inner, "out_trade_no").value_or(""));
        add_note(verified.notes, "unhandled event_type");
    }
    return verified;
}

Reply WechatV3Gateway::success() const
{
    return Reply{.status = 204, .content_type = "", .body = ""};
}

Reply WechatV3Gateway::failure(const boost::system::error_code& ec) const
{
    int status = 500;
    std::string_view message = "internal error";
    if (ec == errc::bad_signature) {
        status = 401;
        message = "signature verification failed";
    } else if (ec == errc::stale_timestamp) {
        status = 401;
        message = "timestamp outside the allowed window";
    } else if (ec == errc::malformed_request) {
        status = 400;
        message = "malformed request";
    } else if (ec == errc::unknown_account) {
        status = 400;
        message = "unknown merchant or appid";
    } else if (ec == errc::unsupported_event) {
        status = 400;
        message = "unsupported event";
    } else if (is_transient(ec)) {
        status = 503;
        message = "temporarily unavailable";
    }
    return Reply{.status = status, .content_type = "application/json", .body = fail_body(message)};
}

Result<std::vector<V3Merchant>> load_v3_merchants(const std::vector<config::WechatMerchant>& merchants,
                                                  std::vector<std::string>& problems, CertificateBooks* books)
{
    const std::size_t problems_before = problems.size();
    std::vector<V3Merchant> loaded;
    std::set<std::string, std::less<>> seen_mchids;
    for (std::size_t i = 0; i < merchants.size(); ++i) {
        const config::WechatMerchant& cfg = merchants[i];
        const std::string where = account_pointer(cfg.pointer, "/wechatpay/merchants", i);
        auto problem = [&](const std::string& what) { problems.push_back(config_problem(where, what)); };

        V3Merchant m;
        m.mchid = cfg.mchid;
        m.appid = cfg.appid;
        m.other_appids = cfg.other_appids;
        m.apiv3_key = cfg.apiv3_key;
        m.public_key_id = cfg.public_key_id;
        if (cfg.mchid.empty()) {
            problem("mchid is empty");
        } else if (!seen_mchids.insert(cfg.mchid).second) {
            problem("mchid " + cfg.mchid + " is configured twice");
        }
        if (cfg.appid.empty()) {
            problem("appid is empty");
        }
        if (cfg.apiv3_key.size() != 32) {
            problem("apiv3_key must be 32 bytes, got " + std::to_string(cfg.apiv3_key.size()));
        }
        if (!cfg.public_key_id.empty() && cfg.public_key_pem.empty()) {
            problem("public_key_id is set but public_key_file is not");
        } else if (cfg.public_key_id.empty() && !cfg.public_key_pem.empty()) {
            problem("public_key_file is set but public_key_id is not");
        } else if (!cfg.public_key_pem.empty()) {
            auto key = crypto::load_public_key(cfg.public_key_pem);
            if (!key) {
                problem("public_key_file is not a PEM public key");
            } else if (!is_rsa(key->get())) {
                problem("public_key_file is not an RSA key");
            } else {
                m.public_key = std::move(*key);
            }
        }
        std::set<std::string, std::less<>> serials;
        for (std::size_t j = 0; j < cfg.platform_certificates_pem.size(); ++j) {
            const std::string cert_where = "platform_certificates[" + std::to_string(j) + "]";
            auto certs = crypto::load_certificates(cfg.platform_certificates_pem[j]);
            if (!certs) {
                problem(cert_where + " is not a PEM certificate");
                continue;
            }
            for (const auto& cert : *certs) {
                PlatformCertificate pc;
                pc.serial = normalize_serial(crypto::certificate_serial_hex(cert.get()));
                pc.key = crypto::certificate_key(cert.get());
                pc.not_before = crypto::certificate_not_before(cert.get());
                pc.not_after = crypto::certificate_not_after(cert.get());
                if (!is_rsa(pc.key.get())) {
                    problem(cert_where + " (serial " + pc.serial + ") does not hold an RSA key");
                } else if (!serials.insert(pc.serial).second) {
                    problem(cert_where + " holds serial " + pc.serial + ", which appears twice");
                } else {
                    m.certificates.push_back(std::move(pc));
                }
            }
        }
        if (cfg.public_key_pem.empty() && cfg.public_key_id.empty() && cfg.platform_certificates_pem.empty() &&
            !cfg.download_certificates) {
            problem("needs public_key_id + public_key_file, platform_certificates, download_certificates, or more "
                    "than one of them");
        }
        if (cfg.download_certificates && books != nullptr && !cfg.mchid.empty()) {
            m.downloaded = books->book(cfg.mchid);
        }
        loaded.push_back(std::move(m));
    }
    if (problems.size() != problems_before) {
        return error(errc::invalid_argument);
    }
    return loaded;
}

Result<std::unique_ptr<Gateway>> make_wechat_v3_gateway(const std::vector<config::WechatMerchant>& merchants,
                                                        std::vector<std::string>& problems, CertificateBooks* books)
{
    auto loaded = load_v3_merchants(merchants, problems, books);
    if (!loaded) {
        return loaded.error();
    }
    return std::unique_ptr<Gateway>(std::make_unique<WechatV3Gateway>(std::move(*loaded)));
}

}  // namespace paybridge::gateways::wechatpay
