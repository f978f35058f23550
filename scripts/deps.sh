#!/usr/bin/env bash
# Installs the Debian 12 packages paybridge needs, only those that are missing.
# Usage: scripts/deps.sh [run|test|fuzz|bench]   (test adds what the test suite needs, fuzz clang and
# libFuzzer, bench the load generator and the profilers bench/ uses)
set -euo pipefail
# dpkg needs ldconfig and start-stop-daemon, which a root shell from plain `su` may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

packages=(build-essential cmake pkg-config ccache openssl ca-certificates curl
          libboost1.81-dev libssl-dev libhiredis-dev rapidjson-dev doctest-dev libsystemd-dev libexpat1-dev libjemalloc-dev
          redis-server)
if [[ "${1:-run}" == "test" ]]; then
  packages+=(systemd procps prometheus)   # systemd-analyze verify (the unit's /bin/kill); promtool check metrics
fi
if [[ "${1:-run}" == "bench" ]]; then
  packages+=(wrk valgrind python3)   # bench/run.sh, compare.sh; script_cost.sh (callgrind)
fi
if [[ "${1:-run}" == "fuzz" ]]; then
  packages+=(clang libclang-rt-14-dev)   # scripts/fuzz.sh: libFuzzer and its sanitizer runtimes
fi

missing_packages() {
  missing=()
  for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
}
missing_packages
if ((${#missing[@]})); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  # One paybridge install at a time (the run and test commands started together): the second
  # waits, then installs only what is still missing, under its own policy-rc.d below.
  if exec 8>>/tmp/paybridge-deps.lock 2>/dev/null; then
    flock 8
    missing_packages
  fi
fi
if ((${#missing[@]})); then
  echo "paybridge: installing ${missing[*]}" >&2
  # Packages must not start services (redis-server on 6379, a Prometheus server on every
  # interface): a policy-rc.d that says no, for the length of the install, unless one is in place.
  # (A failed service start, a port taken say, would fail the install too.)
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\n# paybridge scripts/deps.sh: no service starts during its install\nexit 101\n' |
      $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
  fi
  # Waits for another apt (unattended-upgrades on a fresh VM) instead of failing on its lock.
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
  $SUDO "${apt[@]}" update -qq
  $SUDO "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Not started now, and not at the next boot either: paybridge runs the Redis servers it needs
  # itself, and the tests need only promtool, not a Prometheus server on every interface.
  if [[ -d /run/systemd/system ]]; then
    for unit in redis-server prometheus; do
      if [[ " ${missing[*]} " == *" $unit "* ]]; then
        $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
        echo "paybridge: installed $unit for its programs only; its service is stopped and disabled" >&2
      fi
    done
  fi
fi
