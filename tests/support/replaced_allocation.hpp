#pragma once

// For a test binary that replaces the global `void* operator new(std::size_t)` (to make chosen
// allocations fail) with one that allocates with malloc: every other form of new and delete, in
// terms of it and of free, so that whatever allocates with one form and frees with another stays
// paired (AddressSanitizer checks that new and delete match). Include it from exactly one file of
// the binary, the one that defines that operator new.

#include <cstdlib>
#include <new>

// g++ inlines the replacements into the calls it sees and then reports free() on memory from
// "operator new": here both are malloc/free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept
{
    try {
        return ::operator new(size);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return ::operator new(size, std::nothrow); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
