#pragma once

// WeChat Pay API v3 notifications (PROTOCOLS.md §2), route POST /notify/wechatpay/{mchid}.
//
// Order of work, each step only on what the previous one authenticated:
//   1. the route's mchid selects the merchant (errc::unknown_account);
//   2. Wechatpay-Timestamp/-Nonce/-Signature/-Serial present (malformed_request),
//      Wechatpay-Signature-Type absent or WECHATPAY2-SHA256-RSA2048 (bad_signature),
//      |now − timestamp| < 300 s (stale_timestamp; a non-numeric timestamp is malformed_request);
//   3. Wechatpay-Serial selects the key: equal to the merchant's public_key_id → the WeChat Pay
//      public key; otherwise a platform certificate whose serial matches case-insensitively and
//      ignoring leading zeros, valid at the request time. Unknown serial, expired or not yet valid
//      certificate → bad_signature;
//   4. SHA256withRSA over "timestamp\nnonce\nbody\n" on the raw body; a signature that is not
//      base64 (the WECHATPAY/SIGNTEST/ probes) or does not verify → bad_signature;
//   5. the JSON envelope (RapidJSON; malformed_request), resource.algorithm AEAD_AES_256_GCM,
//      decryption with the APIv3 key;
//   6. the decrypted object is checked against the route (mchid, appid) and normalised. When it is
//      ours and names its bill but a field the event needs is missing or does not read (amount.total
//      a string, no transaction_id), the result is kind unusable with the problem (gateway.hpp).
//
// GCM tag failures: the signature already proved WeChat sent the body, so a tag that does not
// verify means our APIv3 key is wrong (or the resource was damaged), not a forgery. The reply must
// be 400, not the 401 of a bad signature, and failure() only sees the error code, so the gateway
// returns errc::malformed_request for it and logs "wechatpay.v3.decrypt_failed" (warning) with the
// mchid so that operators can tell it from other malformed requests.

#include "config/config.hpp"
#include "gateways/certificate_book.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/gateway.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::gateways::wechatpay {

/// The only Wechatpay-Signature-Type WeChat Pay uses; an absent header means this.
inline constexpr std::string_view kV3SignatureType = "WECHATPAY2-SHA256-RSA2048";
/// A notification is stale when |now − Wechatpay-Timestamp| reaches this many seconds.
inline constexpr std::int64_t kV3TimestampWindowSeconds = 300;
/// The only resource algorithm accepted.
inline constexpr std::string_view kV3ResourceAlgorithm = "AEAD_AES_256_GCM";

/// A WeChat Pay platform certificate, reduced to what verification needs (serial in
/// normalize_serial() form: upper-case hex, no leading zeros).
using PlatformCertificate = ProviderCertificate;
using CertificateBook = gateways::CertificateBook;
using CertificateBooks = gateways::CertificateBooks;

/// One merchant's v3 material, as loaded and validated by load_v3_merchants.
struct V3Merchant {
    std::string mchid;
    std::string appid;
    std::vector<std::string> other_appids;  ///< more AppIDs bound to this mchid
    std::string apiv3_key;         ///< exactly 32 bytes, used as-is as the AES-256 key
    std::string public_key_id;     ///< "PUB_KEY_ID_…", or empty when not in public-key mode
    crypto::SharedKey public_key;  ///< set exactly when public_key_id is
    std::vector<PlatformCertificate> certificates;  ///< every configured one, expired ones too
    /// With download_certificates (and books given to the loader): the downloaded certificates,
    /// consulted after the configured ones; told of unknown serials.
    std::shared_ptr<CertificateBook> downloaded;
};

/// Gateway "wechatpay_v3". Immutable and thread-safe after construction.
/// Events: TRANSACTION.SUCCESS with trade_state SUCCESS → payment; REFUND.SUCCESS with
/// refund_status SUCCESS → refund (non-cumulative); REFUND.CLOSED → refund_closed;
/// REFUND.ABNORMAL → refund_abnormal; any other verified notification → kind none.
/// Every event: provider "wechatpay", channel "wechatpay_v3", account = mchid,
/// notification_id = envelope id, provider_status = event_type, occurred_at = success_time
/// (else the envelope's create_time) in RFC 3339 UTC.
class WechatV3Gateway final : public Gateway {
public:
    /// Merchants must already be validated (the factory does it); mchids are unique.
    explicit WechatV3Gateway(std::vector<V3Merchant> merchants);

    std::string_view name() const noexcept override { return "wechatpay_v3"; }

    /// See the file comment for the steps and their errors.
    Result<Verified> verify_and_parse(const InboundRequest& req) const override;

    /// 204 with an empty body and no content type (content_type is "").
    Reply success() const override;

    /// application/json {"code":"FAIL","message":"<short reason>"}: bad_signature and
    /// stale_timestamp → 401; malformed_request, unknown_account, unsupported_event → 400;
    /// transient (core is_transient) → 503; anything else → 500.
    Reply failure(const boost::system::error_code& ec) const override;

    /// Number of merchants served.
    std::size_t size() const noexcept { return merchants_.size(); }

private:
    std::map<std::string, V3Merchant, std::less<>> merchants_;
};

/// Loads and checks the merchants of the config as make_wechat_v3_gateway does (below), for the
/// gateway and for whoever else needs them (the active query client). Errors: as the factory's.
/// With `books`, a merchant with download_certificates gets its book from them (V3Merchant::downloaded).
Result<std::vector<V3Merchant>> load_v3_merchants(const std::vector<config::WechatMerchant>& merchants,
                                                  std::vector<std::string>& problems,
                                                  CertificateBooks* books = nullptr);

/// Builds the v3 gateway from the config: checks each merchant (mchid and appid present and
/// unique, apiv3_key exactly 32 bytes, public_key_id and public_key_file given together and the
/// key an RSA public key, every platform certificate file parsable with RSA keys and no serial
/// repeated, and at least one of the two key kinds), pushing one specific problem per failure
/// ("wechatpay.merchants[0]: apiv3_key must be 32 bytes, got 31"). Expired certificates are not
/// a problem here: they stay configured through a rotation and are refused per request.
/// Errors: errc::invalid_argument when any problem was found.
Result<std::unique_ptr<Gateway>> make_wechat_v3_gateway(const std::vector<config::WechatMerchant>& merchants,
                                                        std::vector<std::string>& problems,
                                                        CertificateBooks* books = nullptr);

/// Looks a header up by name, case-insensitively: true and `value` set when it is present (an
/// empty value is present).
using V3HeaderLookup = std::function<bool(std::string_view name, std::string_view& value)>;

/// What verified a v3 signature.
struct V3SignatureCheck {
    std::string note;  ///< for logs: "key=public_key" or "key=platform_certificate:<serial>"
};

/// Steps 2–4 of the file comment (headers, timestamp window, key by Wechatpay-Serial, SHA256withRSA
/// over "timestamp\nnonce\nbody\n" on the raw body) for `merchant`: how notifications are
/// authenticated, and how API responses are (PROTOCOLS.md §2.13: exactly like notifications).
/// Errors: malformed_request (a header missing, an empty nonce, a timestamp that is not digits),
/// stale_timestamp, bad_signature.
Result<V3SignatureCheck> verify_v3_signature(const V3Merchant& merchant, const V3HeaderLookup& header,
                                             std::string_view body, std::int64_t now_unix);

/// The decryption step of verify_and_parse (PROTOCOLS.md §2.7): AES-256-GCM with the APIv3 key's
/// 32 bytes as-is, the nonce string's bytes as IV, associated_data's bytes as AAD (may be empty),
/// and the last 16 bytes of base64(ciphertext) as the tag. Also used for downloaded certificates.
/// Errors: malformed_request (bad base64, wrong key size, too short); bad_signature (the tag did
/// not verify: wrong key or damaged data).
Result<std::string> decrypt_resource(std::string_view apiv3_key, std::string_view nonce,
                                     std::string_view associated_data, std::string_view ciphertext_b64);

/// Wechatpay-Serial and certificate serials in one form: upper-case, leading zeros removed
/// ("00ab12" → "AB12"; all zeros → "0"). The Go and Java SDKs disagree on leading zeros.
std::string normalize_serial(std::string_view serial);

}  // namespace paybridge::gateways::wechatpay
