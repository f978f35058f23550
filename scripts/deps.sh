#!/usr/bin/env bash
# Installs the Debian 12 packages paybridge needs, only those that are missing.
# Usage: scripts/deps.sh [run|test|fuzz]   (test adds what the test suite needs, fuzz clang and libFuzzer)
set -euo pipefail

packages=(build-essential cmake pkg-config ccache openssl ca-certificates curl
          libboost1.81-dev libssl-dev libhiredis-dev rapidjson-dev doctest-dev libsystemd-dev libexpat1-dev libjemalloc-dev
          redis-server)
if [[ "${1:-run}" == "test" ]]; then
  packages+=(systemd prometheus)   # systemd-analyze verify; promtool check metrics
fi
if [[ "${1:-run}" == "fuzz" ]]; then
  packages+=(clang libclang-rt-14-dev)   # scripts/fuzz.sh: libFuzzer and its sanitizer runtimes
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "paybridge: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
