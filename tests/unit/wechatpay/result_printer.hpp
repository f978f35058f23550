#pragma once

// Lets doctest print a Result in CHECK/REQUIRE messages ("error: bad_signature") whatever its
// value type: boost's own operator<< needs a printable value.

#include <boost/system/result.hpp>
#include <doctest/doctest.h>

#include <string>

namespace doctest {

template <class T, class E>
struct StringMaker<boost::system::result<T, E>> {
    static String convert(const boost::system::result<T, E>& r)
    {
        if (r) {
            return "value";
        }
        const std::string text = "error: " + r.error().message();
        return String(text.c_str());
    }
};

}  // namespace doctest
