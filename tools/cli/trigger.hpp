#pragma once

// `paybridge trigger PROVIDER EVENT --bill ID`: builds a provider notification byte for byte as the
// provider sends it (gateways/alipay/alipay_sim.hpp, gateways/wechatpay/wechatpay_sim.hpp), signed
// with the development keys found next to the public keys the configuration names, encrypted where
// the provider encrypts, with the provider's headers; then sends it to paybridged and prints the
// answer, or prints the raw HTTP request (--print).

#include "tools/cli/cli_config.hpp"
#include "tools/cli/common.hpp"
#include "tools/cli/http_client.hpp"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace paybridge::cli {

/// The provider channels and their events.
///   alipay        paid | refund | closed
///   wechatpay     paid | refund | refund-closed | refund-abnormal   (API v3)
///   wechatpay-v2  paid | refund                                      (API v2 XML)
bool known_trigger(const std::string& provider, const std::string& event);

/// Everything a notification is built from; amounts are already decided (see cmd_trigger).
struct TriggerSpec {
    std::string provider;
    std::string event;
    std::string bill_id;
    std::int64_t amount_fen{0};               ///< the trade's total
    std::int64_t refund_fen{0};               ///< this refund (refund events)
    std::int64_t refunded_before_fen{0};      ///< already refunded (Alipay's refund_fee is cumulative)
    std::string refund_id;                    ///< out_biz_no / out_refund_no; generated when empty
    std::string txn_id;                       ///< provider transaction id; generated when empty
    std::string account;                      ///< app_id / mchid; empty: the first configured
    std::string signer{"public-key"};         ///< WeChat v3: "public-key" or "platform"
    std::string v2_sign_type{"HMAC-SHA256"};  ///< WeChat v2 payments: "MD5", "HMAC-SHA256" or "none"
                                              ///< (MD5 without <sign_type>, WeChat's own default)
    std::string charset{"utf-8"};             ///< Alipay: utf-8, gbk, gb2312, gb18030
    std::filesystem::path keys_dir;           ///< empty: next to the configured public keys
    bool tamper{false};                       ///< flip one byte of the signed (or encrypted) content
    bool stale{false};                        ///< WeChat v3: timestamp 10 minutes old
};

/// A notification ready to send.
struct BuiltNotification {
    HttpRequest request;      ///< POST target, headers (not Host/Content-Length) and body
    std::string description;  ///< one line: what it is ("alipay paid bill=B1 total=12.34 ...")
    std::string tamper_note;  ///< what --tamper changed, or ""
};

/// Builds the notification. Errors: Exit::usage (unknown provider/event, --stale where the provider
/// has no timestamp window, an unknown --account, --charset or --sign-type), Exit::local (the
/// configuration has no account of the provider; key files or secrets unreadable or not keys, named
/// with a hint to run 'paybridge keys init').
Expected<BuiltNotification> build_notification(const CliConfig& config, const TriggerSpec& spec);

/// Whether the provider would take `response` to a notification of `provider` as an acknowledgement
/// and stop resending it (PROTOCOLS.md §1.7, §2.10, §3.4): Alipay needs 200 with the body exactly
/// "success"; WeChat Pay v2 a 2xx XML reply whose return_code is SUCCESS; WeChat Pay v3 200 or 204,
/// whatever the body. Returns "" when it would, else what the provider needs, in words.
std::string unacknowledged_reason(const std::string& provider, const HttpResponse& response);

/// `paybridge trigger ...` (argv after "trigger").
int cmd_trigger(const std::vector<std::string>& argv, const Io& io);

}  // namespace paybridge::cli
