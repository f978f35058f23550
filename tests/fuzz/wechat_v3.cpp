// Fuzz target: WeChat Pay API v3 notifications (gateways/wechatpay, v3). The first input byte
// picks a mode, the rest is the payload:
// - mode 0: headers and body both from the input ("timestamp\nnonce\nsignature\nserial\nbody"),
//   unsigned: verify_and_parse must refuse, never crash;
// - mode 1: the payload is the body (the envelope JSON), signed as WeChat Pay signs it;
// - mode 2: the payload is the decrypted resource: the harness encrypts it (AES-256-GCM under the
//   APIv3 key) into an envelope of a payment or refund event type and signs the body.
// With a valid signature the answer is never bad_signature or stale_timestamp, and whatever is accepted satisfies check_event().

#include "core/error.hpp"
#include "core/log.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"
#include "tests/fuzz/event_checks.hpp"
#include "tools/keygen/keygen.hpp"

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace paybridge;
namespace wx = paybridge::gateways::wechatpay;
namespace sim = paybridge::gateways::wechatpay::sim;

constexpr std::string_view kMchid = "1900000109";
constexpr std::string_view kPublicKeyId = "PUB_KEY_ID_0119000001092024101100397200000006";
constexpr std::string_view kApiV3Key = "0123456789abcdefghijABCDEFGHIJ01";  // 32 bytes
constexpr std::int64_t kNow = 1'764'000'000;

struct Harness {
    sim::V3Signer signer;
    std::unique_ptr<wx::WechatV3Gateway> gateway;

    Harness()
    {
        log::set_level(log::Level::error);  // refusals log warnings; the fuzzer would print millions
        const keygen::KeyPair pair = keygen::generate_rsa(1024);  // signing speed, not key size, matters here
        signer.private_key = *crypto::load_private_key(pair.private_pem);
        signer.serial = std::string(kPublicKeyId);
        wx::V3Merchant merchant;
        merchant.mchid = std::string(kMchid);
        merchant.appid = "wxd678efh567hg6787";
        merchant.apiv3_key = std::string(kApiV3Key);
        merchant.public_key_id = std::string(kPublicKeyId);
        merchant.public_key = *crypto::load_public_key(pair.public_pem);
        std::vector<wx::V3Merchant> merchants;
        merchants.push_back(std::move(merchant));
        gateway = std::make_unique<wx::WechatV3Gateway>(std::move(merchants));
    }
};

const Harness& harness()
{
    static const Harness h;
    return h;
}

Result<gateways::Verified> deliver(const sim::V3Notification& n)
{
    const auto headers = n.header_views();
    gateways::InboundRequest req;
    req.headers = headers;
    req.body = n.body;
    req.route_param = kMchid;
    req.now_unix = kNow;
    return harness().gateway->verify_and_parse(req);
}

void signed_answer(const Result<gateways::Verified>& r)
{
    if (!r) {
        FUZZ_CHECK(r.error() != errc::bad_signature);
        FUZZ_CHECK(r.error() != errc::stale_timestamp);
        return;
    }
    fuzz::check_event(r->event, kMchid);
    FUZZ_CHECK(r->event.provider == "wechatpay");
    fuzz::accepted = true;
}

std::string_view next_line(std::string_view& rest)
{
    const auto nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    return line;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) return 0;
    const Harness& h = harness();
    const unsigned mode = data[0] % 3;
    const std::string_view payload = fuzz::as_text(data + 1, size - 1);

    if (mode == 0) {
        std::string_view rest = payload;
        const std::string_view timestamp = next_line(rest);
        const std::string_view nonce = next_line(rest);
        const std::string_view signature = next_line(rest);
        const std::string_view serial = next_line(rest);
        gateways::InboundRequest req;
        req.headers = {{"Wechatpay-Timestamp", timestamp},
                       {"Wechatpay-Nonce", nonce},
                       {"Wechatpay-Signature", signature},
                       {"Wechatpay-Serial", serial}};
        req.body = rest;
        req.route_param = kMchid;
        req.now_unix = kNow;
        FUZZ_CHECK(!h.gateway->verify_and_parse(req).has_value());
        return 0;
    }

    std::string body;
    if (mode == 1) {
        body = std::string(payload);
    } else {
        struct Kind {
            const char* event_type;
            const char* original_type;
        };
        static constexpr std::array<Kind, 4> kinds{{{"TRANSACTION.SUCCESS", "transaction"},
                                                    {"REFUND.SUCCESS", "refund"},
                                                    {"REFUND.ABNORMAL", "refund"},
                                                    {"REFUND.CLOSED", "refund"}}};
        const Kind& kind = kinds[(data[0] / 3) % kinds.size()];
        sim::V3Envelope envelope;
        envelope.id = "EV-2018-0001";
        envelope.create_unix = kNow;
        envelope.event_type = kind.event_type;
        envelope.original_type = kind.original_type;
        envelope.nonce = "fuzznonce012";
        auto built = sim::build_v3_body(envelope, payload, kApiV3Key);
        FUZZ_CHECK(built.has_value());
        body = std::move(*built);
    }
    auto notification = sim::sign_v3(std::move(body), h.signer, kNow, "fuzz-nonce-0123456789abcdefghijk");
    FUZZ_CHECK(notification.has_value());
    signed_answer(deliver(*notification));
    return 0;
}
