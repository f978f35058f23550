#!/usr/bin/env bash
# Configures and builds one build folder.
#   scripts/build.sh DIR [cmake -D arguments...]     (TARGETS="a b" builds only those targets)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1; shift
# One build at a time per folder (the run and test commands both use build/): a second waits.
mkdir -p "$dir"
exec 9>"$dir/.paybridge-build.lock"
if ! flock -n 9; then
  echo "paybridge: waiting for another build in $dir to finish" >&2
  flock 9
fi
# A job per core, but at most one per 1 GB of available memory (an ASan compile of a Beast-heavy
# file takes up to that; nproc counts the host's cores under a container's CPU quota).
jobs=${PAYBRIDGE_JOBS:-$(nproc)}
mem_kb=$(sed -n 's/^MemAvailable: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
if [[ -z "${PAYBRIDGE_JOBS:-}" && -n "$mem_kb" ]] && ((mem_kb / 1000000 < jobs)); then
  jobs=$((mem_kb / 1000000 > 0 ? mem_kb / 1000000 : 1))
fi
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
if [[ -n "${TARGETS:-}" ]]; then
  # shellcheck disable=SC2086
  cmake --build "$dir" -j"$jobs" --target $TARGETS
else
  cmake --build "$dir" -j"$jobs"
fi
