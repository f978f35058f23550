#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test twice: a
# Release build, then an AddressSanitizer + UndefinedBehaviorSanitizer build. Tests start every
# server they need (redis-server, HTTP receivers, the daemon) on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test

echo "== Release build" >&2
scripts/build.sh build -DPAYBRIDGE_BUILD_TESTS=ON -DPAYBRIDGE_WERROR=ON -DPAYBRIDGE_BUILD_BENCH=OFF
(cd build && ctest --output-on-failure --timeout 600 -j2)

echo "== ASan + UBSan build" >&2
scripts/build.sh build-asan -DPAYBRIDGE_BUILD_TESTS=ON -DPAYBRIDGE_WERROR=ON -DPAYBRIDGE_SANITIZE=address,undefined -DPAYBRIDGE_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure --timeout 900 -j2)
