#pragma once

#include <boost/system/result.hpp>

namespace paybridge {

/// A value or an error code. Failures that input or the environment can cause are values.
template <class T>
using Result = boost::system::result<T>;

}  // namespace paybridge
