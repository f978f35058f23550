#!/usr/bin/env bash
# Two paybridged builds side by side, in one run: each gets its own redis-server, bills and
# pre-signed notifications, and they are loaded in alternating rounds with the same client, so a
# machine whose speed drifts (shared VMs do, by 2x within an hour) affects both alike.
#   bench/compare.sh OLD_PAYBRIDGED NEW_PAYBRIDGED      (ROUNDS=3 SECONDS_PER_ROUND=3 COUNT=200000
#                                                        KIND=alipay|wechat|dup to change)
# WORKERS=2 sets both builds' event-loop threads; OLD_WORKERS / NEW_WORKERS set one each, so the same
# binary twice with OLD_WORKERS=1 NEW_WORKERS=2 compares thread counts.
# An older build: git worktree add /tmp/old REV && (cd /tmp/old && TARGETS=paybridged scripts/build.sh build)
# Prints, per round and build: notifications/s, p50/p99, and CPU microseconds per notification of
# paybridged, of its redis-server and of the load generator (wrk), and paybridged's system calls per
# notification (with perf).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "$1"); new=$(realpath "$2")
ROUNDS=${ROUNDS:-3}; SECS=${SECONDS_PER_ROUND:-3}; COUNT=${COUNT:-200000}; KIND=${KIND:-alipay}; WORKERS=${WORKERS:-2}
declare -A workers=([old]=${OLD_WORKERS:-$WORKERS} [new]=${NEW_WORKERS:-$WORKERS})

scripts/deps.sh bench
TARGETS="paybridge_bench_gen" scripts/build.sh build -DPAYBRIDGE_BUILD_BENCH=ON >/dev/null

work=$(mktemp -d /tmp/paybridge-compare.XXXXXX)
pick_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null \
  || shuf -i 20000-60000 -n 1; }
declare -A rport hport dpid
cleanup() {
  for n in old new; do
    [[ -n "${dpid[$n]:-}" ]] && kill "${dpid[$n]}" 2>/dev/null || true
    [[ -n "${rport[$n]:-}" ]] && redis-cli -p "${rport[$n]}" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

setup() { # name binary
  local n=$1 bin=$2 w=$work/$1
  mkdir -p "$w"; rport[$n]=$(pick_port); hport[$n]=$(pick_port)
  redis-server --bind 127.0.0.1 --port "${rport[$n]}" --save "" --appendonly no --daemonize yes \
    --dir "$w" --logfile "$w/redis.log" >/dev/null
  for _ in $(seq 50); do redis-cli -p "${rport[$n]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  build/bench/paybridge_bench_gen "$w" "$COUNT" "${rport[$n]}" "${hport[$n]}" "${workers[$n]}" >"$w/token"
  "$bin" --config "$w/paybridge.json" 2>"$w/daemon.log" >/dev/null &
  dpid[$n]=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:${hport[$n]}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  wrk -t1 -c64 -d"$(( COUNT / 5000 + 10 ))s" -s bench/wrk_lines.lua "http://127.0.0.1:${hport[$n]}/v1/bills" -- \
    "$w/bills.txt" bill "$(cat "$w/token")" >/dev/null
  # One slice of distinct notifications per round, so no round repeats another's.
  (cd "$w" && split -l $(( COUNT / ROUNDS )) -d alipay.txt alipay. && split -l $(( COUNT / ROUNDS )) -d wechat.txt wechat.)
}
echo "preparing both (bills, notifications)..." >&2
setup old "$old"; setup new "$new"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
round() { # name round
  local n=$1 r; r=$(printf '%02d' "$2"); local w=$work/$1 port=${hport[$1]}
  local rpid; rpid=$(pgrep -f "redis-server 127.0.0.1:${rport[$n]}")
  local url="http://127.0.0.1:$port/notify/alipay" file="$w/alipay.$r" kind=alipay
  case $KIND in
    wechat) url="http://127.0.0.1:$port/notify/wechatpay/1900000001"; file="$w/wechat.$r"; kind=wechat ;;
    dup) kind=same-alipay ;;
  esac
  local p0 r0 p1 r1 out n
  p0=$(cpu "${dpid[$n]}"); r0=$(cpu "$rpid")
  # wrk's own CPU (user + system, from bash's `time`), so the three shares of the two cores add up.
  local TIMEFORMAT='%U %S' wt sc=- spid=
  # paybridged's system calls (a counting tracepoint: cheap), where perf is installed and allowed.
  if command -v perf >/dev/null; then
    perf stat -x, -e raw_syscalls:sys_enter -p "${dpid[$n]}" -o "$w/perf.out" 2>/dev/null & spid=$!
  fi
  wt=$( { time wrk -t1 -c64 -d"${SECS}s" --latency -s bench/wrk_lines.lua "$url" -- "$file" "$kind" "$(cat "$w/token")" \
        >"$w/wrk.out"; } 2>&1 )
  out=$(grep '^RESULT' "$w/wrk.out")
  if [[ -n $spid ]]; then kill -INT "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true; fi
  p1=$(cpu "${dpid[$n]}"); r1=$(cpu "$rpid")
  n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")
  local tick; tick=$(getconf CLK_TCK)
  if [[ -n $spid ]]; then
    sc=$(awk -F, -v n="$n" '/raw_syscalls:sys_enter/ && $1 ~ /^[0-9]+$/ { printf "%.2f", $1 / n }' "$w/perf.out" 2>/dev/null)
    [[ -n $sc ]] || sc=-
  fi
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" "$n" "$(sed -n 's/.*rps=\([0-9]*\).*/\1/p' <<<"$out")" \
    "$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")" "$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")" \
    "$(( (p1 - p0) * 1000000 / tick / n ))" "$(( (r1 - r0) * 1000000 / tick / n ))" \
    "$(awk -v t="$wt" -v n="$n" 'BEGIN { split(t, a, " "); printf "%d", (a[1] + a[2]) * 1000000 / n }')" "$sc"
}
declare -A rows
for r in $(seq 0 $(( ROUNDS - 1 ))); do
  for n in old new; do rows[$n]+="$(round "$n" "$r")"$'\n'; done
done
for n in old new; do
  bin=$old; [[ $n == new ]] && bin=$new
  echo; echo "**$n** ($bin, workers=${workers[$n]}, $KIND, ${SECS}s rounds, alternating):"; echo
  echo "| round | requests | requests/s | p50 ms | p99 ms | paybridged CPU µs/request | redis CPU µs/request | wrk CPU µs/request | paybridged syscalls/request |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s' "${rows[$n]}"
done
echo
echo "A round whose request count equals its slice ($(( COUNT / ROUNDS )) lines) ran out of notifications: raise COUNT."
