#include "tools/cli/trigger.hpp"

#include "core/error.hpp"
#include "core/money.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/charset.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "gateways/wechatpay/xml.hpp"
#include "tools/cli/api_client.hpp"
#include "tools/cli/args.hpp"
#include "tools/cli/keys_init.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <map>
#include <ostream>
#include <sstream>

namespace paybridge::cli {

namespace asio = boost::asio;
namespace fs = std::filesystem;
namespace sim = gateways::wechatpay::sim;

namespace {

constexpr const char* kHelp = R"(usage: paybridge trigger PROVIDER EVENT --bill ID [options]

Builds a provider notification byte for byte as the provider sends it, signed with the
development keys (found next to the public keys the configuration names), encrypted where the
provider encrypts, with the provider's headers, and POSTs it to paybridged. Prints the status and
the reply.

  PROVIDER EVENT
  alipay        paid | refund | closed           POST /notify/alipay (form, RSA2 signature)
  wechatpay     paid | refund | refund-closed | refund-abnormal
                                                 POST /notify/wechatpay/{mchid} (API v3: JSON,
                                                 AES-256-GCM resource, Wechatpay-* headers)
  wechatpay-v2  paid | refund                    POST /notify/wechatpay/{mchid}/v2 (XML; payments
                                                 signed, refunds AES-256-ECB encrypted)

amounts (integer fen: 1234 is 12.34 CNY)
  --amount FEN          the trade's total (default: the bill's amount_fen, read with
                        GET /v1/bills/{id}; required when the bill does not exist)
  --refund-amount FEN   this refund (default: what is left to refund, else the whole amount).
                        Alipay reports refunds cumulatively: refund_fee = the bill's refunded
                        amount + FEN
  --refund-id ID        out_biz_no / out_refund_no (default: a new one per run)
  --txn-id ID           the provider's transaction id (default: the bill's for refunds, else new)

faults
  --duplicate N         send the same bytes N more times, one after another
  --concurrency N       send N copies at once (with --duplicate: N at once, 1+N rounds)
  --tamper              flip one byte of the signed (or, for v2 refunds, encrypted) content:
                        paybridged must refuse it
  --stale               WeChat Pay API v3: a Wechatpay-Timestamp 10 minutes old: paybridged must
                        refuse it (Alipay and API v2 have no timestamp window: refused as usage)
  --print               write the raw HTTP request to stdout instead of sending it

other
  --url BASE            the daemon (default: http://<listen> from the configuration)
  --config FILE         configuration (default: $PAYBRIDGE_CONFIG, ./paybridge.dev.json,
                        ./.dev/paybridge.dev.json)
  --token TOKEN         API token for reading the bill (default: $PAYBRIDGE_TOKEN, configuration)
  --keys DIR            folder with the provider-side private keys (default: next to the public
                        keys in the configuration)
  --account ID          the Alipay app_id or WeChat Pay mchid (default: the first configured)
  --signer KIND         WeChat Pay v3: public-key (PUB_KEY_ID_..., default) or platform
                        (the platform certificate's serial)
  --sign-type T         WeChat Pay v2 payments: HMAC-SHA256 (default), MD5, or none (MD5 with
                        no <sign_type> field, WeChat's own default: the receiver must tell the
                        algorithm by the length of the sign)
  --charset C           Alipay: utf-8 (default), gbk, gb2312 or gb18030

The base URL's path is kept: --url http://h:8080/pfx posts to /pfx/notify/alipay.

exit codes: 0 every request was acknowledged as the provider requires (Alipay: 200 with the
            body exactly "success"; WeChat Pay v2: XML with return_code SUCCESS; WeChat Pay v3:
            200 or 204), 1 paybridged refused, failed or did not acknowledge one, 2 usage error,
            3 cannot connect, 4 key files, secrets or configuration unreadable, or the
            configuration has no account of the provider
)";

constexpr const char* kCharsetUsage = "--charset must be utf-8, gbk, gb2312 or gb18030";
constexpr const char* kSignTypeUsage = "--sign-type must be MD5, HMAC-SHA256 or none";

bool known_sign_type(const std::string& text)
{
    return text == "none" || gateways::wechatpay::parse_sign_type(text).has_value();
}

bool is_refund(const std::string& event) { return event.rfind("refund", 0) == 0; }

// Only WeChat Pay API v3 signs a timestamp that the receiver checks against a window.
Failure stale_not_applicable(const std::string& provider)
{
    if (provider == "alipay") {
        return usage_error(
            "--stale does not apply to Alipay: its notifications carry no timestamp window "
            "(notify_time is informational and the signature has no expiry), so there is nothing "
            "stale to refuse; try --tamper");
    }
    return usage_error(
        "--stale does not apply to WeChat Pay API v2: v2 notifications carry no timestamp "
        "(authenticity is the sign field or the encrypted req_info); use 'trigger wechatpay' "
        "(API v3) for a stale timestamp, or --tamper");
}

Expected<std::string> read_file(const fs::path& path, std::string_view what)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return local_error("cannot read " + std::string(what) + " " + path.string() +
                           " (create development keys with 'paybridge keys init DIR', or pass --keys DIR)");
    }
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

Expected<crypto::SharedKey> private_key(const fs::path& path, std::string_view what)
{
    Expected<std::string> pem = read_file(path, what);
    if (!pem) {
        return pem.error();
    }
    Result<crypto::SharedKey> key = crypto::load_private_key(*pem);
    if (!key) {
        return local_error(path.string() + " is not a PEM private key (" + std::string(what) + ")");
    }
    return *key;
}

std::int64_t now_unix()
{
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A refund number that is new on every run: "RF" + Beijing yyyyMMddHHmmss + 4 random digits.
std::string new_refund_id()
{
    std::string digits;
    for (unsigned char b : crypto::random_bytes(8)) {
        if (digits.size() < 4) {
            digits += static_cast<char>('0' + b % 10);
        }
    }
    return "RF" + sim::beijing_compact(now_unix()) + digits;
}

// A WeChat Pay transaction id shape (28 digits) for refunds of trades this run knows nothing about.
std::string synthetic_txn_id() { return "4200000000" + sim::beijing_compact(now_unix()) + "0001"; }

char flipped(char c)
{
    if (c >= '0' && c <= '9') {
        return c == '9' ? '0' : static_cast<char>(c + 1);
    }
    if (c >= 'a' && c <= 'z') {
        return c == 'z' ? 'a' : static_cast<char>(c + 1);
    }
    if (c >= 'A' && c <= 'Z') {
        return c == 'Z' ? 'A' : static_cast<char>(c + 1);
    }
    return c;
}

// Changes one alphanumeric byte of the value that follows `anchor`, keeping the body well-formed
// (same length, same alphabet), so the only thing wrong with it is authenticity.
Expected<void> flip_after(std::string& body, std::string_view anchor)
{
    const auto at = body.find(anchor);
    if (at == std::string::npos) {
        return local_error("--tamper: the notification has no '" + std::string(anchor) +
                           "' to change (a bug)");
    }
    std::size_t i = at + anchor.size();
    while (i < body.size() && flipped(body[i]) == body[i]) {
        ++i;
    }
    if (i >= body.size()) {
        return local_error("--tamper: nothing to change after '" + std::string(anchor) + "' (a bug)");
    }
    body[i] = flipped(body[i]);
    return {};
}

template <class Account>
Expected<const Account*> pick(const std::vector<Account>& accounts, const std::string& wanted,
                              std::string Account::*id, std::string_view what, const fs::path& config)
{
    if (accounts.empty()) {
        return local_error(
            config.string() + " configures no " + std::string(what) +
            " (add one, or create a development configuration with 'paybridge keys init DIR')");
    }
    if (wanted.empty()) {
        return &accounts.front();
    }
    for (const auto& a : accounts) {
        if (a.*id == wanted) {
            return &a;
        }
    }
    return usage_error("--account " + wanted + ": no such " + std::string(what) + " in " + config.string());
}

Expected<BuiltNotification> build_alipay(const CliConfig& config, const TriggerSpec& spec)
{
    if (spec.stale) {
        return stale_not_applicable(spec.provider);
    }
    if (!gateways::parse_charset(spec.charset)) {
        return usage_error(kCharsetUsage);
    }
    Expected<const AlipayAccount*> app =
        pick(config.alipay, spec.account, &AlipayAccount::app_id, "Alipay app", config.path);
    if (!app) {
        return app.error();
    }
    const fs::path dir = spec.keys_dir.empty() ? (*app)->keys_dir() : spec.keys_dir;
    Expected<crypto::SharedKey> key =
        private_key(dir / std::string(keyfile::kAlipayPrivate), "Alipay's private key");
    if (!key) {
        return key.error();
    }

    gateways::alipay::NoticeSpec ns;
    ns.app_id = (*app)->app_id;
    ns.seller_id = (*app)->seller_id.empty() ? std::string(kDevAlipaySellerId) : (*app)->seller_id;
    ns.out_trade_no = spec.bill_id;
    ns.amount_fen = spec.amount_fen;
    ns.trade_no = spec.txn_id;
    ns.charset = spec.charset;
    ns.sign_type = (*app)->sign_type;
    gateways::alipay::AlipayNotice notice;
    std::string what;
    if (spec.event == "paid") {
        notice = gateways::alipay::make_paid_notice(ns);
        what = "TRADE_SUCCESS total_amount=" + format_yuan(spec.amount_fen);
    } else if (spec.event == "refund") {
        const std::int64_t cumulative = spec.refunded_before_fen + spec.refund_fen;
        const std::string refund_id = spec.refund_id.empty() ? new_refund_id() : spec.refund_id;
        notice = gateways::alipay::make_refund_notice(ns, cumulative, refund_id);
        what = std::string(cumulative >= spec.amount_fen ? "TRADE_CLOSED" : "TRADE_SUCCESS") +
               " refund_fee=" + format_yuan(cumulative) + " (cumulative) out_biz_no=" + refund_id;
    } else {
        notice = gateways::alipay::make_closed_notice(ns);
        what = "TRADE_CLOSED (unpaid, timed out)";
    }
    BuiltNotification built;
    try {
        built.request.body = gateways::alipay::build_alipay_body(notice, key->get());
    } catch (const std::invalid_argument& e) {
        return usage_error(std::string("cannot build the Alipay notification: ") + e.what());
    }
    built.request.method = "POST";
    built.request.target = "/notify/alipay";
    built.request.headers.emplace_back("Content-Type", gateways::alipay::alipay_content_type(spec.charset));
    built.description =
        "alipay " + spec.event + " app_id=" + ns.app_id + " out_trade_no=" + spec.bill_id + " " + what;
    if (spec.tamper) {
        Expected<void> t = flip_after(built.request.body, "&notify_id=");
        if (!t) {
            t = flip_after(built.request.body, "notify_id=");
        }
        if (!t) {
            return t.error();
        }
        built.tamper_note = "flipped one byte of notify_id (a signed field)";
    }
    return built;
}

Expected<BuiltNotification> build_wechat(const CliConfig& config, const TriggerSpec& spec)
{
    const bool v2 = spec.provider == "wechatpay-v2";
    if (spec.stale && v2) {
        return stale_not_applicable(spec.provider);
    }
    Expected<const WechatAccount*> acct =
        pick(config.wechat, spec.account, &WechatAccount::mchid, "WeChat Pay merchant", config.path);
    if (!acct) {
        return acct.error();
    }
    const WechatAccount& m = **acct;
    BuiltNotification built;
    built.request.method = "POST";
    built.request.target = "/notify/wechatpay/" + m.mchid + (v2 ? "/v2" : "");
    const std::string refund_id = spec.refund_id.empty() ? new_refund_id() : spec.refund_id;

    if (v2) {
        if (m.apiv2_key_ref.empty()) {
            return local_error(config.path.string() + ": merchant " + m.mchid +
                               " has no apiv2_key, so paybridged serves no v2 endpoint for it");
        }
        Expected<std::string> key = config.secret(m.apiv2_key_ref);
        if (!key) {
            return key.error();
        }
        built.request.headers.emplace_back("Content-Type", "text/xml");
        if (spec.event == "paid") {
            // "none" is how WeChat itself signs by default: MD5, and no <sign_type> (PROTOCOLS.md §3.1).
            const bool send_sign_type = spec.v2_sign_type != "none";
            const auto type = send_sign_type ? gateways::wechatpay::parse_sign_type(spec.v2_sign_type)
                                             : std::optional(gateways::wechatpay::V2SignType::md5);
            if (!type) {
                return usage_error(kSignTypeUsage);
            }
            sim::V2Payment p;
            p.appid = m.appid;
            p.mch_id = m.mchid;
            p.out_trade_no = spec.bill_id;
            p.transaction_id = spec.txn_id;
            p.total_fen = spec.amount_fen;
            built.request.body = sim::build_v2_payment_xml(p, *key, *type, send_sign_type);
            built.description = "wechatpay-v2 paid mch_id=" + m.mchid + " out_trade_no=" + spec.bill_id +
                                " total_fee=" + std::to_string(spec.amount_fen) +
                                (send_sign_type ? " sign_type=" + spec.v2_sign_type
                                                : std::string(" sign_type absent (MD5)"));
            if (spec.tamper) {
                Expected<void> t = flip_after(built.request.body, "<nonce_str><![CDATA[");
                if (!t) {
                    return t.error();
                }
                built.tamper_note = "flipped one byte of nonce_str (a signed field)";
            }
        } else {
            sim::V2Refund r;
            r.appid = m.appid;
            r.mch_id = m.mchid;
            r.out_trade_no = spec.bill_id;
            r.transaction_id = spec.txn_id.empty() ? synthetic_txn_id() : spec.txn_id;
            r.out_refund_no = refund_id;
            r.total_fen = spec.amount_fen;
            r.refund_fen = spec.refund_fen;
            Result<std::string> body = sim::build_v2_refund_xml(r, *key);
            if (!body) {
                return local_error("cannot encrypt the v2 refund notification: the APIv2 key of merchant " +
                                   m.mchid + " is unusable");
            }
            built.request.body = std::move(*body);
            built.description = "wechatpay-v2 refund mch_id=" + m.mchid + " out_trade_no=" + spec.bill_id +
                                " out_refund_no=" + refund_id +
                                " refund_fee=" + std::to_string(spec.refund_fen) + " (req_info AES-256-ECB)";
            if (spec.tamper) {
                // The first block of req_info holds "<root>...": corrupting it breaks the decrypted XML.
                Expected<void> t = flip_after(built.request.body, "<req_info><![CDATA[");
                if (!t) {
                    return t.error();
                }
                built.tamper_note = "flipped one byte of the encrypted req_info (v2 refunds are not signed)";
            }
        }
        return built;
    }

    if (m.apiv3_key_ref.empty()) {
        return local_error(config.path.string() + ": merchant " + m.mchid + " has no apiv3_key");
    }
    Expected<std::string> apiv3 = config.secret(m.apiv3_key_ref);
    if (!apiv3) {
        return apiv3.error();
    }
    const fs::path dir = spec.keys_dir.empty() ? m.keys_dir() : spec.keys_dir;
    sim::V3Signer signer;
    if (spec.signer == "public-key") {
        if (m.public_key_id.empty()) {
            return usage_error("merchant " + m.mchid + " has no public_key_id in " + config.path.string() +
                               "; use --signer platform");
        }
        Expected<crypto::SharedKey> key =
            private_key(dir / std::string(keyfile::kWechatPrivate), "WeChat Pay's private key");
        if (!key) {
            return key.error();
        }
        signer.private_key = *key;
        signer.serial = m.public_key_id;
    } else if (spec.signer == "platform") {
        if (m.platform_certificates.empty()) {
            return usage_error("merchant " + m.mchid + " has no platform_certificates in " +
                               config.path.string() + "; use --signer public-key");
        }
        Expected<std::string> pem = read_file(m.platform_certificates.front(), "the platform certificate");
        if (!pem) {
            return pem.error();
        }
        Result<std::vector<crypto::X509Ptr>> certs = crypto::load_certificates(*pem);
        if (!certs || certs->empty()) {
            return local_error(m.platform_certificates.front().string() + " is not a PEM certificate");
        }
        Expected<crypto::SharedKey> key = private_key(dir / std::string(keyfile::kWechatPlatformPrivate),
                                                      "the platform certificate's private key");
        if (!key) {
            return key.error();
        }
        signer.private_key = *key;
        signer.serial = crypto::certificate_serial_hex(certs->front().get());
    } else {
        return usage_error("--signer must be public-key or platform");
    }

    const std::int64_t timestamp = spec.stale ? now_unix() - 600 : 0;
    Result<sim::V3Notification> n = make_error_code(errc::internal);
    std::string what;
    if (spec.event == "paid") {
        sim::V3Transaction tx;
        tx.mchid = m.mchid;
        tx.appid = m.appid;
        tx.out_trade_no = spec.bill_id;
        tx.transaction_id = spec.txn_id;
        tx.total_fen = spec.amount_fen;
        n = sim::make_v3_payment(tx, *apiv3, signer, timestamp);
        what = "TRANSACTION.SUCCESS total=" + std::to_string(spec.amount_fen);
    } else {
        sim::V3Refund r;
        r.mchid = m.mchid;
        r.out_trade_no = spec.bill_id;
        r.transaction_id = spec.txn_id.empty() ? synthetic_txn_id() : spec.txn_id;
        r.out_refund_no = refund_id;
        r.refund_status = spec.event == "refund"          ? "SUCCESS"
                          : spec.event == "refund-closed" ? "CLOSED"
                                                          : "ABNORMAL";
        r.total_fen = spec.amount_fen;
        r.refund_fen = spec.refund_fen;
        n = sim::make_v3_refund(r, *apiv3, signer, timestamp);
        what = "REFUND." + r.refund_status + " refund=" + std::to_string(spec.refund_fen) +
               " out_refund_no=" + refund_id;
    }
    if (!n) {
        return local_error("cannot build the WeChat Pay notification: the APIv3 key of merchant " + m.mchid +
                           " must be 32 bytes, and the signing key an RSA private key");
    }
    built.request.headers = n->headers;
    built.request.body = std::move(n->body);
    built.description = "wechatpay " + spec.event + " mchid=" + m.mchid + " out_trade_no=" + spec.bill_id +
                        " " + what + " Wechatpay-Serial=" + signer.serial +
                        (spec.stale ? " (timestamp 10 min old)" : "");
    if (spec.tamper) {
        Expected<void> t = flip_after(built.request.body, "\"ciphertext\":\"");
        if (!t) {
            return t.error();
        }
        built.tamper_note = "flipped one byte of the signed body (inside resource.ciphertext)";
    }
    return built;
}

struct Sent {
    Expected<HttpResponse> response{Failure{Exit::connect, "not sent"}};
    std::chrono::milliseconds elapsed{0};
};

// Sends `copies` copies of the same request at once, each on its own connection.
std::vector<Sent> send_batch(const Url& url, const HttpRequest& request, std::size_t copies)
{
    asio::io_context ioc;
    std::vector<Sent> results(copies);
    for (std::size_t i = 0; i < copies; ++i) {
        auto task = [&url, &request, &results, i]() -> asio::awaitable<void> {
            const auto start = std::chrono::steady_clock::now();
            Url target = url;
            HttpRequest copy = request;
            ClientLimits limits;  // named, never built inside the co_await (STYLE.md §3)
            results[i].response = co_await send(std::move(target), std::move(copy), limits);
            results[i].elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - start);
        };
        asio::co_spawn(ioc, std::move(task), [&results, i](std::exception_ptr e) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    results[i].response =
                        Failure{Exit::local, std::string("unexpected error while sending: ") + ex.what()};
                }
            }
        });
    }
    ioc.run();
    return results;
}

std::string shown_body(const HttpResponse& res)
{
    if (res.body.empty()) {
        return "(empty body)";
    }
    std::string body = res.body.size() > 400 ? res.body.substr(0, 400) + "..." : res.body;
    while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) {
        body.pop_back();
    }
    return body;
}

}  // namespace

std::string unacknowledged_reason(const std::string& provider, const HttpResponse& response)
{
    if (provider == "alipay") {
        if (response.status == 200 && response.body == "success") {
            return {};
        }
        return "Alipay resends unless the answer is 200 with the body exactly \"success\"";
    }
    if (provider == "wechatpay-v2") {
        if (response.ok()) {
            Result<gateways::wechatpay::XmlFields> fields = gateways::wechatpay::parse_flat_xml(response.body, "xml");
            const std::string* rc = fields ? gateways::wechatpay::find_field(*fields, "return_code") : nullptr;
            if (rc != nullptr && *rc == "SUCCESS") {
                return {};
            }
        }
        return "WeChat Pay resends an API v2 notification unless the answer is a 2xx <xml> reply with "
               "return_code SUCCESS";
    }
    if (response.status == 200 || response.status == 204) {
        return {};
    }
    return "WeChat Pay resends an API v3 notification unless the answer is 200 or 204";
}

bool known_trigger(const std::string& provider, const std::string& event)
{
    static const std::map<std::string, std::vector<std::string>> kEvents = {
        {"alipay", {"paid", "refund", "closed"}},
        {"wechatpay", {"paid", "refund", "refund-closed", "refund-abnormal"}},
        {"wechatpay-v2", {"paid", "refund"}},
    };
    const auto it = kEvents.find(provider);
    return it != kEvents.end() && std::find(it->second.begin(), it->second.end(), event) != it->second.end();
}

Expected<BuiltNotification> build_notification(const CliConfig& config, const TriggerSpec& spec)
{
    if (!known_trigger(spec.provider, spec.event)) {
        return usage_error(
            "unknown trigger '" + spec.provider + " " + spec.event +
            "'; use alipay paid|refund|closed, wechatpay paid|refund|refund-closed|refund-abnormal, "
            "wechatpay-v2 paid|refund");
    }
    if (spec.provider == "alipay") {
        return build_alipay(config, spec);
    }
    return build_wechat(config, spec);
}

int cmd_trigger(const std::vector<std::string>& argv, const Io& io)
{
    Expected<Args> args = Args::parse("trigger", argv,
                                      {{"bill"},
                                       {"amount"},
                                       {"refund-amount"},
                                       {"refund-id"},
                                       {"txn-id"},
                                       {"url"},
                                       {"config"},
                                       {"token"},
                                       {"keys"},
                                       {"account"},
                                       {"signer"},
                                       {"sign-type"},
                                       {"charset"},
                                       {"duplicate"},
                                       {"concurrency"},
                                       {"tamper", false},
                                       {"stale", false},
                                       {"print", false}});
    if (!args) {
        return report(io, args.error());
    }
    if (args->help()) {
        io.out << kHelp;
        return code(Exit::ok);
    }
    if (args->positional().size() != 2) {
        return report(
            io,
            args->usage("trigger needs PROVIDER and EVENT, e.g. 'paybridge trigger alipay paid --bill B1'"));
    }
    TriggerSpec spec;
    spec.provider = args->positional()[0];
    spec.event = args->positional()[1];
    if (!known_trigger(spec.provider, spec.event)) {
        return report(io, args->usage("unknown trigger '" + spec.provider + " " + spec.event +
                                      "'; use alipay paid|refund|closed, wechatpay paid|refund|refund-closed|"
                                      "refund-abnormal, wechatpay-v2 paid|refund"));
    }
    const auto bill = args->value("bill");
    if (!bill || bill->empty()) {
        return report(io, args->usage("--bill ID is required (the out_trade_no the provider reports)"));
    }
    spec.bill_id = *bill;
    spec.refund_id = args->value("refund-id").value_or("");
    spec.txn_id = args->value("txn-id").value_or("");
    spec.account = args->value("account").value_or("");
    spec.signer = args->value("signer").value_or(spec.signer);
    spec.v2_sign_type = args->value("sign-type").value_or(spec.v2_sign_type);
    spec.charset = args->value("charset").value_or(spec.charset);
    spec.keys_dir = args->value("keys").value_or("");
    spec.tamper = args->flag("tamper");
    spec.stale = args->flag("stale");
    auto amount = args->integer("amount", 1, kMaxAmountFen);
    auto refund_amount = args->integer("refund-amount", 1, kMaxAmountFen);
    auto duplicate = args->integer("duplicate", 0, 10'000);
    auto concurrency = args->integer("concurrency", 1, 1'000);
    for (const auto* r : {&amount, &refund_amount, &duplicate, &concurrency}) {
        if (!*r) {
            return report(io, r->error());
        }
    }
    if (spec.stale && spec.provider != "wechatpay") {
        return report(io, stale_not_applicable(spec.provider));
    }
    if (refund_amount->has_value() && !is_refund(spec.event)) {
        return report(io, args->usage("--refund-amount only applies to refund events"));
    }
    // Checked before the bill is read or anything is built, so the message names the option.
    if (!gateways::parse_charset(spec.charset)) {
        return report(io, args->usage(kCharsetUsage));
    }
    if (!known_sign_type(spec.v2_sign_type)) {
        return report(io, args->usage(kSignTypeUsage));
    }

    Expected<CliConfig> config = locate_config(args->value("config"));
    if (!config) {
        return report(io, config.error());
    }
    const std::string base = args->value("url").value_or(config->base_url());
    Expected<Url> url = parse_url(base);
    if (!url) {
        return report(io, usage_error("--url: " + url.error().message));
    }

    // The bill decides the defaults: its amount, what is left to refund, its transaction id.
    std::optional<BillSummary> current;
    if (!amount->has_value() || is_refund(spec.event)) {
        Expected<ApiEndpoint> api = resolve_api(*args, true);
        Expected<std::optional<BillSummary>> fetched =
            api ? fetch_bill(ApiEndpoint{*url, api->token}, spec.bill_id)
                : Expected<std::optional<BillSummary>>(api.error());
        if (fetched) {
            current = *fetched;
        } else if (!amount->has_value()) {
            return report(
                io, Failure{fetched.error().exit, "cannot read bill " + spec.bill_id + " for its amount: " +
                                                      fetched.error().message + "; or pass --amount FEN"});
        } else {
            io.err << "paybridge: note: could not read bill " << spec.bill_id << " ("
                   << fetched.error().message << "); using --amount\n";
        }
        if (!current && !amount->has_value()) {
            return report(
                io, usage_error("bill " + spec.bill_id + " does not exist on " + url->origin() +
                                ": register it first ('paybridge bills create --id " + spec.bill_id +
                                " --amount FEN --customer C'), or pass --amount FEN to notify for an "
                                "unknown bill (kept as an orphan and recorded as an unknown_bill anomaly)"));
        }
    }
    spec.amount_fen = amount->has_value() ? **amount : current->amount_fen;
    if (is_refund(spec.event)) {
        const std::int64_t paid = current && current->paid_fen > 0 ? current->paid_fen : spec.amount_fen;
        spec.refunded_before_fen = current ? current->refunded_fen : 0;
        spec.refund_fen = refund_amount->has_value() ? **refund_amount : paid - spec.refunded_before_fen;
        if (spec.refund_fen <= 0) {
            return report(
                io, usage_error("nothing is left to refund on bill " + spec.bill_id + " (paid " +
                                format_yuan(paid) + ", refunded " + format_yuan(spec.refunded_before_fen) +
                                "); pass --refund-amount FEN to send one anyway"));
        }
        const std::string family = spec.provider == "alipay" ? "alipay" : "wechatpay";
        if (spec.txn_id.empty() && current && current->provider == family) {
            spec.txn_id = current->provider_txn_id;
        }
    }

    Expected<BuiltNotification> built = build_notification(*config, spec);
    if (!built) {
        return report(io, built.error());
    }
    // Under the base URL's path, as the API calls that read the bill are (with_target).
    built->request.target = with_target(*url, built->request.target).target;
    if (!built->tamper_note.empty()) {
        io.err << "paybridge: --tamper: " << built->tamper_note << "; paybridged must refuse it\n";
    }
    if (spec.stale) {
        io.err << "paybridge: --stale: Wechatpay-Timestamp is 10 minutes old; paybridged must refuse it\n";
    }
    if (args->flag("print")) {
        io.out << serialize_request(*url, built->request);
        io.out.flush();
        return code(Exit::ok);
    }

    const std::size_t rounds = 1 + static_cast<std::size_t>(duplicate->value_or(0));
    const std::size_t width = static_cast<std::size_t>(concurrency->value_or(1));
    io.out << built->description << "\n";
    io.out << "POST " << url->origin() << built->request.target;
    if (rounds * width > 1) {
        io.out << "  (" << rounds * width << " copies of the same bytes: " << rounds << " round(s) of "
               << width << " at once)";
    }
    io.out << "\n";
    std::map<int, int> by_status;
    std::optional<Failure> transport;
    std::size_t n = 0;
    std::size_t failed = 0;
    std::size_t unacknowledged = 0;
    std::optional<HttpResponse> first_unacknowledged;
    for (std::size_t r = 0; r < rounds; ++r) {
        for (Sent& s : send_batch(*url, built->request, width)) {
            ++n;
            io.out << "  #" << n << "  ";
            if (!s.response) {
                io.out << "failed: " << s.response.error().message << "\n";
                transport = s.response.error();
                ++failed;
                continue;
            }
            ++by_status[s.response->status];
            io.out << s.response->status << " " << s.response->reason << "  " << shown_body(*s.response)
                   << "  (" << s.elapsed.count() << " ms)";
            if (!unacknowledged_reason(spec.provider, *s.response).empty()) {
                ++unacknowledged;
                if (!first_unacknowledged) {
                    first_unacknowledged = *s.response;
                }
                if (s.response->ok()) {
                    io.out << "  (not an acknowledgement)";
                }
            }
            io.out << "\n";
        }
    }
    if (n > 1) {
        io.out << "sent " << n << ":";
        for (const auto& [status, count] : by_status) {
            io.out << " " << status << " x" << count;
        }
        if (failed > 0) {
            io.out << " failed x" << failed;
        }
        io.out << "\n";
    }
    io.out.flush();
    if (transport) {
        return report(io, daemon_hint(*transport));
    }
    for (const auto& [status, count] : by_status) {
        if (status < 200 || status > 299) {
            return report(io, Failure{Exit::remote,
                                      "paybridged refused the notification: " + std::to_string(count) +
                                          " of " + std::to_string(n) + " answered " + std::to_string(status) +
                                          (spec.tamper || spec.stale ? " (as it must)" : "")});
        }
    }
    if (first_unacknowledged) {
        // 2xx, but not what the provider needs to stop resending: in production it would come again.
        return report(io, Failure{Exit::remote, "paybridged did not acknowledge the notification: " +
                                                    std::to_string(unacknowledged) + " of " + std::to_string(n) +
                                                    " answered " + std::to_string(first_unacknowledged->status) +
                                                    (first_unacknowledged->body.empty()
                                                         ? std::string(" with no body")
                                                         : " \"" + shown_body(*first_unacknowledged) + "\"") +
                                                    "; " +
                                                    unacknowledged_reason(spec.provider, *first_unacknowledged)});
    }
    return code(Exit::ok);
}

}  // namespace paybridge::cli
