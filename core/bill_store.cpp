#include "core/bill_store.hpp"

namespace paybridge {

std::string_view to_string(ApplyOutcome outcome) noexcept
{
    switch (outcome) {
        case ApplyOutcome::applied: return "applied";
        case ApplyOutcome::duplicate: return "duplicate";
        case ApplyOutcome::anomaly: return "anomaly";
        case ApplyOutcome::orphaned: return "orphaned";
        case ApplyOutcome::ignored: return "ignored";
    }
    return "unknown";
}

}  // namespace paybridge
