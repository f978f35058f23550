#include "tools/cli/keys_init.hpp"

#include "gateways/crypto/crypto.hpp"
#include "tools/cli/args.hpp"
#include "tools/cli/http_client.hpp"
#include "tools/keygen/keygen.hpp"

#include <boost/asio/ip/address.hpp>

#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <iomanip>
#include <sstream>
#include <ostream>
#include <sys/stat.h>
#include <unistd.h>

namespace paybridge::cli {

namespace fs = std::filesystem;

namespace {

constexpr const char* kHelp = R"(usage: paybridge keys init DIR [--force] [--config PATH] [--listen HOST:PORT]
                           [--redis-port PORT] [--crm-url URL]

Writes DEVELOPMENT key material for every provider protocol into DIR (created with mode 0700;
private keys and secrets 0600), and a development configuration that uses it. An existing DIR
is used as it is, unless group or others can access it: then nothing is written (choose a new
DIR, or 'chmod 700 DIR' first).

  Alipay      alipay_private.pem / alipay_public.pem (the key pair Alipay signs with / the daemon
              verifies with), alipay_root.crt (a test CA) and alipay_public.crt (Alipay's
              certificate for the same key, issued by that CA) for certificate mode
  WeChat Pay  wechatpay_private.pem / wechatpay_public.pem (public-key mode, with a public key id
              PUB_KEY_ID_ + 32 digits), wechatpay_platform.pem + wechatpay_platform_private.pem (a
              platform certificate issued by the test CA; its serial is printed),
              wechatpay_apiv3_key and wechatpay_apiv2_key (32 characters each)
  API         api_token (the bearer token for /v1/...)
  CRM         crm_secret ("whsec_" + base64 of 24 random bytes; give it to 'paybridge listen')

options:
  --config PATH        where to write the configuration (default: DIR/../paybridge.dev.json)
  --force              replace existing keys and configuration (restart paybridged afterwards)
  --listen HOST:PORT   the daemon's listen address in the configuration (default 127.0.0.1:8080):
                       an IP address (IPv6 in brackets, [::1]:8080) and a port from 1 to 65535
  --redis-port PORT    the local redis-server port (default 6379)
  --crm-url URL        where events are pushed (default http://127.0.0.1:9000/paybridge/events)

The configuration passes 'paybridged --config PATH --check'. Never use these keys in production.

exit codes: 0 written, 2 usage error (including an existing DIR that others can access),
            4 a file exists (without --force) or cannot be written
)";

constexpr const char* kGroupHelp = R"(usage: paybridge keys init DIR [options]

  init   write development keys and a development configuration (see 'paybridge keys init --help')
)";

// A file to write: content and mode.
struct Planned {
    std::string name;
    std::string content;
    unsigned mode;
    std::string what;
};

// Writes through a temporary file renamed into place, so a reader never sees half a key, and sets
// the mode explicitly (the umask must not widen or narrow it).
Expected<void> write_file(const fs::path& path, const std::string& content, unsigned mode)
{
    const fs::path tmp = path.string() + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, static_cast<mode_t>(mode));
    if (fd < 0) {
        return local_error("cannot write " + tmp.string() + ": " + std::strerror(errno));
    }
    bool ok = ::fchmod(fd, static_cast<mode_t>(mode)) == 0;
    std::size_t done = 0;
    while (ok && done < content.size()) {
        const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        ok = n > 0;
        done += ok ? static_cast<std::size_t>(n) : 0;
    }
    const int saved = errno;
    ok = (::close(fd) == 0) && ok;
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        const int why = ok ? errno : saved;
        ::unlink(tmp.c_str());
        return local_error("cannot write " + path.string() + ": " + std::strerror(why));
    }
    return {};
}

std::string random_digits(std::size_t n)
{
    std::string out;
    while (out.size() < n) {
        for (unsigned char b : crypto::random_bytes(n)) {
            if (b < 250 && out.size() < n) {  // 250 = 25 * 10: no modulo bias
                out += static_cast<char>('0' + b % 10);
            }
        }
    }
    return out;
}

// 20 random bytes as a positive serial without a leading zero byte: 40 hex digits, as WeChat
// Pay's platform certificate serials are.
std::string random_serial_hex()
{
    std::string bytes = crypto::random_bytes(20);
    bytes[0] = static_cast<char>(0x10 + (static_cast<unsigned char>(bytes[0]) % 0x70));
    return crypto::hex_upper(bytes);
}

std::string relative_to(const fs::path& target, const fs::path& base)
{
    const fs::path rel = target.lexically_relative(base);
    return (rel.empty() ? target : rel).generic_string();
}

std::string config_json(const KeysInitOptions& o, const std::string& keys, const std::string& public_key_id)
{
    auto key = [&keys](std::string_view name) {
        return keys == "." ? std::string(name) : keys + "/" + std::string(name);
    };
    rapidjson::StringBuffer buf;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(buf);
    w.SetIndent(' ', 2);
    w.StartObject();
    w.Key("listen");
    w.String(o.listen);
    w.Key("redis");
    w.StartObject();
    w.Key("url");
    w.String("redis://127.0.0.1:" + std::to_string(o.redis_port) + "/0");
    w.Key("key_prefix");
    w.String("pb:");
    w.EndObject();
    w.Key("api_tokens");
    w.StartArray();
    w.StartObject();
    w.Key("name");
    w.String("dev");
    w.Key("token");
    w.String("file:" + key(keyfile::kApiToken));
    w.EndObject();
    w.EndArray();
    w.Key("alipay");
    w.StartObject();
    w.Key("apps");
    w.StartArray();
    w.StartObject();
    w.Key("app_id");
    w.String(std::string(kDevAlipayAppId));
    w.Key("seller_id");
    w.String(std::string(kDevAlipaySellerId));
    w.Key("sign_type");
    w.String("RSA2");
    w.Key("alipay_public_key_file");
    w.String(key(keyfile::kAlipayPublic));
    w.EndObject();
    w.EndArray();
    w.EndObject();
    w.Key("wechatpay");
    w.StartObject();
    w.Key("merchants");
    w.StartArray();
    w.StartObject();
    w.Key("mchid");
    w.String(std::string(kDevWechatMchid));
    w.Key("appid");
    w.String(std::string(kDevWechatAppid));
    w.Key("apiv3_key");
    w.String("file:" + key(keyfile::kWechatApiv3Key));
    w.Key("public_key_id");
    w.String(public_key_id);
    w.Key("public_key_file");
    w.String(key(keyfile::kWechatPublic));
    w.Key("platform_certificates");
    w.StartArray();
    w.String(key(keyfile::kWechatPlatformCert));
    w.EndArray();
    w.Key("apiv2_key");
    w.String("file:" + key(keyfile::kWechatApiv2Key));
    w.EndObject();
    w.EndArray();
    w.EndObject();
    w.Key("crm");
    w.StartObject();
    w.Key("url");
    w.String(o.crm_url);
    w.Key("secret");
    w.String("file:" + key(keyfile::kCrmSecret));
    // Short retries, so that `paybridge listen --status 500` shows redeliveries within seconds.
    w.Key("retry_schedule_s");
    w.StartArray();
    for (int s : {2, 5, 10, 30, 60, 300}) {
        w.Int(s);
    }
    w.EndArray();
    w.EndObject();
    w.Key("log");
    w.StartObject();
    w.Key("level");
    w.String("info");
    w.EndObject();
    w.EndObject();
    return std::string(buf.GetString(), buf.GetSize()) + "\n";
}

std::string octal_mode(unsigned mode)
{
    std::ostringstream out;
    out << std::oct << std::setw(4) << std::setfill('0') << (mode & 07777);
    return out.str();
}

std::string readme(const KeysInitReport& r)
{
    std::ostringstream out;
    out << "paybridge DEVELOPMENT keys (paybridge keys init). Never use them in production.\n\n";
    out << "WeChat Pay public key id:            " << r.wechat_public_key_id << "\n";
    out << "WeChat Pay platform cert serial:     " << r.wechat_platform_serial << "\n";
    out << "Alipay certificate SN (alipay_public.crt): " << r.alipay_cert_sn << "\n\n";
    for (const auto& f : r.files) {
        out << std::left << std::setw(32) << f.path.filename().string() << f.what << "\n";
    }
    return out.str();
}

}  // namespace

Expected<KeysInitReport> keys_init(const KeysInitOptions& options)
{
    std::error_code ec;
    KeysInitReport report;
    report.dir = fs::absolute(options.dir).lexically_normal();
    if (report.dir.filename().empty()) {
        report.dir = report.dir.parent_path();
    }
    report.config = options.config_path.empty() ? report.dir.parent_path() / "paybridge.dev.json"
                                                : fs::absolute(options.config_path).lexically_normal();

    // Only a folder this run creates is made private. An existing one is not ours to chmod (it may
    // be the project itself: `keys init .`), and keys must not land where others can list them.
    const fs::file_status dir_status = fs::status(report.dir, ec);
    const bool dir_existed = fs::exists(dir_status);
    if (dir_existed) {
        if (!fs::is_directory(dir_status)) {
            return local_error(report.dir.string() + " exists and is not a folder; choose another DIR");
        }
        const fs::perms others = fs::perms::group_all | fs::perms::others_all;
        if ((dir_status.permissions() & others) != fs::perms::none) {
            return usage_error(report.dir.string() + " exists and other users can access it (mode " +
                               octal_mode(static_cast<unsigned>(dir_status.permissions())) +
                               "); private keys need a folder of their own: choose a DIR that does not exist "
                               "yet (it is created with mode 0700), or 'chmod 700 " + report.dir.string() +
                               "' first");
        }
    }

    // Generate first (pure CPU), so a refusal or a generation failure leaves nothing behind.
    const keygen::Certificate ca = keygen::make_ca({.common_name = "paybridge development test CA",
                                                    .organizational_unit = "paybridge dev",
                                                    .is_ca = true});
    const keygen::Certificate alipay_cert =
        keygen::issue(ca, {.common_name = "paybridge dev Alipay " + std::string(kDevAlipaySellerId),
                           .organizational_unit = "Alipay"});
    const keygen::KeyPair wechat_pair = keygen::generate_rsa();
    report.wechat_platform_serial = random_serial_hex();
    const keygen::Certificate platform = keygen::issue(ca, {.common_name = "Tenpay.com Root CA dev",
                                                            .organization = "Tenpay.com",
                                                            .organizational_unit = "Tenpay.com CA Center",
                                                            .serial_hex = report.wechat_platform_serial});
    report.wechat_public_key_id = "PUB_KEY_ID_" + random_digits(32);
    if (auto certs = crypto::load_certificates(platform.cert_pem); certs && !certs->empty()) {
        report.wechat_platform_serial = crypto::certificate_serial_hex(certs->front().get());
    }
    if (auto certs = crypto::load_certificates(alipay_cert.cert_pem); certs && !certs->empty()) {
        report.alipay_cert_sn = crypto::alipay_cert_sn(certs->front().get());
    }
    const std::string crm_secret = "whsec_" + crypto::base64_encode(crypto::random_bytes(24));

    const std::vector<Planned> planned = {
        {std::string(keyfile::kAlipayPrivate), alipay_cert.key.private_pem, 0600,
         "Alipay's private key: the simulator signs notifications with it"},
        {std::string(keyfile::kAlipayPublic), alipay_cert.key.public_pem, 0644,
         "Alipay's public key: paybridged verifies with it (public-key mode)"},
        {std::string(keyfile::kAlipayRootCert), ca.cert_pem, 0644,
         "the test CA, as Alipay's root certificate (certificate mode)"},
        {std::string(keyfile::kAlipayPublicCert), alipay_cert.cert_pem, 0644,
         "Alipay's certificate for the same key, issued by the test CA (certificate mode)"},
        {std::string(keyfile::kWechatPrivate), wechat_pair.private_pem, 0600,
         "WeChat Pay's private key (public-key mode): the simulator signs with it"},
        {std::string(keyfile::kWechatPublic), wechat_pair.public_pem, 0644,
         "WeChat Pay's public key, id " + report.wechat_public_key_id},
        {std::string(keyfile::kWechatPlatformCert), platform.cert_pem, 0644,
         "WeChat Pay platform certificate, serial " + report.wechat_platform_serial},
        {std::string(keyfile::kWechatPlatformPrivate), platform.key.private_pem, 0600,
         "the platform certificate's private key: the simulator signs with it"},
        {std::string(keyfile::kWechatApiv3Key), keygen::random_token(32) + "\n", 0600,
         "WeChat Pay APIv3 key (32 characters)"},
        {std::string(keyfile::kWechatApiv2Key), keygen::random_token(32) + "\n", 0600,
         "WeChat Pay APIv2 key (32 characters)"},
        {std::string(keyfile::kApiToken), keygen::random_token(40) + "\n", 0600,
         "bearer token for the /v1 API"},
        {std::string(keyfile::kCrmSecret), crm_secret + "\n", 0600,
         "CRM webhook secret: paybridged signs events with it; give it to 'paybridge listen'"},
    };

    if (!options.force) {
        std::vector<fs::path> existing;
        for (const auto& p : planned) {
            if (fs::exists(report.dir / p.name, ec)) {
                existing.push_back(report.dir / p.name);
            }
        }
        if (fs::exists(report.config, ec)) {
            existing.push_back(report.config);
        }
        if (!existing.empty()) {
            std::string names = existing.front().string();
            if (existing.size() > 1) {
                names += " and " + std::to_string(existing.size() - 1) + " more file(s)";
            }
            return local_error(names + (existing.size() > 1 ? " already exist" : " already exists") +
                               "; refusing to overwrite development keys. Pass --force to "
                               "replace them (then restart paybridged), or choose another DIR");
        }
    }

    fs::create_directories(report.dir, ec);
    if (ec || !fs::is_directory(report.dir)) {
        return local_error("cannot create " + report.dir.string() + ": " +
                           (ec ? ec.message() : "not a directory"));
    }
    if (!dir_existed) {
        fs::permissions(report.dir, fs::perms::owner_all, fs::perm_options::replace, ec);
        if (ec) {
            return local_error("cannot set mode 0700 on " + report.dir.string() + ": " + ec.message());
        }
    }
    report.dir_mode = static_cast<unsigned>(fs::status(report.dir, ec).permissions()) & 07777;
    for (const auto& p : planned) {
        Expected<void> w = write_file(report.dir / p.name, p.content, p.mode);
        if (!w) {
            return w.error();
        }
        report.files.push_back({report.dir / p.name, p.mode, p.what});
    }

    fs::create_directories(report.config.parent_path(), ec);
    if (ec) {
        return local_error("cannot create " + report.config.parent_path().string() + ": " + ec.message());
    }
    const std::string keys_rel = relative_to(report.dir, report.config.parent_path());
    Expected<void> w =
        write_file(report.config, config_json(options, keys_rel, report.wechat_public_key_id), 0644);
    if (!w) {
        return w.error();
    }
    Expected<void> rm = write_file(report.dir / std::string(keyfile::kReadme), readme(report), 0644);
    if (!rm) {
        return rm.error();
    }
    report.files.push_back({report.config, 0644, "development configuration"});
    return report;
}

std::string listen_problem(const std::string& text)
{
    const std::string example = " (e.g. --listen 127.0.0.1:8080, or [::1]:8080 for IPv6)";
    std::string host;
    std::string port;
    if (text.starts_with('[')) {
        const auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            return "--listen must be HOST:PORT" + example;
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string::npos) {
            return "--listen must be HOST:PORT" + example;
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string::npos) {
            return "--listen " + text + ": an IPv6 address must be written in brackets, e.g. [::1]:8080";
        }
    }
    if (host.empty()) {
        return "--listen must be HOST:PORT" + example;
    }
    // paybridged binds an IP literal and never resolves a name (config/load.cpp, listen_endpoint).
    boost::system::error_code ec;
    boost::asio::ip::make_address(host, ec);
    if (ec) {
        return "--listen " + text + ": the host \"" + host +
               "\" is not an IP address; paybridged listens on an address such as 127.0.0.1, 0.0.0.0 or [::1]" +
               example;
    }
    if (!parse_integer(port, 1, 65535)) {
        return "--listen " + text + ": the port must be a number from 1 to 65535" + example;
    }
    return {};
}

std::string crm_url_problem(const std::string& text)
{
    const std::string example = " (e.g. --crm-url http://127.0.0.1:9000/paybridge/events)";
    Expected<Url> url = parse_url(text);
    if (!url) {
        return "--crm-url: " + url.error().message + example;
    }
    // parse_url is what `paybridge listen` reads crm.url with; paybridged also refuses these.
    if (text.find('#') != std::string::npos) {
        return "--crm-url " + text + ": must not contain a #fragment" + example;
    }
    if (text.find_first_of(" \t\r\n") != std::string::npos) {
        return "--crm-url: '" + text + "' must not contain spaces" + example;
    }
    return {};
}

int cmd_keys(const std::vector<std::string>& argv, const Io& io)
{
    if (argv.empty() || argv.front() == "--help" || argv.front() == "-h") {
        (argv.empty() ? io.err : io.out) << kGroupHelp;
        return argv.empty() ? code(Exit::usage) : code(Exit::ok);
    }
    if (argv.front() != "init") {
        return report(
            io, usage_error("unknown command 'keys " + argv.front() + "' (see 'paybridge keys --help')"));
    }
    const std::vector<std::string> rest(argv.begin() + 1, argv.end());
    Expected<Args> args = Args::parse(
        "keys init", rest, {{"force", false}, {"config"}, {"listen"}, {"redis-port"}, {"crm-url"}});
    if (!args) {
        return report(io, args.error());
    }
    if (args->help()) {
        io.out << kHelp;
        return code(Exit::ok);
    }
    if (args->positional().size() != 1) {
        return report(io, args->usage("keys init takes exactly one DIR"));
    }
    KeysInitOptions options;
    options.dir = args->positional().front();
    options.force = args->flag("force");
    options.config_path = args->value("config").value_or("");
    options.listen = args->value("listen").value_or(options.listen);
    if (std::string why = listen_problem(options.listen); !why.empty()) {
        return report(io, args->usage(why));
    }
    auto redis_port = args->integer("redis-port", 1, 65535);
    if (!redis_port) {
        return report(io, redis_port.error());
    }
    options.redis_port = static_cast<std::uint16_t>(redis_port->value_or(6379));
    if (auto crm = args->value("crm-url")) {
        if (std::string why = crm_url_problem(*crm); !why.empty()) {
            return report(io, args->usage(why));
        }
        options.crm_url = *crm;
    }

    Expected<KeysInitReport> result = keys_init(options);
    if (!result) {
        return report(io, result.error());
    }
    io.out << "Development keys written to " << result->dir.string() << " (mode " << octal_mode(result->dir_mode)
           << "):\n";
    for (const auto& f : result->files) {
        if (f.path == result->config) {
            continue;
        }
        io.out << "  " << std::left << std::setw(32) << f.path.filename().string() << std::oct << std::setw(4)
               << std::setfill('0') << std::right << f.mode << std::dec << std::setfill(' ') << "  " << f.what
               << "\n";
    }
    io.out << "\nAlipay app " << kDevAlipayAppId << " (seller " << kDevAlipaySellerId
           << "): public-key mode; for certificate mode use " << keyfile::kAlipayPublicCert << " + "
           << keyfile::kAlipayRootCert << " (SN " << result->alipay_cert_sn << ")\n";
    io.out << "WeChat Pay merchant " << kDevWechatMchid << " / " << kDevWechatAppid << ": public key id "
           << result->wechat_public_key_id << ", platform certificate serial "
           << result->wechat_platform_serial << "\n";
    io.out << "\nConfiguration written to " << result->config.string() << "\n"
           << "  listen " << options.listen << ", redis redis://127.0.0.1:" << options.redis_port
           << "/0, crm " << options.crm_url << "\n"
           << "\nNext:\n"
           << "  paybridged --config " << result->config.string() << " --check\n"
           << "  paybridged --config " << result->config.string() << "\n"
           << "  paybridge listen --config " << result->config.string() << "      # a CRM stand-in\n"
           << "  paybridge bills create --config " << result->config.string()
           << " --id B1 --amount 1234 --customer C1\n"
           << "  paybridge trigger alipay paid --config " << result->config.string() << " --bill B1\n"
           << "These keys are for development only.\n";
    return code(Exit::ok);
}

}  // namespace paybridge::cli
