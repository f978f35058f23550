#pragma once

// What every PaymentEvent a gateway hands on must satisfy, whatever the verified input was: the
// store and the CRM rely on it (ids present, amounts in range, text that is UTF-8, times that
// parse). RedisBillStore::apply refuses an event without a bill unless it is of kind none.

#include "core/money.hpp"
#include "core/payment_event.hpp"
#include "core/time.hpp"
#include "gateways/charset.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <string_view>

namespace paybridge::fuzz {

inline bool is_utf8(std::string_view text)
{
    return gateways::to_utf8(text, gateways::Charset::utf8).has_value();
}

inline void check_event(const PaymentEvent& e, std::string_view account)
{
    FUZZ_CHECK(e.account == account);
    // An event that moves nothing (a failed payment, a status we do not act on) may name no bill:
    // the store acknowledges it as ignored. Every other kind names its bill and notification.
    FUZZ_CHECK(e.kind == EventKind::none || !e.bill_id.empty());
    FUZZ_CHECK(e.kind == EventKind::none || !e.notification_id.empty());
    for (std::string_view text : {std::string_view(e.provider), std::string_view(e.channel),
                                  std::string_view(e.notification_id), std::string_view(e.bill_id),
                                  std::string_view(e.provider_txn_id), std::string_view(e.currency),
                                  std::string_view(e.refund_id), std::string_view(e.provider_status)}) {
        FUZZ_CHECK(is_utf8(text));
    }
    FUZZ_CHECK(e.total_fen >= -1 && e.total_fen <= kMaxAmountFen);
    FUZZ_CHECK(e.refund_fen >= 0 && e.refund_fen <= kMaxAmountFen);
    switch (e.kind) {
    case EventKind::payment:
        FUZZ_CHECK(e.total_fen >= 0);
        FUZZ_CHECK(!e.provider_txn_id.empty());
        break;
    case EventKind::refund:
        // A WeChat refund of 0 fen passes (Alipay's gateway refuses one): the store ignores a
        // refund that adds nothing (bill.lua apply_refund), which is the right answer to it.
        FUZZ_CHECK(!e.refund_id.empty());
        break;
    default:
        break;
    }
    for (std::string_view time : {std::string_view(e.occurred_at), std::string_view(e.paid_at)}) {
        FUZZ_CHECK(time.empty() || parse_rfc3339(time).has_value());
    }
}

}  // namespace paybridge::fuzz
