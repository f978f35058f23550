#include "core/async.hpp"

#include "core/log.hpp"

namespace paybridge {

void LogFailure::operator()(std::exception_ptr e) const noexcept
{
    if (!e) {
        return;
    }
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        log::error(event_, {{"what", ex.what()}});
    } catch (...) {
        log::error(event_, {{"what", "an exception that is not a std::exception"}});
    }
}

}  // namespace paybridge
