#!/usr/bin/env bash
# The README's run command: installs what is missing, builds, starts a local redis-server on
# loopback (data under .dev/redis), creates development keys and a development config on first
# run, and runs paybridged in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dev=$root/.dev
mkdir -p "$dev/redis"
# One run at a time per clone: a second would take this run's Redis for a leftover and stop it.
exec 9>"$dev/dev.lock"
if ! flock -n 9; then
  echo "paybridge: scripts/dev.sh is already running from $root (stop it first)" >&2
  exit 1
fi

scripts/deps.sh run 9>&-
TARGETS="paybridged paybridge" scripts/build.sh build 9>&-

# The Redis port: PAYBRIDGE_DEV_REDIS_PORT on a first run, then the one the configuration names.
redis_port=${PAYBRIDGE_DEV_REDIS_PORT:-6390}
if [[ -f "$dev/paybridge.dev.json" ]]; then
  configured=$(sed -n 's#.*"url": *"redis://127\.0\.0\.1:\([0-9]*\)/.*#\1#p' "$dev/paybridge.dev.json" | head -n 1)
  if [[ -z "$configured" ]]; then
    echo "paybridge: $dev/paybridge.dev.json does not use a Redis on 127.0.0.1 (redis.url): run" \
         "build/paybridged --config $dev/paybridge.dev.json yourself, or remove it and $dev/keys" \
         "to start again" >&2
    exit 1
  fi
  if [[ -n "${PAYBRIDGE_DEV_REDIS_PORT:-}" && "$PAYBRIDGE_DEV_REDIS_PORT" != "$configured" ]]; then
    echo "paybridge: $dev/paybridge.dev.json uses Redis port $configured, not $PAYBRIDGE_DEV_REDIS_PORT" \
         "(PAYBRIDGE_DEV_REDIS_PORT applies on a first run): edit redis.url there, or remove" \
         "$dev/paybridge.dev.json and $dev/keys to start again" >&2
    exit 1
  fi
  redis_port=$configured
fi
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
    --logfile "$dev/redis/redis.log" 9>&-   # the lock is this script's, not the Redis it leaves behind
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
listen=$(sed -n 's/^ *"listen": *"\([^"]*\)".*/\1/p' "$dev/paybridge.dev.json" | head -n 1)
# The daemon binds with SO_REUSEPORT: a second one on the same port would share its connections.
listen_host=${listen%:*}
listen_host=${listen_host#[}
listen_host=${listen_host%]}
if [[ -n "$listen" ]] && (exec 3<>"/dev/tcp/$listen_host/${listen##*:}") 2>/dev/null; then
  echo "paybridge: something already answers on $listen (another paybridged?); stop it first" >&2
  exit 1
fi
echo "paybridge: serving on http://$listen (API token in $dev/keys/api_token); Ctrl-C stops" >&2
# In the background, so that a SIGTERM or SIGHUP to this script (a closed terminal) stops the
# daemon before the EXIT trap stops its Redis; Ctrl-C reaches both directly.
build/paybridged --config "$dev/paybridge.dev.json" 9>&- &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null || true' INT TERM HUP
while kill -0 "$daemon" 2>/dev/null; do wait "$daemon" || true; done   # a trapped signal ends a wait
wait "$daemon" && status=0 || status=$?
exit "$status"
