// The CRM-facing contract end to end (API.md, README "CRM queries", "Events pushed to the CRM",
// "Operations"), over HTTP against the real paybridged and a real redis-server: the filters and
// cursor paging of GET /v1/bills, the `after` paging of GET /v1/anomalies, the shape of the event
// objects of GET /v1/events, the notification and anomaly counters of /metrics, and a stop by
// SIGINT alone.

#include "core/time.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "store/keys.hpp"
#include "tests/support/daemon_fixture.hpp"
#include "tests/support/json.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

// How the values compared below are shown when a check fails (doctest prints {?} otherwise).
namespace doctest {
template <>
struct StringMaker<std::vector<std::string>> {
    static String convert(const std::vector<std::string>& v)
    {
        std::string out = "[";
        for (const std::string& s : v) {
            out += (out.size() > 1 ? " " : "") + s;
        }
        out += "]";
        return String(out.c_str());
    }
};
template <>
struct StringMaker<std::vector<std::vector<std::string>>> {
    static String convert(const std::vector<std::vector<std::string>>& v)
    {
        String out;
        for (const auto& page : v) {
            out += StringMaker<std::vector<std::string>>::convert(page);
        }
        return out;
    }
};
template <>
struct StringMaker<std::vector<std::size_t>> {
    static String convert(const std::vector<std::size_t>& v)
    {
        std::vector<std::string> text;
        for (const std::size_t n : v) {
            text.push_back(std::to_string(n));
        }
        return StringMaker<std::vector<std::string>>::convert(text);
    }
};
template <>
struct StringMaker<std::optional<double>> {
    static String convert(const std::optional<double>& v)
    {
        return v ? String(std::to_string(*v).c_str()) : String("(absent)");
    }
};
template <>
struct StringMaker<std::optional<std::string>> {
    static String convert(const std::optional<std::string>& v) { return v ? String(v->c_str()) : String("null"); }
};
}  // namespace doctest

using namespace paybridge;
using namespace paybridge::test;
namespace alipay = paybridge::gateways::alipay;

namespace {

std::int64_t now_ms()
{
    return unix_ms(std::chrono::system_clock::now());
}

/// Returns once the wall clock has passed `ms`. Whatever the daemon or Redis stamps next (both on
/// this machine's clock) then gets a later millisecond than anything stamped up to `ms`, so the
/// order of the test's actions is the order of their times.
void pass_millisecond(std::int64_t ms)
{
    REQUIRE(wait_until([ms] { return now_ms() > ms; }, std::chrono::seconds(5), std::chrono::milliseconds(1)));
}

/// Every byte outside RFC 3986's unreserved set percent-encoded (cursors are opaque).
std::string url_encode(const std::string& text)
{
    std::string out;
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || u == '-' || u == '.' ||
            u == '_' || u == '~') {
            out += c;
        } else {
            char buf[4];
            std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned>(u));
            out += buf;
        }
    }
    return out;
}

std::string str(const rapidjson::Value& v, const char* name)
{
    REQUIRE_MESSAGE(v.IsObject(), name);
    REQUIRE_MESSAGE(v.HasMember(name), name);
    if (v[name].IsNull()) {
        return "null";
    }
    REQUIRE_MESSAGE(v[name].IsString(), name);
    return v[name].GetString();
}

std::string random_digits(std::size_t n)
{
    std::string out;
    for (const char byte : crypto::random_bytes(n)) {
        out += static_cast<char>('0' + static_cast<unsigned char>(byte) % 10);
    }
    return out;
}

/// Beijing time as WeChat Pay API v3 writes it: "2026-11-27T22:55:13+08:00".
std::string beijing_rfc3339(std::int64_t unix_seconds)
{
    const auto t = static_cast<std::time_t>(unix_seconds + 8 * 3600);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+08:00", &tm);
    return buf;
}

/// The providers' side: signed Alipay notifications (the simulator) and WeChat Pay API v3
/// payment notifications (built here as WeChat Pay sends them: the resource sealed with the
/// APIv3 key, the request signed with the WeChat Pay public key's private half).
struct Providers {
    DaemonFixture& fx;
    crypto::SharedKey alipay_key = *crypto::load_private_key(fx.alipay_keys.private_pem);
    crypto::SharedKey wechat_key = *crypto::load_private_key(fx.wechat_public_keys.private_pem);
    std::map<std::string, std::string> trades;  ///< bill → its Alipay trade number

    std::string trade_of(const std::string& bill)
    {
        auto it = trades.find(bill);
        if (it == trades.end()) {
            char buf[48];
            std::snprintf(buf, sizeof buf, "2026112722001%015zu", trades.size() + 1);
            it = trades.emplace(bill, buf).first;
        }
        return it->second;
    }
    alipay::NoticeSpec spec(const std::string& bill, std::int64_t fen)
    {
        alipay::NoticeSpec s;
        s.app_id = DaemonFixture::kAlipayAppId;
        s.seller_id = DaemonFixture::kSellerId;
        s.out_trade_no = bill;
        s.amount_fen = fen;
        s.trade_no = trade_of(bill);
        return s;
    }
    /// A TRADE_SUCCESS for `fen` (a fresh notify_id every time).
    std::string alipay_paid(const std::string& bill, std::int64_t fen)
    {
        return alipay::build_alipay_body(alipay::make_paid_notice(spec(bill, fen)), alipay_key.get());
    }
    std::string alipay_refund(const std::string& bill, std::int64_t fen, std::int64_t refunded_total,
                              const std::string& out_biz_no)
    {
        return alipay::build_alipay_body(alipay::make_refund_notice(spec(bill, fen), refunded_total, out_biz_no),
                                         alipay_key.get());
    }
    /// Posts an Alipay notification that must be acknowledged.
    void alipay_ok(const std::string& body)
    {
        const HttpResult r = fx.post_alipay(body);
        REQUIRE_MESSAGE(r.status == 200, r.body);
        REQUIRE(r.body == "success");
    }

    HttpResult wechat_paid(const std::string& bill, std::int64_t fen, bool break_signature = false)
    {
        const std::int64_t now_s = now_ms() / 1000;
        const std::string when = beijing_rfc3339(now_s);
        const std::string amount = std::to_string(fen);
        const std::string transaction =
            std::string("{\"mchid\":\"") + DaemonFixture::kMchId + "\",\"appid\":\"" + DaemonFixture::kAppId +
            "\",\"out_trade_no\":\"" + bill + "\",\"transaction_id\":\"4200" +
            random_digits(24) +
            "\",\"trade_type\":\"JSAPI\",\"trade_state\":\"SUCCESS\",\"trade_state_desc\":\"ok\","
            "\"bank_type\":\"OTHERS\",\"attach\":\"\",\"success_time\":\"" +
            when + "\",\"payer\":{\"openid\":\"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o\"},\"amount\":{\"total\":" + amount +
            ",\"payer_total\":" + amount + ",\"currency\":\"CNY\",\"payer_currency\":\"CNY\"}}";
        const std::string nonce = crypto::hex_lower(crypto::random_bytes(6));  // 12 characters
        const auto sealed = crypto::aes256gcm_encrypt(fx.apiv3_key, nonce, "transaction", transaction);
        REQUIRE(sealed.has_value());
        const std::string body =
            "{\"id\":\"" + crypto::hex_lower(crypto::random_bytes(16)) + "\",\"create_time\":\"" + when +
            "\",\"resource_type\":\"encrypt-resource\",\"event_type\":\"TRANSACTION.SUCCESS\",\"summary\":\"ok\","
            "\"resource\":{\"original_type\":\"transaction\",\"algorithm\":\"AEAD_AES_256_GCM\",\"ciphertext\":\"" +
            crypto::base64_encode(*sealed) + "\",\"associated_data\":\"transaction\",\"nonce\":\"" + nonce + "\"}}";
        const std::string timestamp = std::to_string(now_s);
        const std::string sign_nonce = crypto::hex_lower(crypto::random_bytes(16));
        const std::string signed_text = timestamp + "\n" + sign_nonce + "\n" + body + "\n";
        const auto signature = crypto::rsa_sign(wechat_key.get(), crypto::Digest::sha256, signed_text);
        REQUIRE(signature.has_value());
        std::string sig = crypto::base64_encode(*signature);
        if (break_signature) {
            sig[3] = sig[3] == 'A' ? 'B' : 'A';
        }
        const Headers headers{{"Wechatpay-Nonce", sign_nonce},
                              {"Wechatpay-Signature", sig},
                              {"Wechatpay-Timestamp", timestamp},
                              {"Wechatpay-Serial", DaemonFixture::kPublicKeyId},
                              {"Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"},
                              {"Content-Type", "application/json"}};
        return http_request(fx.port(), "POST", std::string("/notify/wechatpay/") + DaemonFixture::kMchId, body,
                            headers);
    }
};

/// GET /v1/bills/{id}: must exist.
rapidjson::Document bill_of(DaemonFixture& fx, const std::string& id)
{
    const HttpResult r = fx.get_bill(id);
    REQUIRE_MESSAGE(r.status == 200, id << ": " << r.body);
    return parse_json(r.body);
}

std::int64_t updated_ms_of(DaemonFixture& fx, const std::string& id)
{
    const auto bill = bill_of(fx, id);
    const auto ms = parse_rfc3339(str(bill, "updated_at"));
    REQUIRE(ms.has_value());
    return *ms;
}

/// Follows GET /v1/bills?<query>&limit=<limit> and its next_cursor until null; the ids of every
/// page. Each listed bill must be a whole bill object; `statuses` receives "status/provider/customer_id"
/// of each listed bill, by id.
std::vector<std::vector<std::string>> bill_pages(DaemonFixture& fx, const std::string& query, std::size_t limit,
                                                 std::map<std::string, std::string>* statuses = nullptr)
{
    std::vector<std::vector<std::string>> pages;
    std::string cursor;
    for (int guard = 0; guard < 50; ++guard) {
        std::string target = "/v1/bills?limit=" + std::to_string(limit);
        if (!query.empty()) {
            target += "&" + query;
        }
        if (!cursor.empty()) {
            target += "&cursor=" + url_encode(cursor);
        }
        CAPTURE(target);
        const HttpResult r = fx.api("GET", target);
        REQUIRE_MESSAGE(r.status == 200, r.body);
        const auto doc = parse_json(r.body);
        REQUIRE(doc.IsObject());
        REQUIRE(doc.HasMember("bills"));
        REQUIRE(doc["bills"].IsArray());
        REQUIRE(doc.HasMember("next_cursor"));
        std::vector<std::string> ids;
        for (const auto& b : doc["bills"].GetArray()) {
            ids.push_back(str(b, "id"));
            for (const char* field : {"status", "amount_fen", "currency", "customer_id", "paid_fen", "refunded_fen",
                                      "provider", "created_at", "updated_at", "version"}) {
                CHECK_MESSAGE(b.HasMember(field), field);
            }
            if (statuses != nullptr) {
                (*statuses)[ids.back()] = str(b, "status") + "/" + str(b, "provider") + "/" + str(b, "customer_id");
            }
        }
        CHECK(ids.size() <= limit);
        pages.push_back(std::move(ids));
        if (doc["next_cursor"].IsNull()) {
            return pages;
        }
        REQUIRE(doc["next_cursor"].IsString());
        cursor = doc["next_cursor"].GetString();
        REQUIRE(!cursor.empty());
    }
    FAIL("next_cursor never became null for " << query);
    return pages;
}

/// `ids` cut into pages of `limit` (one empty page when there are none).
std::vector<std::vector<std::string>> chunks(const std::vector<std::string>& ids, std::size_t limit)
{
    std::vector<std::vector<std::string>> out;
    for (std::size_t i = 0; i < ids.size(); i += limit) {
        out.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(i),
                         ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + limit)));
    }
    if (out.empty()) {
        out.emplace_back();
    }
    return out;
}

/// One page of a feed (GET /v1/events or /v1/anomalies).
struct FeedPage {
    std::vector<std::string> items;      ///< each item's JSON text
    std::optional<std::string> next;     ///< next_cursor; nullopt when null
};

FeedPage feed_page(DaemonFixture& fx, const std::string& feed, std::size_t limit,
                   const std::optional<std::string>& after)
{
    std::string target = "/v1/" + feed + "?limit=" + std::to_string(limit);
    if (after) {
        target += "&after=" + url_encode(*after);
    }
    CAPTURE(target);
    const HttpResult r = fx.api("GET", target);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    const auto doc = parse_json(r.body);
    REQUIRE(doc.IsObject());
    REQUIRE(doc.HasMember(feed.c_str()));
    REQUIRE(doc[feed.c_str()].IsArray());
    REQUIRE(doc.HasMember("next_cursor"));
    FeedPage page;
    for (const auto& item : doc[feed.c_str()].GetArray()) {
        REQUIRE(item.IsObject());
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        item.Accept(w);
        page.items.emplace_back(buf.GetString(), buf.GetSize());
    }
    if (!doc["next_cursor"].IsNull()) {
        REQUIRE(doc["next_cursor"].IsString());
        page.next = doc["next_cursor"].GetString();
    }
    CHECK(page.items.size() <= limit);
    return page;
}

/// Reads a feed from `after` (the start when nullopt) in pages of `limit` until a page comes back
/// empty (the tail: README, "next_cursor is where to poll next"). Returns the items in feed order
/// and, through `sizes`, the size of every non-empty page; `cursor` ends as the tail's cursor.
std::vector<std::string> read_feed(DaemonFixture& fx, const std::string& feed, std::size_t limit,
                                   std::optional<std::string>& cursor, std::vector<std::size_t>* sizes = nullptr)
{
    std::vector<std::string> all;
    for (int guard = 0; guard < 200; ++guard) {
        FeedPage page = feed_page(fx, feed, limit, cursor);
        if (page.items.empty()) {
            // At the tail: the cursor it was given comes back (null only for an empty feed read
            // without one).
            CHECK(page.next == cursor);
            return all;
        }
        REQUIRE_MESSAGE(page.next.has_value(), "a non-empty page without next_cursor");
        CHECK(page.next != cursor);
        if (sizes != nullptr) {
            sizes->push_back(page.items.size());
        }
        all.insert(all.end(), page.items.begin(), page.items.end());
        cursor = page.next;
    }
    FAIL("the feed " << feed << " never reached its tail");
    return all;
}

/// The value of one series in a Prometheus text exposition (`name{labels}` exactly as written),
/// nullopt when it is not there.
std::optional<double> sample(const std::string& exposition, const std::string& series)
{
    std::istringstream in(exposition);
    std::string line;
    std::optional<double> found;
    while (std::getline(in, line)) {
        if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
            REQUIRE_MESSAGE(!found.has_value(), "series exported twice: " << series);
            found = std::stod(line.substr(series.size() + 1));
        }
    }
    return found;
}

std::string metrics_text(DaemonFixture& fx)
{
    const HttpResult m = http_request(fx.port(), "GET", "/metrics");
    REQUIRE(m.status == 200);
    return m.body;
}

}  // namespace

TEST_CASE("bills list over HTTP: provider and status and customer_id and updated range filters - cursor pages newest change first")
{
    DaemonFixture fx;
    Providers providers{fx};

    // Changes made one after the other, each in a later millisecond than the one before, so that
    // "newest change first" is one order: neither the order of creation nor that of the ids.
    std::map<std::string, std::int64_t> updated;
    const auto step = [&](const std::string& bill, const auto& action) {
        action();
        updated[bill] = updated_ms_of(fx, bill);
        pass_millisecond(std::max(updated[bill], now_ms()));
    };
    const auto create = [&](const std::string& bill, std::int64_t fen, const std::string& customer) {
        step(bill, [&] { REQUIRE(fx.create_bill(bill, fen, customer).status == 201); });
    };
    create("F1", 100, "alice");
    create("F2", 200, "bob");
    create("F3", 300, "alice");
    create("F4", 400, "bob");
    create("F5", 500, "carol");
    create("F6", 600, "alice");
    step("F3", [&] { providers.alipay_ok(providers.alipay_paid("F3", 300)); });
    step("F1", [&] {
        const HttpResult r = providers.wechat_paid("F1", 100);
        REQUIRE_MESSAGE(r.status == 204, r.body);
    });
    step("F5", [&] { providers.alipay_ok(providers.alipay_paid("F5", 500)); });
    step("F2", [&] { providers.alipay_ok(providers.alipay_paid("F2", 200)); });
    create("F7", 700, "alice");
    step("F3", [&] { providers.alipay_ok(providers.alipay_refund("F3", 300, 100, "RF3")); });
    create("F8", 800, "bob");

    // Where the bills stand (the precondition of every expectation below).
    const std::map<std::string, std::string> planned{
        {"F1", "PAID/wechatpay/alice"}, {"F2", "PAID/alipay/bob"},  {"F3", "PARTIALLY_REFUNDED/alipay/alice"},
        {"F4", "PENDING/null/bob"},     {"F5", "PAID/alipay/carol"}, {"F6", "PENDING/null/alice"},
        {"F7", "PENDING/null/alice"},   {"F8", "PENDING/null/bob"},
    };
    for (const auto& [id, state] : planned) {
        const auto bill = bill_of(fx, id);
        REQUIRE_MESSAGE(str(bill, "status") + "/" + str(bill, "provider") + "/" + str(bill, "customer_id") == state,
                        id);
    }
    const std::vector<std::string> newest_first{"F8", "F3", "F7", "F2", "F5", "F1", "F6", "F4"};
    for (std::size_t i = 1; i < newest_first.size(); ++i) {
        REQUIRE(updated[newest_first[i - 1]] > updated[newest_first[i]]);
    }

    // updated ranges are half-open, [from, to): F6's change is in, F7's is not.
    const std::string from = format_rfc3339(updated["F6"]);
    const std::string to = format_rfc3339(updated["F7"]);
    struct Case {
        std::string query;
        std::vector<std::string> expected;  ///< newest change first
    };
    const std::vector<Case> cases{
        {"", newest_first},
        {"provider=alipay", {"F3", "F2", "F5"}},
        {"provider=wechatpay", {"F1"}},
        {"status=PAID", {"F2", "F5", "F1"}},
        {"status=PENDING", {"F8", "F7", "F6", "F4"}},
        {"status=PARTIALLY_REFUNDED", {"F3"}},
        {"status=REFUNDED", {}},
        {"customer_id=alice", {"F3", "F7", "F1", "F6"}},
        {"customer_id=bob", {"F8", "F2", "F4"}},
        {"customer_id=nobody", {}},
        {"customer_id=alice&status=PENDING", {"F7", "F6"}},
        {"provider=alipay&customer_id=bob", {"F2"}},
        {"updated_from=" + from + "&updated_to=" + to, {"F2", "F5", "F1", "F6"}},
        {"updated_from=" + format_rfc3339(updated["F2"]), {"F8", "F3", "F7", "F2"}},
        {"updated_to=" + format_rfc3339(updated["F5"]), {"F1", "F6", "F4"}},
        {"updated_from=" + from + "&updated_to=" + to + "&status=PAID", {"F2", "F5", "F1"}},
        {"updated_from=" + from + "&updated_to=" + to + "&customer_id=alice", {"F1", "F6"}},
        {"updated_from=" + from + "&updated_to=" + to + "&provider=wechatpay", {"F1"}},
        {"updated_from=" + format_rfc3339(updated["F8"] + 1), {}},
    };
    for (const Case& c : cases) {
        for (const std::size_t limit : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{50}}) {
            CAPTURE(c.query);
            CAPTURE(limit);
            std::map<std::string, std::string> listed;
            const auto pages = bill_pages(fx, c.query, limit, &listed);
            CHECK(pages == chunks(c.expected, limit));
            // No bill twice, and each listed bill is the bill as it stands.
            std::multiset<std::string> ids;
            for (const auto& page : pages) {
                ids.insert(page.begin(), page.end());
            }
            for (const auto& id : ids) {
                CHECK_MESSAGE(ids.count(id) == 1, id);
                CHECK(listed[id] == planned.at(id));
            }
        }
    }
}

TEST_CASE("anomalies feed over HTTP: after and limit page through every anomaly once and oldest first")
{
    DaemonFixture fx;
    Providers providers{fx};

    // An empty feed read without a cursor: nothing, and null.
    FeedPage first = feed_page(fx, "anomalies", 10, std::nullopt);
    CHECK(first.items.empty());
    CHECK(!first.next.has_value());

    // 14 anomalies (amount mismatches on registered bills, and every fourth a payment for a bill
    // that does not exist) spread over the shards, each recorded in a later millisecond than the
    // one before. With one Redis server and one clock, the feed's stream-id order is then the
    // order in which they were recorded (README: "the feeds, oldest first"; a page older than one
    // already returned needs shards on different clocks).
    std::vector<std::string> recorded;  // bill ids, in order
    std::map<std::string, std::string> kind_of;
    const auto record = [&](int i) {
        char id[16];
        std::snprintf(id, sizeof id, "AN%02d", i);
        const std::string bill = id;
        if (i % 4 == 3) {
            providers.alipay_ok(providers.alipay_paid(bill, 700));  // no such bill
            kind_of[bill] = "unknown_bill";
        } else {
            REQUIRE(fx.create_bill(bill, 1000).status == 201);
            providers.alipay_ok(providers.alipay_paid(bill, 999));
            kind_of[bill] = "amount_mismatch";
        }
        recorded.push_back(bill);
        pass_millisecond(now_ms());
    };
    for (int i = 1; i <= 14; ++i) {
        record(i);
    }

    const auto check_items = [&](const std::vector<std::string>& items, const std::vector<std::string>& expected) {
        std::vector<std::string> bills;
        std::set<std::string> anomaly_ids;
        std::string previous_created;
        for (const std::string& text : items) {
            const auto a = parse_json(text);
            const std::string bill = str(a, "bill_id");
            bills.push_back(bill);
            CHECK_MESSAGE(anomaly_ids.insert(str(a, "id")).second, "anomaly listed twice: " << text);
            CHECK(str(a, "kind") == kind_of[bill]);
            const std::string created = str(a, "created_at");
            CHECK(created >= previous_created);
            previous_created = created;
        }
        CHECK(bills == expected);
    };

    SUBCASE("pages of 4")
    {
        std::optional<std::string> cursor;
        std::vector<std::size_t> sizes;
        const auto items = read_feed(fx, "anomalies", 4, cursor, &sizes);
        CHECK(sizes == std::vector<std::size_t>{4, 4, 4, 2});
        check_items(items, recorded);
        REQUIRE(cursor.has_value());

        // The tail's cursor is where to poll next: a new anomaly, and only it, comes from there.
        record(15);
        const auto more = read_feed(fx, "anomalies", 4, cursor);
        check_items(more, {"AN15"});
    }
    SUBCASE("pages of 1")
    {
        std::optional<std::string> cursor;
        std::vector<std::size_t> sizes;
        const auto items = read_feed(fx, "anomalies", 1, cursor, &sizes);
        CHECK(sizes == std::vector<std::size_t>(14, 1));
        check_items(items, recorded);
    }
    SUBCASE("one page of 1000")
    {
        std::optional<std::string> cursor;
        std::vector<std::size_t> sizes;
        const auto items = read_feed(fx, "anomalies", 1000, cursor, &sizes);
        CHECK(sizes == std::vector<std::size_t>{14});
        check_items(items, recorded);
    }
}

TEST_CASE("bills API: metadata numbers come back from GET as the doubles and integers sent")
{
    DaemonFixture fx;
    // Each of these doubles was read a ULP off before the body was parsed with full precision.
    const std::vector<std::pair<std::string, std::string>> doubles{
        {"big", "8.0863067236109623e+24"}, {"tiny", "2.2250738585072011e-308"}, {"small", "1.3927926388013963e-143"}};
    std::string metadata = R"({"above_2_53":9007199254740993,"max_u64":18446744073709551615)";
    for (const auto& [name, text] : doubles) {
        metadata += ",\"" + name + "\":" + text;
    }
    metadata += "}";
    const std::string body = R"({"id":"MD-1","amount_fen":100,"customer_id":"c","metadata":)" + metadata + "}";
    REQUIRE(fx.api("POST", "/v1/bills", body).status == 201);
    CHECK(fx.api("POST", "/v1/bills", body).status == 200);  // the same bill, numbers and all
    const HttpResult got = fx.get_bill("MD-1");
    REQUIRE(got.status == 200);
    rapidjson::Document bill;
    bill.Parse<rapidjson::kParseFullPrecisionFlag>(got.body.c_str());
    REQUIRE(bill.IsObject());
    REQUIRE(bill.HasMember("metadata"));
    const rapidjson::Value& md = bill["metadata"];
    INFO(got.body);
    for (const auto& [name, text] : doubles) {
        CAPTURE(name);
        CHECK(md[name.c_str()].GetDouble() == std::strtod(text.c_str(), nullptr));
    }
    CHECK(md["above_2_53"].GetInt64() == 9'007'199'254'740'993);
    CHECK(md["max_u64"].GetUint64() == 18'446'744'073'709'551'615ULL);
    // An empty object is no metadata: the same bill as one registered without any.
    const std::string plain = R"({"id":"MD-2","amount_fen":100,"customer_id":"c"})";
    REQUIRE(fx.api("POST", "/v1/bills", plain).status == 201);
    CHECK(fx.api("POST", "/v1/bills", R"({"id":"MD-2","amount_fen":100,"customer_id":"c","metadata":{}})").status ==
          200);
    CHECK(fx.stop() == 0);
}

TEST_CASE("events feed with 1024 shards: the cursor that reaches the tail goes back through the default header limit")
{
    // The reported case: with redis.shards 1024 the cursor held one text entry per shard (10,517
    // characters), and sending it back was refused (431) by the 8 KiB header limit. One event in
    // each of 1000 shards, their last entries spread over a day as in a quiet deployment.
    DaemonOptions options;
    options.redis_extra = ", \"shards\": 1024";
    DaemonFixture fx(options);
    const store::Keys keys("pb:", 1024);
    std::vector<std::string> eval{"EVAL",
                                  "for i = 1, #KEYS do redis.call('XADD', KEYS[i], ARGV[i], 'event', ARGV[#KEYS + i]) end",
                                  "1000"};
    std::vector<std::string> ids;
    std::vector<std::string> events;
    std::uint64_t lcg = 7;
    for (int s = 0; s < 1000; ++s) {
        lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
        eval.push_back(keys.outbox(s));
        ids.push_back(std::to_string(1'700'000'000'000 + (lcg >> 33) % 86'400'000) + "-0");
        events.push_back(R"({"id":"evt_S)" + std::to_string(s) + R"(_1"})");
    }
    eval.insert(eval.end(), ids.begin(), ids.end());
    eval.insert(eval.end(), events.begin(), events.end());
    fx.redis_run(eval);

    std::optional<std::string> cursor;
    const std::vector<std::string> all = read_feed(fx, "events", 1000, cursor);  // 200s to the tail
    CHECK(all.size() == 1000);
    REQUIRE(cursor.has_value());
    CAPTURE(cursor->size());
    CHECK(cursor->size() < 5600);
    // Polling from the tail with it: answered, and a new event comes from there, alone.
    fx.redis_run({"XADD", keys.outbox(1023), "*", "event", R"({"id":"evt_NEW_1"})"});
    const std::vector<std::string> fresh = read_feed(fx, "events", 1000, cursor);
    CHECK(fresh == std::vector<std::string>{R"({"id":"evt_NEW_1"})"});
    CHECK(fx.stop() == 0);
}

TEST_CASE("events feed objects: created_at is RFC 3339 UTC with milliseconds and Z - id is evt_bill_sequence - sequence rises by one per bill")
{
    DaemonFixture fx;
    Providers providers{fx};
    const std::int64_t started = now_ms();

    // E1: paid, partly refunded, fully refunded. E2: an amount mismatch, then paid. E3: paid by
    // WeChat Pay. E4: paid before it was registered (the unknown_bill event is evt_E4_u1, README),
    // then registered, which applies the payment as its event 2.
    REQUIRE(fx.create_bill("E1", 1000, "alice").status == 201);
    REQUIRE(fx.create_bill("E2", 500, "bob").status == 201);
    REQUIRE(fx.create_bill("E3", 300, "carol").status == 201);
    providers.alipay_ok(providers.alipay_paid("E1", 1000));
    providers.alipay_ok(providers.alipay_paid("E2", 400));
    providers.alipay_ok(providers.alipay_refund("E1", 1000, 300, "RE1a"));
    {
        const HttpResult r = providers.wechat_paid("E3", 300);
        REQUIRE_MESSAGE(r.status == 204, r.body);
    }
    providers.alipay_ok(providers.alipay_paid("E4", 700));
    providers.alipay_ok(providers.alipay_paid("E2", 500));
    providers.alipay_ok(providers.alipay_refund("E1", 1000, 1000, "RE1b"));
    REQUIRE(fx.create_bill("E4", 700, "dave").status == 201);
    const std::int64_t finished = now_ms();

    std::optional<std::string> cursor;
    const auto items = read_feed(fx, "events", 2, cursor);
    const std::regex rfc3339_utc_ms(R"(^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$)");
    std::map<std::string, std::vector<std::string>> ids_of;    // bill → event ids, feed order
    std::map<std::string, std::vector<std::string>> types_of;  // bill → event types, feed order
    std::map<std::string, std::vector<int>> sequences_of;      // bill → sequences, feed order
    std::set<std::string> seen;
    for (const std::string& text : items) {
        CAPTURE(text);
        const auto e = parse_json(text);
        const std::string bill = str(e, "bill_id");
        const std::string id = str(e, "id");
        CHECK_MESSAGE(seen.insert(id).second, "event listed twice");
        // created_at: strictly "YYYY-MM-DDTHH:MM:SS.mmmZ", a real instant (it formats back to
        // itself), and stamped while this test ran.
        const std::string created = str(e, "created_at");
        CHECK(std::regex_match(created, rfc3339_utc_ms));
        const auto created_ms = parse_rfc3339(created);
        REQUIRE(created_ms.has_value());
        CHECK(format_rfc3339(*created_ms) == created);
        CHECK(*created_ms >= started - 60'000);
        CHECK(*created_ms <= finished + 60'000);
        REQUIRE(e.HasMember("sequence"));
        REQUIRE(e["sequence"].IsInt());
        const int sequence = e["sequence"].GetInt();
        REQUIRE(e.HasMember("bill"));
        const bool before_bill = e["bill"].IsNull();
        CHECK(id == "evt_" + bill + "_" + (before_bill ? "u" : "") + std::to_string(sequence));
        if (!before_bill) {
            REQUIRE(e["bill"].IsObject());
            CHECK(str(e["bill"], "id") == bill);
        }
        ids_of[bill].push_back(id);
        types_of[bill].push_back(str(e, "type"));
        sequences_of[bill].push_back(sequence);
    }

    CHECK(ids_of["E1"] == std::vector<std::string>{"evt_E1_1", "evt_E1_2", "evt_E1_3"});
    CHECK(ids_of["E2"] == std::vector<std::string>{"evt_E2_1", "evt_E2_2"});
    CHECK(ids_of["E3"] == std::vector<std::string>{"evt_E3_1"});
    CHECK(ids_of["E4"] == std::vector<std::string>{"evt_E4_u1", "evt_E4_2"});
    CHECK(types_of["E1"] == std::vector<std::string>{"bill.paid", "bill.refunded", "bill.refunded"});
    CHECK(types_of["E2"] == std::vector<std::string>{"bill.anomaly", "bill.paid"});
    CHECK(types_of["E3"] == std::vector<std::string>{"bill.paid"});
    CHECK(types_of["E4"] == std::vector<std::string>{"bill.anomaly", "bill.paid"});
    CHECK(ids_of.size() == 4);
    for (const auto& [bill, sequences] : sequences_of) {
        CAPTURE(bill);
        for (std::size_t i = 0; i < sequences.size(); ++i) {
            CHECK(sequences[i] == static_cast<int>(i) + 1);  // from 1, by one, in feed order
        }
        // The feed holds the same objects as the bill's own history, in the same order.
        const auto history = bill_of(fx, bill);
        std::vector<std::string> history_ids;
        for (const auto& e : history["events"].GetArray()) {
            history_ids.push_back(str(e, "id"));
        }
        CHECK(history_ids == ids_of[bill]);
    }
}

TEST_CASE("metrics by name: paybridge_anomalies_total by kind and paybridge_notifications_total by channel and outcome move with the notifications")
{
    DaemonFixture fx;
    Providers providers{fx};
    REQUIRE(fx.create_bill("MX1", 1000).status == 201);
    REQUIRE(fx.create_bill("MX2", 500).status == 201);
    REQUIRE(fx.create_bill("MX3", 300).status == 201);

    const std::string mismatch = R"(paybridge_anomalies_total{kind="amount_mismatch"})";
    const std::string unknown = R"(paybridge_anomalies_total{kind="unknown_bill"})";
    const auto notifications = [](const std::string& channel, const std::string& outcome) {
        return "paybridge_notifications_total{channel=\"" + channel + "\",outcome=\"" + outcome + "\"}";
    };
    // Nothing counted before any notification (a series absent or at 0).
    const std::string before = metrics_text(fx);
    for (const std::string& series :
         {mismatch, unknown, notifications("alipay", "anomaly"), notifications("alipay", "applied"),
          notifications("alipay", "duplicate"), notifications("alipay", "bad_signature"),
          notifications("wechatpay_v3", "applied"), notifications("wechatpay_v3", "bad_signature")}) {
        CHECK_MESSAGE(sample(before, series).value_or(0) == 0, series);
    }

    // An amount mismatch: one anomaly of that kind, one notification with outcome anomaly.
    const std::string wrong = providers.alipay_paid("MX1", 999);
    providers.alipay_ok(wrong);
    std::string m = metrics_text(fx);
    CHECK(sample(m, mismatch) == 1);
    CHECK(sample(m, notifications("alipay", "anomaly")) == 1);
    CHECK(sample(m, unknown).value_or(0) == 0);
    CHECK(sample(m, notifications("alipay", "applied")).value_or(0) == 0);

    // The same notification again: a duplicate, no second anomaly.
    providers.alipay_ok(wrong);
    m = metrics_text(fx);
    CHECK(sample(m, mismatch) == 1);
    CHECK(sample(m, notifications("alipay", "duplicate")) == 1);
    CHECK(sample(m, notifications("alipay", "anomaly")) == 1);

    // A payment for no bill: an unknown_bill anomaly, counted as outcome anomaly too.
    providers.alipay_ok(providers.alipay_paid("MX9", 100));
    m = metrics_text(fx);
    CHECK(sample(m, unknown) == 1);
    CHECK(sample(m, mismatch) == 1);
    CHECK(sample(m, notifications("alipay", "anomaly")) == 2);

    // A payment that applies, a forged Alipay one, and WeChat Pay's: each under its own labels,
    // none of them an anomaly.
    providers.alipay_ok(providers.alipay_paid("MX2", 500));
    std::string forged = providers.alipay_paid("MX3", 300);
    const auto amount_at = forged.find("total_amount=3.00");
    REQUIRE(amount_at != std::string::npos);
    forged[amount_at + 13] = '4';  // 3.00 → 4.00: the signature no longer matches
    CHECK(fx.post_alipay(forged).status == 400);
    const HttpResult wechat = providers.wechat_paid("MX3", 300);
    CHECK_MESSAGE(wechat.status == 204, wechat.body);
    REQUIRE(fx.create_bill("MX4", 200).status == 201);
    const HttpResult wechat_forged = providers.wechat_paid("MX4", 200, true);
    CHECK_MESSAGE(wechat_forged.status == 401, wechat_forged.body);
    m = metrics_text(fx);
    CHECK(sample(m, notifications("alipay", "applied")) == 1);
    CHECK(sample(m, notifications("alipay", "bad_signature")) == 1);
    CHECK(sample(m, notifications("wechatpay_v3", "applied")) == 1);
    CHECK(sample(m, notifications("wechatpay_v3", "bad_signature")) == 1);
    CHECK(sample(m, notifications("alipay", "anomaly")) == 2);
    CHECK(sample(m, mismatch) == 1);
    CHECK(sample(m, unknown) == 1);
    CHECK(m.find("# TYPE paybridge_anomalies_total counter\n") != std::string::npos);
    CHECK(m.find("# TYPE paybridge_notifications_total counter\n") != std::string::npos);
}

TEST_CASE("SIGINT alone stops the daemon cleanly: exit code 0 and its changes kept")
{
    DaemonFixture fx;
    REQUIRE(fx.create_bill("S1", 100).status == 201);
    REQUIRE(fx.log().find("daemon.stopping") == std::string::npos);
    fx.process().signal(SIGINT);
    const int code = fx.process().wait(std::chrono::seconds(20));
    CHECK_MESSAGE(code == 0, "exit code " << code << "; log:\n" << fx.log());
    const std::string log = fx.log();
    CHECK_MESSAGE(log.find("\"event\":\"daemon.stopping\"") != std::string::npos, log);
    CHECK_MESSAGE(log.find("\"signal\":2") != std::string::npos, log);  // it was SIGINT that stopped it
    CHECK(log.find("daemon.signal_ignored") == std::string::npos);
    CHECK(http_request(fx.port(), "GET", "/healthz").status == 0);  // nothing serves any more

    // Started again on the same Redis: the bill is there, and the daemon serves.
    fx.start();
    CHECK(fx.get_bill("S1").status == 200);
}
