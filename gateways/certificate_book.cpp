#include "gateways/certificate_book.hpp"

#include <chrono>

namespace paybridge::gateways {

namespace {

std::int64_t steady_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

CertificateBook::CertificateBook(std::string account)
    : account_(std::move(account)), certificates_(std::make_shared<const std::vector<ProviderCertificate>>())
{
}

std::shared_ptr<const std::vector<ProviderCertificate>> CertificateBook::certificates() const
{
    std::lock_guard lock(mutex_);
    return certificates_;
}

void CertificateBook::replace(std::vector<ProviderCertificate> certificates)
{
    auto next = std::make_shared<const std::vector<ProviderCertificate>>(std::move(certificates));
    std::lock_guard lock(mutex_);
    certificates_.swap(next);
}

void CertificateBook::unknown_serial(const std::string& serial) const
{
    const std::int64_t now = steady_ms();
    std::int64_t last = last_hook_ms_.load();
    if ((last != 0 && now - last < 1000) || !last_hook_ms_.compare_exchange_strong(last, now)) {
        return;
    }
    UnknownSerialHook hook;
    {
        std::lock_guard lock(mutex_);
        hook = hook_;
    }
    if (hook) {
        hook(account_, serial);
    }
}

void CertificateBook::set_hook(UnknownSerialHook hook)
{
    std::lock_guard lock(mutex_);
    hook_ = std::move(hook);
}

std::shared_ptr<CertificateBook> CertificateBooks::book(const std::string& account)
{
    std::lock_guard lock(mutex_);
    std::shared_ptr<CertificateBook>& b = books_[account];
    if (!b) {
        b = std::make_shared<CertificateBook>(account);
        b->set_hook(hook_);
    }
    return b;
}

std::vector<std::shared_ptr<CertificateBook>> CertificateBooks::all() const
{
    std::lock_guard lock(mutex_);
    std::vector<std::shared_ptr<CertificateBook>> out;
    for (const auto& [account, b] : books_) {
        out.push_back(b);
    }
    return out;
}

void CertificateBooks::set_hook(const CertificateBook::UnknownSerialHook& hook)
{
    std::lock_guard lock(mutex_);
    hook_ = hook;
    for (const auto& [account, b] : books_) {
        b->set_hook(hook);
    }
}

}  // namespace paybridge::gateways
