#!/usr/bin/env bash
# Configures and builds one build folder.
#   scripts/build.sh DIR [cmake -D arguments...]     (TARGETS="a b" builds only those targets)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1; shift
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
if [[ -n "${TARGETS:-}" ]]; then
  # shellcheck disable=SC2086
  cmake --build "$dir" -j"$(nproc)" --target $TARGETS
else
  cmake --build "$dir" -j"$(nproc)"
fi
