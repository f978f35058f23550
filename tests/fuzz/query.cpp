// Fuzz target: the readers of active-query answers, Alipay's read_trade_query
// (gateways/alipay/alipay_query) and WeChat Pay's read_transaction_query
// (gateways/wechatpay/wechatpay_query). The first input byte s picks a mode (s % 4), the rest is
// the payload:
// - 0 ('@', 'D', ...): Alipay, the payload is the whole HTTP 200 body, as received: no answer;
// - 1 ('A', 'E', 'I', 'Q', ...): Alipay, the payload is the response object, which the harness signs
//   as Alipay does (sign_alipay_answer). Bits of s: 4 → the node is error_response instead of
//   alipay_trade_query_response; 8 → signed with the app's previous key (a rotation); 16 → the
//   signature is over the object with "\/" read as "/" (the SDKs' fallback);
// - 2 ('B', 'F', ...): WeChat Pay, the payload is "status\ntimestamp\nnonce\nsignature\nserial\nbody"
//   (the Wechatpay-Timestamp, -Nonce, -Signature and -Serial headers; with bit 4 of s set, 'F', an
//   empty line leaves its header out), unsigned: no answer;
// - 3 ('C', 'G', ...): WeChat Pay, the payload is the body, signed as WeChat Pay signs (sim::sign_v3)
//   with a timestamp (s >> 5) * 37 s before now; the status is kStatuses[(s >> 2) & 7] ('C': 200,
//   'G': 404).
// Properties: nothing crashes; a signed answer is never refused as bad_signature (nor stale,
// for WeChat) when what the harness signed is what the provider would send; the same body with
// the signature corrupted or absent (or, for WeChat, read 300 s early or late) gives no answer;
// a paid answer carries a payment event for the bill asked (provider, channel, account,
// notification_id "query:...", and check_event()), any other answer none; the state agrees
// with provider_status; and `detail` never echoes a buyer field (buyer_logon_id, openid, ...).

#include "core/error.hpp"
#include "core/log.hpp"
#include "gateways/alipay/alipay_query.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_query.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "tests/fuzz/event_checks.hpp"
#include "tools/keygen/keygen.hpp"

#include <rapidjson/document.h>

#include <array>
#include <charconv>
#include <string>
#include <vector>

namespace {

using namespace paybridge;
namespace alipay = paybridge::gateways::alipay;
namespace wx = paybridge::gateways::wechatpay;
namespace sim = paybridge::gateways::wechatpay::sim;
using gateways::QueryAnswer;
using gateways::QueryResponse;
using gateways::QueryState;

constexpr std::string_view kAppId = "2021000000000001";
constexpr std::string_view kMchid = "1900000109";
constexpr std::string_view kAppid = "wxd678efh567hg6787";
constexpr std::string_view kPublicKeyId = "PUB_KEY_ID_0119000001092024101100397200000006";
constexpr std::string_view kBill = "BILL-1001";  // the out_trade_no every query asks about
constexpr std::int64_t kNow = 1'714'536'000;      // 2024-05-01 12:00:00 in Beijing
constexpr std::array<unsigned, 8> kStatuses{200, 404, 200, 404, 204, 500, 429, 401};

struct Harness {
    crypto::SharedKey alipay_key;           // signs as Alipay (the app's current Alipay key)
    crypto::SharedKey alipay_previous_key;  // the key being rotated out
    alipay::AlipayAppKeys app;
    sim::V3Signer wechat_signer;
    wx::V3Merchant merchant;

    Harness()
    {
        log::set_level(log::Level::error);
        // 1024 bits: every signed input is signed here, and key size is not what is fuzzed.
        const keygen::KeyPair current = keygen::generate_rsa(1024);
        const keygen::KeyPair previous = keygen::generate_rsa(1024);
        const keygen::KeyPair wechat = keygen::generate_rsa(1024);
        alipay_key = *crypto::load_private_key(current.private_pem);
        alipay_previous_key = *crypto::load_private_key(previous.private_pem);
        app.app_id = std::string(kAppId);
        app.sign_type = "RSA2";
        app.digest = crypto::Digest::sha256;
        app.keys.push_back(alipay::AlipayKey{.key = *crypto::load_public_key(current.public_pem)});
        app.keys.push_back(
            alipay::AlipayKey{.key = *crypto::load_public_key(previous.public_pem), .previous = true});

        wechat_signer.private_key = *crypto::load_private_key(wechat.private_pem);
        wechat_signer.serial = std::string(kPublicKeyId);
        merchant.mchid = std::string(kMchid);
        merchant.appid = std::string(kAppid);
        merchant.other_appids = {"wx2421b1c4370ec43b"};
        merchant.apiv3_key = "0123456789abcdefghijABCDEFGHIJ01";
        merchant.public_key_id = std::string(kPublicKeyId);
        merchant.public_key = *crypto::load_public_key(wechat.public_pem);
    }
};

const Harness& harness()
{
    static const Harness h;
    return h;
}

// ---- detail never echoes buyer data ----

bool is_buyer_key(std::string_view key)
{
    return key.starts_with("buyer_") || key == "openid" || key == "sub_openid";
}

void collect_strings(const rapidjson::Value& v, bool buyer, std::vector<std::string_view>& buyers,
                     std::vector<std::string_view>& others)
{
    if (v.IsString()) {
        (buyer ? buyers : others).emplace_back(v.GetString(), v.GetStringLength());
    } else if (v.IsObject()) {
        for (const auto& m : v.GetObject()) {
            collect_strings(m.value, is_buyer_key({m.name.GetString(), m.name.GetStringLength()}), buyers, others);
        }
    } else if (v.IsArray()) {
        for (const auto& e : v.GetArray()) {
            collect_strings(e, buyer, buyers, others);
        }
    }
}

// A buyer value that cannot land in `detail` by coincidence: 8 bytes or more, a digit in it (no
// fixed text of the readers has one), only characters that cannot straddle a quoted excerpt's
// edge, not ending in '.' (an excerpt cut short ends in "..."), and in no other value of the body
// (codes and states are excerpted into detail on purpose).
bool telltale(std::string_view x, const std::vector<std::string_view>& others)
{
    if (x.size() < 8 || x.back() == '.') return false;
    bool digit = false;
    for (const char c : x) {
        const bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && c != '*' && c != '@' && c != '.' && c != '_' && c != '-') return false;
        digit = digit || (c >= '0' && c <= '9');
    }
    if (!digit) return false;
    for (const std::string_view other : others) {
        if (other.find(x) != std::string_view::npos) return false;
    }
    for (const std::string_view fixed : {kAppId, kMchid, kAppid, kPublicKeyId, kBill}) {
        if (fixed.find(x) != std::string_view::npos) return false;
    }
    return true;
}

void check_detail(std::string_view body, const std::string& detail)
{
    if (detail.empty()) return;
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseIterativeFlag>(body.data(), body.size());
    if (doc.HasParseError()) return;
    std::vector<std::string_view> buyers;
    std::vector<std::string_view> others;
    collect_strings(doc, false, buyers, others);
    for (const std::string_view x : buyers) {
        if (telltale(x, others)) {
            FUZZ_CHECK(detail.find(x) == std::string::npos);
        }
    }
}

// ---- what every answer satisfies ----

void check_answer(const QueryAnswer& a, std::string_view provider, std::string_view channel, std::string_view account)
{
    FUZZ_CHECK(!a.provider_status.empty() && fuzz::is_utf8(a.provider_status));
    if (a.state != QueryState::paid) {
        FUZZ_CHECK(a.payment.kind == EventKind::none);
        return;
    }
    const PaymentEvent& e = a.payment;
    FUZZ_CHECK(e.kind == EventKind::payment || e.kind == EventKind::unusable);
    fuzz::check_event(e, account);
    FUZZ_CHECK(e.bill_id == kBill);
    FUZZ_CHECK(e.provider == provider);
    FUZZ_CHECK(e.channel == channel);
    FUZZ_CHECK(e.notification_id.starts_with("query:"));
    FUZZ_CHECK(e.provider_status == a.provider_status);
    FUZZ_CHECK(e.kind != EventKind::unusable || !e.problem.empty());
    if (e.kind == EventKind::payment) {
        FUZZ_CHECK(e.notification_id == "query:" + e.provider_txn_id);
    }
}

// ---- Alipay ----

Result<QueryAnswer> read_alipay(std::string body, bool must_refuse)
{
    QueryResponse response{.status = 200, .headers = {}, .body = std::move(body)};
    std::string detail = "not cleared";
    auto r = alipay::read_trade_query(harness().app, kBill, response, &detail, kNow);
    check_detail(response.body, detail);
    if (must_refuse) {
        FUZZ_CHECK(!r.has_value());
    }
    if (r) {
        check_answer(*r, "alipay", "alipay_query", kAppId);
        const std::string_view status = r->provider_status;
        // Not an equivalence: code 10003 (paying in progress) is unpaid whatever trade_status says.
        FUZZ_CHECK(r->state != QueryState::paid || status == "TRADE_SUCCESS" || status == "TRADE_FINISHED");
        FUZZ_CHECK(r->state != QueryState::not_found || status == "ACQ.TRADE_NOT_EXIST");
        FUZZ_CHECK(r->state != QueryState::closed || status == "TRADE_CLOSED");
    }
    return r;
}

// "\/" read as "/", left to right, as the reader and the Java SDK's String.replace do.
std::string unescape_slashes(std::string_view text)
{
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == '/') {
            out += '/';
            ++i;
        } else {
            out += text[i];
        }
    }
    return out;
}

// One JSON object and nothing around it: what Alipay's answers carry, and what the reader must
// find back byte for byte on the raw body.
bool plain_object(std::string_view text)
{
    if (text.empty() || text.front() != '{' || text.back() != '}') return false;
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseIterativeFlag>(text.data(), text.size());
    return !doc.HasParseError() && doc.IsObject();
}

std::string with_sign(const std::string& unsigned_body, std::string_view signature)
{
    std::string body = unsigned_body.substr(0, unsigned_body.size() - 1);  // drop the closing '}'
    body.append(",\"sign\":\"").append(crypto::base64_encode(signature)).append("\"}");
    return body;
}

void alipay_signed(unsigned selector, std::string_view object, std::size_t size)
{
    const Harness& h = harness();
    const std::string_view node = (selector & 4) != 0 ? "error_response" : "alipay_trade_query_response";
    EVP_PKEY* key = (selector & 8) != 0 ? h.alipay_previous_key.get() : h.alipay_key.get();
    const bool over_unescaped = (selector & 16) != 0;

    const std::string unsigned_body = alipay::sign_alipay_answer(node, object, alipay::AnswerSigner{});
    auto signature = crypto::rsa_sign(key, crypto::Digest::sha256, over_unescaped ? unescape_slashes(object)
                                                                                 : std::string(object));
    FUZZ_CHECK(signature.has_value());
    std::string body;
    if (over_unescaped) {
        body = with_sign(unsigned_body, *signature);
    } else {
        body = alipay::sign_alipay_answer(node, object, alipay::AnswerSigner{.alipay_private_key = key});
        FUZZ_CHECK(body == with_sign(unsigned_body, *signature));  // the sim's layout, deterministic PKCS#1 v1.5
    }

    auto r = read_alipay(body, false);
    if (!r && plain_object(object)) {
        // Signed as Alipay signs, with a configured key: the signature is never the reason.
        FUZZ_CHECK(r.error() != errc::bad_signature);
    }
    if (r) fuzz::accepted = true;

    // The same answer without its sign, or with one bit of the signature flipped: never an answer.
    read_alipay(unsigned_body, true);
    std::string flipped = *signature;
    const std::size_t bit = size % (flipped.size() * 8);
    flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
    read_alipay(with_sign(unsigned_body, flipped), true);
}

// ---- WeChat Pay ----

Result<QueryAnswer> read_wechat(const QueryResponse& response, std::int64_t now, bool must_refuse)
{
    std::string detail = "not cleared";
    auto r = wx::read_transaction_query(harness().merchant, kBill, response, now, &detail);
    FUZZ_CHECK(detail != "not cleared");  // always one line for the logs
    check_detail(response.body, detail);
    if (must_refuse) {
        FUZZ_CHECK(!r.has_value());
    }
    if (r) {
        check_answer(*r, "wechatpay", wx::kV3QueryChannel, kMchid);
        const std::string_view status = r->provider_status;
        FUZZ_CHECK((r->state == QueryState::paid) == (status == "SUCCESS" && response.status / 100 == 2));
        FUZZ_CHECK((r->state == QueryState::not_found) == (response.status == 404));
        FUZZ_CHECK(response.status / 100 == 2 || response.status == 404);
        FUZZ_CHECK(r->state != QueryState::not_found || status == "ORDER_NOT_EXIST" || status == "ORDERNOTEXIST");
    }
    return r;
}

std::string_view next_line(std::string_view& rest)
{
    const auto nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    return line;
}

void wechat_unsigned(unsigned selector, std::string_view payload)
{
    const bool empty_is_absent = (selector & 4) != 0;
    std::string_view rest = payload;
    const std::string_view status_line = next_line(rest);
    unsigned status = 200;
    std::from_chars(status_line.data(), status_line.data() + status_line.size(), status);
    QueryResponse response;
    response.status = status;
    for (const char* name : {"Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"}) {
        const std::string_view value = next_line(rest);
        if (!value.empty() || !empty_is_absent) {
            response.headers.emplace_back(name, std::string(value));
        }
    }
    response.body = std::string(rest);
    read_wechat(response, kNow, true);
}

void wechat_signed(unsigned selector, std::string_view body)
{
    const unsigned status = kStatuses[(selector >> 2) & 7];
    const std::int64_t timestamp = kNow - static_cast<std::int64_t>(selector >> 5) * 37;
    auto n = sim::sign_v3(std::string(body), harness().wechat_signer, timestamp, "fuzz-nonce-0123456789abcdefghijk");
    FUZZ_CHECK(n.has_value());
    QueryResponse response{.status = status, .headers = std::move(n->headers), .body = std::move(n->body)};

    auto r = read_wechat(response, kNow, false);
    if (!r && (status / 100 == 2 || status == 404)) {
        FUZZ_CHECK(r.error() != errc::bad_signature);
        FUZZ_CHECK(r.error() != errc::stale_timestamp);
    }
    if (r) fuzz::accepted = true;

    // Read 300 s off, the same signed answer is stale; corrupted or without its signature, forged.
    read_wechat(response, timestamp + 300, true);
    read_wechat(response, timestamp - 300, true);
    for (auto& [name, value] : response.headers) {
        if (name == "Wechatpay-Signature") {
            auto raw = crypto::base64_decode(value);
            FUZZ_CHECK(raw.has_value() && !raw->empty());
            const std::size_t bit = body.size() % (raw->size() * 8);
            (*raw)[bit / 8] = static_cast<char>((*raw)[bit / 8] ^ (1 << (bit % 8)));
            value = crypto::base64_encode(*raw);
        }
    }
    read_wechat(response, kNow, true);
    std::erase_if(response.headers, [](const auto& h) { return h.first == "Wechatpay-Signature"; });
    read_wechat(response, kNow, true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) return 0;
    const unsigned selector = data[0];
    const std::string_view payload = fuzz::as_text(data + 1, size - 1);
    switch (selector % 4) {
    case 0:
        read_alipay(std::string(payload), true);
        break;
    case 1:
        alipay_signed(selector, payload, size);
        break;
    case 2:
        wechat_unsigned(selector, payload);
        break;
    default:
        wechat_signed(selector, payload);
        break;
    }
    return 0;
}
