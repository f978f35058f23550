# Every dependency comes from Debian 12 packages (see scripts/deps.sh).
find_package(Boost 1.81...<1.82 CONFIG REQUIRED COMPONENTS headers)
find_package(OpenSSL 3 REQUIRED)
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(hiredis REQUIRED IMPORTED_TARGET hiredis)
pkg_check_modules(systemd REQUIRED IMPORTED_TARGET libsystemd)
pkg_check_modules(expat REQUIRED IMPORTED_TARGET expat)
# paybridge_allocator: jemalloc for the server executables. Under glibc's malloc, malloc and free
# were 11 % of paybridged's CPU per notification (perf; request bodies and buffers are just above
# glibc's per-thread cache sizes, so they went through the locked arenas and consolidation); with
# jemalloc's thread caches a notification costs 7-12 % less CPU (bench/compare.sh). Sanitizer
# builds keep the sanitizer's allocator.
add_library(paybridge_allocator INTERFACE)
if(PAYBRIDGE_JEMALLOC AND NOT PAYBRIDGE_SANITIZE)
  pkg_check_modules(jemalloc REQUIRED IMPORTED_TARGET jemalloc)
  # Nothing calls jemalloc by name: keep the library even where the linker drops unused ones.
  target_link_options(paybridge_allocator INTERFACE "LINKER:--push-state,--no-as-needed")
  target_link_libraries(paybridge_allocator INTERFACE PkgConfig::jemalloc "-Wl,--pop-state")
endif()
find_package(RapidJSON CONFIG REQUIRED)
if(NOT TARGET RapidJSON::RapidJSON)
  add_library(RapidJSON::RapidJSON INTERFACE IMPORTED)
  # SYSTEM: RapidJSON 1.1 warns under C++20 (std::iterator).
  set_target_properties(RapidJSON::RapidJSON PROPERTIES
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${RAPIDJSON_INCLUDE_DIRS}"
    INTERFACE_INCLUDE_DIRECTORIES "${RAPIDJSON_INCLUDE_DIRS}"
    INTERFACE_COMPILE_DEFINITIONS "RAPIDJSON_HAS_STDSTRING=1")
endif()
if(PAYBRIDGE_BUILD_TESTS)
  find_package(doctest CONFIG REQUIRED)
endif()
