#pragma once

#include <chrono>

namespace paybridge::daemon::systemd {

/// sd_notify wrappers; each is a no-op when NOTIFY_SOCKET is not set.
void notify_ready();
void notify_reloading();
void notify_stopping();
void notify_watchdog();

/// The watchdog period systemd asked for (WATCHDOG_USEC), or zero when disabled.
std::chrono::milliseconds watchdog_interval();

}  // namespace paybridge::daemon::systemd
