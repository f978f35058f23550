#!/usr/bin/env bash
# The README's run command: installs what is missing, builds, starts a local redis-server on
# loopback (data under .dev/redis), creates development keys and a development config on first
# run, and runs paybridged in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/deps.sh run
TARGETS="paybridged paybridge" scripts/build.sh build

dev=$root/.dev
redis_port=${PAYBRIDGE_DEV_REDIS_PORT:-6390}
mkdir -p "$dev/redis"
cleanup() {
  if [[ -n "${started_redis:-}" ]]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  running=$(redis-cli -p "$redis_port" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')
  if [[ -f "$dev/redis/redis.pid" && "$running" == "$(cat "$dev/redis/redis.pid")" ]]; then
    started_redis=1   # ours, left over from a run that was killed: stopped again on exit
  else
    echo "paybridge: using the Redis already answering on 127.0.0.1:$redis_port (not ours: left running;" \
         "PAYBRIDGE_DEV_REDIS_PORT picks another port on a first run)" >&2
  fi
else
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dev/redis" --appendonly yes \
    --appendfsync everysec --save "" --daemonize yes --pidfile "$dev/redis/redis.pid" \
    --logfile "$dev/redis/redis.log"
  started_redis=1
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    echo "paybridge: the development Redis did not start on 127.0.0.1:$redis_port; its log:" >&2
    tail -n 20 "$dev/redis/redis.log" >&2 || true
    exit 1
  fi
fi

if [[ ! -f "$dev/paybridge.dev.json" ]]; then
  if [[ -e "$dev/keys" ]]; then
    echo "paybridge: $dev/keys exists but $dev/paybridge.dev.json does not; remove $dev/keys" \
         "to make new development keys and a new config" >&2
    exit 1
  fi
  build/paybridge keys init "$dev/keys" --config "$dev/paybridge.dev.json" --redis-port "$redis_port"
fi
build/paybridged --config "$dev/paybridge.dev.json" --check
echo "paybridge: serving on http://127.0.0.1:8080 (API token in $dev/keys/api_token); Ctrl-C stops" >&2
build/paybridged --config "$dev/paybridge.dev.json"
