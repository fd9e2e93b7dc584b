#!/usr/bin/env bash
# Installs every Debian package vdispatch needs to build, test and run its demo.
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

packages=(
  build-essential cmake pkg-config            # toolchain
  libuv1-dev librdkafka-dev libhiredis-dev    # the daemon's libraries
  libjansson-dev libinih-dev libhttp-parser-dev
  libsystemd-dev                              # sd_notify: readiness and the watchdog
  libcsv-dev                                  # vdispatchctl reads rosters (CSV)
  libcmocka-dev                               # unit tests
  redis-server redis-tools kcat python3       # integration tests and the demo
  chromium python3-websocket                  # the desk's tests in a real headless browser
  prometheus                                  # promtool: the alert rules and the metrics are checked
  systemd                                     # systemd-analyze verify checks the unit
  python3-jsonschema python3-yaml             # the event schemas and the AsyncAPI document are checked
  clang libclang-rt-14-dev                    # fuzzing the event decoder (libFuzzer)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian package starts a system redis-server on 6379; tests and the demo start their own.
