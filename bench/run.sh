#!/usr/bin/env bash
# The benchmark: paybridged with a real Redis, loaded by wrk on the same machine, beside the
# ceilings measured in the same run with the same client: a bare Beast server answering
# "success", and OpenSSL's RSA-2048 verification rate. Prints a Markdown table.
#   bench/run.sh            (COUNT=200000 CONNS=64 DURATION=5 WORKERS=2 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-200000}
CONNS=${CONNS:-64}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-2}
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
ulimit -n 65536 || true
build/paybridged --config "$work/paybridge.json" 2>"$work/daemon.log" &
daemon=$!; pids+=("$daemon")
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

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
alipay=$(run_wrk "http://127.0.0.1:$port/notify/alipay" "$work/alipay.txt" alipay)
echo "alipay duplicates..." >&2
dups=$(run_wrk "http://127.0.0.1:$port/notify/alipay" "$work/alipay.txt" same-alipay)
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

echo "bare server..." >&2
build/bench/paybridge_bare_server "$bare_port" "$WORKERS" &
pids+=($!)
sleep 0.5
# The same Alipay request bytes, repeated: the bare server answers every one alike, and a file of
# COUNT lines would cap its rate at COUNT / DURATION.
bare=$(run_wrk "http://127.0.0.1:$bare_port/notify/alipay" "$work/alipay.txt" same-alipay)

echo "openssl speed..." >&2
rsa1=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $7}')
rsa2=$(openssl speed -multi 2 -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $7}')

ar=$(field rps "$alipay"); br=$(field rps "$bare"); wr=$(field rps "$wechat"); dr=$(field rps "$dups")
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.0f %%", 100*a/b; else print "n/a" }'; }
cat <<TABLE

Machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'); wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s on the same machine; paybridged workers=$WORKERS; Redis 7 on loopback, no persistence.

| run | requests/s | p50 ms | p99 ms | vs bare HTTP |
|---|---:|---:|---:|---:|
| bare Beast server answering \`success\` | $br | $(field p50_ms "$bare") | $(field p99_ms "$bare") | 100 % |
| Alipay, distinct notifications (verify RSA2 + Lua apply) | $ar | $(field p50_ms "$alipay") | $(field p99_ms "$alipay") | $(pct "$ar" "$br") |
| Alipay, pure duplicates | $dr | $(field p50_ms "$dups") | $(field p99_ms "$dups") | $(pct "$dr" "$br") |
| WeChat Pay v3, distinct (verify + AES-GCM + Lua apply) | $wr | $(field p50_ms "$wechat") | $(field p99_ms "$wechat") | $(pct "$wr" "$br") |

| ceiling | value |
|---|---:|
| \`openssl speed rsa2048\` verify/s, 1 core | $rsa1 |
| \`openssl speed -multi 2 rsa2048\` verify/s, 2 processes | $rsa2 |
| WeChat v3 rate / Alipay rate | $(pct "$wr" "$ar") |
| Redis time per EVALSHA (bill script), from INFO commandstats | ${evalsha_us} µs |
| paybridged RSS after the runs / with 10,000 idle connections | $((rss_before / 1024)) MB / $((rss_idle / 1024)) MB ($open_idle open) |

Requests per run (distinct runs must stay under COUNT=$COUNT): alipay $(field requests "$alipay"), wechat $(field requests "$wechat"); non-2xx: alipay $(field non2xx "$alipay"), wechat $(field non2xx "$wechat"), bare $(field non2xx "$bare").
TABLE

# CRM delivery (bench/crm_bench.cpp): its own redis-server, receiver and paybridged; prints its own table.
echo "crm delivery..." >&2
build/bench/paybridge_crm_bench --workers "$WORKERS" --connections "$CONNS" 2>"$work/crm_bench.log" \
  || { echo; echo "CRM delivery benchmark failed:"; tail -n 5 "$work/crm_bench.log"; }
