#pragma once

// Shared by the fuzz targets. Each target defines LLVMFuzzerTestOneInput; built with clang and
// -fsanitize=fuzzer (scripts/fuzz.sh) it is a libFuzzer binary, built normally it links
// replay_main.cpp and ctest runs it over its seed corpus (tests/fuzz/corpus/<target>) and every
// regression input kept there, under the sanitizers of the build.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace paybridge::fuzz {

/// A property of the code under test that the input broke: says which and aborts, so that
/// libFuzzer keeps the input as a crash and the corpus replay fails.
[[noreturn]] inline void property_failed(const char* what, const char* file, int line)
{
    std::fprintf(stderr, "fuzz property violated at %s:%d: %s\n", file, line, what);
    std::abort();
}

/// Set by a target when the gateway accepted the input it was last given. The corpus replay
/// requires it for every input whose file name starts with "accept-", so the seeds prove that the
/// harness reaches the accepting path (a mis-signing harness would otherwise fuzz only refusals).
inline bool accepted = false;

inline std::string_view as_text(const std::uint8_t* data, std::size_t size)
{
    return {reinterpret_cast<const char*>(data), size};
}

}  // namespace paybridge::fuzz

#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            ::paybridge::fuzz::property_failed(#cond, __FILE__, __LINE__);     \
        }                                                                      \
    } while (false)
