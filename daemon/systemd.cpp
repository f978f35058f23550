#include "daemon/systemd.hpp"

#include <systemd/sd-daemon.h>

namespace paybridge::daemon::systemd {

void notify_ready() { sd_notify(0, "READY=1\nSTATUS=serving"); }
void notify_reloading() { sd_notify(0, "RELOADING=1\nSTATUS=reloading configuration"); }
void notify_stopping() { sd_notify(0, "STOPPING=1\nSTATUS=finishing in-flight requests"); }
void notify_watchdog() { sd_notify(0, "WATCHDOG=1"); }

std::chrono::milliseconds watchdog_interval()
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0) {
        return std::chrono::milliseconds(usec / 1000);
    }
    return std::chrono::milliseconds(0);
}

}  // namespace paybridge::daemon::systemd
