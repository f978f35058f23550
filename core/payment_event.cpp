#include "core/payment_event.hpp"

namespace paybridge {

std::string_view to_string(EventKind kind) noexcept
{
    switch (kind) {
        case EventKind::none: return "none";
        case EventKind::payment: return "payment";
        case EventKind::refund: return "refund";
        case EventKind::close: return "close";
        case EventKind::refund_closed: return "refund_closed";
        case EventKind::refund_abnormal: return "refund_abnormal";
        case EventKind::unusable: return "unusable";
    }
    return "none";
}

}  // namespace paybridge
