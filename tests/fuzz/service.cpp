// Fuzz target: webhooks::Service, the whole HTTP application behind the server — routing, bearer
// authentication, query parameters, cursors, limits, times and the POST /v1/bills validation —
// over a store that records what it is asked. The input is a request:
//   byte 0: bit 0 adds a valid bearer token, bits 1-2 pick the method (GET POST PUT DELETE);
//   then "target\n", header lines "Name: value\n" up to an empty line, then the body.
// Targets and headers hold only bytes Beast's parser lets through (the server parses before the
// Service sees anything). Properties:
// - handle() never throws and never answers 500 (a 500 is a bug caught);
// - every application/json answer is valid JSON in valid UTF-8;
// - without the token no /v1 request reaches the store;
// - a bill the store is asked to register passes API.md's rules (id charset and length, amount in
//   (0, 10^12], CNY, customer_id 1..128 bytes, not blank, without control characters, description
//   <= 256 without control characters but tab and newlines, expires_at RFC 3339, metadata a
//   non-empty JSON object of at most 4096 bytes); list limits stay in their ranges.

#include "config/config.hpp"
#include "core/bill_store.hpp"
#include "core/log.hpp"
#include "core/money.hpp"
#include "core/time.hpp"
#include "tests/fuzz/event_checks.hpp"
#include "webhooks/service.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <rapidjson/document.h>

#include <exception>
#include <memory>
#include <optional>
#include <string>

namespace {

using namespace paybridge;
namespace http = boost::beast::http;
using boost::asio::awaitable;

constexpr std::string_view kToken = "fuzz-token-0123456789abcdef";

bool valid_json_object(std::string_view text)
{
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
    return !doc.HasParseError() && doc.IsObject();
}

/// Whether `text` (UTF-8) holds a C0 or C1 control character or DEL; tab, line feed and carriage
/// return are let through when `but_blanks`.
bool has_control(std::string_view text, bool but_blanks)
{
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        const bool blank = c == '\t' || c == '\n' || c == '\r';
        if ((c < 0x20 && !(but_blanks && blank)) || c == 0x7F ||
            (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) <= 0x9F)) {
            return true;
        }
    }
    return false;
}

/// Answers everything successfully and checks what it is asked.
class CheckingStore final : public BillStore {
public:
    int calls{0};

    awaitable<Result<ApplyResult>> apply(PaymentEvent) override
    {
        ++calls;
        co_return ApplyResult{.outcome = ApplyOutcome::applied, .status = "PAID"};
    }
    awaitable<Result<RegisterResult>> register_bill(NewBill bill) override
    {
        ++calls;
        FUZZ_CHECK(!bill.id.empty() && bill.id.size() <= 64);
        for (char c : bill.id) {
            FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                       c == '-' || c == '.' || c == '|' || c == '*');
        }
        FUZZ_CHECK(bill.amount_fen > 0 && bill.amount_fen <= kMaxAmountFen);
        FUZZ_CHECK(bill.currency == "CNY");
        FUZZ_CHECK(!bill.customer_id.empty() && bill.customer_id.size() <= 128 && fuzz::is_utf8(bill.customer_id));
        FUZZ_CHECK(!has_control(bill.customer_id, false));
        FUZZ_CHECK(bill.customer_id.find_first_not_of(' ') != std::string::npos);
        FUZZ_CHECK(bill.description.size() <= 256 && fuzz::is_utf8(bill.description));
        FUZZ_CHECK(!has_control(bill.description, true));
        FUZZ_CHECK(bill.expires_at.empty() || parse_rfc3339(bill.expires_at).has_value());
        FUZZ_CHECK(bill.metadata_json.empty() ||
                   (bill.metadata_json.size() <= 4096 && valid_json_object(bill.metadata_json)));
        FUZZ_CHECK(bill.metadata_json != "{}");  // an empty object is no metadata
        co_return RegisterResult{.outcome = RegisterOutcome::created,
                                 .bill_json = R"({"id":"B-1","status":"PENDING"})"};
    }
    awaitable<Result<std::optional<BillView>>> get_bill(std::string id) override
    {
        ++calls;
        if (id != "B-1") {
            co_return std::optional<BillView>{};
        }
        co_return std::optional<BillView>(BillView{.bill_json = R"({"id":"B-1"})", .events_json = {R"({"id":"e"})"}});
    }
    awaitable<Result<Page>> list_bills(BillFilter filter) override
    {
        ++calls;
        FUZZ_CHECK(filter.limit >= 1 && filter.limit <= 500);
        FUZZ_CHECK(filter.updated_to_ms == 0 || filter.updated_from_ms <= filter.updated_to_ms);
        co_return page();
    }
    awaitable<Result<Page>> list_events(std::string, std::size_t limit) override
    {
        ++calls;
        FUZZ_CHECK(limit >= 1 && limit <= 1000);
        co_return page();
    }
    awaitable<Result<Page>> list_anomalies(std::string, std::size_t limit) override
    {
        ++calls;
        FUZZ_CHECK(limit >= 1 && limit <= 1000);
        co_return page();
    }
    awaitable<Result<std::string>> summary(std::int64_t from_ms, std::int64_t to_ms) override
    {
        ++calls;
        FUZZ_CHECK(from_ms < to_ms);
        co_return std::string(R"({"bills":[]})");
    }
    awaitable<Result<void>> ping() override { co_return Result<void>{}; }

private:
    static Page page() { return Page{.items_json = {R"({"id":"x"})"}, .next_cursor = "1700000000000:x"}; }
};

struct Harness {
    CheckingStore store;
    webhooks::RuntimePtr runtime;
    std::unique_ptr<webhooks::Service> service;
    boost::asio::io_context ioc;

    Harness()
    {
        log::set_level(log::Level::error);
        auto config = std::make_shared<config::Config>();
        config->api_tokens.push_back({.name = "crm", .token = std::string(kToken)});
        auto rt = std::make_shared<webhooks::Runtime>();
        rt->config = std::move(config);
        runtime = std::move(rt);
        webhooks::Service::Deps deps{.store = store,
                                     .deliveries = nullptr,
                                     .runtime = [this] { return runtime; },
                                     .ready = [] { return true; }};
        service = std::make_unique<webhooks::Service>(std::move(deps));
    }
};

Harness& harness()
{
    static Harness h;
    return h;
}

/// Bytes Beast's parser accepts in a request target.
bool target_ok(std::string_view s)
{
    if (s.empty()) return false;
    for (unsigned char c : s) {
        if (c <= 0x20 || c >= 0x7F) return false;
    }
    return true;
}

/// A header line Beast's parser would accept: a token name, a value without control characters.
bool header_ok(std::string_view name, std::string_view value)
{
    if (name.empty()) return false;
    for (unsigned char c : name) {
        const bool tchar = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                           std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
        if (!tchar) return false;
    }
    for (unsigned char c : value) {
        if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
    }
    return true;
}

std::string_view next_line(std::string_view& rest, bool& found)
{
    const auto nl = rest.find('\n');
    found = nl != std::string_view::npos;
    const std::string_view line = rest.substr(0, nl);
    rest = found ? rest.substr(nl + 1) : std::string_view{};
    return line;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0) return 0;
    Harness& h = harness();
    const bool authorized = (data[0] & 1) != 0;
    static constexpr http::verb kMethods[] = {http::verb::get, http::verb::post, http::verb::put,
                                              http::verb::delete_};
    const http::verb method = kMethods[(data[0] >> 1) & 3];
    std::string_view rest = fuzz::as_text(data + 1, size - 1);

    bool found = false;
    const std::string_view target = next_line(rest, found);
    if (!target_ok(target)) return 0;
    webhooks::Request req{method, target, 11};
    while (!rest.empty()) {
        const std::string_view line = next_line(rest, found);
        if (line.empty()) break;
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) return 0;
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
        const std::string_view name = line.substr(0, colon);
        if (!header_ok(name, value) || name == "Authorization" || name == "authorization") return 0;
        req.insert(name, value);
    }
    if (authorized) {
        req.set(http::field::authorization, "Bearer " + std::string(kToken));
    }
    req.body() = std::string(rest);
    req.prepare_payload();

    const int calls_before = h.store.calls;
    std::optional<webhooks::Response> response;
    std::exception_ptr thrown;
    auto handling = h.service->handle(std::move(req));
    boost::asio::co_spawn(h.ioc, std::move(handling),
                          [&](std::exception_ptr e, webhooks::Response r) {
                              thrown = e;
                              response = std::move(r);
                          });
    h.ioc.restart();
    h.ioc.run();
    FUZZ_CHECK(!thrown);
    FUZZ_CHECK(response.has_value());
    FUZZ_CHECK(response->result_int() != 500);
    if (!authorized && target.starts_with("/v1/")) {
        FUZZ_CHECK(h.store.calls == calls_before);
        FUZZ_CHECK(response->result_int() == 401);
    }
    const auto content_type = (*response)[http::field::content_type];
    if (content_type.starts_with("application/json")) {
        rapidjson::Document doc;
        doc.Parse<rapidjson::kParseValidateEncodingFlag>(response->body().data(), response->body().size());
        FUZZ_CHECK(!doc.HasParseError());
    }
    if (response->result_int() == 201) {
        fuzz::accepted = true;
    }
    return 0;
}
