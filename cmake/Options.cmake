# paybridge_options: the flags every paybridge target compiles with.
add_library(paybridge_options INTERFACE)
target_compile_features(paybridge_options INTERFACE cxx_std_20)
target_include_directories(paybridge_options INTERFACE ${PROJECT_SOURCE_DIR})
target_compile_options(paybridge_options INTERFACE -Wall -Wextra -Wpedantic -Wshadow
  -Wno-missing-field-initializers  # designated initialisers leave the rest defaulted on purpose
  $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)  # GCC 12 false positives inside libstdc++ (PR 105329)
target_compile_definitions(paybridge_options INTERFACE
  BOOST_ASIO_NO_DEPRECATED
  BOOST_ASIO_SEPARATE_COMPILATION
  BOOST_BEAST_SEPARATE_COMPILATION
  BOOST_ASIO_DISABLE_BOOST_COROUTINE
  PAYBRIDGE_VERSION="${PROJECT_VERSION}")
target_link_libraries(paybridge_options INTERFACE Boost::headers Threads::Threads)
if(PAYBRIDGE_WERROR)
  target_compile_options(paybridge_options INTERFACE -Werror)
endif()
if(PAYBRIDGE_SANITIZE)
  target_compile_options(paybridge_options INTERFACE -fsanitize=${PAYBRIDGE_SANITIZE} -fno-omit-frame-pointer
                                                     -fno-sanitize-recover=all)
  target_link_options(paybridge_options INTERFACE -fsanitize=${PAYBRIDGE_SANITIZE})
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # Only with sanitizer instrumentation does GCC 12 report these, all outside our logic: "maybe
    # uninitialized" inside std::function / std::regex and Beast's parser, and a "mismatched
    # new/delete" on Asio's coroutine frames (allocated and freed by the same class-specific
    # operators). The plain build keeps both warnings on and is warning-free.
    target_compile_options(paybridge_options INTERFACE -Wno-maybe-uninitialized -Wno-mismatched-new-delete)
  endif()
endif()
