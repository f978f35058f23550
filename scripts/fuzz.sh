#!/usr/bin/env bash
# Fuzzes the provider-input parsers with libFuzzer (clang, ASan + UBSan), each target for a while,
# starting from its corpus in tests/fuzz/corpus/<target>. New coverage is kept in
# build-fuzz/corpus/<target>; a crash or violated property leaves the input in build-fuzz/crashes
# and makes the script fail: copy it into tests/fuzz/corpus/<target> as a regression input (the
# ordinary test run replays every file there) and fix the code.
#   scripts/fuzz.sh [SECONDS per target, default 60] [target...]   (targets: alipay wechat_v3 wechat_v2 text service query)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh fuzz

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then targets=(alipay wechat_v3 wechat_v2 text service query); fi

CC=clang CXX=clang++ TARGETS="${targets[*]/#/fuzz_}" scripts/build.sh build-fuzz \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAYBRIDGE_BUILD_BENCH=OFF \
  -DPAYBRIDGE_JEMALLOC=OFF -DPAYBRIDGE_FUZZ=ON -DPAYBRIDGE_SANITIZE=address,undefined,fuzzer-no-link

mkdir -p build-fuzz/crashes
status=0
for t in "${targets[@]}"; do
  corpus=build-fuzz/corpus/$t
  mkdir -p "$corpus"
  echo "== fuzz_$t for ${seconds}s" >&2
  # Our own log lines (warnings about refused notifications) would drown libFuzzer's output.
  if ! UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "build-fuzz/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/crashes/$t-" "$corpus" "tests/fuzz/corpus/$t" 2>"build-fuzz/fuzz_$t.log"; then
    echo "fuzz_$t FAILED: see build-fuzz/fuzz_$t.log and build-fuzz/crashes/" >&2
    grep -E "ERROR|property violated|SUMMARY" "build-fuzz/fuzz_$t.log" | head -5 >&2 || true
    status=1
  else
    grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" "build-fuzz/fuzz_$t.log" | tail -2 >&2 || true
  fi
done
exit $status
