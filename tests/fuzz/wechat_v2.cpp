// Fuzz target: WeChat Pay API v2 XML notifications (gateways/wechatpay, v2). The first input byte
// picks a mode, the rest is the payload:
// - mode 0: the payload is the whole body, as received: never accepted, never a crash;
// - mode 1: the payload is a payment notification; when it parses as flat XML the harness signs
//   its fields as WeChat Pay would (MD5, or the HMAC-SHA256 its sign_type names) and sends that;
// - mode 2: the payload is the decrypted req_info of a refund notification; the harness encrypts
//   it (AES-256-ECB under md5(key)) into the outer XML.
// With a valid signature (or a req_info that decrypts to a <root> document) the answer is never
// bad_signature, and whatever is accepted satisfies check_event().

#include "core/error.hpp"
#include "core/log.hpp"
#include "gateways/wechatpay/v2_sign.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "gateways/wechatpay/wechatpay_v2_gateway.hpp"
#include "gateways/wechatpay/xml.hpp"
#include "tests/fuzz/event_checks.hpp"

#include <memory>
#include <string>
#include <vector>

namespace {

using namespace paybridge;
namespace wx = paybridge::gateways::wechatpay;
namespace sim = paybridge::gateways::wechatpay::sim;

constexpr std::string_view kMchid = "1900000109";
constexpr std::string_view kAppid = "wxd678efh567hg6787";
constexpr std::string_view kApiV2Key = "192006250b4c09247ec02edce69f6a2d";

struct Harness {
    std::unique_ptr<wx::WechatV2Gateway> gateway;

    Harness()
    {
        log::set_level(log::Level::error);  // refusals log warnings; the fuzzer would print millions
        wx::V2Merchant merchant;
        merchant.mchid = std::string(kMchid);
        merchant.appid = std::string(kAppid);
        merchant.apiv2_key = std::string(kApiV2Key);
        merchant.req_info_key = wx::v2_req_info_key(kApiV2Key);
        std::vector<wx::V2Merchant> merchants;
        merchants.push_back(std::move(merchant));
        gateway = std::make_unique<wx::WechatV2Gateway>(std::move(merchants));
    }
};

const Harness& harness()
{
    static const Harness h;
    return h;
}

Result<gateways::Verified> deliver(std::string_view body)
{
    gateways::InboundRequest req;
    req.body = body;
    req.route_param = kMchid;
    req.now_unix = 1'764'000'000;
    return harness().gateway->verify_and_parse(req);
}

void authentic_answer(const Result<gateways::Verified>& r, bool attributable = true)
{
    if (!r) {
        FUZZ_CHECK(r.error() != errc::bad_signature || !attributable);
        return;
    }
    fuzz::check_event(r->event, kMchid);
    FUZZ_CHECK(r->event.provider == "wechatpay");
    fuzz::accepted = true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) return 0;
    const unsigned mode = data[0] % 3;
    const std::string_view payload = fuzz::as_text(data + 1, size - 1);

    if (mode == 0) {
        auto r = deliver(payload);
        // Unsigned input can only pass as a refund whose req_info happens to decrypt: not in a
        // fuzzer's reach (a 16-byte PKCS#7 block under an unknown key).
        FUZZ_CHECK(!r.has_value());
        return 0;
    }

    if (mode == 1) {
        auto fields = wx::parse_flat_xml(payload, "xml");
        if (!fields || wx::find_field(*fields, "req_info") != nullptr) return 0;
        fields->erase("sign");
        wx::V2SignType type = wx::V2SignType::md5;
        if (const std::string* named = wx::find_field(*fields, "sign_type")) {
            const auto parsed = wx::parse_sign_type(*named);
            if (!parsed) return 0;  // an unknown sign_type is refused as such: nothing to sign with
            type = *parsed;
        }
        std::vector<wx::XmlField> out;
        for (const auto& [name, value] : *fields) {
            out.push_back({name, value});
        }
        out.push_back({"sign", wx::v2_sign(*fields, kApiV2Key, type)});
        authentic_answer(deliver(wx::build_flat_xml("xml", out)));
        return 0;
    }

    auto req_info = sim::encrypt_req_info(payload, kApiV2Key);
    FUZZ_CHECK(req_info.has_value());
    const std::vector<wx::XmlField> outer{{"return_code", "SUCCESS"},
                                          {"appid", std::string(kAppid)},
                                          {"mch_id", std::string(kMchid)},
                                          {"nonce_str", "TeqClE3i0mvn3DrK"},
                                          {"req_info", *req_info}};
    // ECB has no tag: a req_info that decrypts to something other than a <root> document cannot
    // be told from one made with another key, and is refused as bad_signature by design.
    const bool attributable = wx::parse_flat_xml(payload, "root").has_value();
    authentic_answer(deliver(wx::build_flat_xml("xml", outer)), attributable);
    return 0;
}
