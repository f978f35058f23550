#include "tools/cli/api_commands.hpp"

#include "core/money.hpp"
#include "tools/cli/api_client.hpp"
#include "tools/cli/table.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <ostream>
#include <string>

namespace paybridge::cli {

namespace {

constexpr const char* kApiCommon = R"(
connection (every API command):
  --url URL        the daemon (default: http://<listen> from the configuration)
  --token TOKEN    bearer token (default: $PAYBRIDGE_TOKEN, else api_tokens[0] of the configuration)
  --config FILE    configuration (default: $PAYBRIDGE_CONFIG, ./paybridge.dev.json, ./.dev/paybridge.dev.json)
  --json           print the API's JSON instead of a table

exit codes: 0 ok, 1 the API refused (4xx/5xx, message shown), 2 usage error, 3 cannot connect,
            4 configuration/token problem
)";

constexpr const char* kBillsHelp =
    R"(usage: paybridge bills create --id ID --amount FEN --customer C [--description D]
                              [--currency CNY] [--expires-at RFC3339]
       paybridge bills get ID
       paybridge bills query ID
       paybridge bills list [--status S] [--provider P] [--customer C] [--limit N] [--cursor C]

  create   register a bill (POST /v1/bills). --amount is integer fen: 1234 is 12.34 CNY.
           Registering the same bill again is fine (200); the same id with other content is
           refused (409).
  get      the bill and its event history (GET /v1/bills/{id})
  query    ask the providers about an unpaid bill at the next sweep (POST /v1/bills/{id}/query;
           needs provider_query in the daemon's configuration); then 'bills get' shows the result
  list     bills, newest change first (GET /v1/bills); --status PENDING|PAID|PARTIALLY_REFUNDED|
           REFUNDED|CLOSED, --provider alipay|wechatpay; prints the cursor for the next page
)";

constexpr const char* kEventsHelp = R"(usage: paybridge events [--after CURSOR] [--limit N]

The ordered feed of every bill event (GET /v1/events): the same objects paybridged pushes to the
CRM. Prints the cursor to continue after the last one shown.
)";

constexpr const char* kAnomaliesHelp = R"(usage: paybridge anomalies [--after CURSOR] [--limit N]

Verified notifications that could not be applied as they stood (GET /v1/anomalies):
amount_mismatch, unknown_bill, paid_after_close, duplicate_payment, refund_exceeds_paid, ...
Each was acknowledged to the provider and recorded; none was dropped.
)";

std::vector<OptionSpec> with_api(std::vector<OptionSpec> specs)
{
    specs.insert(specs.end(), kApiOptions.begin(), kApiOptions.end());
    return specs;
}

std::string text(const rapidjson::Value& obj, const char* key)
{
    if (!obj.IsObject()) {
        return {};
    }
    const auto it = obj.FindMember(key);
    if (it == obj.MemberEnd() || it->value.IsNull()) {
        return {};
    }
    if (it->value.IsString()) {
        return std::string(it->value.GetString(), it->value.GetStringLength());
    }
    if (it->value.IsInt64()) {
        return std::to_string(it->value.GetInt64());
    }
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    it->value.Accept(w);
    return std::string(buf.GetString(), buf.GetSize());
}

std::string yuan(const rapidjson::Value& obj, const char* key)
{
    if (obj.IsObject()) {
        const auto it = obj.FindMember(key);
        if (it != obj.MemberEnd() && it->value.IsInt64()) {
            return format_yuan(it->value.GetInt64());
        }
    }
    return {};
}

// RFC 3339 with milliseconds is long for a table; seconds are enough to read.
std::string short_time(std::string t)
{
    if (t.size() > 20 && t[19] == '.' && t.back() == 'Z') {
        t = t.substr(0, 19) + "Z";
    }
    return t;
}

// What an event changed, in a few words (amounts from its data, else nothing).
std::string event_detail(const rapidjson::Value& ev)
{
    const rapidjson::Value* data = ev.IsObject() && ev.HasMember("data") ? &ev["data"] : nullptr;
    if (data == nullptr || !data->IsObject()) {
        return {};
    }
    std::string out = text(*data, "channel");
    if (const std::string anomaly = text(*data, "anomaly"); !anomaly.empty()) {
        out += " anomaly=" + anomaly;
    }
    if (const std::string amount = yuan(*data, "amount_fen"); !amount.empty()) {
        out += " amount=" + amount;
    }
    if (const std::string refund = yuan(*data, "refund_fen"); !refund.empty()) {
        out += " refund=" + refund + " (" + text(*data, "refund_id") + ")";
    }
    return out;
}

Expected<rapidjson::Document> parse_json(const HttpResponse& res, std::string_view what)
{
    rapidjson::Document doc;
    doc.Parse(res.body.data(), res.body.size());
    if (doc.HasParseError() || !doc.IsObject()) {
        return Failure{Exit::remote, std::string(what) + " answered " + std::to_string(res.status) +
                                         " with a body that is not a JSON object"};
    }
    return doc;
}

void print_json(const Io& io, const std::string& body)
{
    io.out << body;
    if (body.empty() || body.back() != '\n') {
        io.out << '\n';
    }
}

void print_next(const Io& io, const rapidjson::Document& doc, const std::string& command, const char* option)
{
    const std::string next = text(doc, "next_cursor");
    if (!next.empty()) {
        io.out << "continue with: paybridge " << command << " " << option << " " << next << "\n";
    }
}

void print_bill(const Io& io, const rapidjson::Value& bill)
{
    io.out << "bill " << text(bill, "id") << "  " << text(bill, "status") << "\n";
    Table t({"FIELD", "VALUE"});
    t.add({"amount", yuan(bill, "amount_fen") + " " + text(bill, "currency") + " (" +
                         text(bill, "amount_fen") + " fen)"});
    t.add({"paid", yuan(bill, "paid_fen")});
    t.add({"refunded", yuan(bill, "refunded_fen")});
    t.add({"customer", text(bill, "customer_id")});
    t.add({"description", text(bill, "description")});
    t.add({"provider", text(bill, "provider")});
    t.add({"provider txn", text(bill, "provider_txn_id")});
    t.add({"created", text(bill, "created_at")});
    t.add({"updated", text(bill, "updated_at")});
    t.add({"paid at", text(bill, "paid_at")});
    t.add({"version", text(bill, "version")});
    t.print(io.out, 2);
}

Table events_table(const rapidjson::Value& events, bool with_bill)
{
    std::vector<std::string> headers = {"CREATED", "SEQ", "TYPE"};
    if (with_bill) {
        headers.push_back("BILL");
    }
    for (const char* h : {"STATUS", "DETAIL", "ID"}) {
        headers.emplace_back(h);
    }
    Table t(std::move(headers));
    if (!events.IsArray()) {
        return t;
    }
    for (const auto& ev : events.GetArray()) {
        const rapidjson::Value* bill = ev.IsObject() && ev.HasMember("bill") ? &ev["bill"] : nullptr;
        std::vector<std::string> row = {short_time(text(ev, "created_at")), text(ev, "sequence"),
                                        text(ev, "type")};
        if (with_bill) {
            row.push_back(text(ev, "bill_id"));
        }
        row.push_back(bill != nullptr ? text(*bill, "status") : std::string());
        row.push_back(event_detail(ev));
        row.push_back(text(ev, "id"));
        t.add(std::move(row));
    }
    return t;
}

int bills_create(const std::vector<std::string>& argv, const Io& io)
{
    Expected<Args> args = Args::parse(
        "bills create", argv,
        with_api({{"id"}, {"amount"}, {"customer"}, {"description"}, {"currency"}, {"expires-at"}}));
    if (!args) {
        return report(io, args.error());
    }
    if (args->help()) {
        io.out << kBillsHelp << kApiCommon;
        return code(Exit::ok);
    }
    if (!args->positional().empty()) {
        return report(io, args->usage("unexpected argument '" + args->positional().front() + "'"));
    }
    const auto id = args->value("id");
    const auto amount_text = args->value("amount");
    const auto customer = args->value("customer");
    if (!id || !amount_text || !customer) {
        return report(io, args->usage("bills create needs --id, --amount and --customer"));
    }
    const auto amount = parse_integer(*amount_text, 1, kMaxAmountFen);
    if (!amount) {
        return report(
            io, args->usage("--amount is a whole number of fen from 1 to 10^12 (1234 for 12.34 CNY), not '" +
                            *amount_text + "'"));
    }
    Expected<ApiEndpoint> api = resolve_api(*args, true);
    if (!api) {
        return report(io, api.error());
    }
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("id");
    w.String(*id);
    w.Key("amount_fen");
    w.Int64(*amount);
    w.Key("currency");
    w.String(args->value("currency").value_or("CNY"));
    w.Key("customer_id");
    w.String(*customer);
    w.Key("description");
    w.String(args->value("description").value_or(""));
    if (auto expires = args->value("expires-at")) {
        w.Key("expires_at");
        w.String(*expires);
    }
    w.EndObject();
    Expected<HttpResponse> res =
        api_call(*api, "POST", "/v1/bills", std::string(buf.GetString(), buf.GetSize()));
    if (!res) {
        return report(io, res.error());
    }
    if (!res->ok()) {
        if (args->flag("json")) {
            print_json(io, res->body);
        }
        return report(io, api_failure(*res, res->status == 409 ? "bill " + *id + " exists with other content"
                                                               : "the API refused the bill"));
    }
    if (args->flag("json")) {
        print_json(io, res->body);
        return code(Exit::ok);
    }
    Expected<rapidjson::Document> doc = parse_json(*res, "POST /v1/bills");
    if (!doc) {
        return report(io, doc.error());
    }
    io.out << (res->status == 201 ? "created " : "already registered with the same content: ");
    print_bill(io, *doc);
    return code(Exit::ok);
}

/// What the one-bill commands share: their options and --help, one bill ID, the call, --json,
/// and a refusal reported. Either the 2xx answer's JSON, or the exit code to return now.
struct BillCall {
    std::string id;
    std::optional<rapidjson::Document> doc;  ///< empty: return `exit`
    int exit{0};
};

BillCall one_bill_call(const std::vector<std::string>& argv, const Io& io, const std::string& command,
                       const std::string& method, std::string_view suffix, std::string_view not_found_hint)
{
    BillCall call;
    Expected<Args> args = Args::parse(command, argv, with_api({}));
    if (!args) {
        call.exit = report(io, args.error());
        return call;
    }
    if (args->help()) {
        io.out << kBillsHelp << kApiCommon;
        call.exit = code(Exit::ok);
        return call;
    }
    if (args->positional().size() != 1) {
        call.exit = report(io, args->usage(command + " takes one bill ID"));
        return call;
    }
    call.id = args->positional().front();
    Expected<ApiEndpoint> api = resolve_api(*args, true);
    if (!api) {
        call.exit = report(io, api.error());
        return call;
    }
    const std::string target = "/v1/bills/" + url_encode(call.id) + std::string(suffix);
    Expected<HttpResponse> res = api_call(*api, method, target);
    if (!res) {
        call.exit = report(io, res.error());
        return call;
    }
    if (args->flag("json")) {
        print_json(io, res->body);
    }
    if (!res->ok()) {
        call.exit = report(io, api_failure(*res, res->status == 404 ? "no bill '" + call.id + "'" + std::string(not_found_hint)
                                                                    : method + " " + target + " failed"));
        return call;
    }
    if (args->flag("json")) {
        call.exit = code(Exit::ok);
        return call;
    }
    Expected<rapidjson::Document> doc = parse_json(*res, method + " " + target);
    if (!doc) {
        call.exit = report(io, doc.error());
        return call;
    }
    call.doc = std::move(*doc);
    return call;
}

int bills_get(const std::vector<std::string>& argv, const Io& io)
{
    BillCall call = one_bill_call(argv, io, "bills get", "GET", "", " (register it with 'paybridge bills create')");
    if (!call.doc) {
        return call.exit;
    }
    const rapidjson::Document& doc = *call.doc;
    print_bill(io, doc);
    const rapidjson::Value empty(rapidjson::kArrayType);
    const rapidjson::Value& events = doc.HasMember("events") ? doc["events"] : empty;
    io.out << "events (oldest first): " << (events.IsArray() ? events.Size() : 0) << "\n";
    Table t = events_table(events, false);
    if (t.size() > 0) {
        t.print(io.out, 2);
    }
    return code(Exit::ok);
}

int bills_query(const std::vector<std::string>& argv, const Io& io)
{
    BillCall call = one_bill_call(argv, io, "bills query", "POST", "/query", "");
    if (!call.doc) {
        return call.exit;
    }
    const rapidjson::Document& d = *call.doc;
    const bool has_interval = d.HasMember("interval_s") && d["interval_s"].IsInt64();
    const bool has_status = d.HasMember("status") && d["status"].IsString();
    io.out << "bill " << call.id << " (" << (has_status ? d["status"].GetString() : "?")
           << "): the providers are asked about it within "
           << (has_interval ? std::to_string(d["interval_s"].GetInt64()) : std::string("?"))
           << " s; 'paybridge bills get " << call.id << "' shows what they said\n";
    return code(Exit::ok);
}

int bills_list(const std::vector<std::string>& argv, const Io& io)
{
    Expected<Args> args = Args::parse(
        "bills list", argv, with_api({{"status"}, {"provider"}, {"customer"}, {"limit"}, {"cursor"}}));
    if (!args) {
        return report(io, args.error());
    }
    if (args->help()) {
        io.out << kBillsHelp << kApiCommon;
        return code(Exit::ok);
    }
    if (!args->positional().empty()) {
        return report(io, args->usage("unexpected argument '" + args->positional().front() + "'"));
    }
    auto limit = args->integer("limit", 1, 500);
    if (!limit) {
        return report(io, limit.error());
    }
    std::string query;
    auto add = [&query](const char* key, const std::string& value) {
        query += (query.empty() ? "?" : "&") + std::string(key) + "=" + url_encode(value);
    };
    if (auto status = args->value("status")) {
        std::string s = *status;
        std::transform(s.begin(), s.end(), s.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        if (s != "PENDING" && s != "PAID" && s != "PARTIALLY_REFUNDED" && s != "REFUNDED" && s != "CLOSED") {
            return report(
                io, args->usage("--status must be PENDING, PAID, PARTIALLY_REFUNDED, REFUNDED or CLOSED"));
        }
        add("status", s);
    }
    if (auto provider = args->value("provider")) {
        if (*provider != "alipay" && *provider != "wechatpay") {
            return report(io, args->usage("--provider must be alipay or wechatpay"));
        }
        add("provider", *provider);
    }
    if (auto customer = args->value("customer")) {
        add("customer_id", *customer);
    }
    if (*limit) {
        add("limit", std::to_string(**limit));
    }
    if (auto cursor = args->value("cursor")) {
        add("cursor", *cursor);
    }
    Expected<ApiEndpoint> api = resolve_api(*args, true);
    if (!api) {
        return report(io, api.error());
    }
    Expected<HttpResponse> res = api_call(*api, "GET", "/v1/bills" + query);
    if (!res) {
        return report(io, res.error());
    }
    if (args->flag("json")) {
        print_json(io, res->body);
    }
    if (!res->ok()) {
        return report(io, api_failure(*res, "GET /v1/bills failed"));
    }
    if (args->flag("json")) {
        return code(Exit::ok);
    }
    Expected<rapidjson::Document> doc = parse_json(*res, "GET /v1/bills");
    if (!doc) {
        return report(io, doc.error());
    }
    Table t({"ID", "STATUS", "AMOUNT", "PAID", "REFUNDED", "PROVIDER", "CUSTOMER", "UPDATED"});
    if (doc->HasMember("bills") && (*doc)["bills"].IsArray()) {
        for (const auto& b : (*doc)["bills"].GetArray()) {
            t.add({text(b, "id"), text(b, "status"), yuan(b, "amount_fen"), yuan(b, "paid_fen"),
                   yuan(b, "refunded_fen"), text(b, "provider"), text(b, "customer_id"),
                   short_time(text(b, "updated_at"))});
        }
    }
    if (t.size() == 0) {
        io.out << "no bills\n";
    } else {
        t.print(io.out);
        io.out << t.size() << " bill(s), amounts in CNY\n";
    }
    print_next(io, *doc, "bills list", "--cursor");
    return code(Exit::ok);
}

// events and anomalies share their shape: a feed with ?after=&limit=. A feed's cursor is where to
// continue polling, so it is printed even when this page was not full.
int feed(const std::vector<std::string>& argv, const Io& io, bool anomalies)
{
    const std::string command = anomalies ? "anomalies" : "events";
    Expected<Args> args = Args::parse(command, argv, with_api({{"after"}, {"limit"}}));
    if (!args) {
        return report(io, args.error());
    }
    if (args->help()) {
        io.out << (anomalies ? kAnomaliesHelp : kEventsHelp) << kApiCommon;
        return code(Exit::ok);
    }
    if (!args->positional().empty()) {
        return report(io, args->usage("unexpected argument '" + args->positional().front() + "'"));
    }
    auto limit = args->integer("limit", 1, 1000);
    if (!limit) {
        return report(io, limit.error());
    }
    std::string query;
    if (auto after = args->value("after")) {
        query += "?after=" + url_encode(*after);
    }
    if (*limit) {
        query += (query.empty() ? "?" : "&") + std::string("limit=") + std::to_string(**limit);
    }
    Expected<ApiEndpoint> api = resolve_api(*args, true);
    if (!api) {
        return report(io, api.error());
    }
    const std::string path = "/v1/" + command;
    Expected<HttpResponse> res = api_call(*api, "GET", path + query);
    if (!res) {
        return report(io, res.error());
    }
    if (args->flag("json")) {
        print_json(io, res->body);
    }
    if (!res->ok()) {
        return report(io, api_failure(*res, "GET " + path + " failed"));
    }
    if (args->flag("json")) {
        return code(Exit::ok);
    }
    Expected<rapidjson::Document> doc = parse_json(*res, "GET " + path);
    if (!doc) {
        return report(io, doc.error());
    }
    const rapidjson::Value empty(rapidjson::kArrayType);
    const rapidjson::Value& items = doc->HasMember(command.c_str()) ? (*doc)[command.c_str()] : empty;
    if (!items.IsArray() || items.Empty()) {
        io.out << "no " << command << "\n";
    } else if (!anomalies) {
        Table t = events_table(items, true);
        t.print(io.out);
        io.out << t.size() << " event(s)\n";
    } else {
        Table t({"CREATED", "KIND", "BILL", "VIA", "DETAIL", "ID"});
        for (const auto& a : items.GetArray()) {
            t.add({short_time(text(a, "created_at")), text(a, "kind"), text(a, "bill_id"), text(a, "channel"),
                   text(a, "detail"), text(a, "id")});
        }
        t.print(io.out);
        io.out << t.size() << " anomal" << (t.size() == 1 ? "y" : "ies") << "\n";
    }
    print_next(io, *doc, command, "--after");
    return code(Exit::ok);
}

}  // namespace

int cmd_bills(const std::vector<std::string>& argv, const Io& io)
{
    if (argv.empty() || argv.front() == "--help" || argv.front() == "-h") {
        (argv.empty() ? io.err : io.out) << kBillsHelp << kApiCommon;
        return argv.empty() ? code(Exit::usage) : code(Exit::ok);
    }
    const std::vector<std::string> rest(argv.begin() + 1, argv.end());
    if (argv.front() == "create") {
        return bills_create(rest, io);
    }
    if (argv.front() == "get") {
        return bills_get(rest, io);
    }
    if (argv.front() == "list") {
        return bills_list(rest, io);
    }
    if (argv.front() == "query") {
        return bills_query(rest, io);
    }
    return report(io,
                  usage_error("unknown command 'bills " + argv.front() + "' (see 'paybridge bills --help')"));
}

int cmd_events(const std::vector<std::string>& argv, const Io& io) { return feed(argv, io, false); }

int cmd_anomalies(const std::vector<std::string>& argv, const Io& io) { return feed(argv, io, true); }

}  // namespace paybridge::cli
