#!/usr/bin/env bash
# The benchmark: paybridged with a real Redis, loaded by wrk on the same machine, beside the
# ceilings measured in the same run with the same client: a bare Beast server answering
# "success", and OpenSSL's RSA-2048 verification rate. Prints a Markdown table.
#   bench/run.sh            (COUNT=200000 CONNS=64 DURATION=5 WORKERS=1 ALT_WORKERS=2 CRM_WORKERS=2
#                            to change)
# paybridged runs with WORKERS event-loop threads, and once more (Alipay distinct) with ALT_WORKERS:
# on two cores shared with Redis and wrk, one thread beats two (docs/performance.md, round 4). The
# bare server runs with both counts and the faster one is the 100 % line. The CRM delivery benchmark
# runs paybridged with CRM_WORKERS (the default, one per core, beside the dispatcher's thread).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-200000}
CONNS=${CONNS:-64}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-1}
ALT_WORKERS=${ALT_WORKERS:-2}
CRM_WORKERS=${CRM_WORKERS:-2}
WRK_THREADS=${WRK_THREADS:-1}

scripts/deps.sh run
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
TARGETS="paybridged paybridge_bench_gen paybridge_bare_server paybridge_idle_conns paybridge_crm_bench" scripts/build.sh build -DPAYBRIDGE_BUILD_BENCH=ON >/dev/null

work=$(mktemp -d /tmp/paybridge-bench.XXXXXX)
pick_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null \
  || shuf -i 20000-60000 -n 1; }
redis_port=$(pick_port); port=$(pick_port); bare_port=$(pick_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize yes \
  --dir "$work" --logfile "$work/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "generating $COUNT Alipay and $COUNT WeChat Pay notifications (pre-signed)..." >&2
token=$(build/bench/paybridge_bench_gen "$work" "$COUNT" "$redis_port" "$port" "$WORKERS")
# Distinct notifications are never sent twice: the first 60 % for the main runs, the rest for ALT_WORKERS.
main_lines=$(( COUNT * 6 / 10 ))
head -n "$main_lines" "$work/alipay.txt" >"$work/alipay.main"
tail -n +"$(( main_lines + 1 ))" "$work/alipay.txt" >"$work/alipay.alt"
sed "s/\"workers\": *[0-9]*/\"workers\": $ALT_WORKERS/" "$work/paybridge.json" >"$work/paybridge.alt.json"
ulimit -n 65536 || true
start_daemon() { # CONFIG
  build/paybridged --config "$1" 2>>"$work/daemon.log" &
  daemon=$!; pids+=("$daemon")
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}
start_daemon "$work/paybridge.json"

run_wrk() { # URL FILE KIND [extra...]
  local url=$1 file=$2 kind=$3; shift 3
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s bench/wrk_lines.lua "$url" -- "$file" "$kind" "$token" \
    | grep '^RESULT'
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "registering bills..." >&2
wrk -t1 -c64 -d"$(( COUNT / 10000 + 10 ))s" -s bench/wrk_lines.lua "http://127.0.0.1:$port/v1/bills" -- \
  "$work/bills.txt" bill "$token" >/dev/null

redis-cli -p "$redis_port" config resetstat >/dev/null
echo "alipay distinct..." >&2
alipay=$(run_wrk "http://127.0.0.1:$port/notify/alipay" "$work/alipay.main" alipay)
echo "alipay duplicates..." >&2
dups=$(run_wrk "http://127.0.0.1:$port/notify/alipay" "$work/alipay.main" same-alipay)
echo "wechat pay v3 distinct..." >&2
wechat=$(run_wrk "http://127.0.0.1:$port/notify/wechatpay/1900000001" "$work/wechat.txt" wechat)

echo "RSS with 10000 idle connections..." >&2
rss_before=$(awk '/VmRSS/{print $2}' "/proc/$daemon/status")
build/bench/paybridge_idle_conns "$port" 10000 6 >"$work/idle.log" &
idle=$!
sleep 4
rss_idle=$(awk '/VmRSS/{print $2}' "/proc/$daemon/status")
open_idle=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^paybridge_open_connections/{print $2}')
wait "$idle" || true
evalsha_us=$(redis-cli -p "$redis_port" info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=[0-9]*,usec_per_call=\([0-9.]*\).*/\2/p')
kill "$daemon"; wait "$daemon" 2>/dev/null || true

echo "alipay distinct, workers=$ALT_WORKERS..." >&2
start_daemon "$work/paybridge.alt.json"
alt=$(run_wrk "http://127.0.0.1:$port/notify/alipay" "$work/alipay.alt" alipay)
kill "$daemon"; wait "$daemon" 2>/dev/null || true

bare_run() { # WORKERS
  build/bench/paybridge_bare_server "$bare_port" "$1" &
  local bare_pid=$!
  sleep 0.5
  # The same Alipay request bytes, repeated: the bare server answers every one alike, and a file of
  # COUNT lines would cap its rate at COUNT / DURATION.
  run_wrk "http://127.0.0.1:$bare_port/notify/alipay" "$work/alipay.main" same-alipay
  kill "$bare_pid"; wait "$bare_pid" 2>/dev/null || true
}
echo "bare server..." >&2
bare1=$(bare_run "$WORKERS")
bare2=$(bare_run "$ALT_WORKERS")
# The faster of the two is the 100 % line.
bare=$bare1
if (( $(field rps "$bare2") > $(field rps "$bare1") )); then bare=$bare2; fi

echo "openssl speed..." >&2
rsa1=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $7}')
rsa2=$(openssl speed -multi 2 -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $7}')

ar=$(field rps "$alipay"); br=$(field rps "$bare"); wr=$(field rps "$wechat"); dr=$(field rps "$dups")
xr=$(field rps "$alt")
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.0f %%", 100*a/b; else print "n/a" }'; }
cat <<TABLE

Machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'); wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s on the same machine; paybridged workers=$WORKERS unless a row says otherwise; Redis 7 on loopback, no persistence.

| run | requests/s | p50 ms | p99 ms | vs bare HTTP |
|---|---:|---:|---:|---:|
| bare Beast server answering \`success\` (workers=$WORKERS / $ALT_WORKERS: $(field rps "$bare1") / $(field rps "$bare2")) | $br | $(field p50_ms "$bare") | $(field p99_ms "$bare") | 100 % |
| Alipay, distinct notifications (verify RSA2 + Lua apply) | $ar | $(field p50_ms "$alipay") | $(field p99_ms "$alipay") | $(pct "$ar" "$br") |
| Alipay, distinct, paybridged workers=$ALT_WORKERS | $xr | $(field p50_ms "$alt") | $(field p99_ms "$alt") | $(pct "$xr" "$br") |
| Alipay, pure duplicates | $dr | $(field p50_ms "$dups") | $(field p99_ms "$dups") | $(pct "$dr" "$br") |
| WeChat Pay v3, distinct (verify + AES-GCM + Lua apply) | $wr | $(field p50_ms "$wechat") | $(field p99_ms "$wechat") | $(pct "$wr" "$br") |

| ceiling | value |
|---|---:|
| \`openssl speed rsa2048\` verify/s, 1 core | $rsa1 |
| \`openssl speed -multi 2 rsa2048\` verify/s, 2 processes | $rsa2 |
| WeChat v3 rate / Alipay rate | $(pct "$wr" "$ar") |
| Redis time per EVALSHA (bill script), from INFO commandstats | ${evalsha_us} µs |
| paybridged RSS after the runs / with 10,000 idle connections | $((rss_before / 1024)) MB / $((rss_idle / 1024)) MB ($open_idle open) |

Requests per run (a distinct run that sent all its lines ran out: alipay $main_lines, alipay workers=$ALT_WORKERS $(( COUNT - main_lines )), wechat $COUNT): alipay $(field requests "$alipay"), alipay workers=$ALT_WORKERS $(field requests "$alt"), wechat $(field requests "$wechat"); non-2xx: alipay $(field non2xx "$alipay"), alipay workers=$ALT_WORKERS $(field non2xx "$alt"), wechat $(field non2xx "$wechat"), bare $(field non2xx "$bare1") / $(field non2xx "$bare2").
TABLE

# CRM delivery (bench/crm_bench.cpp): its own redis-server, receiver and paybridged; prints its own table.
echo "crm delivery..." >&2
build/bench/paybridge_crm_bench --workers "$CRM_WORKERS" --connections "$CONNS" 2>"$work/crm_bench.log" \
  || { echo; echo "CRM delivery benchmark failed:"; tail -n 5 "$work/crm_bench.log"; }
