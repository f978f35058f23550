#pragma once

// The bill state-machine Lua script (store/bill.lua), embedded at build time.

#include <string_view>

namespace paybridge::store {

/// The text of store/bill.lua: KEYS and ARGV are documented at its top.
std::string_view bill_script() noexcept;

}  // namespace paybridge::store
