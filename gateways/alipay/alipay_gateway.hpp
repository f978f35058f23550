#pragma once

// Alipay asynchronous trade notifications (PROTOCOLS.md §1): form body → RSA/RSA2 signature over
// the sorted raw fields (§1.5) → charset transcoding → PaymentEvent.

#include "config/config.hpp"
#include "core/payment_event.hpp"
#include "core/result.hpp"
#include "gateways/certificate_book.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/form.hpp"
#include "gateways/gateway.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways::alipay {

/// One Alipay public key an app's notifications may be signed with.
struct AlipayKey {
    crypto::SharedKey key;
    bool previous{false};       ///< the key being replaced during a rotation
    std::int64_t not_after{0};  ///< a previous certificate's notAfter (Unix s): unused after it; 0: none
    /// Certificate mode: the SN of the certificate the key comes from, which API responses name
    /// in alipay_cert_sn (PROTOCOLS.md §1.6); "" for a public-key-mode key.
    std::string cert_sn;
};

/// The verified key material of one configured app, loaded once at start-up.
struct AlipayAppKeys {
    std::string app_id;
    std::string seller_id;   ///< empty: not checked
    std::string sign_type;   ///< "RSA2" (SHA256withRSA) or "RSA" (SHA1withRSA)
    crypto::Digest digest{crypto::Digest::sha256};
    /// Keys tried in order: the public-key-mode key, the certificate-mode key, then the previous
    /// ones of a rotation. The config loader gives an app one mode (config/load.cpp);
    /// load_alipay_app itself accepts both.
    std::vector<AlipayKey> keys;
    std::string alipay_cert_sn;       ///< certificate mode: SN of the Alipay public certificate
    std::string alipay_root_cert_sn;  ///< certificate mode: SN of the RSA roots, '_'-joined
    /// Certificate mode: every certificate of alipay_root_cert_file (immutable, shared between
    /// copies), what a downloaded certificate must chain to (read_cert_download).
    std::shared_ptr<const std::vector<crypto::X509Ptr>> roots;
    /// Certificate mode: the DER issuer and subject names of alipay_public_cert_file. A downloaded
    /// certificate must carry both: the root also issues every merchant's app certificate, whose
    /// holders have its private key, so chaining to the root alone does not make it Alipay's.
    std::string alipay_cert_issuer_der;
    std::string alipay_cert_subject_der;
    /// Certificate mode: alipay_public_cert_file's notBefore (Unix s). A kept copy of a download
    /// must be newer (check_kept_certificate).
    std::int64_t alipay_cert_not_before{0};
    /// Certificate mode with download_certificates (and books given to the loader): Alipay
    /// certificates downloaded while running (ProviderCertificate::serial = the SN), tried after
    /// `keys`; told of an alipay_cert_sn that none of the keys has (read_trade_query).
    std::shared_ptr<gateways::CertificateBook> downloaded;
};

/// True when some key of app.keys (the current or the previous certificate) comes from the
/// certificate of SN `sn`.
bool configured_sn(const AlipayAppKeys& app, std::string_view sn) noexcept;

/// Loads and checks one app's configuration; `where` prefixes problems ("alipay.apps[0]").
/// Public-key mode: public_key_pem is a PEM or bare base64 SubjectPublicKeyInfo RSA key.
/// Certificate mode: public_cert_pem (the leaf, optionally followed by intermediates) must chain
/// to a certificate of root_cert_pem now; its SN and the root SN are computed per §1.6.
/// Rotation: previous_public_key_pem is loaded like public_key_pem; previous_public_cert_pem must
/// chain to the same roots, but may have expired (verify() skips it once past its notAfter).
/// Every problem found is appended to `problems` (one specific line each), and then the result
/// is errc::invalid_argument.
/// With `books`, an app in certificate mode with download_certificates gets its book from them,
/// by app_id (AlipayAppKeys::downloaded); the config loader refuses download_certificates outside
/// certificate mode, and load_alipay_app gives such an app no book.
Result<AlipayAppKeys> load_alipay_app(const config::AlipayApp& app, std::string_view where,
                                      std::vector<std::string>& problems,
                                      gateways::CertificateBooks* books = nullptr);

/// A notification whose signature verified, with its fields transcoded to UTF-8.
struct VerifiedNotice {
    const AlipayAppKeys* app{nullptr};  ///< the app it verified for (owned by the gateway)
    /// Every received field except sign/sign_type, UTF-8, in order — except a descriptive field
    /// (not one paybridge acts on) that is not valid in the charset: dropped, with a note.
    FormFields fields;
    std::string notes;                  ///< fallbacks used, "; "-separated ("" when none)
};

/// Normalises verified UTF-8 fields into a PaymentEvent. Checks nothing about authenticity.
/// - provider and channel "alipay", account = app_id, notification_id = notify_id,
///   bill_id = out_trade_no, provider_txn_id = trade_no, currency "CNY",
///   total_fen = total_amount (-1 when absent), provider_status = trade_status.
/// - Refund when gmt_refund is present or refund_fee > 0 (whatever trade_status says, so a
///   TRADE_CLOSED full refund is a refund): refund_fen = refund_fee, cumulative (a TRADE_CLOSED
///   refund without refund_fee refunds total_amount); refund_id = out_biz_no, or
///   "alipay-refund-<refund fen>" when absent. Otherwise TRADE_SUCCESS / TRADE_FINISHED → payment,
///   TRADE_CLOSED → close, anything else (WAIT_BUYER_PAY, future statuses) → none.
/// - occurred_at (RFC 3339 UTC) from the first of gmt_refund (refunds only), gmt_payment,
///   gmt_close, notify_time that reads as Beijing time; "" when none does (times only describe
///   the event: an authentic notification is not refused over one).
/// - kind unusable, with `problem` saying what: a payment without trade_no or total_amount, a
///   refund without a positive amount, or an amount that parse_yuan rejects. The notification is
///   authentic and names its bill, so it is recorded as an anomaly rather than only refused.
/// Errors: errc::malformed_request for missing app_id/notify_id/out_trade_no/trade_status.
Result<PaymentEvent> to_payment_event(const FormFields& utf8_fields);

/// The "alipay" gateway. Immutable after construction and safe to share between threads.
class AlipayGateway final : public Gateway {
public:
    explicit AlipayGateway(std::vector<AlipayAppKeys> apps);

    std::string_view name() const noexcept override { return "alipay"; }

    /// verify() then to_payment_event(). Errors as verify() and to_payment_event().
    Result<Verified> verify_and_parse(const InboundRequest& req) const override;

    /// 200 text/plain "success" (exactly 7 bytes).
    Reply success() const override;

    /// text/plain "fail" (Alipay retries on anything but "success"): 400 for what Alipay sent
    /// (malformed, bad signature, unknown account, unsupported event), 503 for transient errors
    /// (Redis unreachable), 500 for anything else (our own defect).
    Reply failure(const boost::system::error_code& ec) const override;

    /// Parses and authenticates a raw notification body:
    /// - malformed_request: unparsable form, missing sign/app_id/trade_status/out_trade_no/
    ///   notify_id, unknown charset, or a field paybridge acts on (ids, status, amounts, times,
    ///   seller_id) invalid in its charset (any other such field is dropped with a note);
    /// - unknown_account: app_id not configured, or seller_id differs from the configured one;
    /// - bad_signature: sign_type differs from the app's (absent means RSA2), sign is not base64,
    ///   or no key verifies any of the §1.5 sign-string variants. The keys are tried in order, one
    ///   RSA operation each, so a notification signed with the current key costs one; `now` (Unix
    ///   s, 0: the clock) decides whether a previous certificate has expired. When none of the
    ///   configured keys verifies, the certificates of app.downloaded (if any) valid at `now`
    ///   (not_before <= now <= not_after) are tried, one RSA operation each, except those of a
    ///   configured SN; one that verifies adds the note "verified with the downloaded Alipay
    ///   certificate <SN>". Notifications name no certificate, so none is ever asked for here.
    /// `header_charset` (from Content-Type, may be empty) is used only when the signed `charset`
    /// field is absent; with neither, UTF-8 is assumed.
    Result<VerifiedNotice> verify(std::string_view body, std::string_view header_charset = {},
                                  std::int64_t now = 0) const;

    /// The configured app, or null.
    const AlipayAppKeys* find_app(std::string_view app_id) const noexcept;

private:
    std::vector<AlipayAppKeys> apps_;
};

/// Loads every configured app (see load_alipay_app, which is given `books`), pushing one problem
/// string per failure, and returns errc::invalid_argument if there was any. Duplicate app_ids are
/// a problem too.
Result<std::unique_ptr<Gateway>> make_alipay_gateway(const std::vector<config::AlipayApp>& apps,
                                                     std::vector<std::string>& problems,
                                                     gateways::CertificateBooks* books = nullptr);

/// Builds the §1.5 string to verify from decoded fields: drops sign and sign_type (and, when
/// `exclude_cert_sn`, alipay_cert_sn; when `skip_empty`, fields with empty values), sorts by key
/// bytes, and joins key=value with '&'. Values are used verbatim (raw bytes in their charset).
std::string sign_content(const FormFields& fields, bool exclude_cert_sn = false, bool skip_empty = false);

}  // namespace paybridge::gateways::alipay
