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
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dev/redis" --appendonly yes \
    --appendfsync everysec --save "" --daemonize yes --pidfile "$dev/redis/redis.pid" \
    --logfile "$dev/redis/redis.log"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  started_redis=1
fi
cleanup() {
  if [[ -n "${started_redis:-}" ]]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [[ ! -f "$dev/paybridge.dev.json" ]]; then
  build/paybridge keys init "$dev/keys" --config "$dev/paybridge.dev.json" --redis-port "$redis_port"
fi
build/paybridged --config "$dev/paybridge.dev.json" --check
echo "paybridge: serving on http://127.0.0.1:8080 (API token in $dev/keys/api_token); Ctrl-C stops" >&2
build/paybridged --config "$dev/paybridge.dev.json"
