#include "store/certificate_shelf.hpp"

#include "config/config.hpp"
#include "core/error.hpp"
#include "store/redis_connection.hpp"

#include <algorithm>
#include <charconv>
#include <optional>

namespace paybridge::store {

namespace asio = boost::asio;
using asio::awaitable;

namespace {

bool is_sn(const std::string& field)
{
    return field.size() == 32 &&
           std::all_of(field.begin(), field.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

/// "<not_after> <content>" under an SN → the entry; nullopt when it is not that.
std::optional<KeptCertificate> read_entry(std::string sn, const std::string& value)
{
    if (!is_sn(sn) || value.size() > CertificateShelf::kMaxValueBytes) {
        return std::nullopt;
    }
    const std::size_t space = value.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == value.size()) {
        return std::nullopt;
    }
    KeptCertificate out;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + space, out.not_after);
    if (ec != std::errc() || end != value.data() + space) {
        return std::nullopt;
    }
    out.sn = std::move(sn);
    out.content = value.substr(space + 1);
    return out;
}

}  // namespace

CertificateShelf::CertificateShelf(RedisConnection& redis, const config::RedisConfig& cfg)
    : redis_(redis), keys_(cfg.key_prefix, cfg.shards)
{
}

awaitable<Result<KeptCertificates>> CertificateShelf::read_alipay(std::string app_id)
{
    std::vector<std::string> argv{"HSCAN", keys_.alipay_certificates(app_id), "0", "COUNT",
                                  std::to_string(kMaxEntries)};
    Result<Reply> r = co_await redis_.exec(std::move(argv));
    if (!r) {
        co_return r.error();
    }
    // [next cursor, [field, value, field, value ...]]
    if (!r->is_array() || r->elements.size() != 2 || !r->elements[1].is_array() ||
        r->elements[1].elements.size() % 2 != 0) {
        co_return unexpected_reply("read kept Alipay certificates", *r);
    }
    std::vector<Reply>& page = r->elements[1].elements;
    KeptCertificates out;
    for (std::size_t i = 0; i + 1 < page.size() && out.certificates.size() + out.unreadable.size() < kMaxEntries;
         i += 2) {
        Reply& field = page[i];
        const Reply& value = page[i + 1];
        if (!field.is_string() || !value.is_string()) {
            co_return unexpected_reply("read kept Alipay certificates", *r);
        }
        if (auto entry = read_entry(field.str, value.str)) {
            out.certificates.push_back(std::move(*entry));
        } else {
            out.unreadable.push_back(std::move(field.str));
        }
    }
    co_return out;
}

awaitable<Result<void>> CertificateShelf::keep_alipay(std::string app_id, KeptCertificate certificate)
{
    std::vector<std::string> argv{"HSET", keys_.alipay_certificates(app_id), std::move(certificate.sn),
                                  std::to_string(certificate.not_after) + " " + certificate.content};
    Result<Reply> r = co_await redis_.exec(std::move(argv));
    if (!r) {
        co_return r.error();
    }
    if (!r->is_integer()) {
        co_return unexpected_reply("keep an Alipay certificate", *r);
    }
    co_return Result<void>{};
}

awaitable<Result<void>> CertificateShelf::drop_alipay(std::string app_id, std::vector<std::string> sns)
{
    if (sns.empty()) {
        co_return Result<void>{};
    }
    std::vector<std::string> argv{"HDEL", keys_.alipay_certificates(app_id)};
    for (std::string& sn : sns) {
        argv.push_back(std::move(sn));
    }
    Result<Reply> r = co_await redis_.exec(std::move(argv));
    if (!r) {
        co_return r.error();
    }
    if (!r->is_integer()) {
        co_return unexpected_reply("drop kept Alipay certificates", *r);
    }
    co_return Result<void>{};
}

}  // namespace paybridge::store
