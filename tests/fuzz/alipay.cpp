// Fuzz target: Alipay's notification path (gateways/alipay) on a raw form body.
// The first input byte picks a mode, the rest is the body:
// - even: the body as received, unsigned: verify() must refuse it, never crash;
// - odd: the harness signs the body as Alipay would (SHA256withRSA over sign_content() of its
//   decoded fields) and appends the sign: verify() must then never answer bad_signature, and
//   whatever it accepts must normalise into an event that satisfies check_event(). This reaches
//   everything after the signature check: charset conversion, amounts, times, event kinds.

#include "gateways/alipay/alipay_gateway.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/form.hpp"
#include "tests/fuzz/event_checks.hpp"
#include "tools/keygen/keygen.hpp"

#include "core/error.hpp"
#include "core/log.hpp"

#include <memory>
#include <string>
#include <vector>

namespace {

using namespace paybridge;
namespace alipay = paybridge::gateways::alipay;

constexpr std::string_view kAppId = "2021000000000001";

struct Harness {
    crypto::SharedKey private_key;
    std::unique_ptr<alipay::AlipayGateway> gateway;

    Harness()
    {
        log::set_level(log::Level::error);  // refusals log warnings; the fuzzer would print millions
        // 1024 bits: the harness signs every odd input, and key size is not what is fuzzed here.
        const keygen::KeyPair pair = keygen::generate_rsa(1024);
        private_key = *crypto::load_private_key(pair.private_pem);
        alipay::AlipayAppKeys app;
        app.app_id = std::string(kAppId);
        app.sign_type = "RSA2";
        app.digest = crypto::Digest::sha256;
        app.keys.push_back(alipay::AlipayKey{.key = *crypto::load_public_key(pair.public_pem)});
        std::vector<alipay::AlipayAppKeys> apps;
        apps.push_back(std::move(app));
        gateway = std::make_unique<alipay::AlipayGateway>(std::move(apps));
    }
};

const Harness& harness()
{
    static const Harness h;
    return h;
}

bool has_key(const gateways::FormFields& fields, std::string_view key)
{
    for (const auto& field : fields) {
        if (field.first == key) return true;
    }
    return false;
}

void accepted(const Result<gateways::Verified>& r)
{
    if (r) {
        fuzz::check_event(r->event, kAppId);
        FUZZ_CHECK(r->event.provider == "alipay");
        fuzz::accepted = true;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) return 0;
    const Harness& h = harness();
    const bool sign = (data[0] & 1) != 0;
    const std::string_view body = fuzz::as_text(data + 1, size - 1);

    if (!sign) {
        gateways::InboundRequest req;
        req.body = body;
        auto r = h.gateway->verify_and_parse(req);
        FUZZ_CHECK(!r.has_value());
        return 0;
    }

    auto fields = gateways::parse_form(body);
    if (!fields || has_key(*fields, "sign")) return 0;
    auto signature = crypto::rsa_sign(h.private_key.get(), crypto::Digest::sha256, alipay::sign_content(*fields));
    FUZZ_CHECK(signature.has_value());
    std::string signed_body(body);
    if (!signed_body.empty()) signed_body += '&';
    signed_body += "sign=";
    signed_body += gateways::form_encode(crypto::base64_encode(*signature));

    auto verified = h.gateway->verify(signed_body);
    if (!verified) {
        // A correct signature is never the reason for a refusal — unless the body names
        // another sign_type than the app's.
        FUZZ_CHECK(verified.error() != errc::bad_signature || has_key(*fields, "sign_type"));
        return 0;
    }
    for (const auto& [key, value] : verified->fields) {
        FUZZ_CHECK(fuzz::is_utf8(key) && fuzz::is_utf8(value));
    }
    gateways::InboundRequest req;
    req.body = signed_body;
    accepted(h.gateway->verify_and_parse(req));
    return 0;
}
