#!/usr/bin/env bash
# The benchmark: paybridged with a real Redis, loaded by wrk on the same machine, beside the
# ceilings measured in the same run with the same client: a bare Beast server answering
# "success", and OpenSSL's RSA-2048 verification rate. Prints Markdown tables.
#   bench/run.sh    (COUNT=420000 ROUNDS=3 DURATION=3 CONNS=64 WORKERS=1 ALT_WORKERS=2 CRM_WORKERS=2
#                    CRM_ROUNDS=3 CRM_NOTIFICATIONS=16000
#                    to change)
# The machine's speed drifts (a shared VM: up to 2x within an hour), so every kind of load runs in
# each of ROUNDS rounds, one after another, and the table gives the median round, the range, and
# the median of the per-round ratios: a ratio compares two loads measured seconds apart.
# Two paybridged instances share the Redis (as several instances would in production): one with
# WORKERS event-loop threads, one with ALT_WORKERS, for the Alipay row with ALT_WORKERS (on two
# cores shared with Redis and wrk, one thread does better than two: docs/performance.md, round 4).
# The bare server also runs with both counts; the faster of the two in each round is the 100 % line.
# The CRM delivery benchmark runs paybridged with CRM_WORKERS (the default, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-420000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
ALT_WORKERS=${ALT_WORKERS:-2}
CRM_WORKERS=${CRM_WORKERS:-2}
# The "with deliveries running" ratio: alternating rounds without / with CRM delivery, so the machine's
# drift hits both alike (one short round each way swung 66-102 % within minutes).
CRM_ROUNDS=${CRM_ROUNDS:-3}
CRM_NOTIFICATIONS=${CRM_NOTIFICATIONS:-16000}
WRK_THREADS=${WRK_THREADS:-1}

scripts/deps.sh bench
TARGETS="paybridged paybridge_bench_gen paybridge_bare_server paybridge_idle_conns paybridge_crm_bench" scripts/build.sh build -DPAYBRIDGE_BUILD_BENCH=ON >/dev/null

work=$(mktemp -d /tmp/paybridge-bench.XXXXXX)
pick_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null \
  || shuf -i 20000-60000 -n 1; }
redis_port=$(pick_port); port=$(pick_port); alt_port=$(pick_port); bare_port=$(pick_port); bare_alt_port=$(pick_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 || true

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize yes \
  --dir "$work" --logfile "$work/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "generating $COUNT Alipay and $COUNT WeChat Pay notifications (pre-signed)..." >&2
token=$(build/bench/paybridge_bench_gen "$work" "$COUNT" "$redis_port" "$port" "$WORKERS")
# No distinct notification is sent twice: one slice per round and instance.
alipay_slice=$(( COUNT / (2 * ROUNDS) )); wechat_slice=$(( COUNT / ROUNDS ))
(cd "$work" && split -l "$alipay_slice" -d -a 2 alipay.txt alipay. && split -l "$wechat_slice" -d -a 2 wechat.txt wechat.)
head -n 1 "$work/alipay.txt" >"$work/alipay.one"
sed -e "s/\"workers\": *[0-9]*/\"workers\": $ALT_WORKERS/" -e "s/127\.0\.0\.1:$port\"/127.0.0.1:$alt_port\"/" \
  "$work/paybridge.json" >"$work/paybridge.alt.json"

start_daemon() { # CONFIG PORT -> sets $started
  build/paybridged --config "$1" 2>>"$work/daemon.log" &
  started=$!; pids+=("$started")
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null || { echo "paybridged on $2 did not become ready" >&2; exit 1; }
}
start_daemon "$work/paybridge.json" "$port"; daemon=$started
start_daemon "$work/paybridge.alt.json" "$alt_port"; alt_daemon=$started
build/bench/paybridge_bare_server "$bare_port" "$WORKERS" & pids+=($!)
build/bench/paybridge_bare_server "$bare_alt_port" "$ALT_WORKERS" & pids+=($!)
sleep 0.5

echo "registering bills..." >&2
wrk -t1 -c64 -d"$(( COUNT / 10000 + 10 ))s" -s bench/wrk_lines.lua "http://127.0.0.1:$port/v1/bills" -- \
  "$work/bills.txt" bill "$token" >/dev/null

run_wrk() { # NAME URL FILE KIND: appends wrk's RESULT line to $work/NAME.results
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s bench/wrk_lines.lua "$2" -- "$3" "$4" "$token" \
    | grep '^RESULT' >>"$work/$1.results"
}
redis-cli -p "$redis_port" config resetstat >/dev/null
for (( r = 0; r < ROUNDS; r++ )); do
  echo "round $(( r + 1 ))/$ROUNDS..." >&2
  a=$(printf '%02d' $(( 2 * r ))); b=$(printf '%02d' $(( 2 * r + 1 ))); w=$(printf '%02d' "$r")
  run_wrk alipay "http://127.0.0.1:$port/notify/alipay" "$work/alipay.$a" alipay
  run_wrk alt "http://127.0.0.1:$alt_port/notify/alipay" "$work/alipay.$b" alipay
  run_wrk dups "http://127.0.0.1:$port/notify/alipay" "$work/alipay.one" same-alipay
  run_wrk wechat "http://127.0.0.1:$port/notify/wechatpay/1900000001" "$work/wechat.$w" wechat
  # The bare server answers the same Alipay request bytes over and over.
  run_wrk bare1 "http://127.0.0.1:$bare_port/notify/alipay" "$work/alipay.one" same-alipay
  run_wrk bare2 "http://127.0.0.1:$bare_alt_port/notify/alipay" "$work/alipay.one" same-alipay
done
evalsha_us=$(redis-cli -p "$redis_port" info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=[0-9]*,usec_per_call=\([0-9.]*\).*/\2/p')
kill "$alt_daemon"; wait "$alt_daemon" 2>/dev/null || true

echo "RSS with 10000 idle connections..." >&2
rss_before=$(awk '/VmRSS/{print $2}' "/proc/$daemon/status")
build/bench/paybridge_idle_conns "$port" 10000 6 >"$work/idle.log" &
idle=$!
sleep 4
rss_idle=$(awk '/VmRSS/{print $2}' "/proc/$daemon/status")
open_idle=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^paybridge_open_connections/{print $2}')
wait "$idle" || true
kill "$daemon"; wait "$daemon" 2>/dev/null || true

echo "openssl speed..." >&2
rsa1=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $7}')
rsa2=$(openssl speed -multi 2 -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $7}')

# Column KEY (rps, p50_ms, p99_ms, requests, non2xx) of NAME's rounds, one per line.
col() { sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" "$work/$1.results"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
# Per round: the faster bare server, and NAME's rate as a percentage of it (or of NAME2's rate).
bare_best() { paste <(col bare1 rps) <(col bare2 rps) | awk '{ print ($1 > $2) ? $1 : $2 }'; }
ratio() { # NAME [DENOMINATOR_NAME]: the median of the per-round ratios, in percent
  local den; if [[ $# -gt 1 ]]; then den=$(col "$2" rps); else den=$(bare_best); fi
  paste <(col "$1" rps) <(echo "$den") | awk '$2 > 0 { printf "%.1f\n", 100 * $1 / $2 }' | median
}
row() { # LABEL NAME
  printf '| %s | %s | %s | %s | %s | %s %% |\n' "$1" "$(col "$2" rps | median)" "$(col "$2" rps | range)" \
    "$(col "$2" p50_ms | median)" "$(col "$2" p99_ms | median)" "$(ratio "$2")"
}
cat <<TABLE

Machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'); wrk -t$WRK_THREADS -c$CONNS on the same machine; $ROUNDS rounds of ${DURATION} s per load, the loads taking turns; paybridged workers=$WORKERS unless a row says otherwise; Redis 7 on loopback, no persistence.

| run | requests/s (median round) | range | p50 ms | p99 ms | vs bare HTTP (median of rounds) |
|---|---:|---:|---:|---:|---:|
| bare Beast server answering \`success\`, the faster of workers=$WORKERS / $ALT_WORKERS in each round | $(bare_best | median) | $(bare_best | range) | $(col bare1 p50_ms | median) / $(col bare2 p50_ms | median) | $(col bare1 p99_ms | median) / $(col bare2 p99_ms | median) | 100 % |
$(row "Alipay, distinct notifications (verify RSA2 + Lua apply)" alipay)
$(row "Alipay, distinct, paybridged workers=$ALT_WORKERS" alt)
$(row "Alipay, pure duplicates" dups)
$(row "WeChat Pay v3, distinct (verify + AES-GCM + Lua apply)" wechat)

| ceiling | value |
|---|---:|
| \`openssl speed rsa2048\` verify/s, 1 core | $rsa1 |
| \`openssl speed -multi 2 rsa2048\` verify/s, 2 processes | $rsa2 |
| WeChat v3 rate / Alipay rate (median of rounds) | $(ratio wechat alipay) % |
| Alipay workers=$ALT_WORKERS rate / workers=$WORKERS rate (median of rounds) | $(ratio alt alipay) % |
| Redis time per EVALSHA (bill script), from INFO commandstats | ${evalsha_us} µs |
| paybridged RSS after the runs / with 10,000 idle connections | $((rss_before / 1024)) MB / $((rss_idle / 1024)) MB ($open_idle open) |

Requests per round (a distinct run that sent all its slice ran out: Alipay $alipay_slice, WeChat $wechat_slice lines): alipay $(col alipay requests | tr '\n' ' ')/ alt $(col alt requests | tr '\n' ' ')/ wechat $(col wechat requests | tr '\n' ' '); non-2xx in all rounds: $(cat "$work"/*.results | sed -n 's/.*non2xx=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }').
TABLE

# CRM delivery (bench/crm_bench.cpp): its own redis-server, receiver and paybridged; prints its own table.
echo "crm delivery..." >&2
build/bench/paybridge_crm_bench --workers "$CRM_WORKERS" --connections "$CONNS" --rounds "$CRM_ROUNDS" \
  --notifications "$CRM_NOTIFICATIONS" 2>"$work/crm_bench.log" \
  || { echo; echo "CRM delivery benchmark failed:"; tail -n 5 "$work/crm_bench.log"; }
