#pragma once

// A BillStore for the unit tests of what stands in front of the store (the service's routing and
// answers, the HTTP server): apply() answers `answer` and counts its calls, or throws when told
// to (a bug in the store); ping() succeeds; every other operation fails with errc::internal.
// Every Redis behaviour is tested against a real redis-server elsewhere (tests/integration/store).

#include "core/bill_store.hpp"
#include "core/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <stdexcept>

namespace paybridge::test {

class FakeBillStore final : public BillStore {
public:
    template <class T>
    using awaitable = boost::asio::awaitable<T>;

    bool throw_on_apply{false};
    int applied{0};
    ApplyResult answer{.outcome = ApplyOutcome::applied, .anomaly = "", .status = "PAID"};

    awaitable<Result<ApplyResult>> apply(PaymentEvent) override
    {
        if (throw_on_apply) {
            throw std::runtime_error("a bug in the store");
        }
        ++applied;
        ApplyResult r = answer;
        co_return r;
    }
    awaitable<Result<RegisterResult>> register_bill(NewBill) override { co_return make_error_code(errc::internal); }
    awaitable<Result<std::optional<BillView>>> get_bill(std::string) override
    {
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<Page>> list_bills(BillFilter) override { co_return make_error_code(errc::internal); }
    awaitable<Result<Page>> list_events(std::string, std::size_t) override { co_return make_error_code(errc::internal); }
    awaitable<Result<Page>> list_anomalies(std::string, std::size_t) override
    {
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<std::string>> summary(std::int64_t, std::int64_t) override
    {
        co_return make_error_code(errc::internal);
    }
    awaitable<Result<void>> ping() override { co_return Result<void>{}; }
};

}  // namespace paybridge::test
