#!/usr/bin/env bash
# Instructions per bill-script call, counted by callgrind inside redis-server: deterministic, so two
# versions of store/bill.lua compare exactly even on a machine whose timing drifts.
#   bench/script_cost.sh [SCRIPT.lua] [N]        (default store/bill.lua, N=2000)
# Registers N bills, then counts the instructions redis-server spends on N payments (each applied
# once), then on the same N again (pure duplicates), and prints instructions per call.
# The arguments are built as store/redis_bill_store.cpp builds them (run_script, event_args).
set -euo pipefail
cd "$(dirname "$0")/.."
script=$(realpath "${1:-store/bill.lua}"); N=${2:-2000}
scripts/deps.sh bench
work=$(mktemp -d /tmp/paybridge-script-cost.XXXXXX)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cleanup() { redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; sleep 1; rm -rf "$work"; }
trap cleanup EXIT

(cd "$work" && valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &)
for _ in $(seq 150); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
vpid=$(pgrep -f "valgrind.*--port $port" | head -1)
sha=$(redis-cli -p "$port" script load "$(cat "$script")")

# RESP for N calls of one operation (keys as store/keys.hpp names them: prefix pb, 16 shards).
commands() { # register | apply
  python3 - "$sha" "$N" "$1" <<'PY'
import json, sys
sha, n, op = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = sys.stdout.buffer
def cmd(*args):
    parts = [b'*%d\r\n' % len(args)]
    for a in args:
        a = a.encode()
        parts.append(b'$%d\r\n%s\r\n' % (len(a), a))
    out.write(b''.join(parts))
def fnv1a(s):
    h = 2166136261
    for c in s.encode():
        h = ((h ^ c) * 16777619) & 0xffffffff
    return h
for i in range(n):
    bill = 'INV-2026-%08d' % i
    p = 'pb:{s%02d}' % (fnv1a(bill) % 16)
    keys = [p + ':bill:' + bill, p + ':hist:' + bill, p + ':seen:' + bill, p + ':refunds:' + bill,
            p + ':orphans:' + bill, p + ':outbox', p + ':anomalies', p + ':updated', p + ':created']
    head = ['EVALSHA', sha, '9'] + keys + [op, str(1795000000000 + i), '2026-11-18T10:00:00.123Z']
    if op == 'register':
        fixed = '"amount_fen":12345,"currency":"CNY","customer_id":"cus_%d","description":"Order %d",' \
                '"expires_at":null,"metadata":{"order":"%d"}' % (i, i, i)
        cmd(*head, json.dumps({'id': bill, 'amount_fen': 12345, 'currency': 'CNY', 'customer_id': 'cus_%d' % i,
                               'description': 'Order %d' % i, 'expires_at': '', 'metadata_json': '{"order":"%d"}' % i,
                               'j_id': '"%s"' % bill, 'j_fixed': fixed}, separators=(',', ':')))
    else:
        cmd(*head, 'alipay', 'alipay', 'payment', 'ntf%032d' % i, '2021000000000000', bill,
            '2026111822001400000%08d' % i, 'CNY', '12345', '', '0', '0', 'TRADE_SUCCESS',
            '2026-11-18T10:00:00.000Z', '1', '2026-11-18T10:00:00.000Z')
PY
}
count() { # label op
  callgrind_control -i on "$vpid" >/dev/null 2>&1
  commands "$2" | redis-cli -p "$port" --pipe >"$work/pipe.log"
  callgrind_control -i off "$vpid" >/dev/null 2>&1
  grep -q 'errors: 0' "$work/pipe.log" || { echo "$1: redis reported errors:"; cat "$work/pipe.log"; exit 1; }
  rm -f "$work"/cg.*; callgrind_control -d "$vpid" >/dev/null 2>&1; sleep 1
  local total
  total=$(for f in "$work"/cg.*; do callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}'; done \
    | sort -n | tail -1)
  printf '| %s | %s |\n' "$1" "$(( total / N ))"
}
echo "| bill script $(basename "$script"), $N calls each | instructions per EVALSHA |"
echo "|---|---:|"
count register register
count "payment (applied)" apply
count "same payment again (duplicate)" apply
